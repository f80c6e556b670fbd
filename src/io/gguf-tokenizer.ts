/**
 * The tokenizer stored in a GGUF file's metadata, as a Hugging Face tokenizer.json (and the
 * matching tokenizer_config.json), so that @huggingface/tokenizers — and transformers — read it.
 *
 * Covered: `tokenizer.ggml.model = "gpt2"` (byte-level BPE: tokens, merges, token types, special
 * ids, add-BOS flag) with the pre-tokenizers llama.cpp names in `tokenizer.ggml.pre`. Each entry
 * below is written the way the model's own tokenizer.json writes it, so that ids equal llama.cpp's
 * (tested for SmolLM2 against llama.cpp's own tokenization).
 */
import { GgufError, metaArray, metaString, type GgufFile, type GgufValue } from './gguf.js';

/** llama.cpp's token types (llama_token_type). */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
const BYTE_LEVEL_NO_REGEX = { ...BYTE_LEVEL, use_regex: false };
const split = (pattern: string) => ({ type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false });

/** Pre-tokenizers by llama.cpp's `tokenizer.ggml.pre` name. */
const PRE_TOKENIZERS: Record<string, unknown> = {
  // GPT-2's regex (ByteLevel's own).
  default: BYTE_LEVEL,
  gpt2: BYTE_LEVEL,
  // StarCoder-family vocabularies (SmolLM, SmolLM2): every digit alone, then GPT-2's regex.
  smollm: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, BYTE_LEVEL] },
  starcoder: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, BYTE_LEVEL] },
  // Llama 3: numbers in runs of up to three digits, its own regex.
  'llama-bpe': {
    type: 'Sequence',
    pretokenizers: [
      split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
      BYTE_LEVEL_NO_REGEX,
    ],
  },
  // Qwen2: every digit alone.
  qwen2: {
    type: 'Sequence',
    pretokenizers: [
      split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
      BYTE_LEVEL_NO_REGEX,
    ],
  },
};

function strings(file: GgufFile, key: string): string[] {
  const arr = metaArray(file, key);
  return arr.map((v, i) => {
    if (typeof v !== 'string') throw new GgufError(file.path, `metadata '${key}'[${i}] is not a string`, { field: key });
    return v;
  });
}

function optionalNumber(file: GgufFile, key: string): number | undefined {
  const v: GgufValue | undefined = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw new GgufError(file.path, `metadata '${key}' must be a non-negative integer, got ${String(v)}`, { field: key });
  return v;
}

export interface GgufTokenizerFiles {
  /** The tokenizer.json object. */
  tokenizer: Record<string, unknown>;
  /** The tokenizer_config.json object: special token names, add-BOS flag, chat template. */
  config: Record<string, unknown>;
  bos?: number;
  eos?: number;
}

/** The tokenizer of a GGUF file as tokenizer.json + tokenizer_config.json objects. */
export function ggufTokenizer(file: GgufFile): GgufTokenizerFiles {
  const model = metaString(file, 'tokenizer.ggml.model');
  if (model !== 'gpt2') {
    throw new GgufError(
      file.path,
      `tokenizer.ggml.model '${model}' is not supported (softpress reads byte-level BPE vocabularies, 'gpt2'; SentencePiece 'llama' vocabularies are not covered yet)`,
      { field: 'tokenizer.ggml.model' },
    );
  }
  const preName = file.metadata.has('tokenizer.ggml.pre') ? metaString(file, 'tokenizer.ggml.pre') : 'default';
  const pre = PRE_TOKENIZERS[preName];
  if (!pre)
    throw new GgufError(file.path, `tokenizer.ggml.pre '${preName}' is not supported (known: ${Object.keys(PRE_TOKENIZERS).join(', ')})`, {
      field: 'tokenizer.ggml.pre',
    });

  const tokens = strings(file, 'tokenizer.ggml.tokens');
  if (tokens.length === 0) throw new GgufError(file.path, 'tokenizer.ggml.tokens is empty', { field: 'tokenizer.ggml.tokens' });
  const merges = strings(file, 'tokenizer.ggml.merges');
  const types = file.metadata.has('tokenizer.ggml.token_type') ? metaArray(file, 'tokenizer.ggml.token_type') : [];
  if (types.length !== 0 && types.length !== tokens.length) {
    throw new GgufError(file.path, `tokenizer.ggml.token_type has ${types.length} entries for ${tokens.length} tokens`, { field: 'tokenizer.ggml.token_type' });
  }

  // no prototype: tokens such as '__proto__' or 'constructor' are keys like any other
  const vocab: Record<string, number> = Object.create(null) as Record<string, number>;
  const added: { id: number; content: string; single_word: boolean; lstrip: boolean; rstrip: boolean; normalized: boolean; special: boolean }[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const text = tokens[id];
    if (Object.hasOwn(vocab, text))
      throw new GgufError(file.path, `tokenizer.ggml.tokens: '${text}' appears twice (ids ${vocab[text]} and ${id})`, { field: 'tokenizer.ggml.tokens' });
    vocab[text] = id;
    const type = types.length ? Number(types[id]) : TOKEN_TYPE.normal;
    if (type === TOKEN_TYPE.control || type === TOKEN_TYPE.userDefined) {
      added.push({ id, content: text, single_word: false, lstrip: false, rstrip: false, normalized: false, special: type === TOKEN_TYPE.control });
    }
  }
  for (const [i, m] of merges.entries()) {
    const parts = m.split(' ');
    if (parts.length !== 2 || !Object.hasOwn(vocab, parts[0]) || !Object.hasOwn(vocab, parts[1])) {
      throw new GgufError(file.path, `tokenizer.ggml.merges[${i}] '${m}' is not two tokens of the vocabulary`, { field: 'tokenizer.ggml.merges' });
    }
  }

  const id = (key: string) => {
    const v = optionalNumber(file, key);
    if (v !== undefined && v >= tokens.length)
      throw new GgufError(file.path, `metadata '${key}' = ${v} is outside the vocabulary (${tokens.length} tokens)`, { field: key });
    return v;
  };
  const bos = id('tokenizer.ggml.bos_token_id');
  const eos = id('tokenizer.ggml.eos_token_id');
  const pad = id('tokenizer.ggml.padding_token_id');
  const addBos = file.metadata.get('tokenizer.ggml.add_bos_token');
  const template = file.metadata.get('tokenizer.chat_template');

  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: pre,
    post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  const name = (i: number | undefined) => (i === undefined ? null : tokens[i]);
  const config: Record<string, unknown> = {
    tokenizer_class: 'GPT2Tokenizer',
    bos_token: name(bos),
    eos_token: name(eos),
    pad_token: name(pad),
    unk_token: null,
    // llama.cpp's default for byte-level BPE vocabularies is no BOS.
    add_bos_token: addBos === true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 1_000_000_000,
  };
  if (typeof template === 'string') config.chat_template = template;
  return { tokenizer, config, bos, eos };
}
