/**
 * Any Hugging Face tokenizer.json (Llama 3, Mistral, Qwen2, ...) through @huggingface/tokenizers,
 * behind softpress's Tokenizer interface.
 */
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfLib } from '@huggingface/tokenizers';
import type { Tokenizer } from './tokenizer.js';

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  readonly special: ReadonlyMap<string, number>;
  readonly addsBos: boolean;
  readonly chatTemplate?: string;
  private readonly lib: HfLib;

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}, ids: { bos?: number; eos?: number } = {}) {
    this.lib = new HfLib(tokenizerJson, tokenizerConfig);
    const model = tokenizerJson.model as { vocab?: Record<string, number> | [string, number][] };
    const added = (tokenizerJson.added_tokens as { id: number; content: string; special?: boolean }[] | undefined) ?? [];
    const vocabCount = Array.isArray(model.vocab) ? model.vocab.length : Object.keys(model.vocab ?? {}).length;
    this.vocabSize = Math.max(vocabCount, ...added.map((t) => t.id + 1));
    this.special = new Map(added.filter((t) => t.special).map((t) => [t.content, t.id]));
    const find = (...names: string[]): number | undefined => names.map((n) => this.special.get(n)).find((x) => x !== undefined);
    const named = (key: string): string | undefined => {
      const v = tokenizerConfig[key];
      return typeof v === 'string' ? v : (v as { content?: string } | undefined)?.content;
    };
    const bosName = named('bos_token');
    const eosName = named('eos_token');
    const padName = named('pad_token');
    this.bos = ids.bos ?? (bosName ? this.special.get(bosName) : undefined) ?? find('<s>', '<|begin_of_text|>', '<|bos|>', '<|endoftext|>') ?? 0;
    this.eos = ids.eos ?? (eosName ? this.special.get(eosName) : undefined) ?? find('</s>', '<|end_of_text|>', '<|eos|>', '<|endoftext|>', '<|im_end|>') ?? this.bos;
    this.pad = (padName ? this.special.get(padName) : undefined) ?? find('<pad>', '<|pad|>') ?? this.eos;
    // Without a tokenizer_config.json saying otherwise, sequences start with BOS (softpress-base).
    this.addsBos = tokenizerConfig.add_bos_token !== false;
    const template = tokenizerConfig.chat_template;
    if (typeof template === 'string' && template.trim() !== '') this.chatTemplate = template;
  }

  /** Loads DIR/tokenizer.json (+ tokenizer_config.json when present). */
  static fromDir(dir: string, ids: { bos?: number; eos?: number } = {}): HfTokenizer {
    const json = readJson(join(dir, 'tokenizer.json'));
    const cfgPath = join(dir, 'tokenizer_config.json');
    return new HfTokenizer(json, existsSync(cfgPath) ? readJson(cfgPath) : {}, ids);
  }

  /** Special-token strings in the text are always read as those tokens (as transformers does). */
  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    const ids = this.lib.encode(text, { add_special_tokens: false }).ids.map(Number);
    if (opts.bos && this.addsBos) ids.unshift(this.bos);
    if (opts.eos) ids.push(this.eos);
    return ids;
  }

  decode(ids: readonly number[], opts: { keepSpecial?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the library refuses an empty list
    return this.lib.decode([...ids], { skip_special_tokens: !opts.keepSpecial, clean_up_tokenization_spaces: false });
  }
}
