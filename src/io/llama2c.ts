/**
 * llama2.c files: legacy ("version 0") float32 model checkpoints and the tokenizer .bin that
 * run.c reads. Weights come out under Hugging Face Llama names, but wq/wk keep llama2.c's row
 * order, whose RoPE rotates interleaved adjacent pairs (see llama2cToHfConfig's
 * `rope_interleaved`).
 */
import * as fs from 'node:fs';
import type { Tokenizer } from '../models/tokenizer.js';

export class Llama2cError extends Error {
  readonly source: string;
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = 'Llama2cError';
    this.source = source;
  }
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function readExactly(fd: number, dst: Uint8Array, position: number, source: string, what: string): void {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < dst.length) {
    const got = fs.readSync(fd, dst, done, Math.min(CHUNK, dst.length - done), position + done);
    if (got === 0) throw new Llama2cError(source, `unexpected end of file reading ${what} at byte ${position + done}`);
    done += got;
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

export interface Llama2cConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  /** Always positive; the sign in the file is `sharedClassifier`. */
  vocabSize: number;
  seqLen: number;
  /** True when the output classifier is the token-embedding table (positive vocab in the header). */
  sharedClassifier: boolean;
}

export interface Llama2cWeight {
  shape: number[];
  data: Float32Array;
}

/** Bytes of the legacy header: 7 little-endian int32. */
export const LLAMA2C_HEADER_BYTES = 28;

/** The newer export formats start with this magic ("ak42" as a little-endian uint32). */
const EXPORT_MAGIC = 0x616b3432;

/** Decodes and checks the 7-int header. */
export function parseLlama2cHeader(header: Uint8Array, source = '<buffer>'): Llama2cConfig {
  if (header.length < LLAMA2C_HEADER_BYTES) {
    throw new Llama2cError(source, `file is ${header.length} bytes, too short for the ${LLAMA2C_HEADER_BYTES}-byte header`);
  }
  const dv = new DataView(header.buffer, header.byteOffset, LLAMA2C_HEADER_BYTES);
  if (dv.getUint32(0, true) === EXPORT_MAGIC) {
    throw new Llama2cError(
      source,
      `starts with the "ak42" magic of llama2.c's versioned export format; only the legacy (version 0) ` +
        `float32 format is supported (export with --version 0)`,
    );
  }
  const names = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'];
  const v = names.map((_, i) => dv.getInt32(i * 4, true));
  names.forEach((name, i) => {
    const x = name === 'vocab_size' ? Math.abs(v[i]) : v[i];
    if (x <= 0) throw new Llama2cError(source, `header field ${name} at byte ${i * 4} is ${v[i]}; expected a positive value`);
  });
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = v;
  if (dim % nHeads !== 0) throw new Llama2cError(source, `dim ${dim} is not divisible by n_heads ${nHeads}`);
  if ((dim / nHeads) % 2 !== 0) throw new Llama2cError(source, `head size ${dim / nHeads} must be even for RoPE`);
  if (nKvHeads > nHeads || nHeads % nKvHeads !== 0) {
    throw new Llama2cError(source, `n_heads ${nHeads} is not a multiple of n_kv_heads ${nKvHeads}`);
  }
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocab),
    seqLen,
    sharedClassifier: vocab > 0,
  };
}

/**
 * The arrays of a legacy checkpoint in file order. Per-layer arrays are stacked over layers in
 * the file; the `skip` ones are run.c's unused precomputed RoPE tables (freq_cis real, imag).
 */
function layout(c: Llama2cConfig): { name: string; perLayer: boolean; shape: number[]; skip?: boolean }[] {
  const head = c.dim / c.nHeads;
  const kvDim = head * c.nKvHeads;
  const L = (name: string, shape: number[]) => ({ name, perLayer: true, shape });
  const G = (name: string, shape: number[]) => ({ name, perLayer: false, shape });
  const parts: ReturnType<typeof layout> = [
    G('model.embed_tokens.weight', [c.vocabSize, c.dim]),
    L('input_layernorm.weight', [c.dim]),
    L('self_attn.q_proj.weight', [c.dim, c.dim]),
    L('self_attn.k_proj.weight', [kvDim, c.dim]),
    L('self_attn.v_proj.weight', [kvDim, c.dim]),
    L('self_attn.o_proj.weight', [c.dim, c.dim]),
    L('post_attention_layernorm.weight', [c.dim]),
    L('mlp.gate_proj.weight', [c.hiddenDim, c.dim]), // w1
    L('mlp.down_proj.weight', [c.dim, c.hiddenDim]), // w2
    L('mlp.up_proj.weight', [c.hiddenDim, c.dim]), // w3
    G('model.norm.weight', [c.dim]),
    { ...G('freq_cis_real', [c.seqLen, head / 2]), skip: true },
    { ...G('freq_cis_imag', [c.seqLen, head / 2]), skip: true },
  ];
  if (!c.sharedClassifier) parts.push(G('lm_head.weight', [c.vocabSize, c.dim]));
  return parts;
}

/** Expected file size in bytes of a legacy checkpoint with this config. */
export function llama2cCheckpointBytes(c: Llama2cConfig): number {
  let floats = 0;
  for (const p of layout(c)) floats += p.shape.reduce((a, b) => a * b, 1) * (p.perLayer ? c.nLayers : 1);
  return LLAMA2C_HEADER_BYTES + 4 * floats;
}

/**
 * Reads a legacy llama2.c checkpoint. The file size must match the header exactly, which
 * catches truncated downloads and files in another layout.
 */
export function readLlama2cCheckpoint(path: string): { config: Llama2cConfig; weights: Map<string, Llama2cWeight> } {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const header = new Uint8Array(Math.min(size, LLAMA2C_HEADER_BYTES));
    readExactly(fd, header, 0, path, 'the header');
    const config = parseLlama2cHeader(header, path);
    const expected = llama2cCheckpointBytes(config);
    if (size !== expected) {
      const c = config;
      throw new Llama2cError(
        path,
        `file is ${size} bytes but the header (dim ${c.dim}, hidden_dim ${c.hiddenDim}, n_layers ${c.nLayers}, ` +
          `n_heads ${c.nHeads}, n_kv_heads ${c.nKvHeads}, vocab_size ${c.sharedClassifier ? '' : '-'}${c.vocabSize}, ` +
          `seq_len ${c.seqLen}) implies ${expected} bytes` +
          (size < expected ? ' (truncated?)' : ' (trailing data or a different layout?)'),
      );
    }

    const weights = new Map<string, Llama2cWeight>();
    let pos = LLAMA2C_HEADER_BYTES;
    const readFloats = (count: number, what: string): Float32Array => {
      const out = new Float32Array(count);
      const bytes = new Uint8Array(out.buffer);
      readExactly(fd, bytes, pos, path, what);
      if (!HOST_LITTLE_ENDIAN) for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
      pos += bytes.length;
      return out;
    };
    for (const part of layout(config)) {
      const numel = part.shape.reduce((a, b) => a * b, 1);
      if (part.skip) {
        pos += 4 * numel; // run.c recomputes RoPE; skip the stored tables
      } else if (part.perLayer) {
        for (let l = 0; l < config.nLayers; l++) {
          const name = `model.layers.${l}.${part.name}`;
          weights.set(name, { shape: [...part.shape], data: readFloats(numel, name) });
        }
      } else {
        weights.set(part.name, { shape: [...part.shape], data: readFloats(numel, part.name) });
      }
    }
    return { config, weights };
  } finally {
    fs.closeSync(fd);
  }
}

/** Hugging Face config.json for a llama2.c model (plus softpress's `rope_interleaved`). */
export interface Llama2cHfConfig {
  architectures: ['LlamaForCausalLM'];
  model_type: 'llama';
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  tie_word_embeddings: boolean;
  hidden_act: 'silu';
  torch_dtype: 'float32';
  bos_token_id: number;
  eos_token_id: number;
  /** softpress-specific: RoPE rotates adjacent pairs (2j, 2j+1), as run.c does, not rotate_half. */
  rope_interleaved: true;
}

export function llama2cToHfConfig(config: Llama2cConfig): Llama2cHfConfig {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: config.dim,
    intermediate_size: config.hiddenDim,
    num_hidden_layers: config.nLayers,
    num_attention_heads: config.nHeads,
    num_key_value_heads: config.nKvHeads,
    vocab_size: config.vocabSize,
    max_position_embeddings: config.seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: config.sharedClassifier,
    hidden_act: 'silu',
    torch_dtype: 'float32',
    bos_token_id: 1,
    eos_token_id: 2,
    rope_interleaved: true,
  };
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

const UNK = 0;
const BOS = 1;
const EOS = 2;
/** Byte-fallback tokens: id = byte + 3. */
const BYTE_BASE = 3;

/** Bytes as a "binary string" (one char per byte), so pieces concatenate like C strings. */
function binary(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

/** run.c decodes a piece as a byte when sscanf(piece, "<0x%02hhX>") matches. */
function byteOfPiece(piece: Uint8Array): number {
  const m = /^<0x([0-9A-Fa-f]{1,2})/.exec(binary(piece.subarray(0, 6)));
  return m ? parseInt(m[1], 16) : -1;
}

/** C-locale isprint || isspace. */
function printable(b: number): boolean {
  return (b >= 0x20 && b <= 0x7e) || (b >= 0x09 && b <= 0x0d);
}

/** Min-heap entry for the merge loop: best score first, then leftmost. */
interface Cand {
  score: number;
  pos: number;
  id: number;
  leftVer: number;
  rightVer: number;
  right: number;
}

function before(a: Cand, b: Cand): boolean {
  return a.score > b.score || (a.score === b.score && a.pos < b.pos);
}

class CandHeap {
  private items: Cand[] = [];
  get size(): number {
    return this.items.length;
  }
  push(c: Cand): void {
    const h = this.items;
    h.push(c);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  pop(): Cand {
    const h = this.items;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l], h[m])) m = l;
        if (r < h.length && before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

/**
 * llama2.c's tokenizer (tokenizer.bin / tok512.bin): SentencePiece-style BPE with scores,
 * a dummy-prefix space and byte fallback, reproducing run.c's encode and decode.
 */
export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bos = BOS;
  readonly eos = EOS;
  /** <unk> doubles as padding; llama2.c has no pad token. */
  readonly pad = UNK;
  readonly special: ReadonlyMap<string, number> = new Map([
    ['<unk>', UNK],
    ['<s>', BOS],
    ['</s>', EOS],
  ]);
  /** The longest piece in bytes, as stored in the file header. */
  readonly maxTokenLength: number;

  private readonly pieces: Uint8Array[];
  private readonly scores: Float32Array;
  private readonly pieceStr: string[];
  /** Piece (binary string) -> id; the lowest id wins on duplicates. */
  private readonly lookup = new Map<string, number>();
  /** Byte a piece decodes to, or -1; also for the piece with its leading space removed. */
  private readonly byteOf: Int16Array;
  private readonly byteOfStripped: Int16Array;

  private constructor(pieces: Uint8Array[], scores: Float32Array, maxTokenLength: number, source: string) {
    this.pieces = pieces;
    this.scores = scores;
    this.maxTokenLength = maxTokenLength;
    this.vocabSize = pieces.length;
    this.pieceStr = pieces.map(binary);
    this.pieceStr.forEach((s, id) => {
      if (!this.lookup.has(s)) this.lookup.set(s, id);
    });
    this.byteOf = new Int16Array(pieces.length);
    this.byteOfStripped = new Int16Array(pieces.length);
    pieces.forEach((p, id) => {
      this.byteOf[id] = byteOfPiece(p);
      this.byteOfStripped[id] = p[0] === 0x20 ? byteOfPiece(p.subarray(1)) : this.byteOf[id];
    });
    // Byte fallback needs <0x00>..<0xFF> at ids 3..258.
    if (pieces.length < BYTE_BASE + 256) {
      throw new Llama2cError(source, `vocabulary has ${pieces.length} pieces; byte fallback needs at least ${BYTE_BASE + 256}`);
    }
    for (let b = 0; b < 256; b++) {
      if (this.byteOf[BYTE_BASE + b] !== b) {
        throw new Llama2cError(
          source,
          `piece ${BYTE_BASE + b} is ${JSON.stringify(this.pieceStr[BYTE_BASE + b])}; byte fallback expects ` +
            `"<0x${b.toString(16).toUpperCase().padStart(2, '0')}>"`,
        );
      }
    }
  }

  /** Loads a tokenizer .bin file; `vocabSize`, if given, must match the number of pieces. */
  static load(path: string, vocabSize?: number): Llama2cTokenizer {
    return Llama2cTokenizer.fromBytes(fs.readFileSync(path), path, vocabSize);
  }

  /**
   * Parses the format: uint32 max_token_length, then per piece float32 score, int32 byte
   * length, raw bytes. run.c takes the count from the model; here the file is read to its end.
   */
  static fromBytes(bytes: Uint8Array, source = '<buffer>', vocabSize?: number): Llama2cTokenizer {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.length < 4) throw new Llama2cError(source, `file is ${bytes.length} bytes, too short for max_token_length`);
    const maxTokenLength = dv.getUint32(0, true);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let pos = 4;
    while (pos < bytes.length && (vocabSize === undefined || pieces.length < vocabSize)) {
      const id = pieces.length;
      if (pos + 8 > bytes.length) {
        throw new Llama2cError(source, `piece ${id}: truncated score/length at byte ${pos} (file is ${bytes.length} bytes)`);
      }
      const score = dv.getFloat32(pos, true);
      const len = dv.getInt32(pos + 4, true);
      if (len < 0 || pos + 8 + len > bytes.length) {
        throw new Llama2cError(source, `piece ${id}: byte length ${len} at byte ${pos + 4} runs past the end of the file`);
      }
      scores.push(score);
      pieces.push(bytes.slice(pos + 8, pos + 8 + len));
      pos += 8 + len;
    }
    if (vocabSize !== undefined && pieces.length !== vocabSize) {
      throw new Llama2cError(source, `expected ${vocabSize} pieces, file ends after ${pieces.length}`);
    }
    if (pos !== bytes.length) {
      throw new Llama2cError(source, `${bytes.length - pos} trailing bytes after piece ${pieces.length - 1} (at byte ${pos})`);
    }
    return new Llama2cTokenizer(pieces, Float32Array.from(scores), maxTokenLength, source);
  }

  /** The raw bytes of a piece as stored ('▁' already written as ' '). */
  piece(id: number): Uint8Array {
    this.checkId(id);
    return this.pieces[id];
  }

  /** The merge score of a piece. */
  score(id: number): number {
    this.checkId(id);
    return this.scores[id];
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside the vocabulary [0, ${this.vocabSize})`);
    }
  }

  /**
   * run.c's encode: optional BOS, a dummy " " when the text is non-empty, one token per UTF-8
   * code point (byte tokens when the code point has no piece), then repeatedly merge the
   * adjacent pair whose concatenation is the highest-scoring piece (leftmost on ties).
   * A heap makes that O(n log n) while choosing exactly the merges run.c's rescans would.
   */
  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    const bytes = new TextEncoder().encode(text);
    const toks: number[] = [];
    if (opts.bos) toks.push(BOS);
    if (bytes.length > 0) {
      // run.c assumes " " is a piece; fall back to the byte token rather than emitting -1.
      toks.push(this.lookup.get(' ') ?? BYTE_BASE + 0x20);
    }
    // Group each lead byte with its continuation bytes (at most 4 bytes, as run.c does).
    for (let i = 0; i < bytes.length;) {
      let j = i + 1;
      while (j < bytes.length && (bytes[j] & 0xc0) === 0x80 && j - i < 4) j++;
      const id = this.lookup.get(binary(bytes.subarray(i, j)));
      if (id !== undefined) toks.push(id);
      else for (let k = i; k < j; k++) toks.push(bytes[k] + BYTE_BASE);
      i = j;
    }
    const merged = this.merge(toks);
    if (opts.eos) merged.push(EOS);
    return merged;
  }

  private merge(toks: number[]): number[] {
    const n = toks.length;
    const tok = Int32Array.from(toks);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const ver = new Int32Array(n); // bumped whenever a node's token (and so its right neighbour) changes
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new CandHeap();
    const consider = (i: number) => {
      const r = next[i];
      if (i < 0 || r < 0) return;
      const id = this.lookup.get(this.pieceStr[tok[i]] + this.pieceStr[tok[r]]);
      if (id === undefined) return;
      const score = this.scores[id];
      if (!(score > -1e10)) return; // run.c's initial best_score; NaN never wins either
      heap.push({ score, pos: i, id, leftVer: ver[i], rightVer: ver[r], right: r });
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (heap.size > 0) {
      const c = heap.pop();
      const i = c.pos;
      const r = c.right;
      if (!alive[i] || !alive[r] || next[i] !== r || ver[i] !== c.leftVer || ver[r] !== c.rightVer) continue;
      tok[i] = c.id;
      alive[r] = 0;
      next[i] = next[r];
      if (next[r] >= 0) prev[next[r]] = i;
      ver[i]++; // invalidates both (prev, i) and (i, old right); only those two pairs changed
      consider(prev[i]);
      consider(i);
    }
    const out: number[] = [];
    for (let i = n > 0 ? 0 : -1; i >= 0; i = next[i]) out.push(tok[i]);
    return out;
  }

  /**
   * Ids to text: pieces are concatenated as bytes and decoded as UTF-8 (so byte-fallback
   * sequences rebuild multi-byte characters). The leading space of the first piece and of a
   * piece after BOS is the dummy prefix and is dropped, as SentencePiece does. Specials
   * (<unk>, <s>, </s>) are dropped unless keepSpecial.
   */
  decode(ids: readonly number[], opts: { keepSpecial?: boolean } = {}): string {
    const chunks: number[] = [];
    let prev = -1;
    let emitted = false;
    for (const id of ids) {
      this.checkId(id);
      if (id <= EOS && !opts.keepSpecial) {
        prev = id;
        continue;
      }
      const piece = this.pieces[id];
      const strip = (prev === BOS || !emitted) && piece[0] === 0x20;
      const b = strip ? this.byteOfStripped[id] : this.byteOf[id];
      if (b >= 0) chunks.push(b);
      else for (let k = strip ? 1 : 0; k < piece.length; k++) chunks.push(piece[k]);
      emitted = true;
      prev = id;
    }
    return new TextDecoder('utf-8').decode(Uint8Array.from(chunks));
  }

  /**
   * Exactly the bytes run.c prints for `id` following `prev`: its decode() (space stripped
   * after BOS, <0xXX> to the byte), then safe_printf (C-string up to the first NUL, a lone
   * byte that is neither printable nor whitespace is skipped).
   */
  decodePiece(prev: number, id: number): Uint8Array {
    this.checkId(id);
    let piece = this.pieces[id];
    const strip = prev === BOS && piece[0] === 0x20;
    if (strip) piece = piece.subarray(1);
    const b = strip ? this.byteOfStripped[id] : this.byteOf[id];
    if (b >= 0) piece = Uint8Array.of(b);
    const nul = piece.indexOf(0);
    if (nul >= 0) piece = piece.subarray(0, nul);
    if (piece.length === 1 && !printable(piece[0])) return new Uint8Array(0);
    return piece.slice();
  }
}
