/**
 * What the HTTP routes do, without HTTP: compress-and-store, context lookup and deletion,
 * question answering over a stored context, and OpenAI-style completions and chats with an
 * optional soft context in front of the prompt. Errors meant for the client are HttpErrors.
 *
 * The service puts together the parts, each in its own module:
 * - contexts.ts: stored contexts (ContextStore, LMDB) and the ones in use parsed in memory, per owner;
 * - compression.ts: compress-and-store (in the compression worker's thread, compress-worker.ts,
 *   when the service has one);
 * - prefix-kv.ts: each row's prefix ([lead][soft tokens], or the plain start) and the cache of
 *   its keys/values;
 * - completion.ts: the one generation path that asking, completions and chats share;
 * - engine.ts: the scheduler that runs model work in units between event-loop turns;
 * - load.ts: loading the base model and the compressors (openService).
 */
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { qaPromptFormat, type ChatMessage, type QaPromptFormat } from '../models/chat.js';
import { compressorNames, createCompressor, freeCompressor, isLearned, type Compressor } from '../compress/index.js';
import { ANONYMOUS, ContextStore, type OwnerQuota } from './store.js';
import { Engine, type EngineOptions } from './engine.js';
import { HttpError } from './errors.js';
import { Contexts, type ContextView } from './contexts.js';
import { PrefixKv } from './prefix-kv.js';
import { Compression, type CreateContextBody, type MethodInfo } from './compression.js';
import { Completions, type AskBody, type AskResult, type ChatPrompt, type CompletionRequest, type RunningCompletion } from './completion.js';
import { CompressWorker } from './compress-worker.js';
import { freeServedModel, loadServedModel, type ServedModelOptions } from './load.js';
import { vocabularyFacts } from './text.js';
import type { ServiceApi } from './service-api.js';

export { HttpError, asHttpError } from './errors.js';
export { findCompressorDirs, baseModelName } from './load.js';
export type { ContextView } from './contexts.js';
export type { CreateContextBody } from './compression.js';
export type { AskBody, ChatPrompt, CompletionChoice, CompletionRequest, CompletionResult, RunningCompletion } from './completion.js';

export interface ServiceConfig {
  model: LlamaModel;
  tokenizer: Tokenizer;
  /** The id clients pass as `model` (GET /v1/models). */
  modelName: string;
  /** Learned compressors loaded from their folders; the strategies (full, none, truncate) are always there. */
  compressors?: Compressor[];
  store: ContextStore;
  engine?: EngineOptions;
  /** Default: the first learned compressor, else truncate. */
  defaultMethod?: string;
  /** Default ratio when a request gives neither ratio nor budget (4). */
  defaultRatio?: number;
  /** Context tokens a strategy accepts at most (65,536); learned methods read at most the base window. */
  maxInputTokens?: number;
  /** Bytes of parsed contexts kept in memory (256 MiB). */
  cacheBytes?: number;
  /** Positions a stored context must leave free in the window for a question and answer (16). */
  minRoom?: number;
  /** close() also frees the model and the learned compressors (openService loaded them, so it sets this). */
  ownsModel?: boolean;
  /**
   * Keep each context's prefix ([lead][soft tokens], with its memory) and the plain [BOS] start
   * as decoder keys/values after their first use, so later requests prefill only their own
   * prompt (default true).
   */
  prefixCache?: boolean;
  /** Runs the compressions in this worker thread (the service closes it). */
  worker?: CompressWorker;
}

export class SoftpressService implements ServiceApi {
  readonly model: LlamaModel;
  readonly tokenizer: Tokenizer;
  readonly modelName: string;
  readonly store: ContextStore;
  readonly engine: Engine;
  readonly window: number;
  readonly fingerprint: string;
  readonly defaultMethod: string;
  readonly defaultRatio: number;
  readonly startedAt = Date.now();
  /** How questions are put to the model (lead before a context, tail after it). */
  readonly qaFormat: QaPromptFormat;
  readonly prefixCache: boolean;
  private readonly compressors = new Map<string, Compressor>();
  private readonly contexts: Contexts;
  private readonly prefixes: PrefixKv;
  private readonly compression: Compression;
  private readonly completions: Completions;
  private readonly worker?: CompressWorker;
  private readonly ownsModel: boolean;
  private closed = false;

  constructor(cfg: ServiceConfig) {
    this.model = cfg.model;
    this.ownsModel = cfg.ownsModel ?? false;
    this.tokenizer = cfg.tokenizer;
    this.modelName = cfg.modelName;
    this.store = cfg.store;
    this.window = cfg.model.config.maxPositions;
    this.fingerprint = cfg.model.fingerprint();
    if (cfg.store.fingerprint !== this.fingerprint)
      throw new Error(`the context store was opened for base model ${cfg.store.fingerprint}, the service runs ${this.fingerprint}`);
    for (const name of compressorNames()) if (!isLearned(name)) this.compressors.set(name, createCompressor(name, cfg.model));
    for (const c of cfg.compressors ?? []) {
      if (this.compressors.has(c.method)) throw new Error(`two compressors for method '${c.method}'`);
      if (c.base !== cfg.model) throw new Error(`compressor '${c.method}' was loaded over another model instance`);
      this.compressors.set(c.method, c);
    }
    const learned = [...this.compressors.values()].filter((c) => isLearned(c.method));
    this.defaultMethod = cfg.defaultMethod ?? learned[0]?.method ?? 'truncate';
    if (!this.compressors.has(this.defaultMethod))
      throw new Error(`default method '${this.defaultMethod}' is not available (have: ${[...this.compressors.keys()].join(', ')})`);
    this.defaultRatio = cfg.defaultRatio ?? 4;
    this.prefixCache = cfg.prefixCache ?? true;
    this.qaFormat = qaPromptFormat(this.tokenizer);
    const facts = vocabularyFacts(this.tokenizer);
    this.engine = new Engine(cfg.model, cfg.engine);
    this.worker = cfg.worker;
    this.contexts = new Contexts(this.store, this.model, this.modelName, this.compressors, cfg.cacheBytes ?? 256 * 2 ** 20);
    const start = this.tokenizer.addsBos === false ? [] : [this.tokenizer.bos];
    this.prefixes = new PrefixKv(this.model, this.engine, [...this.qaFormat.lead], start, this.prefixCache, (e, bytes) => this.contexts.grow(e, bytes));
    this.compression = new Compression({
      model: this.model,
      tokenizer: this.tokenizer,
      engine: this.engine,
      contexts: this.contexts,
      compressors: this.compressors,
      worker: this.worker,
      defaultMethod: this.defaultMethod,
      defaultRatio: this.defaultRatio,
      maxInputTokens: cfg.maxInputTokens ?? 65536,
      leadLength: this.qaFormat.lead.length,
      minRoom: cfg.minRoom ?? 16,
      maxTokenChars: facts.maxTokenChars,
    });
    this.completions = new Completions({
      tokenizer: this.tokenizer,
      modelName: this.modelName,
      window: this.window,
      qaFormat: this.qaFormat,
      contexts: this.contexts,
      prefixes: this.prefixes,
      qaStops: new Set([...this.qaFormat.stopIds, ...facts.newlineIds]),
      maxTokenChars: facts.maxTokenChars,
    });
  }

  /** Whether compressions run in a worker thread (off the event loop). */
  get compressWorker(): boolean {
    return this.worker !== undefined;
  }

  methods(): MethodInfo[] {
    return this.compression.methods();
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

  /** Compresses a text and stores it for its owner (see Compression.create). */
  createContext(body: CreateContextBody, opts: { owner?: string; quota?: OwnerQuota } = {}): Promise<ContextView & { evicted: string[] }> {
    return this.compression.create(body, opts.owner ?? ANONYMOUS, opts.quota);
  }

  /** A stored context's metadata (404 unknown or another owner's, 409 another base model). */
  getContext(id: string, owner = ANONYMOUS): ContextView {
    return this.contexts.get(id, owner);
  }

  /** The owner's contexts of this base model, most recently used first. */
  listContexts(limit = 100, owner = ANONYMOUS): ContextView[] {
    return this.contexts.list(limit, owner);
  }

  /** Deletes one of the owner's contexts (404 unknown or another owner's). */
  deleteContext(id: string, owner = ANONYMOUS): void {
    this.contexts.delete(id, owner);
  }

  /** Answers questions about a stored context; all questions go to the micro-batcher at once. */
  ask(id: string, body: AskBody, owner = ANONYMOUS): Promise<AskResult> {
    return this.completions.ask(id, body, owner);
  }

  /** Starts completions of text prompts (see Completions.start). */
  startCompletion(req: CompletionRequest, onDelta?: (index: number, delta: string) => void): RunningCompletion {
    return this.completions.start(req, onDelta);
  }

  /** A chat rendered as a completion's prompt (see Completions.chatPrompt). */
  chatPrompt(messages: ChatMessage[], stop: string[]): ChatPrompt {
    return this.completions.chatPrompt(messages, stop);
  }

  health(): Record<string, unknown> {
    return {
      ok: !this.closed,
      model: this.modelName,
      baseFingerprint: this.fingerprint,
      window: this.window,
      defaultMethod: this.defaultMethod,
      chat: this.tokenizer.chatTemplate ? 'template' : 'plain lines',
      ask: this.qaFormat.oneShot ? 'one-shot demonstration' : 'plain',
      uptimeS: Math.round((Date.now() - this.startedAt) / 1000),
      engine: this.engine.stats(),
      compressWorker: this.worker ? this.worker.stats() : null,
      store: { path: this.store.path, contexts: this.store.count, bytes: this.store.totalBytes, maxBytes: this.store.maxBytes },
      memory: this.contexts.stats(),
    };
  }

  /**
   * Stops the engine and the compression worker, frees loaded contexts and closes the store; a
   * service that owns its model (openService) then frees the model and compressors too, so
   * closing gives the memory back.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.engine.close();
    await this.worker?.close();
    this.contexts.clear();
    await this.prefixes.close();
    await this.store.close();
    if (this.ownsModel) {
      for (const c of this.compressors.values()) freeCompressor(c);
      this.model.free();
    }
  }
}

export interface OpenServiceOptions extends ServedModelOptions, Omit<ServiceConfig, 'model' | 'tokenizer' | 'modelName' | 'store' | 'compressors' | 'worker'> {
  storePath: string;
  storeMaxBytes: number;
  /**
   * Run compressions in a worker thread with its own copy of the model, so the event loop keeps
   * answering while they run (default false; `softpress serve` turns it on). Costs the model's
   * weights once more in memory.
   */
  compressWorker?: boolean | { threads?: number };
}

/** Loads the base model and compressors (load.ts), opens the store, and starts the service. */
export function openService(o: OpenServiceOptions): SoftpressService {
  const served = loadServedModel(o);
  const { model } = served;
  let store: ContextStore | undefined;
  let worker: CompressWorker | undefined;
  try {
    store = ContextStore.open(o.storePath, { maxBytes: o.storeMaxBytes, fingerprint: model.fingerprint() });
    if (o.compressWorker) {
      const threads = typeof o.compressWorker === 'object' ? o.compressWorker.threads : undefined;
      worker = new CompressWorker({
        base: served.path,
        compressorDirs: served.compressorDirs,
        fingerprint: model.fingerprint(),
        maxPending: o.engine?.maxPendingJobs,
        threads,
      });
    }
    return new SoftpressService({
      ...o,
      model,
      tokenizer: served.tokenizer,
      modelName: served.modelName,
      store,
      compressors: served.compressors,
      worker,
      ownsModel: true,
    });
  } catch (e) {
    void store?.close();
    void worker?.close();
    freeServedModel(served);
    throw e;
  }
}
