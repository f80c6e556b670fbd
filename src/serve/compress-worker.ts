/**
 * Compressions in a worker thread, so that the event loop keeps answering while they run.
 *
 * A compression by a learned method is one encoder forward over the whole context: seconds for
 * 2,048 tokens on SmolLM2, during which a server running it on its event loop answers nothing
 * (not /health, not the next decode step of a streaming answer). The worker thread loads its own
 * copy of the base model and the same compressors (libtorch tensors belong to the isolate that
 * made them, so the weights cannot be lent across), compresses token ids and sends back the
 * .softctx bytes; the main thread parses them into its own tensors. Requests are served one at a
 * time in order; at most `maxPending` wait (more is QueueFullError, HTTP 429).
 *
 * The same file is the worker's entry point (it runs the loop when started as the worker).
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { noGrad, tidy, setNumThreads } from '../tensor/index.js';
import { compressorNames, createCompressor, freeSoftContext, isLearned, serializeSoftContext, type Budget, type Compressor } from '../compress/index.js';
import { freeServedModel, loadServedModel } from './load.js';
import { QueueFullError, ShutdownError } from './engine.js';

export interface CompressWorkerOptions {
  /** The base model (as loadServedModel reads it) and the compressor folders the server loaded. */
  base: string;
  compressorDirs: string[];
  /** The fingerprint the main thread's model has (the worker refuses another). */
  fingerprint: string;
  /** Compressions waiting at most (default 32). */
  maxPending?: number;
  /** libtorch intra-op threads of the worker (default: libtorch's, the number of cores). */
  threads?: number;
}

interface Start {
  softpressCompressWorker: true;
  base: string;
  compressorDirs: string[];
  fingerprint: string;
  threads?: number;
}

type Reply =
  | { type: 'ready' }
  | { type: 'failed'; message: string }
  | { type: 'done'; id: number; bytes: Uint8Array; compressMs: number }
  | { type: 'error'; id: number; message: string };

interface Waiting {
  resolve(r: { bytes: Uint8Array; compressMs: number }): void;
  reject(e: Error): void;
}

export class CompressWorker {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 0;
  private failure: Error | null = null;
  private closed = false;
  private done = 0;
  private readonly maxPending: number;
  /** Settles when the worker has loaded its model (rejects when it could not). */
  readonly ready: Promise<void>;

  constructor(o: CompressWorkerOptions) {
    this.maxPending = o.maxPending ?? 32;
    const data: Start = { softpressCompressWorker: true, base: o.base, compressorDirs: o.compressorDirs, fingerprint: o.fingerprint, threads: o.threads };
    this.worker = new Worker(new URL(import.meta.url), { workerData: data });
    this.worker.unref(); // an idle worker does not keep the process alive
    this.ready = new Promise<void>((resolve, reject) => {
      this.worker.on('message', (m: Reply) => {
        if (m.type === 'ready') resolve();
        else if (m.type === 'failed') {
          this.fail(new Error(`the compression worker could not start: ${m.message}`));
          reject(this.failure!);
        } else this.settle(m);
      });
      this.worker.on('error', (e) => {
        this.fail(new Error(`the compression worker failed: ${e.message}`));
        reject(this.failure!);
      });
      this.worker.on('exit', (code) => {
        if (!this.closed) this.fail(new Error(`the compression worker exited (code ${code})`));
        reject(this.failure ?? new ShutdownError('the server is shutting down'));
      });
    });
    this.ready.catch(() => {}); // reported to each compression instead
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const w of this.waiting.values()) w.reject(this.failure);
    this.waiting.clear();
  }

  private settle(m: Extract<Reply, { id: number }>): void {
    const w = this.waiting.get(m.id);
    if (!w) return;
    this.waiting.delete(m.id);
    if (this.waiting.size === 0) this.worker.unref();
    this.done++;
    if (m.type === 'done') w.resolve({ bytes: m.bytes, compressMs: m.compressMs });
    else w.reject(new Error(m.message));
  }

  /** Compresses one context's token ids: its .softctx bytes and the milliseconds compress() took. */
  compress(method: string, ids: number[], budget: Budget): Promise<{ bytes: Uint8Array; compressMs: number }> {
    if (this.closed) return Promise.reject(new ShutdownError('the server is shutting down'));
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiting.size >= this.maxPending) {
      return Promise.reject(new QueueFullError(`the compression queue is full (${this.waiting.size} waiting, limit ${this.maxPending}); retry shortly`, 2));
    }
    const id = this.nextId++;
    const tokens = Int32Array.from(ids);
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.ref(); // work in flight keeps the process alive
      this.worker.postMessage({ id, method, ids: tokens, budget }, [tokens.buffer]);
    });
  }

  stats(): { pending: number; done: number; failed: string | null } {
    return { pending: this.waiting.size, done: this.done, failed: this.failure?.message ?? null };
  }

  /** Stops the worker (compressions still waiting fail with ShutdownError) and frees its model. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiting.values()) w.reject(new ShutdownError('the server is shutting down'));
    this.waiting.clear();
    this.worker.postMessage({ close: true });
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.worker.terminate().then(() => resolve()), 5000);
      this.worker.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** The worker's side: load the model and compressors, then compress requests one by one. */
function serve(start: Start): void {
  const port = parentPort!;
  let served: ReturnType<typeof loadServedModel>;
  const compressors = new Map<string, Compressor>();
  try {
    if (start.threads) setNumThreads(start.threads);
    served = loadServedModel({ base: start.base, compressorDirs: start.compressorDirs, discover: false });
    if (served.model.fingerprint() !== start.fingerprint)
      throw new Error(`it loaded base model ${served.model.fingerprint()}, the server runs ${start.fingerprint}`);
    for (const name of compressorNames()) if (!isLearned(name)) compressors.set(name, createCompressor(name, served.model));
    for (const c of served.compressors) compressors.set(c.method, c);
  } catch (e) {
    port.postMessage({ type: 'failed', message: (e as Error).message } satisfies Reply);
    return;
  }
  port.postMessage({ type: 'ready' } satisfies Reply);
  port.on('message', (m: { id: number; method: string; ids: Int32Array; budget: Budget } | { close: true }) => {
    if ('close' in m) {
      freeServedModel(served);
      port.close();
      return;
    }
    try {
      const c = compressors.get(m.method);
      if (!c) throw new Error(`the compression worker has no method '${m.method}'`);
      const t0 = performance.now();
      const ctx = noGrad(() => tidy(() => c.compress([Array.from(m.ids)], m.budget)));
      const compressMs = performance.now() - t0;
      let bytes: Uint8Array;
      try {
        bytes = serializeSoftContext(ctx);
      } finally {
        freeSoftContext(ctx);
      }
      port.postMessage({ type: 'done', id: m.id, bytes, compressMs } satisfies Reply, [bytes.buffer as ArrayBuffer]);
    } catch (e) {
      port.postMessage({ type: 'error', id: m.id, message: (e as Error).message } satisfies Reply);
    }
  });
}

if (!isMainThread && (workerData as Partial<Start> | null)?.softpressCompressWorker) serve(workerData as Start);
