/**
 * A batch of generations advanced one unit of work at a time, so that the server can yield to
 * the event loop between units (stream tokens, accept requests, serve reads, interleave a
 * compression). It computes what generateWithContext / generate compute — the same forwards,
 * the same KV cache, the same greedy and sampling rules (sampleFromLogits, mulberry32) — with
 * what a server needs besides:
 *  - rows are independent requests: each has its own prefix ([lead][soft tokens], or just the
 *    start of a sequence: [BOS], or a prompt's first token), at least one position, then its
 *    prompt, maxTokens, temperature/top-p, seed (its own random stream), stop tokens;
 *  - each row is laid out as [left padding][prefix][prompt], so contexts of different lengths
 *    share one forward (positions come from the padding mask, as in generate);
 *  - a row's prefix can come as cached keys/values (prefixKeysValues, computed once per
 *    context): the cache then starts as [padding][prefix] and only the prompts are prefilled;
 *  - the prefill runs in chunks through the KV cache (one chunk per unit), and finished or
 *    cancelled rows are dropped from the cache (batch compaction), also trimming padding
 *    columns that no remaining row needs;
 *  - memory-KV contexts (CCF) share a batch only with rows of the same memory length (the
 *    scheduler groups them); their per-layer prefixes are concatenated over rows;
 *  - a batch that has finished its prefill can be merged into a running one (absorb), so rows
 *    that arrive while others decode join their decode steps (continuous batching).
 */
import { Tensor, cat, noGrad, tensor, tidy, zeros } from '../tensor/index.js';
import { KVCache, type LayerKv, type LlamaModel } from '../models/llama.js';
import { mulberry32, sampleFromLogits } from '../models/generate.js';
import type { LoraAdapters } from '../nn/layers.js';

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface DecodeRow {
  /** Prefix embeddings [P >= 1, dim] (lead and soft tokens, real positions only), run through the prefill... */
  prefix?: Tensor;
  /**
   * ...or the prefix already run: its keys/values per layer [1, kvH, P, hd] (computed with the
   * row's memory and adapters, e.g. by prefixKeysValues). All rows of a batch use one form.
   */
  prefixKv?: LayerKv[];
  /** Per-layer memory keys/values [1, kvH, m, hd] for this row (memory-KV contexts), else undefined. */
  memory?: LayerKv[];
  /** Prompt ids after the prefix (no BOS). */
  prompt: number[];
  maxTokens: number;
  temperature: number;
  topP?: number;
  seed: number;
  stopTokens: ReadonlySet<number>;
  /** Called with each new token; return true to finish the row now (a stop string was seen). */
  onToken?: (id: number) => boolean | void;
  /** Set by the owner to drop the row at the next unit (client went away). */
  cancelled?: boolean;
  /** Called once when the row finishes. */
  onDone(result: RowResult): void;
  /** Called once when the batch fails (the row never finishes). */
  onError(err: Error): void;
}

/** Counters a batch adds to (shared by the batches of one engine). */
export interface DecodeStats {
  prefillForwards: number;
  /** Padded prompt positions run by prefills (rows x columns). */
  prefillTokens: number;
  decodeForwards: number;
  /** Rows summed over decode forwards (decodeRows / decodeForwards = mean rows per step). */
  decodeRows: number;
}

export interface RowResult {
  tokens: number[];
  finishReason: FinishReason;
  /** Milliseconds from the batch's start to its first token (the prefill). */
  prefillMs: number;
  /** Milliseconds from the first token to this row's last. */
  decodeMs: number;
  /** Most rows that shared a decoder forward with this row (its batch, and batches merged into it). */
  batchSize: number;
}

interface Live {
  row: DecodeRow;
  rng: () => number;
  out: number[];
  /** Left padding columns of this row in the cache. */
  pad: number;
  /** When the row's batch started, and its prefill time. */
  t0: number;
  prefillMs: number;
  /** Most rows that shared a forward with this one. */
  widest: number;
}

/** One micro-batch. Call tick() until it returns false; free() always (also on errors). */
export class BatchDecode {
  readonly size: number;
  private live: Live[];
  private readonly cache: KVCache;
  private inputs: Tensor | null;
  private paddingMask: Tensor | null = null;
  private kvPrefix?: LayerKv[];
  private nextLogits: Tensor | null = null;
  private prefilled = 0;
  private readonly seqLen: number;
  /** Cache columns holding cached prefixes before the prefill (0 without them). */
  private readonly base: number;
  private readonly chunk: number;
  private readonly t0 = performance.now();
  private prefillMs = 0;
  private readonly prefixKey: string;
  private finished = false;
  private readonly lora?: LoraAdapters;
  private readonly stats: DecodeStats;
  /** Decoder forwards run (prefill chunks + steps), for statistics. */
  forwards = 0;

  constructor(
    private readonly model: LlamaModel,
    rows: DecodeRow[],
    opts: { lora?: LoraAdapters; prefillChunkTokens?: number; stats?: DecodeStats } = {},
  ) {
    if (rows.length === 0) throw new Error('BatchDecode: no rows');
    this.lora = opts.lora;
    this.stats = opts.stats ?? { prefillForwards: 0, prefillTokens: 0, decodeForwards: 0, decodeRows: 0 };
    this.size = rows.length;
    this.cache = new KVCache(model.config.numLayers);
    const cached = rows.every((r) => r.prefixKv);
    if (!cached && rows.some((r) => r.prefixKv || !r.prefix))
      throw new Error('BatchDecode: give every row a prefix (embeddings) or every row a prefixKv, not a mix');
    if (cached && rows.some((r) => r.prompt.length === 0)) throw new Error('BatchDecode: rows with a cached prefix need at least one prompt token');
    // Cached mode: the cache starts as the rows' prefix keys/values, [pad][prefix] over `base`
    // columns, and the prefill runs over the prompts only, [pad][prompt] over seqLen columns.
    const prefixLens = rows.map((r) => (cached ? r.prefixKv![0].k.size(2) : 0));
    this.base = Math.max(...prefixLens);
    const lens = rows.map((r) => (cached ? 0 : r.prefix!.size(0)) + r.prompt.length);
    this.seqLen = Math.max(...lens);
    this.live = rows.map((row, i) => ({
      row,
      rng: mulberry32(row.seed),
      out: [],
      pad: cached ? this.base - prefixLens[i] : this.seqLen - lens[i],
      t0: this.t0,
      prefillMs: 0,
      widest: rows.length,
    }));
    // Prefill chunk: about prefillChunkTokens padded tokens per forward (at least 16 positions).
    const budget = opts.prefillChunkTokens ?? 1024;
    this.chunk = Math.max(16, Math.floor(budget / rows.length));
    const hasMemory = rows.map((r) => !!r.memory);
    if (hasMemory.some((x) => x !== hasMemory[0])) throw new Error('BatchDecode: rows with and without memory KV cannot share a batch');
    const memLens = new Set(rows.map((r) => r.memory?.[0]?.k.size(2) ?? 0));
    if (memLens.size > 1) throw new Error('BatchDecode: rows with memory KV of different lengths cannot share a batch');
    this.prefixKey = `mem:${[...memLens][0]}`;
    const dim = model.dim;
    const leftPad = (t: Tensor, dim: number, by: number): Tensor => {
      if (by === 0) return t;
      const shape = t.shape.slice();
      shape[dim] = by;
      return cat([zeros(shape, { dtype: t.dtype }), t], dim);
    };
    const built = noGrad(() =>
      tidy(() => {
        const seqs: Tensor[] = [];
        const mask: number[] = [];
        for (const [i, r] of rows.entries()) {
          const pad = this.seqLen - lens[i];
          const parts: Tensor[] = [];
          if (pad) parts.push(zeros([pad, dim], { dtype: model.dtype }));
          if (!cached) parts.push(r.prefix!.to(model.dtype));
          if (r.prompt.length) parts.push(model.embed(tensor(r.prompt, [1, r.prompt.length], { dtype: 'int64' })).reshape(r.prompt.length, dim));
          seqs.push(parts.length === 1 ? parts[0] : cat(parts, 0));
          for (let j = 0; j < this.base; j++) mask.push(j >= this.base - prefixLens[i] ? 1 : 0);
          for (let j = 0; j < this.seqLen; j++) mask.push(j >= pad ? 1 : 0);
        }
        const inputs = cat(
          seqs.map((s) => s.unsqueeze(0)),
          0,
        );
        const paddingMask = tensor(mask, [rows.length, this.base + this.seqLen], { dtype: 'bool' });
        const kvPrefix = hasMemory[0]
          ? rows[0].memory!.map((_, layer) => ({
              k: cat(
                rows.map((r) => r.memory![layer].k),
                0,
              ),
              v: cat(
                rows.map((r) => r.memory![layer].v),
                0,
              ),
            }))
          : undefined;
        const prefixCache = cached
          ? rows[0].prefixKv!.map((_, layer) => ({
              k: cat(
                rows.map((r, i) => leftPad(r.prefixKv![layer].k, 2, this.base - prefixLens[i])),
                0,
              ).contiguous(),
              v: cat(
                rows.map((r, i) => leftPad(r.prefixKv![layer].v, 2, this.base - prefixLens[i])),
                0,
              ).contiguous(),
            }))
          : undefined;
        return { inputs, paddingMask, kvPrefix, prefixCache };
      }),
    );
    this.inputs = built.inputs.keep();
    this.paddingMask = built.paddingMask.keep();
    this.kvPrefix = built.kvPrefix?.map((kv) => ({ k: kv.k.keep(), v: kv.v.keep() }));
    if (built.prefixCache) {
      built.prefixCache.forEach((kv, layer) => {
        this.cache.keys[layer] = kv.k.keep();
        this.cache.values[layer] = kv.v.keep();
      });
      this.cache.length = this.base;
    }
  }

  get done(): boolean {
    return this.finished;
  }

  /** Rows still generating. */
  get liveRows(): number {
    return this.live.length;
  }

  /** Prefilled and generating (not finished): a batch another can be merged into. */
  get decoding(): boolean {
    return !this.finished && this.inputs === null && this.nextLogits !== null;
  }

  /** Cache columns (the longest row's tokens so far, with its padding). */
  get width(): number {
    return this.cache.length;
  }

  /** Whether `other` can join this batch: both decoding, same adapters, same memory length. */
  canAbsorb(other: BatchDecode): boolean {
    return other !== this && this.decoding && other.decoding && this.lora === other.lora && this.prefixKey === other.prefixKey;
  }

  /**
   * Continuous batching: takes over another decoding batch's rows, so that rows that arrived
   * later share this batch's decode steps from now on. Both caches are left-padded to the
   * longer one (the padding is masked; positions come from the mask, so nothing changes for
   * any row) and concatenated over rows. `other` is emptied and freed.
   */
  absorb(other: BatchDecode): void {
    if (!this.canAbsorb(other)) throw new Error('BatchDecode.absorb: batches are not compatible');
    const c1 = this.cache.length;
    const c2 = other.cache.length;
    const width = Math.max(c1, c2);
    const leftPad = (t: Tensor, dim: number, by: number): Tensor => {
      if (by === 0) return t;
      const shape = t.shape.slice();
      shape[dim] = by;
      return cat([zeros(shape, { dtype: t.dtype }), t], dim);
    };
    const merge = (a: Tensor, b: Tensor, dim: number | null): Tensor => {
      const r = noGrad(() =>
        tidy(() => (dim === null ? cat([a, b], 0) : cat([leftPad(a, dim, width - c1), leftPad(b, dim, width - c2)], 0)).contiguous()),
      ).keep();
      a.free();
      b.free();
      return r;
    };
    for (let layer = 0; layer < this.cache.numLayers; layer++) {
      this.cache.keys[layer] = merge(this.cache.keys[layer]!, other.cache.keys[layer]!, 2);
      this.cache.values[layer] = merge(this.cache.values[layer]!, other.cache.values[layer]!, 2);
      other.cache.keys[layer] = null;
      other.cache.values[layer] = null;
    }
    this.cache.length = width;
    this.paddingMask = merge(this.paddingMask!, other.paddingMask!, 1);
    other.paddingMask = null;
    this.nextLogits = merge(this.nextLogits!, other.nextLogits!, null);
    other.nextLogits = null;
    if (this.kvPrefix && other.kvPrefix) {
      const a = this.kvPrefix;
      const b = other.kvPrefix;
      this.kvPrefix = a.map((kv, i) => ({ k: merge(kv.k, b[i].k, null), v: merge(kv.v, b[i].v, null) }));
      other.kvPrefix = undefined;
    }
    for (const l of this.live) l.pad += width - c1;
    for (const l of other.live) l.pad += width - c2;
    this.live = [...this.live, ...other.live];
    for (const l of this.live) l.widest = Math.max(l.widest, this.live.length);
    this.forwards += other.forwards;
    other.forwards = 0;
    other.live = [];
    other.free();
  }

  /** One unit of work: a prefill chunk, or (sample + one decode forward). False when finished. */
  tick(): boolean {
    if (this.finished) return false;
    try {
      if (this.inputs) this.prefillChunk();
      else this.step();
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      for (const l of this.live) l.row.onError(err);
      this.live = [];
      this.free();
      return false;
    }
    if (this.live.length === 0) this.free();
    return !this.finished;
  }

  private prefillChunk(): void {
    const start = this.prefilled;
    const len = Math.min(this.chunk, this.seqLen - start);
    const last = start + len === this.seqLen;
    const logits = noGrad(() =>
      tidy(() => {
        const x = this.inputs!.narrow(1, start, len);
        const pm = this.paddingMask!.narrow(1, 0, this.base + start + len);
        const r = this.model.forward({
          inputsEmbeds: x,
          paddingMask: pm,
          cache: this.cache,
          kvPrefix: this.kvPrefix,
          logits: last ? 'last' : 'none',
          lora: this.lora,
        });
        return last ? r.logits!.reshape(this.live.length, -1).to('float32') : null;
      }),
    );
    this.forwards++;
    this.stats.prefillForwards++;
    this.stats.prefillTokens += len * this.live.length;
    this.prefilled += len;
    if (last) {
      this.inputs!.free();
      this.inputs = null;
      this.nextLogits = logits!.keep();
      this.prefillMs = performance.now() - this.t0;
      for (const l of this.live) l.prefillMs = this.prefillMs;
    }
  }

  private step(): void {
    const logits = this.nextLogits!;
    this.nextLogits = null;
    const rows = logits.toArray() as Float32Array;
    logits.free();
    const b = this.live.length;
    const vocab = rows.length / b;
    const keep: number[] = [];
    const next: number[] = [];
    for (let i = 0; i < b; i++) {
      const l = this.live[i];
      let finish: FinishReason | null = null;
      if (l.row.cancelled) finish = 'cancelled';
      else if (l.row.maxTokens === 0) finish = 'length';
      else {
        const { temperature, topP } = l.row;
        const id = sampleFromLogits(rows.subarray(i * vocab, (i + 1) * vocab), { temperature, topP }, l.rng);
        l.out.push(id);
        let stopNow = false;
        try {
          stopNow = l.row.onToken?.(id) === true;
        } catch {
          stopNow = true;
        }
        if (l.row.stopTokens.has(id) || stopNow) finish = 'stop';
        else if (l.out.length >= l.row.maxTokens) finish = 'length';
        else if (l.row.cancelled) finish = 'cancelled';
        next.push(id);
      }
      if (finish) {
        l.row.onDone({ tokens: l.out, finishReason: finish, prefillMs: l.prefillMs, decodeMs: performance.now() - l.t0 - l.prefillMs, batchSize: l.widest });
      } else keep.push(i);
    }
    if (keep.length === 0) {
      this.live = [];
      return;
    }
    if (keep.length < b) this.compact(keep);
    const ids = keep.map((i) => next[i]);
    this.live = keep.map((i) => this.live[i]);
    const bb = this.live.length;
    for (const l of this.live) if (l.widest < bb) l.widest = bb;
    this.nextLogits = noGrad(() =>
      tidy(() => {
        const grown = cat([this.paddingMask!, tensor(new Array(bb).fill(1), [bb, 1], { dtype: 'bool' })], 1).keep();
        this.paddingMask!.free();
        this.paddingMask = grown;
        const { logits: l } = this.model.forward({
          ids: tensor(ids, [bb, 1], { dtype: 'int64' }),
          cache: this.cache,
          paddingMask: grown,
          kvPrefix: this.kvPrefix,
          logits: 'last',
          lora: this.lora,
        });
        return l!.reshape(bb, -1).to('float32');
      }),
    ).keep();
    this.forwards++;
    this.stats.decodeForwards++;
    this.stats.decodeRows += bb;
  }

  /** Keeps only the given rows in the cache, masks and memory, and drops all-padding columns. */
  private compact(keep: number[]): void {
    const trim = Math.min(...keep.map((i) => this.live[i].pad));
    const total = this.cache.length;
    const replace = (t: Tensor, batchDim: number, seqDim: number | null): Tensor => {
      const r = noGrad(() =>
        tidy(() => {
          let x = t.indexSelect(batchDim, tensor(keep, [keep.length], { dtype: 'int64' }));
          if (seqDim !== null && trim > 0) x = x.narrow(seqDim, trim, total - trim);
          return x.contiguous();
        }),
      ).keep();
      t.free();
      return r;
    };
    for (let layer = 0; layer < this.cache.numLayers; layer++) {
      this.cache.keys[layer] = replace(this.cache.keys[layer]!, 0, 2);
      this.cache.values[layer] = replace(this.cache.values[layer]!, 0, 2);
    }
    this.paddingMask = replace(this.paddingMask!, 0, 1);
    if (this.kvPrefix) this.kvPrefix = this.kvPrefix.map((kv) => ({ k: replace(kv.k, 0, null), v: replace(kv.v, 0, null) }));
    if (trim > 0) {
      this.cache.length = total - trim;
      for (const i of keep) this.live[i].pad -= trim;
    }
  }

  /** Frees every tensor the batch holds (idempotent). */
  free(): void {
    if (this.finished) return;
    this.finished = true;
    this.inputs?.free();
    this.inputs = null;
    this.paddingMask?.free();
    this.paddingMask = null;
    this.nextLogits?.free();
    this.nextLogits = null;
    for (const kv of this.kvPrefix ?? []) {
      kv.k.free();
      kv.v.free();
    }
    this.kvPrefix = undefined;
    this.cache.free();
  }

  /** Fails every live row (e.g. on shutdown) and frees the batch. */
  abort(err: Error): void {
    for (const l of this.live) l.row.onError(err);
    this.live = [];
    this.free();
  }
}

/**
 * Runs a prefix (embeddings [P, dim], after optional memory KV, with optional adapters) through
 * the decoder and returns its per-layer keys/values [1, kvH, P, hd] (kept: the caller frees
 * them), in chunks of at most `chunk` positions — one generator step per chunk, so a caller can
 * yield between them. These are exactly the cache entries the prefill would write for the
 * prefix, so a batch can start from them instead of recomputing the prefix for every request.
 */
export function* prefixKeysValues(
  model: LlamaModel,
  prefix: Tensor,
  opts: { memory?: LayerKv[]; lora?: LoraAdapters; chunk?: number } = {},
): Generator<void, LayerKv[]> {
  const p = prefix.size(0);
  const chunk = Math.max(1, opts.chunk ?? 256);
  const cache = new KVCache(model.config.numLayers);
  try {
    for (let start = 0; start < p; start += chunk) {
      const len = Math.min(chunk, p - start);
      noGrad(() =>
        tidy(() => {
          const x = prefix.narrow(0, start, len).to(model.dtype).unsqueeze(0);
          model.forward({ inputsEmbeds: x, cache, kvPrefix: opts.memory, logits: 'none', lora: opts.lora });
        }),
      );
      if (start + len < p) yield;
    }
    // Compact copies: the cache's tensors are views of buffers grown by doubling (at least 64
    // columns), and a view keeps its whole buffer alive. Kept with a stored context, views held
    // up to twice (short prefixes: many times) the bytes the server's memory bound counts.
    return noGrad(() => cache.keys.map((k, i) => ({ k: k!.clone().keep(), v: cache.values[i]!.clone().keep() })));
  } finally {
    cache.free();
  }
}
