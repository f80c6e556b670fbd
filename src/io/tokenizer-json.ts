/**
 * Validation of a Hugging Face tokenizer.json before anything is built from it: the model's
 * vocabulary (non-empty, ids non-negative safe integers below MAX_VOCAB_SIZE, one token per id),
 * its merges (pairs of known tokens whose concatenation is known, as the reference
 * implementation requires), the added tokens (ids and contents), and every regular expression
 * in the normalizer, pre-tokenizer and decoder pipelines (refused when it could backtrack
 * catastrophically: see regex-safety.ts). Each problem is a TokenizerJsonError naming the file
 * and the field, e.g. `tokenizer.json: model.vocab["ab"]: id -3 ...`.
 */
import { checkRegexSafety, UnsafeRegexError } from './regex-safety.js';

/** A tokenizer.json that cannot be used, with the file and the field at fault. */
export class TokenizerJsonError extends Error {
  /** The file (or a description of the in-memory object). */
  readonly source: string;
  /** The JSON path of the value at fault, e.g. `model.merges[12]`. */
  readonly field: string;
  constructor(source: string, field: string, message: string) {
    super(`${source}: ${field}: ${message}`);
    this.name = 'TokenizerJsonError';
    this.source = source;
    this.field = field;
  }
}

/** Most ids a vocabulary may have (real ones hold up to ~260,000). */
export const MAX_VOCAB_SIZE = 1 << 21;
/** Most merges a BPE model may list. */
export const MAX_MERGES = 1 << 22;
/** Deepest nesting of normalizer / pre-tokenizer / decoder sequences. */
const MAX_PIPELINE_DEPTH = 32;

const SPLIT_BEHAVIORS = ['Removed', 'Isolated', 'MergedWithPrevious', 'MergedWithNext', 'Contiguous'];

const MODEL_TYPES = ['BPE', 'WordPiece', 'WordLevel', 'Unigram'] as const;

export interface TokenizerJsonFacts {
  /** 1 + the largest id of the vocabulary and the added tokens. */
  vocabSize: number;
  /** Model type ('BPE' when the file leaves it out). */
  modelType: (typeof MODEL_TYPES)[number];
  /** Added tokens, checked. */
  addedTokens: { id: number; content: string; special: boolean }[];
}

function show(x: unknown): string {
  let s: string;
  try {
    s = typeof x === 'number' && !Number.isFinite(x) ? String(x) : (JSON.stringify(x) ?? String(x));
  } catch {
    s = String(x);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

const isObject = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x);
const key = (k: string) => `[${JSON.stringify(k)}]`;

/** Whether an id is a valid token id: a non-negative safe integer below MAX_VOCAB_SIZE. */
export function isTokenId(id: unknown): id is number {
  return typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 && id < MAX_VOCAB_SIZE;
}

/**
 * Checks a parsed tokenizer.json (see the module comment); returns its vocabulary size and
 * added tokens. `source` names the file in errors.
 */
export function checkTokenizerJson(json: unknown, source = 'tokenizer.json'): TokenizerJsonFacts {
  const bad = (field: string, msg: string): never => {
    throw new TokenizerJsonError(source, field, msg);
  };
  if (!isObject(json)) return bad('(root)', `must be a JSON object, got ${show(json)}`);
  const model = json.model;
  if (!isObject(model)) return bad('model', `must be an object, got ${show(model)}`);
  const type = model.type ?? 'BPE';
  if (!MODEL_TYPES.includes(type as (typeof MODEL_TYPES)[number])) bad('model.type', `${show(type)} is not a supported model (${MODEL_TYPES.join(', ')})`);
  const modelType = type as TokenizerJsonFacts['modelType'];

  // vocabulary: token -> id (Unigram: [piece, score] in id order)
  const idOf = new Map<string, number>();
  const tokenOf = new Map<number, string>();
  let maxId = -1;
  if (modelType === 'Unigram') {
    const vocab = model.vocab;
    if (!Array.isArray(vocab)) return bad('model.vocab', `must be an array of [piece, score], got ${show(vocab)}`);
    if (vocab.length > MAX_VOCAB_SIZE) bad('model.vocab', `has ${vocab.length} entries, over the limit of ${MAX_VOCAB_SIZE}`);
    vocab.forEach((e, i) => {
      if (!Array.isArray(e) || e.length !== 2 || typeof e[0] !== 'string' || typeof e[1] !== 'number' || !Number.isFinite(e[1]))
        bad(`model.vocab[${i}]`, `must be [piece, finite score], got ${show(e)}`);
      if (!idOf.has(e[0])) idOf.set(e[0], i);
      tokenOf.set(i, e[0]);
    });
    maxId = vocab.length - 1;
    const unk = model.unk_id;
    if (unk !== undefined && unk !== null && !(isTokenId(unk) && unk <= maxId))
      bad('model.unk_id', `${show(unk)} is not an id of the vocabulary (0..${maxId})`);
  } else {
    const vocab = model.vocab;
    if (!isObject(vocab)) return bad('model.vocab', `must be an object of token -> id, got ${show(vocab)}`);
    const entries = Object.entries(vocab);
    if (entries.length > MAX_VOCAB_SIZE) bad('model.vocab', `has ${entries.length} entries, over the limit of ${MAX_VOCAB_SIZE}`);
    for (const [tok, id] of entries) {
      if (!isTokenId(id)) bad(`model.vocab${key(tok)}`, `id ${show(id)} must be an integer in [0, ${MAX_VOCAB_SIZE})`);
      const other = tokenOf.get(id as number);
      if (other !== undefined) bad(`model.vocab${key(tok)}`, `id ${id} is already the id of ${JSON.stringify(other)}`);
      idOf.set(tok, id as number);
      tokenOf.set(id as number, tok);
      if ((id as number) > maxId) maxId = id as number;
    }
  }
  if (idOf.size === 0) bad('model.vocab', 'is empty: a tokenizer needs at least one token');
  for (const f of ['unk_token', 'continuing_subword_prefix', 'end_of_word_suffix'] as const) {
    const v = model[f];
    if (v !== undefined && v !== null && typeof v !== 'string') bad(`model.${f}`, `must be a string or null, got ${show(v)}`);
  }
  if (modelType === 'WordPiece' && typeof model.unk_token === 'string' && !idOf.has(model.unk_token))
    bad('model.unk_token', `${show(model.unk_token)} is not in the vocabulary`);

  if (modelType === 'BPE') checkMerges(model, idOf, bad);

  // added tokens
  const rawAdded = json.added_tokens ?? [];
  if (!Array.isArray(rawAdded)) return bad('added_tokens', `must be an array, got ${show(rawAdded)}`);
  if (rawAdded.length > MAX_VOCAB_SIZE) bad('added_tokens', `has ${rawAdded.length} entries, over the limit of ${MAX_VOCAB_SIZE}`);
  const addedTokens = rawAdded.map((t, i): TokenizerJsonFacts['addedTokens'][number] => {
    const f = `added_tokens[${i}]`;
    if (!isObject(t)) return bad(f, `must be an object {id, content}, got ${show(t)}`);
    if (!isTokenId(t.id)) bad(`${f}.id`, `${show(t.id)} must be an integer in [0, ${MAX_VOCAB_SIZE})`);
    if (typeof t.content !== 'string' || t.content === '') bad(`${f}.content`, `must be a non-empty string, got ${show(t.content)}`);
    const id = t.id as number;
    const content = t.content as string;
    const holder = tokenOf.get(id);
    if (holder !== undefined && holder !== content && modelType !== 'Unigram')
      bad(`${f}.id`, `id ${id} (${JSON.stringify(content)}) is the vocabulary's id of ${JSON.stringify(holder)}`);
    if (id > maxId) maxId = id;
    return { id, content, special: t.special === true };
  });

  // pipelines: regular expressions and replacement strings
  for (const part of ['normalizer', 'pre_tokenizer', 'decoder', 'post_processor'] as const) checkPipeline(json[part], part, 0, bad);

  return { vocabSize: maxId + 1, modelType, addedTokens };
}

function checkMerges(model: Record<string, unknown>, idOf: Map<string, number>, bad: (field: string, msg: string) => never): void {
  const merges = model.merges ?? [];
  if (!Array.isArray(merges)) return bad('model.merges', `must be an array, got ${show(merges)}`);
  if (merges.length > MAX_MERGES) bad('model.merges', `has ${merges.length} entries, over the limit of ${MAX_MERGES}`);
  const prefix = typeof model.continuing_subword_prefix === 'string' ? model.continuing_subword_prefix : '';
  merges.forEach((m, i) => {
    let pair: unknown[];
    if (typeof m === 'string') pair = m.split(' ');
    else if (Array.isArray(m)) pair = m;
    else return bad(`model.merges[${i}]`, `must be "a b" or ["a", "b"], got ${show(m)}`);
    if (pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') return bad(`model.merges[${i}]`, `must be two tokens, got ${show(m)}`);
    const [a, b] = pair as [string, string];
    for (const t of [a, b]) if (!idOf.has(t)) bad(`model.merges[${i}]`, `${JSON.stringify(t)} (of ${show(m)}) is not in the vocabulary`);
    const merged = a + (prefix && b.startsWith(prefix) ? b.slice(prefix.length) : b);
    if (!idOf.has(merged)) bad(`model.merges[${i}]`, `the merged token ${JSON.stringify(merged)} (of ${show(m)}) is not in the vocabulary`);
  });
}

/** Walks a normalizer / pre-tokenizer / decoder / post-processor tree. */
function checkPipeline(node: unknown, field: string, depth: number, bad: (field: string, msg: string) => never): void {
  if (node === null || node === undefined) return;
  if (depth > MAX_PIPELINE_DEPTH) bad(field, `nested more than ${MAX_PIPELINE_DEPTH} deep`);
  if (Array.isArray(node)) {
    node.forEach((x, i) => checkPipeline(x, `${field}[${i}]`, depth + 1, bad));
    return;
  }
  if (!isObject(node)) return;
  if (node.type !== undefined && typeof node.type !== 'string') bad(`${field}.type`, `must be a string, got ${show(node.type)}`);
  const pattern = node.pattern;
  if (pattern !== undefined) {
    if (!isObject(pattern)) bad(`${field}.pattern`, `must be {"Regex": ...} or {"String": ...}, got ${show(pattern)}`);
    const p = pattern as Record<string, unknown>;
    if (p.Regex !== undefined) {
      if (typeof p.Regex !== 'string') bad(`${field}.pattern.Regex`, `must be a string, got ${show(p.Regex)}`);
      try {
        checkRegexSafety(p.Regex as string);
      } catch (e) {
        if (e instanceof UnsafeRegexError) bad(`${field}.pattern.Regex`, `refused: ${e.message}`);
        throw e;
      }
    } else if (typeof p.String !== 'string') {
      bad(`${field}.pattern`, `must hold a "Regex" or "String" string, got ${show(pattern)}`);
    }
  }
  if (node.type === 'Split') {
    if (
      node.behavior !== undefined &&
      !(typeof node.behavior === 'string' && SPLIT_BEHAVIORS.some((b) => b.toLowerCase() === (node.behavior as string).toLowerCase()))
    )
      bad(`${field}.behavior`, `must be one of ${SPLIT_BEHAVIORS.join(', ')}, got ${show(node.behavior)}`);
    if (node.invert !== undefined && typeof node.invert !== 'boolean') bad(`${field}.invert`, `must be true or false, got ${show(node.invert)}`);
  }
  // A replacement string is literal in the reference implementation; JavaScript would expand
  // $& $` $' $1 $<name>, and $` / $' make the output quadratic in the input.
  if (node.type === 'Replace' && node.content !== undefined) {
    if (typeof node.content !== 'string') bad(`${field}.content`, `must be a string, got ${show(node.content)}`);
    if (/\$[$&`'0-9<]/.test(node.content as string))
      bad(`${field}.content`, `${show(node.content)} holds a $ replacement pattern ($&, $\`, $', $1, $<name>, $$), which this tokenizer library would expand`);
  }
  for (const [k, v] of Object.entries(node)) {
    if (k === 'pattern' || k === 'content') continue;
    if (v !== null && typeof v === 'object') checkPipeline(v, `${field}.${k}`, depth + 1, bad);
  }
}
