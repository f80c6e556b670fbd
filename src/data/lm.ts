/**
 * Language-model data: documents tokenized into one stream ([BOS] doc [EOS] ...), cut into
 * fixed-length chunks, and a stateless sampler whose batch for (step, micro) is a pure
 * function of the seed, so an interrupted run resumes on exactly the same data.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname } from 'node:path';
import type { Tokenizer } from '../models/tokenizer.js';
import { Rng } from './rng.js';

/**
 * Tokens of many documents in one stream, each as [BOS] tokens [EOS]. With allowSpecial,
 * special-token strings in the texts (e.g. "<|restate|>") become their ids, as Hugging Face
 * tokenizers do for added tokens.
 */
export function tokenizeStream(texts: readonly string[], tokenizer: Tokenizer, onProgress?: (done: number, total: number) => void, opts: { allowSpecial?: boolean } = {}): Int32Array {
  const parts: number[][] = [];
  let total = 0;
  texts.forEach((t, i) => {
    const ids = tokenizer.encode(t, { bos: true, eos: true, allowSpecial: opts.allowSpecial });
    parts.push(ids);
    total += ids.length;
    onProgress?.(i + 1, texts.length);
  });
  const out = new Int32Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * tokenizeStream with a cache file keyed by the texts and tokenizer, so that resumed and
 * repeated runs skip tokenization.
 */
export function cachedTokenStream(cachePath: string, texts: readonly string[], tokenizer: Tokenizer, tokenizerId: string, onProgress?: (done: number, total: number) => void, opts: { allowSpecial?: boolean } = {}): Int32Array {
  const h = createHash('sha256');
  h.update(tokenizerId);
  if (opts.allowSpecial) h.update('\u0000allowSpecial');
  for (const t of texts) {
    h.update(t);
    h.update('\u0000');
  }
  const key = h.digest('hex');
  if (existsSync(cachePath) && existsSync(cachePath + '.key') && readFileSync(cachePath + '.key', 'utf8') === key) {
    const buf = readFileSync(cachePath);
    return new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
  }
  const stream = tokenizeStream(texts, tokenizer, onProgress, opts);
  mkdirSync(dirname(cachePath), { recursive: true });
  const tmp = `${cachePath}.tmp-${process.pid}`;
  writeFileSync(tmp, Buffer.from(stream.buffer, stream.byteOffset, stream.byteLength));
  renameSync(tmp, cachePath);
  writeFileSync(cachePath + '.key', key);
  return stream;
}

/** Fixed-length chunks of a token stream, sampled without replacement per epoch. */
export class ChunkSampler {
  /** Chunks of chunkLen + 1 tokens (inputs and shifted targets), stride chunkLen. */
  readonly numChunks: number;
  private permCache = new Map<number, Uint32Array>();

  constructor(
    readonly stream: Int32Array,
    readonly chunkLen: number,
    readonly seed: number,
  ) {
    this.numChunks = Math.floor((stream.length - 1) / chunkLen);
    if (this.numChunks < 1) throw new Error(`ChunkSampler: ${stream.length} tokens are fewer than one chunk of ${chunkLen + 1}`);
  }

  private permutation(epoch: number): Uint32Array {
    let p = this.permCache.get(epoch);
    if (!p) {
      p = new Uint32Array(this.numChunks);
      for (let i = 0; i < p.length; i++) p[i] = i;
      const rng = new Rng(`chunks:${this.seed}:${epoch}`);
      for (let i = p.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        const t = p[i];
        p[i] = p[j];
        p[j] = t;
      }
      if (this.permCache.size > 2) this.permCache.clear();
      this.permCache.set(epoch, p);
    }
    return p;
  }

  /** The tokens (chunkLen + 1) of the g-th sampled chunk overall. */
  chunk(g: number): Int32Array {
    const epoch = Math.floor(g / this.numChunks);
    const idx = this.permutation(epoch)[g % this.numChunks];
    return this.stream.subarray(idx * this.chunkLen, idx * this.chunkLen + this.chunkLen + 1);
  }

  /** Rows of a batch as one flat array [batch * (chunkLen + 1)], for global batch index b. */
  batch(batchIndex: number, batchSize: number): Int32Array {
    const out = new Int32Array(batchSize * (this.chunkLen + 1));
    for (let r = 0; r < batchSize; r++) out.set(this.chunk(batchIndex * batchSize + r), r * (this.chunkLen + 1));
    return out;
  }

  /** The chunk in stream order (no shuffling), e.g. for a fixed validation set. */
  sequential(i: number): Int32Array {
    return this.stream.subarray(i * this.chunkLen, i * this.chunkLen + this.chunkLen + 1);
  }
}

/**
 * Fixed-length chunks that lie inside single documents of a token stream (documents end with
 * `separator`, e.g. EOS): long-document training (CCF) sees one document per chunk, never the
 * seam between two. Each document of n tokens gives floor((n - 1) / chunkLen) chunks of
 * chunkLen + 1 tokens (stride chunkLen); shorter documents give none. The same interface and
 * per-epoch shuffling as ChunkSampler.
 */
export class DocumentChunkSampler {
  readonly numChunks: number;
  /** Documents long enough for a chunk. */
  readonly documents: number;
  private readonly starts: Int32Array;
  private permCache = new Map<number, Uint32Array>();

  constructor(
    readonly stream: Int32Array,
    readonly chunkLen: number,
    readonly seed: number,
    separator: number,
  ) {
    const starts: number[] = [];
    let docs = 0;
    let from = 0;
    let longest = 0;
    for (let i = 0; i <= stream.length; i++) {
      if (i < stream.length && stream[i] !== separator) continue;
      const n = i - from; // the document's tokens, without its separator
      longest = Math.max(longest, n);
      const count = Math.floor((n - 1) / chunkLen);
      if (count > 0) docs++;
      for (let c = 0; c < count; c++) starts.push(from + c * chunkLen);
      from = i + 1;
    }
    this.starts = Int32Array.from(starts);
    this.numChunks = starts.length;
    this.documents = docs;
    if (this.numChunks < 1) throw new Error(`DocumentChunkSampler: no document has ${chunkLen + 1} tokens (the longest has ${longest}); use shorter documents or more data`);
  }

  private permutation(epoch: number): Uint32Array {
    let p = this.permCache.get(epoch);
    if (!p) {
      p = new Uint32Array(this.numChunks);
      for (let i = 0; i < p.length; i++) p[i] = i;
      const rng = new Rng(`doc-chunks:${this.seed}:${epoch}`);
      for (let i = p.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        const t = p[i];
        p[i] = p[j];
        p[j] = t;
      }
      if (this.permCache.size > 2) this.permCache.clear();
      this.permCache.set(epoch, p);
    }
    return p;
  }

  /** The tokens (chunkLen + 1) of the g-th sampled chunk overall. */
  chunk(g: number): Int32Array {
    const epoch = Math.floor(g / this.numChunks);
    const at = this.starts[this.permutation(epoch)[g % this.numChunks]];
    return this.stream.subarray(at, at + this.chunkLen + 1);
  }

  /** The i-th chunk in stream order (no shuffling), e.g. for a fixed validation set. */
  sequential(i: number): Int32Array {
    const at = this.starts[i % this.numChunks];
    return this.stream.subarray(at, at + this.chunkLen + 1);
  }
}
