/**
 * Any Hugging Face tokenizer.json (Llama 3, Mistral, Qwen2, ...) through @huggingface/tokenizers,
 * behind softpress's Tokenizer interface. The file is checked first (io/tokenizer-json.ts:
 * vocabulary, merges, added tokens, and regular expressions that could freeze the process), and
 * every refusal, ours or the library's, is a TokenizerJsonError naming the file and the field.
 */
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfLib } from '@huggingface/tokenizers';
import type { Tokenizer } from './tokenizer.js';
import { TokenizerJsonError, checkTokenizerJson } from '../io/tokenizer-json.js';

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new TokenizerJsonError(path, '(file)', `cannot read: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TokenizerJsonError(path, '(file)', `not valid JSON: ${(e as Error).message}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new TokenizerJsonError(path, '(root)', 'must be a JSON object');
  return json as Record<string, unknown>;
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

  /** `source` names the file in errors (default 'tokenizer.json'). */
  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}, ids: { bos?: number; eos?: number; source?: string } = {}) {
    const source = ids.source ?? 'tokenizer.json';
    const facts = checkTokenizerJson(tokenizerJson, source);
    try {
      this.lib = new HfLib(tokenizerJson, tokenizerConfig);
      // a pipeline entry the library accepts but cannot run fails here, not at the first request
      this.lib.encode('Aa 1.', { add_special_tokens: false });
    } catch (e) {
      throw new TokenizerJsonError(source, '(tokenizer)', `@huggingface/tokenizers cannot build it: ${(e as Error).message}`);
    }
    const added = facts.addedTokens;
    this.vocabSize = facts.vocabSize;
    for (const k of ['bos', 'eos'] as const) {
      const id = ids[k];
      if (id !== undefined && !(Number.isSafeInteger(id) && id >= 0 && id < this.vocabSize)) throw new TokenizerJsonError(source, `${k}_token_id`, `${id} is outside the vocabulary (${this.vocabSize} ids)`);
    }
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
    const path = join(dir, 'tokenizer.json');
    const json = readJson(path);
    const cfgPath = join(dir, 'tokenizer_config.json');
    return new HfTokenizer(json, existsSync(cfgPath) ? readJson(cfgPath) : {}, { ...ids, source: path });
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
