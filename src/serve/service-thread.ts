/**
 * The service in a worker thread, so that the HTTP thread never waits for model work.
 *
 * The engine cuts model work into units and yields between them (engine.ts), but each unit is a
 * synchronous libtorch call on the thread that runs it: a decode step, a prefill chunk, the
 * prefix keys/values of a context, parsing a compressed context, tokenizing a long text. On the
 * event loop that serves HTTP, every one of them delays every request behind it — /health
 * included — by its full length (measured on a busy 2-core machine: decode units of 50 ms at the
 * median and up to 0.85 s, /health p99 0.6-1.2 s while one question was asked every 0.6 s).
 *
 * ServiceThread runs SoftpressService (openService: the model, the store, the engine, and its
 * own compression worker when asked) in a worker thread and forwards each call to it; this
 * thread keeps only HTTP and JSON. /health answers at once from the figures the service thread
 * sends every `healthEveryMs` (their age is in `serviceThread.statsAgeMs`). Streamed deltas
 * travel as messages; a cancelled completion is cancelled in the service thread.
 *
 * The same file is the worker's entry point (it serves when started as the service thread).
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { ChatMessage } from '../models/chat.js';
import type { OwnerQuota } from './store.js';
import type { ContextView } from './contexts.js';
import type { CreateContextBody, MethodInfo } from './compression.js';
import type { AskBody, AskResult, ChatPrompt, CompletionRequest, CompletionResult, RunningCompletion } from './completion.js';
import type { ServiceApi } from './service-api.js';
import type { OpenServiceOptions, SoftpressService } from './service.js';
import { HttpError, asHttpError } from './errors.js';
import type { EngineOptions } from './engine.js';

export interface ServiceThreadOptions extends Omit<OpenServiceOptions, 'log'> {
  /** Lines the service logs while loading (called on this thread). */
  log?: (line: string) => void;
  /** How often the service thread sends its /health figures (default 200 ms). */
  healthEveryMs?: number;
}

/** What the service thread says about itself once it has started. */
interface Facts {
  modelName: string;
  fingerprint: string;
  window: number;
  defaultMethod: string;
  defaultRatio: number;
  startedAt: number;
  oneShot: boolean;
  chatTemplate?: string;
  compressWorker: boolean;
  prefixCache: boolean;
  engine: Required<EngineOptions>;
  store: { path: string; count: number; totalBytes: number; maxBytes: number };
  health: Record<string, unknown>;
}

type Op = 'methods' | 'createContext' | 'getContext' | 'listContexts' | 'deleteContext' | 'ask' | 'chatPrompt' | 'startCompletion';

type Request = { t: 'call'; id: number; op: Op; args: unknown[] } | { t: 'cancel'; id: number } | { t: 'close' };

interface WireError {
  message: string;
  http?: { status: number; code: string; param?: string; headers: Record<string, string> };
}

type Reply =
  | { t: 'ready'; facts: Facts }
  | { t: 'failed'; message: string }
  | { t: 'log'; line: string }
  | { t: 'health'; health: Record<string, unknown> }
  | { t: 'result'; id: number; value: unknown }
  | { t: 'error'; id: number; error: WireError }
  | { t: 'started'; id: number; promptTokens: number; maxTokens: number }
  | { t: 'delta'; id: number; index: number; text: string }
  | { t: 'closed' };

interface Call {
  resolve(v: unknown): void;
  reject(e: Error): void;
  /** A streaming completion: its start, its deltas, then its result. */
  started?: (s: { promptTokens: number; maxTokens: number }) => void;
  onDelta?: (index: number, text: string) => void;
}

function toWire(e: unknown): WireError {
  const err = asHttpError(e);
  if (err instanceof HttpError) return { message: err.message, http: { status: err.status, code: err.code, param: err.param, headers: err.headers } };
  return { message: err instanceof Error ? err.message : String(err) };
}

function fromWire(w: WireError): Error {
  return w.http ? new HttpError(w.http.status, w.http.code, w.message, w.http.param, w.http.headers) : new Error(w.message);
}

/** The HTTP thread's side: a ServiceApi whose calls run in the service thread. */
export class ServiceThread implements ServiceApi {
  readonly modelName: string;
  readonly fingerprint: string;
  readonly window: number;
  readonly defaultMethod: string;
  readonly defaultRatio: number;
  readonly startedAt: number;
  readonly qaFormat: { readonly oneShot: boolean };
  readonly tokenizer: { readonly chatTemplate?: string };
  readonly compressWorker: boolean;
  readonly prefixCache: boolean;
  readonly engineOptions: Required<EngineOptions>;
  readonly healthEveryMs: number;
  /** The store as it was when the service started. */
  readonly store: Facts['store'];
  private readonly calls = new Map<number, Call>();
  private nextId = 0;
  private snapshot: Record<string, unknown>;
  private snapshotAt = performance.now();
  private failure: Error | null = null;
  private closed = false;

  private constructor(
    private readonly worker: Worker,
    facts: Facts,
    healthEveryMs: number,
  ) {
    this.modelName = facts.modelName;
    this.fingerprint = facts.fingerprint;
    this.window = facts.window;
    this.defaultMethod = facts.defaultMethod;
    this.defaultRatio = facts.defaultRatio;
    this.startedAt = facts.startedAt;
    this.qaFormat = { oneShot: facts.oneShot };
    this.tokenizer = { chatTemplate: facts.chatTemplate };
    this.compressWorker = facts.compressWorker;
    this.prefixCache = facts.prefixCache;
    this.engineOptions = facts.engine;
    this.healthEveryMs = healthEveryMs;
    this.store = facts.store;
    this.snapshot = facts.health;
    worker.on('message', (m: Reply) => this.receive(m));
    worker.on('error', (e) => this.fail(new Error(`the service thread failed: ${e.message}`)));
    worker.on('exit', (code) => {
      if (!this.closed) this.fail(new Error(`the service thread exited (code ${code})`));
    });
  }

  /** Starts the service in a worker thread; settles once it has loaded the model and opened the store. */
  static async open(o: ServiceThreadOptions): Promise<ServiceThread> {
    const { log, healthEveryMs = 200, ...opts } = o;
    const worker = new Worker(new URL(import.meta.url), { workerData: { softpressServiceThread: true, opts, healthEveryMs } });
    const facts = await new Promise<Facts>((resolve, reject) => {
      const onMessage = (m: Reply) => {
        if (m.t === 'log') log?.(m.line);
        else if (m.t === 'ready') done(() => resolve(m.facts));
        else if (m.t === 'failed') done(() => reject(new Error(m.message)));
      };
      const onError = (e: Error) => done(() => reject(e));
      const onExit = (code: number) => done(() => reject(new Error(`the service thread exited (code ${code}) before it started`)));
      const done = (then: () => void) => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        then();
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    }).catch(async (e: Error) => {
      await worker.terminate();
      throw e;
    });
    const thread = new ServiceThread(worker, facts, healthEveryMs);
    if (log) worker.on('message', (m: Reply) => m.t === 'log' && log(m.line));
    return thread;
  }

  private receive(m: Reply): void {
    if (m.t === 'health') {
      this.snapshot = m.health;
      this.snapshotAt = performance.now();
      return;
    }
    if (m.t === 'log' || m.t === 'ready' || m.t === 'failed' || m.t === 'closed') return;
    const call = this.calls.get(m.id);
    if (!call) return;
    if (m.t === 'started') call.started?.({ promptTokens: m.promptTokens, maxTokens: m.maxTokens });
    else if (m.t === 'delta') call.onDelta?.(m.index, m.text);
    else {
      this.calls.delete(m.id);
      if (m.t === 'result') call.resolve(m.value);
      else call.reject(fromWire(m.error));
    }
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const c of this.calls.values()) c.reject(this.failure);
    this.calls.clear();
  }

  private gone(): Error | null {
    if (this.closed) return new HttpError(503, 'shutting_down', 'the server is shutting down');
    return this.failure;
  }

  private call<T>(op: Op, args: unknown[], extra: Partial<Call> = {}): { id: number; result: Promise<T> } {
    const id = this.nextId++;
    const gone = this.gone();
    if (gone) return { id, result: Promise.reject(gone) };
    const result = new Promise<T>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as (v: unknown) => void, reject, ...extra });
      this.worker.postMessage({ t: 'call', id, op, args } satisfies Request);
    });
    return { id, result };
  }

  methods(): Promise<MethodInfo[]> {
    return this.call<MethodInfo[]>('methods', []).result;
  }

  checkModel(name: string | undefined): void {
    if (name === undefined || name === this.modelName) return;
    throw new HttpError(
      404,
      'model_not_found',
      `The model '${name}' does not exist on this server; it serves '${this.modelName}' (see GET /v1/models)`,
      'model',
    );
  }

  createContext(body: CreateContextBody, opts: { owner?: string; quota?: OwnerQuota } = {}): Promise<ContextView & { evicted: string[] }> {
    return this.call<ContextView & { evicted: string[] }>('createContext', [body, opts]).result;
  }

  getContext(id: string, owner?: string): Promise<ContextView> {
    return this.call<ContextView>('getContext', [id, owner]).result;
  }

  listContexts(limit?: number, owner?: string): Promise<ContextView[]> {
    return this.call<ContextView[]>('listContexts', [limit, owner]).result;
  }

  async deleteContext(id: string, owner?: string): Promise<void> {
    await this.call('deleteContext', [id, owner]).result;
  }

  ask(id: string, body: AskBody, owner?: string): Promise<AskResult> {
    return this.call<AskResult>('ask', [id, body, owner]).result;
  }

  chatPrompt(messages: ChatMessage[], stop: string[]): Promise<ChatPrompt> {
    return this.call<ChatPrompt>('chatPrompt', [messages, stop]).result;
  }

  /** Settles when the service thread has queued the rows (or refused them); deltas follow. */
  startCompletion(req: CompletionRequest, onDelta?: (index: number, delta: string) => void): Promise<RunningCompletion> {
    let started!: (s: { promptTokens: number; maxTokens: number }) => void;
    const begun = new Promise<{ promptTokens: number; maxTokens: number }>((resolve) => (started = resolve));
    const { id, result } = this.call<CompletionResult>('startCompletion', [req, !!onDelta], { started, onDelta });
    // a refusal before the start rejects `result` without a start: the caller gets it from here
    return Promise.race([begun, result]).then(() =>
      begun.then((s) => ({
        ...s,
        result,
        cancel: () => {
          if (this.calls.has(id)) this.worker.postMessage({ t: 'cancel', id } satisfies Request);
        },
      })),
    );
  }

  health(): Record<string, unknown> {
    const alive = !this.closed && !this.failure;
    return {
      ...this.snapshot,
      ok: alive && this.snapshot.ok !== false,
      uptimeS: Math.round((Date.now() - this.startedAt) / 1000),
      serviceThread: { statsAgeMs: Math.round(performance.now() - this.snapshotAt), failed: this.failure?.message ?? null },
    };
  }

  /** Closes the service in its thread (engine, compression worker, store, model), then the thread. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new HttpError(503, 'shutting_down', 'the server is shutting down');
    for (const c of this.calls.values()) c.reject(err);
    this.calls.clear();
    if (this.failure) {
      await this.worker.terminate();
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.worker.terminate().then(() => resolve()), 10_000);
      this.worker.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      this.worker.postMessage({ t: 'close' } satisfies Request);
    });
  }
}

/** The service thread's side: open the service, then answer calls until told to close. */
async function serve(data: { opts: Omit<OpenServiceOptions, 'log'>; healthEveryMs: number }): Promise<void> {
  const port = parentPort!;
  const post = (m: Reply) => port.postMessage(m);
  let service: SoftpressService;
  try {
    const { openService } = await import('./service.js');
    service = openService({ ...data.opts, log: (line) => post({ t: 'log', line }) });
  } catch (e) {
    post({ t: 'failed', message: (e as Error).message });
    return;
  }
  const s = service;
  post({
    t: 'ready',
    facts: {
      modelName: s.modelName,
      fingerprint: s.fingerprint,
      window: s.window,
      defaultMethod: s.defaultMethod,
      defaultRatio: s.defaultRatio,
      startedAt: s.startedAt,
      oneShot: s.qaFormat.oneShot,
      chatTemplate: s.tokenizer.chatTemplate,
      compressWorker: s.compressWorker,
      prefixCache: s.prefixCache,
      engine: s.engine.opts,
      store: { path: s.store.path, count: s.store.count, totalBytes: s.store.totalBytes, maxBytes: s.store.maxBytes },
      health: s.health(),
    },
  });
  const timer = setInterval(() => post({ t: 'health', health: s.health() }), data.healthEveryMs);
  const running = new Map<number, RunningCompletion>();
  const answer = (id: number, work: () => unknown) => {
    Promise.resolve()
      .then(work)
      .then(
        (value) => post({ t: 'result', id, value }),
        (e: unknown) => post({ t: 'error', id, error: toWire(e) }),
      );
  };
  port.on('message', (m: Request) => {
    if (m.t === 'close') {
      clearInterval(timer);
      void s.close().finally(() => {
        post({ t: 'closed' });
        port.close();
      });
      return;
    }
    if (m.t === 'cancel') {
      running.get(m.id)?.cancel();
      return;
    }
    const a = m.args as never[];
    switch (m.op) {
      case 'methods':
        return answer(m.id, () => s.methods());
      case 'createContext':
        return answer(m.id, () => s.createContext(a[0], a[1]));
      case 'getContext':
        return answer(m.id, () => s.getContext(a[0], a[1]));
      case 'listContexts':
        return answer(m.id, () => s.listContexts(a[0], a[1]));
      case 'deleteContext':
        return answer(m.id, () => s.deleteContext(a[0], a[1]));
      case 'ask':
        return answer(m.id, () => s.ask(a[0], a[1], a[2]));
      case 'chatPrompt':
        return answer(m.id, () => s.chatPrompt(a[0], a[1]));
      case 'startCompletion':
        return answer(m.id, async () => {
          const id = m.id;
          const streamed = a[1] as boolean;
          const run = s.startCompletion(a[0], streamed ? (index, text) => post({ t: 'delta', id, index, text }) : undefined);
          running.set(id, run);
          post({ t: 'started', id, promptTokens: run.promptTokens, maxTokens: run.maxTokens });
          try {
            return await run.result;
          } finally {
            running.delete(id);
          }
        });
    }
  });
}

if (!isMainThread && (workerData as { softpressServiceThread?: boolean } | null)?.softpressServiceThread) void serve(workerData as never);
