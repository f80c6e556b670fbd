/**
 * Byte-level BPE in the GPT-2 style: text is cut by GPT-2's pre-tokenizer pattern into words,
 * numbers, punctuation runs and whitespace, each piece's UTF-8 bytes are spelled with 256
 * printable stand-in characters, and learned merges join adjacent symbols. Every byte is a
 * token, so any well-formed string round-trips exactly. Files are Hugging Face tokenizer.json
 * (model BPE, ByteLevel pre-tokenizer and decoder), readable by HF tokenizers in Python/Rust/JS.
 *
 * Caveats: a lone UTF-16 surrogate has no UTF-8 encoding; like TextEncoder it is encoded as
 * U+FFFD, so strings containing one do not round-trip. The split pattern runs with JavaScript
 * RegExp semantics (as in @huggingface/tokenizers); the Rust library's regex engine may split
 * a few exotic characters differently (JavaScript's \s includes U+FEFF, for one).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Tokenizer } from './tokenizer.js';
import { TokenizerJsonError } from '../io/tokenizer-json.js';

/** softpress's special tokens, in id order (<|bos|> = 0, <|eos|> = 1, <|pad|> = 2, ...). */
export const SOFTPRESS_SPECIAL_TOKENS: readonly string[] = Object.freeze([
  '<|bos|>',
  '<|eos|>',
  '<|pad|>',
  '<|restate|>',
  '<|question|>',
  '<|answer|>',
  '<|mem|>',
  '<|sep|>',
  ...Array.from({ length: 8 }, (_, i) => `<|reserved_${i}|>`),
]);

/**
 * GPT-2's pre-tokenizer pattern, as HF's ByteLevel pre-tokenizer (use_regex: true) applies it:
 * English contractions, optional-space + letters / digits / other symbols, then whitespace
 * (leaving one space to prefix the next word).
 */
export const GPT2_SPLIT_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Pieces of text before BPE (their concatenation is the text). */
export function preTokenize(text: string): string[] {
  return text.match(GPT2_SPLIT_PATTERN) ?? [];
}

// --- byte <-> printable character (GPT-2's table) ---------------------------------------------

/** Byte b is spelled BYTE_TO_CHAR[b]: printable Latin-1 bytes as themselves, others from U+0100. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const table: string[] = new Array(256);
  let shift = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCharCode(printable(b) ? b : 256 + shift++);
  return Object.freeze(table);
})();

const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** UTF-8 bytes of a string, lone surrogates as U+FFFD (as TextEncoder does). */
export function utf8Bytes(s: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out.push(c);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      } else {
        c = 0xfffd;
      }
    }
    if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return out;
}

/** The byte-level spelling of a string (what tokenizer.json vocab entries look like). */
export function toByteLevel(s: string): string {
  return utf8Bytes(s)
    .map((b) => BYTE_TO_CHAR[b])
    .join('');
}

// Pairs of ids are Map keys a * KEY_SCALE + b; merge table values rank * KEY_SCALE + newId, so
// the smallest value is also the lowest rank. Both stay below 2^53.
const KEY_SCALE = 2 ** 21;
const MAX_VOCAB = KEY_SCALE;

// --- applying merges to one piece --------------------------------------------------------------

/**
 * Lowest-rank pair first, all its occurrences left to right; repeated. Used when the merge list
 * is consistent (each merge comes after the merges making its parts), where it equals the
 * priority-queue order of HF tokenizers. Mutates and returns `ids`.
 */
function mergeSimple(ids: number[], merges: ReadonlyMap<number, number>): number[] {
  while (ids.length > 1) {
    let best = Infinity;
    let at = -1;
    for (let i = 0; i + 1 < ids.length; i++) {
      const v = merges.get((ids[i] as number) * KEY_SCALE + (ids[i + 1] as number));
      if (v !== undefined && v < best) {
        best = v;
        at = i;
      }
    }
    if (at < 0) break;
    const a = ids[at] as number;
    const b = ids[at + 1] as number;
    const c = best % KEY_SCALE;
    let w = at;
    for (let i = at; i < ids.length; ) {
      if (i + 1 < ids.length && ids[i] === a && ids[i + 1] === b) {
        ids[w++] = c;
        i += 2;
      } else {
        ids[w++] = ids[i++] as number;
      }
    }
    ids.length = w;
  }
  return ids;
}

/**
 * The same merges with a priority queue keyed by (rank, position) over a linked list, as HF
 * tokenizers does: O(n log n), for long pieces and for merge lists of unknown order.
 */
export function mergeWithQueue(input: readonly number[], merges: ReadonlyMap<number, number>): number[] {
  const n = input.length;
  if (n < 2) return input.slice();
  const sym = Int32Array.from(input);
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  const alive = new Uint8Array(n).fill(1);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  // Binary min-heap of (value = rank*KEY_SCALE + newId, position).
  const hv: number[] = [];
  const hp: number[] = [];
  const less = (i: number, j: number) => (hv[i] as number) < (hv[j] as number) || (hv[i] === hv[j] && (hp[i] as number) < (hp[j] as number));
  const swap = (i: number, j: number) => {
    const v = hv[i] as number;
    hv[i] = hv[j] as number;
    hv[j] = v;
    const p = hp[i] as number;
    hp[i] = hp[j] as number;
    hp[j] = p;
  };
  const push = (pos: number) => {
    const q = next[pos] as number;
    if (q < 0) return;
    const v = merges.get((sym[pos] as number) * KEY_SCALE + (sym[q] as number));
    if (v === undefined) return;
    hv.push(v);
    hp.push(pos);
    for (let i = hv.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (!less(i, parent)) break;
      swap(i, parent);
      i = parent;
    }
  };
  const pop = (): [number, number] => {
    const top: [number, number] = [hv[0] as number, hp[0] as number];
    const lastV = hv.pop() as number;
    const lastP = hp.pop() as number;
    if (hv.length > 0) {
      hv[0] = lastV;
      hp[0] = lastP;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < hv.length && less(l, m)) m = l;
        if (r < hv.length && less(r, m)) m = r;
        if (m === i) break;
        swap(i, m);
        i = m;
      }
    }
    return top;
  };
  for (let i = 0; i + 1 < n; i++) push(i);
  while (hv.length > 0) {
    const [v, p] = pop();
    const q = next[p] as number;
    // Stale entry: the left symbol was absorbed, or the pair at p changed.
    if (!alive[p] || q < 0 || merges.get((sym[p] as number) * KEY_SCALE + (sym[q] as number)) !== v) continue;
    sym[p] = v % KEY_SCALE;
    alive[q] = 0;
    const after = next[q] as number;
    next[p] = after;
    if (after >= 0) prev[after] = p;
    const before = prev[p] as number;
    if (before >= 0) push(before);
    push(p);
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i] as number) out.push(sym[i] as number);
  return out;
}

// --- the tokenizer -----------------------------------------------------------------------------

export interface AddedToken {
  id: number;
  content: string;
  special: boolean;
}

export interface BpeModelSpec {
  /** Byte-level token string to id (must cover all 256 byte characters). */
  vocab: ReadonlyMap<string, number> | Readonly<Record<string, number>>;
  /** Merges in rank order, as pairs of byte-level token strings. */
  merges: readonly (readonly [string, string])[];
  /** Added tokens (specials); they may or may not also be in vocab. */
  addedTokens: readonly AddedToken[];
}

export interface BpeEncodeOptions {
  bos?: boolean;
  eos?: boolean;
  /** Parse special-token strings found in the text as their ids (default: plain text). */
  allowSpecial?: boolean;
}

const BOS_NAMES = ['<|bos|>', '<|begin_of_text|>', '<s>', '<|endoftext|>'];
const EOS_NAMES = ['<|eos|>', '<|end_of_text|>', '</s>', '<|endoftext|>'];
const PAD_NAMES = ['<|pad|>', '<pad>'];

const CACHE_LIMIT = 1 << 18;
const CACHE_MAX_PIECE = 256;
const SIMPLE_MAX_PIECE = 48;

export class BpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  readonly special: ReadonlyMap<string, number>;
  /** Merges in rank order. */
  readonly merges: readonly (readonly [string, string])[];

  private readonly tokenById: (string | undefined)[];
  private readonly idByToken: Map<string, number>;
  private readonly bytesById: (Uint8Array | undefined)[];
  private readonly addedById = new Map<number, AddedToken>();
  private readonly byteIds = new Int32Array(256);
  private readonly mergeTable = new Map<number, number>();
  private readonly ordered: boolean;
  private readonly specialPattern: RegExp | undefined;
  private readonly cache = new Map<string, readonly number[]>();
  private readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(spec: BpeModelSpec) {
    const entries: [string, number][] = spec.vocab instanceof Map ? [...spec.vocab.entries()] : Object.entries(spec.vocab);
    this.idByToken = new Map();
    this.tokenById = [];
    for (const [tok, id] of entries) {
      if (!Number.isInteger(id) || id < 0 || id >= MAX_VOCAB) throw new Error(`vocab entry ${JSON.stringify(tok)} has invalid id ${id}`);
      const other = this.tokenById[id];
      if (other !== undefined && other !== tok) throw new Error(`vocab id ${id} is used by both ${JSON.stringify(other)} and ${JSON.stringify(tok)}`);
      this.idByToken.set(tok, id);
      this.tokenById[id] = tok;
    }
    for (const t of spec.addedTokens) {
      if (!Number.isInteger(t.id) || t.id < 0 || t.id >= MAX_VOCAB) throw new Error(`added token ${JSON.stringify(t.content)} has invalid id ${t.id}`);
      const other = this.tokenById[t.id];
      if (other !== undefined && other !== t.content) {
        throw new Error(`added token ${JSON.stringify(t.content)} has id ${t.id}, which the vocab gives to ${JSON.stringify(other)}`);
      }
      if (t.content === '') throw new Error(`added token with id ${t.id} is empty`);
      this.tokenById[t.id] = t.content;
      this.idByToken.set(t.content, t.id);
      this.addedById.set(t.id, t);
    }
    this.vocabSize = this.tokenById.length;

    this.bytesById = new Array(this.vocabSize);
    for (let id = 0; id < this.vocabSize; id++) {
      const tok = this.tokenById[id];
      if (tok === undefined || this.addedById.has(id)) continue;
      const bytes = new Uint8Array(tok.length);
      for (let i = 0; i < tok.length; i++) {
        const b = CHAR_TO_BYTE.get(tok[i] as string);
        if (b === undefined) throw new Error(`vocab token ${JSON.stringify(tok)} (id ${id}) is not byte-level: ${JSON.stringify(tok[i])} is not a byte character`);
        bytes[i] = b;
      }
      this.bytesById[id] = bytes;
    }
    for (let b = 0; b < 256; b++) {
      const id = this.idByToken.get(BYTE_TO_CHAR[b] as string);
      if (id === undefined || this.addedById.has(id)) {
        throw new Error(`vocab lacks the byte token for 0x${b.toString(16).padStart(2, '0')} (${JSON.stringify(BYTE_TO_CHAR[b])}); a byte-level BPE needs all 256`);
      }
      this.byteIds[b] = id;
    }

    // Merge ranks, and whether every merge comes after those that make its parts.
    const madeAt = new Map<number, number>();
    let ordered = true;
    this.merges = spec.merges.map(([a, b], rank) => {
      const ia = this.idByToken.get(a);
      const ib = this.idByToken.get(b);
      const ic = this.idByToken.get(a + b);
      if (ia === undefined || ib === undefined || ic === undefined) {
        const missing = ia === undefined ? a : ib === undefined ? b : a + b;
        throw new Error(`merge #${rank} (${JSON.stringify(a)} ${JSON.stringify(b)}): ${JSON.stringify(missing)} is not in the vocab`);
      }
      const key = ia * KEY_SCALE + ib;
      if (!this.mergeTable.has(key)) this.mergeTable.set(key, rank * KEY_SCALE + ic);
      // Out of order: a part made by a later merge, or a token made a second time.
      if ((madeAt.get(ia) ?? -1) >= rank || (madeAt.get(ib) ?? -1) >= rank || madeAt.has(ic)) ordered = false;
      if (!madeAt.has(ic)) madeAt.set(ic, rank);
      return [a, b] as const;
    });
    this.ordered = ordered;

    const special = new Map<string, number>();
    for (const t of spec.addedTokens) if (t.special) special.set(t.content, t.id);
    this.special = special;
    const find = (names: readonly string[]) => names.map((n) => this.idByToken.get(n)).find((x) => x !== undefined);
    const bos = find(BOS_NAMES);
    const eos = find(EOS_NAMES);
    if (bos === undefined) throw new Error(`tokenizer has no BOS token (looked for ${BOS_NAMES.join(', ')})`);
    if (eos === undefined) throw new Error(`tokenizer has no EOS token (looked for ${EOS_NAMES.join(', ')})`);
    this.bos = bos;
    this.eos = eos;
    this.pad = find(PAD_NAMES) ?? eos;

    const added = spec.addedTokens.map((t) => t.content).sort((x, y) => y.length - x.length);
    this.specialPattern =
      added.length > 0 ? new RegExp(added.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g') : undefined;
  }

  /** Ids of one pre-tokenized piece (cached). */
  private encodePiece(piece: string): readonly number[] {
    const hit = this.cache.get(piece);
    if (hit) return hit;
    const bytes = utf8Bytes(piece);
    const ids = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) ids[i] = this.byteIds[bytes[i] as number] as number;
    const out = this.ordered && ids.length <= SIMPLE_MAX_PIECE ? mergeSimple(ids, this.mergeTable) : mergeWithQueue(ids, this.mergeTable);
    if (piece.length <= CACHE_MAX_PIECE) {
      if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
      this.cache.set(piece, out);
    }
    return out;
  }

  private encodeOrdinary(text: string, out: number[]): void {
    for (const m of text.matchAll(GPT2_SPLIT_PATTERN)) {
      const ids = this.encodePiece(m[0]);
      for (let i = 0; i < ids.length; i++) out.push(ids[i] as number);
    }
  }

  /**
   * Text to ids. Special-token strings in the text are ordinary text unless allowSpecial.
   * BOS/EOS are added only when asked.
   */
  encode(text: string, opts: BpeEncodeOptions = {}): number[] {
    const out: number[] = [];
    if (opts.bos) out.push(this.bos);
    if (opts.allowSpecial && this.specialPattern) {
      let last = 0;
      for (const m of text.matchAll(this.specialPattern)) {
        if (m.index > last) this.encodeOrdinary(text.slice(last, m.index), out);
        out.push(this.idByToken.get(m[0]) as number);
        last = m.index + m[0].length;
      }
      if (last < text.length) this.encodeOrdinary(text.slice(last), out);
    } else {
      this.encodeOrdinary(text, out);
    }
    if (opts.eos) out.push(this.eos);
    return out;
  }

  /** Ids to text; added (special) tokens are dropped unless keepSpecial. */
  decode(ids: readonly number[], opts: { keepSpecial?: boolean } = {}): string {
    let buf = new Uint8Array(Math.max(16, ids.length * 4));
    let len = 0;
    let text = '';
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i] as number;
      const bytes = this.bytesById[id];
      if (bytes === undefined) {
        const added = Number.isInteger(id) ? this.addedById.get(id) : undefined;
        if (!added) throw new RangeError(`decode: id ${id} at position ${i} is not in the vocabulary (size ${this.vocabSize})`);
        if (opts.keepSpecial) {
          text += this.utf8.decode(buf.subarray(0, len)) + added.content;
          len = 0;
        }
        continue;
      }
      if (len + bytes.length > buf.length) {
        const bigger = new Uint8Array(Math.max(buf.length * 2, len + bytes.length));
        bigger.set(buf.subarray(0, len));
        buf = bigger;
      }
      buf.set(bytes, len);
      len += bytes.length;
    }
    return text + this.utf8.decode(buf.subarray(0, len));
  }

  /** Byte-level token strings of the text (for inspection). */
  tokenize(text: string, opts: BpeEncodeOptions = {}): string[] {
    return this.encode(text, opts).map((id) => this.tokenById[id] as string);
  }

  tokenToId(token: string): number | undefined {
    return this.idByToken.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenById[id];
  }

  /** The Hugging Face tokenizer.json object. */
  toJSON(): Record<string, unknown> {
    const vocab: Record<string, number> = {};
    for (let id = 0; id < this.vocabSize; id++) {
      const tok = this.tokenById[id];
      if (tok !== undefined) vocab[tok] = id;
    }
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [...this.addedById.values()]
        .sort((a, b) => a.id - b.id)
        .map((t) => ({ id: t.id, content: t.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t.special })),
      normalizer: null,
      pre_tokenizer: byteLevel,
      post_processor: { ...byteLevel, trim_offsets: false },
      decoder: byteLevel,
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
        // "a b" strings are read by every tokenizers version; byte-level tokens hold no spaces.
        merges: this.merges.map(([a, b]) => `${a} ${b}`),
      },
    };
  }

  /**
   * The matching tokenizer_config.json (for transformers / tokenizers.js): special token
   * names, no clean-up of spaces on decode (which would break the exact round trip).
   */
  tokenizerConfig(): Record<string, unknown> {
    const name = (id: number) => this.tokenById[id] ?? null;
    return {
      tokenizer_class: 'PreTrainedTokenizerFast',
      bos_token: name(this.bos),
      eos_token: name(this.eos),
      pad_token: name(this.pad),
      unk_token: null,
      // Our models read [BOS] text: softpress's HfTokenizer adds BOS at a sequence start when true.
      add_bos_token: true,
      add_eos_token: false,
      clean_up_tokenization_spaces: false,
      model_max_length: 1_000_000_000,
      additional_special_tokens: [...this.special.keys()].filter((s) => ![this.bos, this.eos, this.pad].includes(this.special.get(s) as number)),
    };
  }

  /** Writes tokenizer.json (creating its directory). */
  save(path: string): void {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, `${JSON.stringify(this.toJSON(), null, 2)}\n`);
  }

  /** From a parsed tokenizer.json object; `source` names it in errors. */
  static fromJSON(json: unknown, source = 'tokenizer.json'): BpeTokenizer {
    let field = '(root)';
    const fail = (msg: string): never => {
      throw new TokenizerJsonError(source, field, msg);
    };
    if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('expected a JSON object');
    const j = json as Record<string, unknown>;
    const model = j.model as Record<string, unknown> | undefined;
    field = 'model';
    if (!model || typeof model !== 'object' || Array.isArray(model)) fail('missing "model"');
    const m = model as Record<string, unknown>;
    if (m.type !== undefined && m.type !== 'BPE') fail(`model.type is ${JSON.stringify(m.type)}, only "BPE" is supported`);
    if (m.byte_fallback === true) fail('model.byte_fallback is not supported (byte-level BPE only)');
    if (m.continuing_subword_prefix || m.end_of_word_suffix) fail('continuing_subword_prefix / end_of_word_suffix are not supported');
    field = 'normalizer';
    if (j.normalizer !== null && j.normalizer !== undefined) fail(`normalizer ${JSON.stringify((j.normalizer as { type?: unknown }).type)} is not supported (expected null)`);
    const pre = j.pre_tokenizer as Record<string, unknown> | null | undefined;
    field = 'pre_tokenizer';
    if (!pre || pre.type !== 'ByteLevel') fail(`pre_tokenizer must be ByteLevel, got ${JSON.stringify(pre?.type ?? pre)}`);
    if (pre!.use_regex === false) fail('ByteLevel pre_tokenizer with use_regex: false is not supported');
    if (pre!.add_prefix_space === true) fail('ByteLevel pre_tokenizer with add_prefix_space: true is not supported');
    const vocab = m.vocab;
    field = 'model.vocab';
    if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) fail('model.vocab must be an object of token -> id');
    const rawMerges = m.merges;
    field = 'model.merges';
    if (!Array.isArray(rawMerges)) fail('model.merges must be an array');
    const merges = (rawMerges as unknown[]).map((x, i): [string, string] => {
      if (typeof x === 'string') {
        const parts = x.split(' ');
        if (parts.length !== 2) fail(`merge #${i} ${JSON.stringify(x)} is not "a b"`);
        return [parts[0] as string, parts[1] as string];
      }
      if (Array.isArray(x) && x.length === 2 && typeof x[0] === 'string' && typeof x[1] === 'string') return [x[0], x[1]];
      return fail(`merge #${i} must be "a b" or ["a", "b"]`);
    });
    const rawAdded = j.added_tokens ?? [];
    field = 'added_tokens';
    if (!Array.isArray(rawAdded)) fail('added_tokens must be an array');
    const addedTokens = (rawAdded as unknown[]).map((x, i): AddedToken => {
      const t = x as Record<string, unknown>;
      if (!t || typeof t.content !== 'string' || typeof t.id !== 'number') fail(`added_tokens[${i}] needs "id" and "content"`);
      return { id: t.id as number, content: t.content as string, special: t.special === true };
    });
    try {
      return new BpeTokenizer({ vocab: vocab as Record<string, number>, merges, addedTokens });
    } catch (err) {
      throw new TokenizerJsonError(source, 'model', (err as Error).message);
    }
  }

  /** Reads a Hugging Face tokenizer.json. */
  static fromFile(path: string): BpeTokenizer {
    let raw: string;
    try {
      raw = readFileSync(path, 'utf8');
    } catch (err) {
      throw new TokenizerJsonError(path, '(file)', `cannot read tokenizer ${path}: ${(err as Error).message}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch (err) {
      throw new TokenizerJsonError(path, '(file)', `invalid JSON: ${(err as Error).message}`);
    }
    return BpeTokenizer.fromJSON(json, path);
  }
}

// --- training ----------------------------------------------------------------------------------

export interface TrainBpeOptions {
  /** Total ids including special tokens and the 256 bytes (default 8192). */
  vocabSize?: number;
  /** Special tokens, given ids 0.. in order (default SOFTPRESS_SPECIAL_TOKENS). */
  specialTokens?: readonly string[];
  /** A pair seen fewer times than this is never merged (default 2). */
  minFrequency?: number;
  /** Progress reports (reading, counted, every 500 merges, done). */
  onProgress?: (p: TrainProgress) => void;
}

export interface TrainProgress {
  /** read: texts being counted; count: pieces counted; merge: every 500 merges; done. */
  phase: 'read' | 'count' | 'merge' | 'done';
  texts: number;
  chars: number;
  /** Distinct pre-tokenized pieces and their total count. */
  wordTypes: number;
  words: number;
  merges: number;
  targetMerges: number;
  seconds: number;
}

/** Max-heap of (count, pair key), ties to the smaller key, with lazy deletion by the caller. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  private above(i: number, j: number): boolean {
    const ci = this.counts[i] as number;
    const cj = this.counts[j] as number;
    return ci > cj || (ci === cj && (this.keys[i] as number) < (this.keys[j] as number));
  }

  private swap(i: number, j: number): void {
    const c = this.counts[i] as number;
    this.counts[i] = this.counts[j] as number;
    this.counts[j] = c;
    const k = this.keys[i] as number;
    this.keys[i] = this.keys[j] as number;
    this.keys[j] = k;
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    for (let i = this.counts.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): [number, number] {
    const top: [number, number] = [this.counts[0] as number, this.keys[0] as number];
    const c = this.counts.pop() as number;
    const k = this.keys.pop() as number;
    if (this.counts.length > 0) {
      this.counts[0] = c;
      this.keys[0] = k;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < this.counts.length && this.above(l, m)) m = l;
        if (r < this.counts.length && this.above(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

/**
 * Learns a byte-level BPE. Counts the pre-tokenized pieces once, then merges on the table of
 * distinct pieces: pair counts, the pieces holding each pair, and a heap of pairs by count,
 * updated only for the pieces a merge touches.
 */
export function trainBpe(texts: Iterable<string>, opts: TrainBpeOptions = {}): BpeTokenizer {
  const started = Date.now();
  const seconds = () => (Date.now() - started) / 1000;
  const specials = [...(opts.specialTokens ?? SOFTPRESS_SPECIAL_TOKENS)];
  if (new Set(specials).size !== specials.length) throw new Error('trainBpe: special tokens must be distinct');
  if (specials.some((s) => s === '')) throw new Error('trainBpe: special tokens must be non-empty');
  const vocabSize = opts.vocabSize ?? 8192;
  const base = specials.length + 256;
  if (!Number.isInteger(vocabSize) || vocabSize < base || vocabSize > MAX_VOCAB) {
    throw new RangeError(`trainBpe: vocabSize must be an integer in [${base}, ${MAX_VOCAB}] (specials + 256 bytes at least), got ${vocabSize}`);
  }
  const minFrequency = Math.max(1, opts.minFrequency ?? 2);
  const targetMerges = vocabSize - base;

  // 1. Piece frequencies.
  const freq = new Map<string, number>();
  let nTexts = 0;
  let chars = 0;
  let words = 0;
  for (const text of texts) {
    nTexts++;
    chars += text.length;
    for (const m of text.matchAll(GPT2_SPLIT_PATTERN)) {
      const piece = m[0];
      freq.set(piece, (freq.get(piece) ?? 0) + 1);
      words++;
    }
    if (nTexts % 200 === 0) {
      opts.onProgress?.({ phase: 'read', texts: nTexts, chars, wordTypes: freq.size, words, merges: 0, targetMerges, seconds: seconds() });
    }
  }

  // 2. Pieces as symbol ids (ids are final: specials first, then bytes, then merges).
  const tokens: string[] = [...specials, ...BYTE_TO_CHAR];
  const symbols: number[][] = [];
  const counts: number[] = [];
  for (const [piece, c] of freq) {
    symbols.push(utf8Bytes(piece).map((b) => specials.length + b));
    counts.push(c);
  }
  freq.clear();
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, number[]>();
  for (let w = 0; w < symbols.length; w++) {
    const s = symbols[w] as number[];
    const c = counts[w] as number;
    for (let i = 0; i + 1 < s.length; i++) {
      const key = (s[i] as number) * KEY_SCALE + (s[i + 1] as number);
      pairCount.set(key, (pairCount.get(key) ?? 0) + c);
      const list = pairWords.get(key);
      // Consecutive duplicates are common ("aaa"); other duplicates are skipped by a stamp.
      if (!list) pairWords.set(key, [w]);
      else if (list[list.length - 1] !== w) list.push(w);
    }
  }
  const heap = new PairHeap();
  for (const [key, c] of pairCount) heap.push(c, key);
  opts.onProgress?.({ phase: 'count', texts: nTexts, chars, wordTypes: symbols.length, words, merges: 0, targetMerges, seconds: seconds() });

  // 3. Merges.
  const merges: [string, string][] = [];
  const stamp = new Int32Array(symbols.length).fill(-1);
  const delta = new Map<number, number>();
  // Pairs never to merge: their concatenation already exists by another route (or is the text
  // of a special token). Keeping token strings unique keeps the merge list in creation order,
  // which lets encode() use its fast path and keeps the tokenizer.json vocab a valid object.
  const existing = new Set(tokens);
  const forbidden = new Set<number>();
  while (merges.length < targetMerges && heap.size > 0) {
    const [c, key] = heap.pop();
    if (pairCount.get(key) !== c) continue; // stale: a fresher entry exists (or the pair is gone)
    if (c < minFrequency) break;
    const a = Math.floor(key / KEY_SCALE);
    const b = key % KEY_SCALE;
    const joined = (tokens[a] as string) + (tokens[b] as string);
    if (existing.has(joined)) {
      forbidden.add(key);
      pairCount.delete(key);
      continue;
    }
    existing.add(joined);
    const newId = tokens.length;
    tokens.push(joined);
    merges.push([tokens[a] as string, tokens[b] as string]);
    const mergeIndex = merges.length - 1;
    delta.clear();
    const where = pairWords.get(key) ?? [];
    pairWords.delete(key);
    for (const w of where) {
      if (stamp[w] === mergeIndex) continue;
      stamp[w] = mergeIndex;
      const s = symbols[w] as number[];
      let has = false;
      for (let i = 0; i + 1 < s.length; i++) {
        if (s[i] === a && s[i + 1] === b) {
          has = true;
          break;
        }
      }
      if (!has) continue; // stale entry: an earlier merge consumed the pair here
      const wc = counts[w] as number;
      for (let i = 0; i + 1 < s.length; i++) {
        const k = (s[i] as number) * KEY_SCALE + (s[i + 1] as number);
        delta.set(k, (delta.get(k) ?? 0) - wc);
      }
      const merged: number[] = [];
      for (let i = 0; i < s.length; ) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          merged.push(newId);
          i += 2;
        } else {
          merged.push(s[i++] as number);
        }
      }
      symbols[w] = merged;
      for (let i = 0; i + 1 < merged.length; i++) {
        const x = merged[i] as number;
        const y = merged[i + 1] as number;
        const k = x * KEY_SCALE + y;
        delta.set(k, (delta.get(k) ?? 0) + wc);
        if (x === newId || y === newId) {
          const list = pairWords.get(k);
          if (!list) pairWords.set(k, [w]);
          else if (list[list.length - 1] !== w) list.push(w);
        }
      }
    }
    for (const [k, d] of delta) {
      if (d === 0 || forbidden.has(k)) continue;
      const now = (pairCount.get(k) ?? 0) + d;
      if (now > 0) {
        pairCount.set(k, now);
        heap.push(now, k);
      } else {
        pairCount.delete(k);
        pairWords.delete(k);
      }
    }
    pairCount.delete(key);
    if (merges.length % 500 === 0) {
      opts.onProgress?.({ phase: 'merge', texts: nTexts, chars, wordTypes: symbols.length, words, merges: merges.length, targetMerges, seconds: seconds() });
    }
  }
  opts.onProgress?.({ phase: 'done', texts: nTexts, chars, wordTypes: symbols.length, words, merges: merges.length, targetMerges, seconds: seconds() });

  const vocab = new Map<string, number>();
  tokens.forEach((t, id) => vocab.set(t, id));
  return new BpeTokenizer({
    vocab,
    merges,
    addedTokens: specials.map((content, id) => ({ id, content, special: true })),
  });
}
