/**
 * What the HTTP routes do, without HTTP: compress-and-store, context lookup and deletion,
 * question answering over a stored context, and OpenAI-style completions with an optional
 * soft context in front of the prompt. Errors meant for the client are HttpErrors.
 *
 * Stored contexts live in the ContextStore (LMDB); the ones in use are also kept parsed in
 * memory (tensors), least recently used first out beyond `cacheBytes`. Each belongs to an owner
 * (an API key's owner id, or `anonymous`): the context methods take the caller's owner, and
 * another owner's context is not found (404), whether stored or in memory.
 *
 * What the decoder reads (the prompt formats are the model's own, src/models/chat.ts):
 * - a stored context, for asking and for completions and chats with a `context_id`:
 *   [lead][soft tokens][prompt], where lead is qaPromptFormat's: [BOS] for a base model, a
 *   one-shot QA demonstration for an instruct model (one with a chat template). One prefix per
 *   context, so its keys/values are computed once and shared by every kind of request;
 * - no context: [start][prompt], where start is [BOS] when the tokenizer adds one (softpress-base)
 *   and nothing when the model is trained without it (SmolLM2: its BOS id is <|im_start|>);
 * - asking puts qaPromptFormat's tail ("\nQuestion: q\nAnswer:") after the context;
 * - a chat is rendered by renderChat with the model's chat template (plain "User: ..." lines for
 *   a model without one) and ends at its end-of-turn ids and the request's stop strings.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { cat, noGrad, tensor, tidy, type Tensor } from '../tensor/index.js';
import type { LayerKv, LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { loadModel } from '../models/load.js';
import { qaPromptFormat, renderChat, type ChatMessage, type QaPromptFormat } from '../models/chat.js';
import { MODELS, cachedModelPath, namedModel, resolveModelRef } from '../io/model-source.js';
import type { LoraAdapters } from '../nn/layers.js';
import {
  checkBudget,
  compressorAbout,
  compressorNames,
  contextPrefix,
  createCompressor,
  freeCompressor,
  freeSoftContext,
  isLearned,
  loadCompressor,
  parseSoftContext,
  SoftContextError,
  serializeSoftContext,
  softCount,
  type Budget,
  type Compressor,
  type SoftContext,
} from '../compress/index.js';
import { ANONYMOUS, ContextStore, StoreError, ownerOfRecord, type OwnerQuota, type StoredContext } from './store.js';
import { Engine, QueueFullError, ShutdownError, type EngineOptions, type RowOutcome, type RowRequest } from './engine.js';
import { prefixKeysValues } from './decoder.js';
import { TextStream, answerText, encodeYielding, vocabularyFacts } from './text.js';

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly param?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** QueueFullError / ShutdownError as HTTP errors (429 / 503). */
export function asHttpError(e: unknown): unknown {
  if (e instanceof QueueFullError) return new HttpError(429, 'queue_full', e.message, undefined, { 'retry-after': String(e.retryAfterSeconds) });
  if (e instanceof ShutdownError) return new HttpError(503, 'shutting_down', e.message);
  return e;
}

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
}

interface Loaded {
  id: string;
  /** Who may use it (the store record's owner). */
  owner: string;
  ctx: SoftContext;
  method: string;
  bytes: number;
  refs: number;
  dead: boolean;
  lastUsed: number;
  /** Soft tokens of the (single) context (its prefix is [lead][soft tokens]). */
  soft: number;
  memoryLen: number;
  lora?: LoraAdapters;
  group: string;
  /** The prefix's keys/values once computed (the prefix cache), and the computation under way. */
  kv?: LayerKv[];
  kvPending?: Promise<LayerKv[]>;
}

/** Where a prefix's keys/values are cached: a stored context's entry, or the plain [BOS] start. */
interface KvSlot {
  kv?: LayerKv[];
  kvPending?: Promise<LayerKv[]>;
}

export interface ContextView {
  id: string;
  method: string;
  budget: Budget;
  sourceTokens: number;
  softTokens: number;
  /** sourceTokens / softTokens, null when there are no soft tokens. */
  ratio: number | null;
  compressMs: number;
  bytes: number;
  createdAt: string;
  lastUsed: string;
  baseFingerprint: string;
  textChars: number;
}

export interface CreateContextBody {
  text: string;
  method?: string;
  ratio?: number;
  budget?: number;
}

export interface AskBody {
  questions: string[];
  maxTokens?: number;
  temperature?: number;
  seed?: number;
}

export interface CompletionRequest {
  prompts: string[];
  contextId?: string;
  /** Who asks: a context of another owner is not found (default anonymous). */
  owner?: string;
  maxTokens?: number;
  temperature: number;
  topP?: number;
  seed?: number;
  stop: string[];
  /** Ids that end a completion (default: EOS and the vocabulary's end-of-turn ids). */
  stopIds?: number[];
  /** The prompts hold special tokens written as text (a rendered chat template). */
  special?: boolean;
}

/** A chat rendered for the decoder (SoftpressService.chatPrompt). */
export interface ChatPrompt {
  prompt: string;
  /** The request's stop strings, plus the plain-lines format's ("\nUser:", ...) for a plain chat. */
  stop: string[];
  /** The template's end-of-turn ids (EOS for a plain chat). */
  stopIds: number[];
  /** Rendered with the model's own template (its special tokens are text in `prompt`). */
  templated: boolean;
  /**
   * The reply starts after "Assistant:", so its leading space is not part of the message
   * (plain chats only: after a template's assistant header the reply starts right away).
   */
  trimLead: boolean;
}

export interface CompletionChoice {
  index: number;
  text: string;
  finishReason: 'stop' | 'length';
  completionTokens: number;
}

export interface CompletionResult {
  choices: CompletionChoice[];
  promptTokens: number;
  completionTokens: number;
  /** Soft tokens and source tokens of the context, when there was one. */
  context?: { id: string; softTokens: number; sourceTokens: number; method: string };
  timings: { loadMs: number; prefixMs: number; queueMs: number; prefillMs: number; decodeMs: number; totalMs: number; batchSize: number };
}

export interface RunningCompletion {
  /** The rows' prompt tokens (prefix + prompt), known before generation. */
  promptTokens: number;
  maxTokens: number;
  result: Promise<CompletionResult>;
  cancel(): void;
}

function freeKv(kv: LayerKv[] | undefined): void {
  for (const { k, v } of kv ?? []) {
    k.free();
    v.free();
  }
}

function kvBytes(kv: LayerKv[]): number {
  let n = 0;
  for (const { k, v } of kv) n += (k.numel + v.numel) * (k.dtype === 'float32' ? 4 : 2);
  return n;
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export class SoftpressService {
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
  private readonly compressors = new Map<string, Compressor>();
  private readonly loaded = new Map<string, Loaded>();
  private loadedBytes = 0;
  private readonly cacheBytes: number;
  private readonly maxInputTokens: number;
  private readonly minRoom: number;
  /** How questions are put to the model (lead before a context, tail after it). */
  readonly qaFormat: QaPromptFormat;
  /** The lead before every stored context's soft tokens (qaFormat.lead: at least one token). */
  private readonly lead: number[];
  /** What a sequence without a context starts with: [BOS] when the tokenizer adds one, else nothing. */
  private readonly start: number[];
  private readonly qaStops: Set<number>;
  readonly prefixCache: boolean;
  /** The longest token in characters: a text of n characters has at least n / this tokens. */
  private readonly maxTokenChars: number;
  private readonly plainSlot: KvSlot = {};
  /** Rows waiting for their context's prefix keys/values before they can be queued. */
  private waitingForPrefix = 0;
  /** EOS and the vocabulary's end-of-turn / end-of-text ids: where a completion ends. */
  private readonly endIds: Set<number>;
  private closed = false;
  private readonly ownsModel: boolean;
  /** Contexts being compressed per owner (they count against its quota until stored). */
  private readonly creating = new Map<string, number>();

  constructor(cfg: ServiceConfig) {
    this.model = cfg.model;
    this.ownsModel = cfg.ownsModel ?? false;
    this.tokenizer = cfg.tokenizer;
    this.modelName = cfg.modelName;
    this.store = cfg.store;
    this.window = cfg.model.config.maxPositions;
    this.fingerprint = cfg.model.fingerprint();
    if (cfg.store.fingerprint !== this.fingerprint) throw new Error(`the context store was opened for base model ${cfg.store.fingerprint}, the service runs ${this.fingerprint}`);
    this.engine = new Engine(cfg.model, cfg.engine);
    for (const name of compressorNames()) if (!isLearned(name)) this.compressors.set(name, createCompressor(name, cfg.model));
    for (const c of cfg.compressors ?? []) {
      if (this.compressors.has(c.method)) throw new Error(`two compressors for method '${c.method}'`);
      if (c.base !== cfg.model) throw new Error(`compressor '${c.method}' was loaded over another model instance`);
      this.compressors.set(c.method, c);
    }
    const learned = [...this.compressors.values()].filter((c) => isLearned(c.method));
    this.defaultMethod = cfg.defaultMethod ?? learned[0]?.method ?? 'truncate';
    if (!this.compressors.has(this.defaultMethod)) throw new Error(`default method '${this.defaultMethod}' is not available (have: ${[...this.compressors.keys()].join(', ')})`);
    this.defaultRatio = cfg.defaultRatio ?? 4;
    this.maxInputTokens = cfg.maxInputTokens ?? 65536;
    this.cacheBytes = cfg.cacheBytes ?? 256 * 2 ** 20;
    this.minRoom = cfg.minRoom ?? 16;
    this.prefixCache = cfg.prefixCache ?? true;
    this.qaFormat = qaPromptFormat(this.tokenizer);
    this.lead = [...this.qaFormat.lead];
    if (this.lead.length === 0) throw new Error('the QA format has an empty lead; a context prefix needs at least one token');
    this.start = this.tokenizer.addsBos === false ? [] : [this.tokenizer.bos];
    this.endIds = new Set(this.qaFormat.stopIds);
    const facts = vocabularyFacts(this.tokenizer);
    this.qaStops = new Set([...this.qaFormat.stopIds, ...facts.newlineIds]);
    this.maxTokenChars = facts.maxTokenChars;
  }

  // ------------------------------------------------------------------------------------------
  // Methods and models

  methods(): { name: string; learned: boolean; about: string; ratios: number[] | null; maxInputTokens: number }[] {
    return [...this.compressors.values()].map((c) => ({
      name: c.method,
      learned: isLearned(c.method),
      about: compressorAbout(c.method),
      ratios: c.ratios ? [...c.ratios] : null,
      maxInputTokens: this.inputLimit(c),
    }));
  }

  /**
   * Context tokens a method reads at most: strategies and segment-wise methods (a `segmentLen`,
   * like CCF) read any length up to maxInputTokens — what they produce must still fit the window,
   * checked after; other learned methods read at most the base window unless they declare
   * `maxInputTokens`.
   */
  private inputLimit(c: Compressor): number {
    if (!isLearned(c.method)) return this.maxInputTokens;
    const declared = (c as unknown as { maxInputTokens?: unknown }).maxInputTokens ?? c.config.maxInputTokens;
    if (typeof declared === 'number' && declared > 0) return declared;
    const segmented = (c as unknown as { segmentLen?: unknown }).segmentLen ?? c.config.segmentLen;
    return typeof segmented === 'number' && segmented > 0 ? this.maxInputTokens : this.window;
  }

  checkModel(name: string | undefined): void {
    if (name === undefined || name === this.modelName) return;
    throw new HttpError(404, 'model_not_found', `The model '${name}' does not exist on this server; it serves '${this.modelName}' (see GET /v1/models)`, 'model');
  }

  // ------------------------------------------------------------------------------------------
  // Contexts

  /**
   * Compresses a text with a method at a budget and stores the result for its owner. With a
   * quota, an owner at its limit gets 429 insufficient_quota before any compression (contexts
   * being compressed count), and the store checks the quota again in the insert's transaction.
   * `evicted` lists only the owner's own contexts that made room (others' ids are not shown).
   */
  async createContext(body: CreateContextBody, opts: { owner?: string; quota?: OwnerQuota } = {}): Promise<ContextView & { evicted: string[] }> {
    const owner = opts.owner ?? ANONYMOUS;
    const quota = opts.quota;
    if (quota && (quota.contexts || quota.bytes)) {
      const u = this.store.usage(owner);
      const inFlight = this.creating.get(owner) ?? 0;
      if (quota.contexts && u.contexts + inFlight >= quota.contexts) {
        throw this.quotaError(`you store ${u.contexts} contexts${inFlight ? ` and ${inFlight} more are being compressed` : ''}; your quota is ${quota.contexts}. Delete some (DELETE /v1/contexts/ID) before creating more`);
      }
      if (quota.bytes && u.bytes >= quota.bytes) {
        throw this.quotaError(`your stored contexts take ${u.bytes} bytes, your quota is ${quota.bytes}. Delete some (DELETE /v1/contexts/ID) before creating more`);
      }
    }
    this.creating.set(owner, (this.creating.get(owner) ?? 0) + 1);
    try {
      return await this.compressAndStore(body, owner, quota);
    } finally {
      const n = (this.creating.get(owner) ?? 1) - 1;
      if (n > 0) this.creating.set(owner, n);
      else this.creating.delete(owner);
    }
  }

  /**
   * A storage quota is not a rate: waiting does not help, deleting does. So no Retry-After, and
   * `x-should-retry: false` tells the OpenAI clients not to retry.
   */
  private quotaError(message: string): HttpError {
    return new HttpError(429, 'insufficient_quota', message, undefined, { 'x-should-retry': 'false' });
  }

  private async compressAndStore(body: CreateContextBody, owner: string, quota: OwnerQuota | undefined): Promise<ContextView & { evicted: string[] }> {
    const method = body.method ?? this.defaultMethod;
    const c = this.compressors.get(method);
    if (!c) throw new HttpError(400, 'unknown_method', `unknown method '${method}'; this server offers ${[...this.compressors.keys()].join(', ')}`, 'method');
    if (body.ratio !== undefined && body.budget !== undefined) throw new HttpError(400, 'bad_budget', 'give either ratio (context tokens per soft token) or budget (soft tokens), not both', 'ratio');
    const budget: Budget = body.budget !== undefined ? { tokens: body.budget } : { ratio: body.ratio ?? this.defaultRatio };
    try {
      checkBudget(budget);
    } catch (e) {
      throw new HttpError(400, 'bad_budget', (e as Error).message, budget.ratio !== undefined ? 'ratio' : 'budget');
    }
    if (budget.ratio !== undefined && c.ratios && !c.ratios.includes(budget.ratio)) {
      throw new HttpError(400, 'bad_ratio', `method '${method}' was trained for ratios ${c.ratios.join(', ')}; got ${budget.ratio}`, 'ratio');
    }
    const limit = this.inputLimit(c);
    if (body.text.length > limit * this.maxTokenChars) {
      throw new HttpError(413, 'context_too_long', `the text has ${body.text.length} characters, so more than ${limit} tokens; method '${method}' reads at most ${limit} tokens. Use a shorter text.`, 'text');
    }
    const ids = await encodeYielding(this.tokenizer, body.text);
    if (ids.length === 0) throw new HttpError(400, 'empty_text', 'the text has no tokens', 'text');
    if (ids.length > limit) {
      throw new HttpError(413, 'context_too_long', `the text is ${ids.length} tokens; method '${method}' reads at most ${limit} tokens${isLearned(method) ? " (the base model's window)" : ''}. Use a shorter text${isLearned(method) ? ' or the truncate strategy' : ''}.`, 'text');
    }
    const predicted = method === 'full' ? ids.length : method === 'none' ? 0 : method === 'truncate' ? Math.min(ids.length, softCount(ids.length, budget)) : softCount(ids.length, budget);
    this.checkFits(predicted, 0, ids.length, method);
    let compressMs = 0;
    const { ctx, bytes } = await this.engine
      .runJob(() => {
        const t0 = performance.now();
        const ctx = noGrad(() => tidy(() => c.compress([ids], budget)));
        compressMs = performance.now() - t0;
        try {
          return { ctx, bytes: serializeSoftContext(ctx) };
        } catch (e) {
          freeSoftContext(ctx);
          throw e;
        }
      })
      .catch((e: unknown) => {
        const err = asHttpError(e);
        if (err instanceof HttpError) throw err;
        throw new HttpError(500, 'compression_failed', `compression with '${method}' failed: ${(e as Error).message}`);
      });
    let stored: StoredContext;
    let evicted: StoredContext[];
    try {
      const soft = ctx.meta.softTokens[0] ?? 0; // soft tokens, or memory slots for memory-KV methods
      const memoryLen = ctx.memoryKv?.[0]?.k.size(2) ?? 0;
      this.checkFits(ctx.softTokens ? soft : 0, memoryLen, ids.length, method);
      const now = Date.now();
      stored = {
        id: `ctx_${randomBytes(12).toString('hex')}`,
        method,
        budget,
        sourceTokens: ids.length,
        softTokens: soft,
        compressMs: round(compressMs, 2),
        createdAt: now,
        lastUsed: now,
        bytes: bytes.length,
        baseFingerprint: this.fingerprint,
        textChars: body.text.length,
        owner,
      };
      ({ evicted } = this.store.put(stored, bytes, { quota }));
    } catch (e) {
      freeSoftContext(ctx);
      if (e instanceof StoreError) throw e.code === 'too_large' ? new HttpError(413, 'context_too_large_for_store', e.message) : this.quotaError(e.message);
      throw e;
    }
    for (const m of evicted) this.unload(m.id);
    this.remember(stored, ctx);
    return { ...this.view(stored), evicted: evicted.filter((m) => ownerOfRecord(m) === owner).map((m) => m.id) };
  }

  private checkFits(soft: number, memoryLen: number, sourceTokens: number, method: string): void {
    const need = this.lead.length + soft + memoryLen + this.minRoom;
    if (need <= this.window) return;
    const what = method === 'full' ? `the full context of ${sourceTokens} tokens` : `the context of ${sourceTokens} tokens becomes ${memoryLen ? `${memoryLen} memory slots and ${soft} soft tokens` : `${soft} soft tokens`}, which`;
    const hint = method === 'full' ? 'Compress it (e.g. method truncate or a learned method) or send a shorter text.' : 'Use a higher ratio (or a smaller budget).';
    throw new HttpError(413, 'context_too_long', `${what} with its lead (${this.lead.length === 1 ? 'BOS' : `${this.lead.length} tokens: the QA demonstration`}) and room for a question (${this.minRoom} positions) needs ${need} positions, but the base model's window is ${this.window} tokens. ${hint}`, 'text');
  }

  view(m: StoredContext): ContextView {
    return {
      id: m.id,
      method: m.method,
      budget: m.budget,
      sourceTokens: m.sourceTokens,
      softTokens: m.softTokens,
      ratio: m.softTokens > 0 ? round(m.sourceTokens / m.softTokens, 3) : null,
      compressMs: m.compressMs,
      bytes: m.bytes,
      createdAt: new Date(m.createdAt).toISOString(),
      lastUsed: new Date(m.lastUsed).toISOString(),
      baseFingerprint: m.baseFingerprint,
      textChars: m.textChars,
    };
  }

  private mismatch(m: StoredContext): HttpError {
    return new HttpError(
      409,
      'base_model_mismatch',
      `context ${m.id} was made for base model ${m.baseFingerprint}, but this server runs base model ${this.fingerprint} (${this.modelName}); its soft tokens mean nothing to this model. Compress the text again (and DELETE this one).`,
    );
  }

  /** A stored context's metadata (404 unknown or another owner's, 409 another base model). */
  getContext(id: string, owner = ANONYMOUS): ContextView {
    const m = this.store.getMeta(id);
    if (!m || ownerOfRecord(m) !== owner) throw this.notFound(id);
    if (m.baseFingerprint !== this.fingerprint) throw this.mismatch(m);
    return this.view(m);
  }

  /** The owner's contexts of this base model, most recently used first. */
  listContexts(limit = 100, owner = ANONYMOUS): ContextView[] {
    return this.store.list({ limit, filter: (m) => ownerOfRecord(m) === owner && m.baseFingerprint === this.fingerprint }).map((m) => this.view(m));
  }

  /** Deletes one of the owner's contexts (404 unknown or another owner's). */
  deleteContext(id: string, owner = ANONYMOUS): void {
    if (!this.store.delete(id, { owner })) throw this.notFound(id);
    this.unload(id);
  }

  private notFound(id: string): HttpError {
    return new HttpError(404, 'context_not_found', `no context with id '${id}' (never created, deleted, or evicted from the store)`, 'id');
  }

  // ------------------------------------------------------------------------------------------
  // In-memory contexts

  private remember(m: StoredContext, ctx: SoftContext): Loaded {
    const c = this.compressors.get(m.method);
    const memoryLen = ctx.memoryKv?.[0]?.k.size(2) ?? 0;
    const lora = c?.decoderLora;
    const e: Loaded = {
      id: m.id,
      owner: ownerOfRecord(m),
      ctx,
      method: m.method,
      bytes: m.bytes,
      refs: 0,
      dead: false,
      lastUsed: performance.now(),
      soft: ctx.softTokens ? (ctx.meta.softTokens[0] ?? 0) : 0,
      memoryLen,
      lora,
      group: `${lora ? `lora:${m.method}` : 'base'}|mem:${memoryLen}`,
    };
    this.loaded.set(m.id, e);
    this.loadedBytes += e.bytes;
    this.shrinkCache();
    return e;
  }

  private shrinkCache(): void {
    if (this.loadedBytes <= this.cacheBytes) return;
    const idle = [...this.loaded.values()].filter((e) => e.refs === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const e of idle) {
      if (this.loadedBytes <= this.cacheBytes) break;
      this.unload(e.id);
    }
  }

  private unload(id: string): void {
    const e = this.loaded.get(id);
    if (!e) return;
    this.loaded.delete(id);
    this.loadedBytes -= e.bytes;
    e.dead = true;
    if (e.refs === 0) this.freeEntry(e);
  }

  private freeEntry(e: Loaded): void {
    freeSoftContext(e.ctx);
    freeKv(e.kv);
    e.kv = undefined;
  }

  /**
   * Takes a reference to one of the owner's stored contexts, loading it when needed (another
   * owner's is not found). Release it with release().
   */
  private acquire(id: string, owner: string): { entry: Loaded; loadMs: number } {
    const t0 = performance.now();
    let e = this.loaded.get(id);
    if (e && e.owner !== owner) throw this.notFound(id);
    if (!e) {
      const m = this.store.getMeta(id);
      if (!m || ownerOfRecord(m) !== owner) throw this.notFound(id);
      if (m.baseFingerprint !== this.fingerprint) throw this.mismatch(m);
      const bytes = this.store.getBytes(id);
      if (!bytes) throw this.notFound(id);
      let ctx: SoftContext;
      try {
        ctx = parseSoftContext(bytes, this.model, id);
      } catch (err) {
        const msg = (err as Error).message;
        if (err instanceof SoftContextError && err.code === 'base_mismatch') throw new HttpError(409, 'base_model_mismatch', msg);
        throw new HttpError(500, 'corrupt_context', `stored context ${id} cannot be read: ${msg}`);
      }
      if (!this.compressors.has(ctx.meta.method)) {
        freeSoftContext(ctx);
        throw new HttpError(409, 'method_unavailable', `context ${id} was made by method '${ctx.meta.method}', which this server has not loaded (start it with --compressor DIR for that method)`);
      }
      e = this.remember(m, ctx);
    }
    e.refs++;
    e.lastUsed = performance.now();
    void this.store.touch(id).catch(() => {});
    return { entry: e, loadMs: performance.now() - t0 };
  }

  private release(e: Loaded): void {
    e.refs--;
    if (e.refs === 0 && e.dead) this.freeEntry(e);
    else this.shrinkCache();
  }

  /** Token ids as embeddings [n, dim]. */
  private embedIds(ids: readonly number[]): Tensor {
    return this.model.embed(tensor([...ids], [1, ids.length], { dtype: 'int64' })).reshape(ids.length, this.model.dim);
  }

  /**
   * A prefix as [P, dim]: [lead][soft tokens] for a stored context (its soft tokens without the
   * left padding contextPrefix masks, so P = lead + soft), or the plain start ([BOS]) without one.
   */
  private prefixEmbeds(e: Loaded | null): { prefix: Tensor; memory?: LayerKv[] } {
    if (!e) return { prefix: this.embedIds(this.start) };
    const l = this.lead.length;
    const { embeds } = contextPrefix(this.model, e.ctx, this.lead); // [1, l+k, dim]
    const k = embeds.size(1) - l;
    const flat = embeds.reshape(l + k, this.model.dim);
    const n = e.soft;
    const prefix = n === k ? flat : cat([flat.narrow(0, 0, l), flat.narrow(0, l + k - n, n)], 0);
    return { prefix, memory: e.ctx.memoryKv };
  }

  /** Positions of a row's prefix before its prompt (memory slots aside). */
  private prefixLen(e: Loaded | null): number {
    return e ? this.lead.length + e.soft : this.start.length;
  }

  /** Whether rows of this context share a prefix whose keys/values can be cached. */
  private cacheable(e: Loaded | null): boolean {
    return this.prefixCache && (e !== null || this.start.length > 0);
  }

  /**
   * The prefix's keys/values, computed once per context (in the engine's job lane, a chunk per
   * unit) and kept with the context in memory.
   */
  private ensurePrefixKv(e: Loaded | null): Promise<LayerKv[]> {
    const slot: KvSlot = e ?? this.plainSlot;
    if (slot.kv) return Promise.resolve(slot.kv);
    if (slot.kvPending) return slot.kvPending;
    const model = this.model;
    const steps = function* (this: SoftpressService): Generator<void, LayerKv[]> {
      const { prefix, memory } = noGrad(() => tidy(() => this.prefixEmbeds(e)));
      try {
        return yield* prefixKeysValues(model, prefix, { memory, lora: e?.lora, chunk: 256 });
      } finally {
        prefix.free();
      }
    };
    const pending = this.engine.runSteps(() => steps.call(this)).then(
      (kv) => {
        slot.kvPending = undefined;
        if (e && e.dead && e.refs === 0) {
          freeKv(kv);
          return kv;
        }
        slot.kv = kv;
        if (e) {
          const bytes = kvBytes(kv);
          e.bytes += bytes;
          if (this.loaded.get(e.id) === e) this.loadedBytes += bytes;
        }
        return kv;
      },
      (err: unknown) => {
        slot.kvPending = undefined;
        throw err;
      },
    );
    slot.kvPending = pending;
    return pending;
  }

  private row(e: Loaded | null, prompt: number[], o: { maxTokens: number; temperature: number; topP?: number; seed: number; stopTokens: Set<number>; onToken?: (id: number) => boolean | void }): RowRequest {
    if (!e && this.start.length === 0) {
      // No context and no start token (a model trained without BOS, e.g. SmolLM2). The batch
      // decoder reads every row as [prefix][prompt] with at least one prefix position, so the
      // prompt's own first token is the prefix: the model reads exactly the prompt's tokens, and
      // no stray BOS. Nothing is shared between such rows, so nothing is cached for them.
      // (startCompletion refuses an empty prompt here: there is no token to start from.)
      const [first, ...rest] = prompt;
      return { group: 'base|mem:0|embeds', prefixLen: 1, memoryLen: 0, buildPrefix: () => ({ prefix: this.embedIds([first]) }), prompt: rest, ...o };
    }
    const cached = this.cacheable(e) && prompt.length > 0;
    const slot: KvSlot = e ?? this.plainSlot;
    return {
      group: `${e ? e.group : 'base|mem:0'}|${cached ? 'kv' : 'embeds'}`,
      prefixLen: this.prefixLen(e),
      memoryLen: e?.memoryLen ?? 0,
      buildPrefix: () => {
        if (cached && slot.kv) return { prefixKv: slot.kv, memory: e?.ctx.memoryKv };
        return this.prefixEmbeds(e);
      },
      lora: e?.lora,
      prompt,
      ...o,
    };
  }

  /**
   * Queues rows (after caching their context's prefix keys/values). The queue bound is checked
   * synchronously, so a full queue is a 429 before any streaming starts.
   */
  private launch(e: Loaded | null, rows: RowRequest[]): Promise<{ outs: { r: RowOutcome; at: number }[]; prefixMs: number }> {
    try {
      this.engine.checkCapacity(rows.length + this.waitingForPrefix);
    } catch (err) {
      throw asHttpError(err);
    }
    return (async () => {
      let prefixMs = 0;
      if (this.cacheable(e) && rows.some((r) => r.prompt.length > 0) && !(e ?? this.plainSlot).kv) {
        const t = performance.now();
        this.waitingForPrefix += rows.length; // they count against the queue bound meanwhile
        try {
          await this.ensurePrefixKv(e);
        } finally {
          this.waitingForPrefix -= rows.length;
        }
        prefixMs = performance.now() - t;
      }
      const outs = await Promise.all(this.engine.submit(rows).map((p) => p.then((r) => ({ r, at: performance.now() }))));
      return { outs, prefixMs };
    })().catch((err: unknown) => {
      throw asHttpError(err);
    });
  }

  private checkWindow(e: Loaded | null, promptLen: number, maxTokens: number, param: string): void {
    const prefix = this.prefixLen(e) + (e?.memoryLen ?? 0);
    const need = prefix + promptLen + maxTokens;
    if (need > this.window) {
      throw new HttpError(
        400,
        'context_length_exceeded',
        `This model's maximum context length is ${this.window} tokens. However, you requested ${need} tokens (${prefix} in the context prefix, ${promptLen} in the prompt, ${maxTokens} for the completion). Reduce the prompt or the maximum tokens${e ? ', or use a context compressed at a higher ratio' : ''}.`,
        param,
      );
    }
  }

  // ------------------------------------------------------------------------------------------
  // Asking

  /** Answers questions about a stored context; all questions go to the micro-batcher at once. */
  async ask(id: string, body: AskBody, owner = ANONYMOUS): Promise<{
    id: string;
    method: string;
    softTokens: number;
    sourceTokens: number;
    answers: { question: string; answer: string; ms: number; tokens: number; finishReason: string }[];
    loadMs: number;
    prefixMs: number;
    queueMs: number;
    prefillMs: number;
    decodeMs: number;
    totalMs: number;
    batchSize: number;
  }> {
    const t0 = performance.now();
    const maxTokens = body.maxTokens ?? 32;
    const temperature = body.temperature ?? 0;
    const { entry, loadMs } = this.acquire(id, owner);
    try {
      const prompts = body.questions.map((q) => this.qaFormat.tail(q));
      prompts.forEach((p) => this.checkWindow(entry, p.length, maxTokens, 'questions'));
      const seed = body.seed ?? 0;
      const rows = prompts.map((p, i) => this.row(entry, p, { maxTokens, temperature, seed: seed + i, stopTokens: this.qaStops }));
      const { outs: done, prefixMs } = await this.launch(entry, rows);
      const end = performance.now();
      return {
        id,
        method: entry.method,
        softTokens: entry.ctx.meta.softTokens[0] ?? 0,
        sourceTokens: entry.ctx.meta.sourceTokens[0] ?? 0,
        answers: done.map(({ r, at }, i) => ({
          question: body.questions[i],
          answer: answerText(this.tokenizer.decode(r.tokens)),
          ms: round(at - t0),
          tokens: r.tokens.length,
          finishReason: r.finishReason,
        })),
        loadMs: round(loadMs, 2),
        prefixMs: round(prefixMs),
        queueMs: round(Math.max(...done.map((d) => d.r.queueMs))),
        prefillMs: round(Math.max(...done.map((d) => d.r.prefillMs))),
        decodeMs: round(Math.max(...done.map((d) => d.r.decodeMs))),
        totalMs: round(end - t0),
        batchSize: Math.max(...done.map((d) => d.r.batchSize)),
      };
    } finally {
      this.release(entry);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Completions (OpenAI-compatible routes)

  /**
   * Starts completions of text prompts (one row each), with a stored context in front when
   * contextId is given. Validation and queueing happen synchronously (they throw HttpErrors),
   * so a streaming route can still answer with an error status before it starts streaming.
   */
  startCompletion(req: CompletionRequest, onDelta?: (index: number, delta: string) => void): RunningCompletion {
    const t0 = performance.now();
    let entry: Loaded | null = null;
    let loadMs = 0;
    if (req.contextId !== undefined) ({ entry, loadMs } = this.acquire(req.contextId, req.owner ?? ANONYMOUS));
    try {
      const prefix = this.prefixLen(entry) + (entry?.memoryLen ?? 0);
      for (const p of req.prompts) if (p.length > this.window * this.maxTokenChars) this.checkWindow(entry, Math.ceil(p.length / this.maxTokenChars), req.maxTokens ?? 1, 'prompt');
      const prompts = req.prompts.map((p) => this.tokenizer.encode(p, req.special ? { allowSpecial: true } : undefined));
      if (!entry && this.start.length === 0 && prompts.some((p) => p.length === 0)) {
        throw new HttpError(400, 'empty_prompt', `the prompt is empty and ${this.modelName} is trained without a BOS token, so there is nothing to continue; send at least one token of text (or a context_id)`, 'prompt');
      }
      const stopIds = req.stopIds ? new Set(req.stopIds) : this.endIds;
      const longest = Math.max(...prompts.map((p) => p.length));
      const maxTokens = req.maxTokens ?? Math.max(1, Math.min(256, this.window - prefix - longest));
      prompts.forEach((p) => this.checkWindow(entry, p.length, maxTokens, 'max_tokens'));
      const streams = prompts.map(() => new TextStream(this.tokenizer, req.stop));
      const seed = req.seed ?? Math.floor(Math.random() * 2 ** 31);
      const rows = prompts.map((p, i) =>
        this.row(entry, p, {
          maxTokens,
          temperature: req.temperature,
          topP: req.topP,
          seed: seed + i,
          stopTokens: stopIds,
          onToken: (id) => {
            const { delta, stopped } = streams[i].push(id);
            if (delta && onDelta) onDelta(i, delta);
            return stopped;
          },
        }),
      );
      const held = entry;
      const result = this.launch(entry, rows)
        .then(({ outs: done, prefixMs }): CompletionResult => {
          const outs = done.map((d) => d.r);
          const choices = outs.map((r, i) => {
            const rest = streams[i].finish();
            if (rest && onDelta) onDelta(i, rest);
            return { index: i, text: streams[i].text, finishReason: r.finishReason === 'length' ? ('length' as const) : ('stop' as const), completionTokens: r.tokens.length };
          });
          const promptTokens = prompts.reduce((s, p) => s + prefix + p.length, 0);
          const completionTokens = choices.reduce((s, c) => s + c.completionTokens, 0);
          return {
            choices,
            promptTokens,
            completionTokens,
            context: held ? { id: held.id, softTokens: held.ctx.meta.softTokens[0] ?? 0, sourceTokens: held.ctx.meta.sourceTokens[0] ?? 0, method: held.method } : undefined,
            timings: {
              loadMs: round(loadMs, 2),
              prefixMs: round(prefixMs),
              queueMs: round(Math.max(...outs.map((o) => o.queueMs))),
              prefillMs: round(Math.max(...outs.map((o) => o.prefillMs))),
              decodeMs: round(Math.max(...outs.map((o) => o.decodeMs))),
              totalMs: round(performance.now() - t0),
              batchSize: Math.max(...outs.map((o) => o.batchSize)),
            },
          };
        })
        .finally(() => {
          if (held) this.release(held);
        });
      return {
        promptTokens: prompts.reduce((s, p) => s + prefix + p.length, 0),
        maxTokens,
        result,
        cancel: () => {
          for (const r of rows) r.cancelled = true;
        },
      };
    } catch (e) {
      if (entry) this.release(entry);
      throw e;
    }
  }

  /**
   * A chat as a prompt: rendered with the model's own chat template (renderChat; plain
   * "User: ..." lines for a model without one), ending at the template's end-of-turn ids and the
   * request's stop strings (plus the plain lines' "\nUser:" / "\nSystem:" for a plain chat).
   */
  chatPrompt(messages: ChatMessage[], stop: string[]): ChatPrompt {
    try {
      const r = renderChat(this.tokenizer, messages);
      return { prompt: r.text, stop: [...stop, ...r.stops], stopIds: r.stopIds, templated: r.templated, trimLead: !r.templated };
    } catch (e) {
      const msg = (e as Error).message;
      // a template may refuse a conversation (e.g. roles that do not alternate): also the client's to fix
      throw new HttpError(400, msg.startsWith('chat template') ? 'chat_template_error' : 'unsupported_content', msg, 'messages');
    }
  }

  // ------------------------------------------------------------------------------------------

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
      store: { path: this.store.path, contexts: this.store.count, bytes: this.store.totalBytes, maxBytes: this.store.maxBytes },
      memory: { contexts: this.loaded.size, bytes: this.loadedBytes, maxBytes: this.cacheBytes },
    };
  }

  /**
   * Stops the engine, frees loaded contexts and closes the store; a service that owns its model
   * (openService) then frees the model and compressors too, so closing gives the memory back.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.engine.close();
    for (const id of [...this.loaded.keys()]) this.unload(id);
    await this.plainSlot.kvPending?.catch(() => undefined);
    freeKv(this.plainSlot.kv);
    this.plainSlot.kv = undefined;
    await this.store.close();
    if (this.ownsModel) {
      for (const c of this.compressors.values()) freeCompressor(c);
      this.model.free();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Opening a service from folders

export interface OpenServiceOptions extends Omit<ServiceConfig, 'model' | 'tokenizer' | 'modelName' | 'store' | 'compressors'> {
  /**
   * The base model: a Hugging Face folder (with tokenizer.json), a GGUF file, or the name of a
   * model in the cache (e.g. smollm2-135m-instruct; the CLI pulls it first).
   */
  base: string;
  /** Compressor folders to load (each fails loudly). */
  compressorDirs?: string[];
  /** Also load compressors found beside the base model whose fingerprint matches (default true). */
  discover?: boolean;
  storePath: string;
  storeMaxBytes: number;
  log?: (line: string) => void;
}

/**
 * Compressor folders in and beside the base folder (those holding compressor.json). For a base
 * model that is a file (a GGUF, e.g. a cached model), the base folder is the one holding it.
 */
export function findCompressorDirs(base: string): string[] {
  const baseDir = existsSync(base) && !statSync(base).isDirectory() ? dirname(resolve(base)) : base;
  const out: string[] = [];
  const scan = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      try {
        if (statSync(p).isDirectory() && existsSync(join(p, 'compressor.json'))) out.push(p);
      } catch {
        // vanished while scanning
      }
    }
  };
  scan(baseDir);
  scan(dirname(resolve(baseDir)));
  return [...new Set(out.map((p) => resolve(p)))].sort();
}

/**
 * The id clients pass as `model` for a base model: a model name as given (or a cached named
 * model's file, by its name), else the file name without its extension, or the folder name.
 */
export function baseModelName(ref: string, path: string): string {
  if (!existsSync(ref) && namedModel(ref)) return ref;
  const abs = resolve(path);
  for (const m of MODELS) {
    const cached = cachedModelPath(m);
    if (cached && resolve(cached) === abs) return m.name;
  }
  const name = basename(abs);
  return existsSync(abs) && statSync(abs).isDirectory() ? name : name.replace(/\.(gguf|bin)$/i, '');
}

export function openService(o: OpenServiceOptions): SoftpressService {
  const log = o.log ?? (() => {});
  const path = resolveModelRef(o.base); // a name not in the cache: an error that says to pull it
  if (!existsSync(path) || (statSync(path).isDirectory() && !existsSync(join(path, 'config.json')))) {
    throw new Error(
      `no base model at ${o.base} (a folder with config.json, model.safetensors and tokenizer.json, a .gguf file, or a model name such as smollm2-135m-instruct; pretraining writes models/softpress-base) — pass --base`,
    );
  }
  const { model, tokenizer } = loadModel(path);
  if (!tokenizer) throw new Error(`${o.base}: no tokenizer.json or tokenizer.bin beside the model`);
  const compressors: Compressor[] = [];
  for (const dir of o.compressorDirs ?? []) {
    const c = loadCompressor(dir, model);
    compressors.push(c);
    log(`loaded compressor '${c.method}' from ${dir}`);
  }
  if (o.discover ?? true) {
    const explicit = new Set((o.compressorDirs ?? []).map((d) => resolve(d)));
    const have = new Set(compressors.map((c) => c.method));
    for (const dir of findCompressorDirs(path)) {
      if (explicit.has(dir)) continue;
      try {
        const cfg = JSON.parse(readFileSync(join(dir, 'compressor.json'), 'utf8')) as { method?: string; baseFingerprint?: string };
        if (cfg.baseFingerprint && cfg.baseFingerprint !== model.fingerprint()) continue; // for another base model
        if (typeof cfg.method !== 'string' || have.has(cfg.method)) continue;
        const c = loadCompressor(dir, model);
        compressors.push(c);
        have.add(c.method);
        log(`found compressor '${c.method}' in ${dir}`);
      } catch (e) {
        log(`skipped ${dir}: ${(e as Error).message}`);
      }
    }
  }
  const store = ContextStore.open(o.storePath, { maxBytes: o.storeMaxBytes, fingerprint: model.fingerprint() });
  try {
    return new SoftpressService({ ...o, model, tokenizer, modelName: baseModelName(o.base, path), store, compressors, ownsModel: true });
  } catch (e) {
    void store.close();
    for (const c of compressors) freeCompressor(c);
    model.free();
    throw e;
  }
}
