/**
 * The server's one model worker: a cooperative scheduler over the decoder.
 *
 * libtorch calls are synchronous and run on the main thread, so every model operation blocks
 * the event loop while it runs. The engine therefore cuts model work into units — a prefill
 * chunk of a micro-batch, one decode step of a micro-batch, one compression — and runs one unit
 * per event-loop turn, yielding with setImmediate in between. Between two units Node accepts
 * connections, parses requests, answers reads (GET /v1/contexts/... is an LMDB lookup that
 * never touches the model), streams the tokens just produced and enqueues new work.
 *
 * Micro-batching: generation requests (rows) wait up to `batchWindowMs` for company, then the
 * oldest row's group (rows that can share a forward: same decoder adapters, same memory length)
 * starts as one BatchDecode of up to `maxBatch` rows and `maxBatchTokens` padded tokens. Up to
 * `maxActiveBatches` batches are in flight; units are taken round-robin over the active batches
 * and the job lane (compressions), so neither starves the other. When a batch finishes its
 * prefill while another of its group is decoding, it is merged into that one (continuous
 * batching: rows arriving at different times still share every decode step), within
 * `maxBatch` rows and 4 x `maxBatchTokens` padded cache columns.
 *
 * What this achieves: a read is never queued behind model work, only behind at most one unit;
 * asks keep decoding while compressions are queued (and vice versa); streamed tokens leave as
 * they are made; simultaneous requests share forwards (a decode step of 8 rows costs about as
 * much as one of a single row on this model, so throughput grows nearly with the batch).
 * What it does not: there is no parallelism between units (one process, one model; libtorch's
 * intra-op threads are the only parallelism), and a unit is not interruptible — a compression
 * by a learned method is one encoder forward over the whole context (up to ~1 s for 1,024
 * tokens on 2 cores here) and delays everything else by that much; a prefill chunk is bounded
 * by `prefillChunkTokens`. A late row joins the running decode only after its own prefill
 * (which runs as separate units between the running batch's steps), and a merged batch decodes
 * at the width of its longest row (padding is masked but still costs attention).
 *
 * Backpressure: more than `maxPendingRows` waiting rows or `maxPendingJobs` waiting jobs is
 * refused with QueueFullError (HTTP 429) instead of growing latency without bound.
 */
import { tidy, type Tensor } from '../tensor/index.js';
import type { LayerKv, LlamaModel } from '../models/llama.js';
import type { LoraAdapters } from '../nn/layers.js';
import { BatchDecode, type DecodeRow, type DecodeStats, type RowResult } from './decoder.js';

export interface EngineOptions {
  /** Rows per micro-batch at most (default 16). */
  maxBatch?: number;
  /** Padded tokens (rows x longest row) per micro-batch at most (default 8192). */
  maxBatchTokens?: number;
  /** How long the first waiting row waits for others before its batch starts (default 3 ms). */
  batchWindowMs?: number;
  /** Micro-batches in flight (prefilling or decoding), interleaved unit by unit (default 3). */
  maxActiveBatches?: number;
  /** Waiting rows before new requests get 429 (default 256). */
  maxPendingRows?: number;
  /** Waiting jobs (compressions) before new ones get 429 (default 32). */
  maxPendingJobs?: number;
  /** Padded tokens per prefill unit (default 1024). */
  prefillChunkTokens?: number;
}

export class QueueFullError extends Error {
  constructor(
    message: string,
    readonly retryAfterSeconds = 1,
  ) {
    super(message);
  }
}

export class ShutdownError extends Error {}

/** A generation request: a DecodeRow whose prefix is built when its batch starts. */
export interface RowRequest extends Omit<DecodeRow, 'prefix' | 'memory' | 'onDone' | 'onError'> {
  /** Rows with equal groups may share a forward. */
  group: string;
  /** Prefix positions (lead + soft tokens, or the plain start) and memory slots, for planning the batch. */
  prefixLen: number;
  memoryLen: number;
  /**
   * The row's prefix when its batch starts: embeddings [P, dim] (temporaries are fine: they are
   * freed once the batch is built) or cached keys/values (owned by the caller, not freed).
   */
  buildPrefix(): { prefix?: Tensor; prefixKv?: LayerKv[]; memory?: LayerKv[] };
  lora?: LoraAdapters;
}

export interface RowOutcome extends RowResult {
  /** Milliseconds the row waited before its batch started. */
  queueMs: number;
}

interface Pending {
  req: RowRequest;
  enqueuedAt: number;
  resolve(r: RowOutcome): void;
  reject(e: Error): void;
}

interface Job {
  run(): void;
  reject(e: Error): void;
}

interface Active {
  batch: BatchDecode;
}

export interface EngineStats {
  pendingRows: number;
  pendingJobs: number;
  activeBatches: number;
  batches: number;
  rows: number;
  forwards: number;
  jobs: number;
  /** Batches merged into running ones (continuous batching). */
  merges: number;
  /** Rows per started batch (before merging). */
  meanBatchSize: number;
  prefillForwards: number;
  prefillTokens: number;
  decodeForwards: number;
  decodeRows: number;
  /** Rows per decode forward: how much the decode steps are shared. */
  meanDecodeRows: number;
}

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class Engine {
  readonly opts: Required<EngineOptions>;
  private pending: Pending[] = [];
  private jobs: Job[] = [];
  private active: Active[] = [];
  private running = false;
  private closed = false;
  private rr = 0;
  private counters = { batches: 0, rows: 0, forwards: 0, jobs: 0, merges: 0 };
  private readonly decodeStats: DecodeStats = { prefillForwards: 0, prefillTokens: 0, decodeForwards: 0, decodeRows: 0 };

  constructor(
    readonly model: LlamaModel,
    opts: EngineOptions = {},
  ) {
    this.opts = {
      maxBatch: opts.maxBatch ?? 16,
      maxBatchTokens: opts.maxBatchTokens ?? 8192,
      batchWindowMs: opts.batchWindowMs ?? 3,
      maxActiveBatches: opts.maxActiveBatches ?? 3,
      maxPendingRows: opts.maxPendingRows ?? 256,
      maxPendingJobs: opts.maxPendingJobs ?? 32,
      prefillChunkTokens: opts.prefillChunkTokens ?? 1024,
    };
    for (const [k, v] of Object.entries(this.opts)) {
      if (!(Number.isFinite(v) && v >= (k === 'batchWindowMs' ? 0 : 1))) throw new Error(`engine: ${k} must be a positive number, got ${v}`);
    }
  }

  stats(): EngineStats {
    const c = this.counters;
    const d = this.decodeStats;
    return {
      pendingRows: this.pending.length,
      pendingJobs: this.jobs.length,
      activeBatches: this.active.length,
      ...c,
      meanBatchSize: c.batches ? c.rows / c.batches : 0,
      ...d,
      meanDecodeRows: d.decodeForwards ? d.decodeRows / d.decodeForwards : 0,
    };
  }

  /**
   * Queues generation rows (all or none: QueueFullError when they do not fit). Each promise
   * settles when its row finishes.
   */
  submit(reqs: RowRequest[]): Promise<RowOutcome>[] {
    this.checkCapacity(reqs.length);
    const now = performance.now();
    const out = reqs.map(
      (req) =>
        new Promise<RowOutcome>((resolve, reject) => {
          this.pending.push({ req, enqueuedAt: now, resolve, reject });
        }),
    );
    this.kick();
    return out;
  }

  /** Throws QueueFullError (or ShutdownError) when n more rows would not be accepted now. */
  checkCapacity(n: number): void {
    if (this.closed) throw new ShutdownError('the server is shutting down');
    if (this.pending.length + n > this.opts.maxPendingRows) {
      throw new QueueFullError(`the generation queue is full (${this.pending.length} requests waiting, limit ${this.opts.maxPendingRows}); retry shortly`);
    }
  }

  /** Runs fn as one unit in the job lane (QueueFullError when the lane is full). */
  runJob<T>(fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new ShutdownError('the server is shutting down'));
    if (this.jobs.length >= this.opts.maxPendingJobs) {
      return Promise.reject(
        new QueueFullError(`the compression queue is full (${this.jobs.length} waiting, limit ${this.opts.maxPendingJobs}); retry shortly`, 2),
      );
    }
    return new Promise<T>((resolve, reject) => {
      this.jobs.push({
        run: () => {
          try {
            resolve(fn());
          } catch (e) {
            reject(e as Error);
          }
        },
        reject,
      });
      this.kick();
    });
  }

  /**
   * Runs a generator in the job lane, one step per unit (the job goes back to the end of the
   * lane between steps), and settles with its return value.
   */
  runSteps<T>(steps: () => Generator<void, T>): Promise<T> {
    if (this.closed) return Promise.reject(new ShutdownError('the server is shutting down'));
    if (this.jobs.length >= this.opts.maxPendingJobs) {
      return Promise.reject(
        new QueueFullError(`the compression queue is full (${this.jobs.length} waiting, limit ${this.opts.maxPendingJobs}); retry shortly`, 2),
      );
    }
    return new Promise<T>((resolve, reject) => {
      let it: Generator<void, T> | null = null;
      const job: Job = {
        run: () => {
          try {
            it ??= steps();
            const r = it.next();
            if (r.done) resolve(r.value);
            else this.jobs.push(job);
          } catch (e) {
            reject(e as Error);
          }
        },
        reject: (e) => {
          try {
            it?.return(undefined as T);
          } finally {
            reject(e);
          }
        },
      };
      this.jobs.push(job);
      this.kick();
    });
  }

  /** Fails everything waiting or running and refuses new work. */
  close(): void {
    this.closed = true;
    const err = new ShutdownError('the server is shutting down');
    for (const p of this.pending.splice(0)) p.reject(err);
    for (const j of this.jobs.splice(0)) j.reject(err);
    for (const a of this.active.splice(0)) a.batch.abort(err);
  }

  private kick(): void {
    if (this.running || this.closed) return;
    this.running = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      await yieldToLoop(); // let the submitting request finish its turn (and others arrive)
      while (!this.closed) {
        this.formBatches();
        const unit = this.nextUnit();
        if (unit) {
          unit();
          await yieldToLoop();
          continue;
        }
        if (this.pending.length === 0) break;
        // rows waiting for their batch window and nothing else to do
        await sleep(Math.max(1, this.pending[0].enqueuedAt + this.opts.batchWindowMs - performance.now()));
      }
    } finally {
      this.running = false;
    }
    if (!this.closed && (this.pending.length || this.jobs.length || this.active.length)) this.kick();
  }

  private nextUnit(): (() => void) | null {
    const lanes = this.active.length + (this.jobs.length ? 1 : 0);
    if (lanes === 0) return null;
    const k = this.rr++ % lanes;
    if (k < this.active.length) {
      const a = this.active[k];
      return () => {
        const more = a.batch.tick();
        if (!more) {
          this.counters.forwards += a.batch.forwards;
          this.active.splice(this.active.indexOf(a), 1);
          return;
        }
        // continuous batching: a batch that has just finished its prefill joins a running one
        const into = this.active.find((b) => b.batch.canAbsorb(a.batch) && this.fits(b.batch, a.batch));
        if (into && a.batch.decoding) {
          into.batch.absorb(a.batch);
          this.counters.merges++;
          this.active.splice(this.active.indexOf(a), 1);
        }
      };
    }
    const job = this.jobs.shift()!;
    return () => {
      this.counters.jobs++;
      job.run();
    };
  }

  /** Whether two decoding batches may merge: rows within maxBatch, padded decode width within 4 x maxBatchTokens. */
  private fits(a: BatchDecode, b: BatchDecode): boolean {
    const rows = a.liveRows + b.liveRows;
    return rows <= this.opts.maxBatch && rows * Math.max(a.width, b.width) <= 4 * this.opts.maxBatchTokens;
  }

  private formBatches(): void {
    const o = this.opts;
    // drop rows cancelled while waiting
    if (this.pending.some((p) => p.req.cancelled)) {
      const now = performance.now();
      this.pending = this.pending.filter((p) => {
        if (!p.req.cancelled) return true;
        p.resolve({ tokens: [], finishReason: 'cancelled', prefillMs: 0, decodeMs: 0, batchSize: 0, queueMs: now - p.enqueuedAt });
        return false;
      });
    }
    while (this.pending.length && this.active.length < o.maxActiveBatches) {
      const now = performance.now();
      if (this.pending.length < o.maxBatch && now - this.pending[0].enqueuedAt < o.batchWindowMs) return;
      const group = this.pending[0].req.group;
      const take: Pending[] = [];
      let longest = 0;
      for (const p of this.pending) {
        if (take.length >= o.maxBatch) break;
        if (p.req.group !== group) continue;
        const len = p.req.prefixLen + p.req.prompt.length;
        const next = Math.max(longest, len);
        if (take.length && (take.length + 1) * next > o.maxBatchTokens) continue;
        take.push(p);
        longest = next;
      }
      const taken = new Set(take);
      this.pending = this.pending.filter((p) => !taken.has(p));
      this.start(take, now);
    }
  }

  private start(take: Pending[], now: number): void {
    const rows: DecodeRow[] = take.map((p) => {
      const queueMs = now - p.enqueuedAt;
      const { group: _g, prefixLen: _p, memoryLen: _m, buildPrefix: _b, lora: _l, ...rest } = p.req;
      return {
        ...rest,
        onDone: (r: RowResult) => p.resolve({ ...r, queueMs }),
        onError: (e: Error) => p.reject(e),
      };
    });
    try {
      // The rows' prefixes are temporaries: BatchDecode copies them into its own (kept) tensors.
      const batch = tidy(() => {
        take.forEach((p, i) => {
          const built = p.req.buildPrefix();
          rows[i].prefix = built.prefix;
          rows[i].prefixKv = built.prefixKv;
          rows[i].memory = built.memory;
          // keep cancellation visible: the request object owns the flag
          Object.defineProperty(rows[i], 'cancelled', { get: () => p.req.cancelled, enumerable: true });
        });
        return new BatchDecode(this.model, rows, { lora: take[0].req.lora, prefillChunkTokens: this.opts.prefillChunkTokens, stats: this.decodeStats });
      });
      this.counters.batches++;
      this.counters.rows += rows.length;
      this.active.push({ batch });
    } catch (e) {
      for (const p of take) p.reject(e as Error);
    }
  }
}
