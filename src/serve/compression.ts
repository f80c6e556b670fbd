/**
 * Compress-and-store: a text becomes a soft context by a method at a budget, stored for its owner
 * and kept parsed in memory. The compression itself runs in the compression worker's thread
 * when there is one (CompressWorker: the event loop keeps answering meanwhile), else as one unit
 * of the engine's job lane on this thread.
 */
import { randomBytes } from 'node:crypto';
import { noGrad, tidy } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import {
  checkBudget,
  compressorAbout,
  freeSoftContext,
  isLearned,
  parseSoftContext,
  serializeSoftContext,
  softTokensOf,
  type Budget,
  type Compressor,
  type SoftContext,
} from '../compress/index.js';
import { ownerOfRecord, StoreError, type OwnerQuota, type StoredContext } from './store.js';
import type { Engine } from './engine.js';
import { HttpError, asHttpError, quotaError, round } from './errors.js';
import { view, type ContextView, type Contexts } from './contexts.js';
import type { CompressWorker } from './compress-worker.js';
import { encodeYielding } from './text.js';

export interface CreateContextBody {
  text: string;
  method?: string;
  ratio?: number;
  budget?: number;
}

export interface MethodInfo {
  name: string;
  learned: boolean;
  about: string;
  ratios: number[] | null;
  maxInputTokens: number;
}

export interface CompressionConfig {
  model: LlamaModel;
  tokenizer: Tokenizer;
  engine: Engine;
  contexts: Contexts;
  compressors: ReadonlyMap<string, Compressor>;
  /** Runs the compressions off this thread when given. */
  worker?: CompressWorker;
  defaultMethod: string;
  defaultRatio: number;
  /** Context tokens a strategy accepts at most; learned methods read at most the base window. */
  maxInputTokens: number;
  /** Positions every stored context's prefix takes before its soft tokens (the lead). */
  leadLength: number;
  /** Positions a stored context must leave free in the window for a question and answer. */
  minRoom: number;
  /** The longest token in characters: a text of n characters has at least n / this tokens. */
  maxTokenChars: number;
}

export class Compression {
  private readonly window: number;
  /** Contexts being compressed per owner (they count against its quota until stored). */
  private readonly creating = new Map<string, number>();

  constructor(private readonly c: CompressionConfig) {
    this.window = c.model.config.maxPositions;
  }

  methods(): MethodInfo[] {
    return [...this.c.compressors.values()].map((c) => ({
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
    if (!isLearned(c.method)) return this.c.maxInputTokens;
    const declared = (c as unknown as { maxInputTokens?: unknown }).maxInputTokens ?? c.config.maxInputTokens;
    if (typeof declared === 'number' && declared > 0) return declared;
    const segmented = (c as unknown as { segmentLen?: unknown }).segmentLen ?? c.config.segmentLen;
    return typeof segmented === 'number' && segmented > 0 ? this.c.maxInputTokens : this.window;
  }

  /**
   * Compresses a text with a method at a budget and stores the result for its owner. With a
   * quota, an owner at its limit gets 429 insufficient_quota before any compression (contexts
   * being compressed count), and the store checks the quota again in the insert's transaction.
   * `evicted` lists only the owner's own contexts that made room (others' ids are not shown).
   */
  async create(body: CreateContextBody, owner: string, quota?: OwnerQuota): Promise<ContextView & { evicted: string[] }> {
    if (quota && (quota.contexts || quota.bytes)) {
      const u = this.c.contexts.store.usage(owner);
      const inFlight = this.creating.get(owner) ?? 0;
      if (quota.contexts && u.contexts + inFlight >= quota.contexts) {
        throw quotaError(
          `you store ${u.contexts} contexts${inFlight ? ` and ${inFlight} more are being compressed` : ''}; your quota is ${quota.contexts}. Delete some (DELETE /v1/contexts/ID) before creating more`,
        );
      }
      if (quota.bytes && u.bytes >= quota.bytes) {
        throw quotaError(`your stored contexts take ${u.bytes} bytes, your quota is ${quota.bytes}. Delete some (DELETE /v1/contexts/ID) before creating more`);
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

  private async compressAndStore(body: CreateContextBody, owner: string, quota: OwnerQuota | undefined): Promise<ContextView & { evicted: string[] }> {
    const method = body.method ?? this.c.defaultMethod;
    const c = this.c.compressors.get(method);
    if (!c) throw new HttpError(400, 'unknown_method', `unknown method '${method}'; this server offers ${[...this.c.compressors.keys()].join(', ')}`, 'method');
    if (body.ratio !== undefined && body.budget !== undefined)
      throw new HttpError(400, 'bad_budget', 'give either ratio (context tokens per soft token) or budget (soft tokens), not both', 'ratio');
    const budget: Budget = body.budget !== undefined ? { tokens: body.budget } : { ratio: body.ratio ?? this.c.defaultRatio };
    try {
      checkBudget(budget);
    } catch (e) {
      throw new HttpError(400, 'bad_budget', (e as Error).message, budget.ratio !== undefined ? 'ratio' : 'budget');
    }
    if (budget.ratio !== undefined && c.ratios && !c.ratios.includes(budget.ratio)) {
      throw new HttpError(400, 'bad_ratio', `method '${method}' was trained for ratios ${c.ratios.join(', ')}; got ${budget.ratio}`, 'ratio');
    }
    const limit = this.inputLimit(c);
    if (body.text.length > limit * this.c.maxTokenChars) {
      throw new HttpError(
        413,
        'context_too_long',
        `the text has ${body.text.length} characters, so more than ${limit} tokens; method '${method}' reads at most ${limit} tokens. Use a shorter text.`,
        'text',
      );
    }
    const ids = await encodeYielding(this.c.tokenizer, body.text);
    if (ids.length === 0) throw new HttpError(400, 'empty_text', 'the text has no tokens', 'text');
    if (ids.length > limit) {
      const learned = isLearned(method);
      throw new HttpError(
        413,
        'context_too_long',
        `the text is ${ids.length} tokens; method '${method}' reads at most ${limit} tokens${learned ? " (the base model's window)" : ''}. Use a shorter text${learned ? ' or the truncate strategy' : ''}.`,
        'text',
      );
    }
    this.checkFits(c, softTokensOf(c, ids.length, budget), 0, ids.length);
    const { ctx, bytes, compressMs } = await this.compress(c, ids, budget).catch((e: unknown) => {
      const err = asHttpError(e);
      if (err instanceof HttpError) throw err;
      throw new HttpError(500, 'compression_failed', `compression with '${method}' failed: ${(e as Error).message}`);
    });
    let stored: StoredContext;
    let evicted: StoredContext[];
    try {
      const soft = ctx.meta.softTokens[0] ?? 0; // soft tokens, or memory slots for memory-KV methods
      const memoryLen = ctx.memoryKv?.[0]?.k.size(2) ?? 0;
      this.checkFits(c, ctx.softTokens ? soft : 0, memoryLen, ids.length);
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
        baseFingerprint: this.c.contexts.store.fingerprint,
        textChars: body.text.length,
        owner,
      };
      ({ evicted } = this.c.contexts.store.put(stored, bytes, { quota }));
    } catch (e) {
      freeSoftContext(ctx);
      if (e instanceof StoreError) throw e.code === 'too_large' ? new HttpError(413, 'context_too_large_for_store', e.message) : quotaError(e.message);
      throw e;
    }
    for (const m of evicted) this.c.contexts.unload(m.id);
    this.c.contexts.remember(stored, ctx);
    return { ...view(stored), evicted: evicted.filter((m) => ownerOfRecord(m) === owner).map((m) => m.id) };
  }

  /** The soft context and its .softctx bytes: in the worker's thread, or as one engine unit here. */
  private async compress(c: Compressor, ids: number[], budget: Budget): Promise<{ ctx: SoftContext; bytes: Uint8Array; compressMs: number }> {
    if (this.c.worker) {
      const { bytes, compressMs } = await this.c.worker.compress(c.method, ids, budget);
      return { ctx: parseSoftContext(bytes, this.c.model), bytes, compressMs };
    }
    return this.c.engine.runJob(() => {
      const t0 = performance.now();
      const ctx = noGrad(() => tidy(() => c.compress([ids], budget)));
      const compressMs = performance.now() - t0;
      try {
        return { ctx, bytes: serializeSoftContext(ctx), compressMs };
      } catch (e) {
        freeSoftContext(ctx);
        throw e;
      }
    });
  }

  private checkFits(c: Compressor, soft: number, memoryLen: number, sourceTokens: number): void {
    const need = this.c.leadLength + soft + memoryLen + this.c.minRoom;
    if (need <= this.window) return;
    const whole = c.budgetFree === true && soft === sourceTokens; // the method keeps every context token (`full`)
    const what = whole
      ? `the full context of ${sourceTokens} tokens`
      : `the context of ${sourceTokens} tokens becomes ${memoryLen ? `${memoryLen} memory slots and ${soft} soft tokens` : `${soft} soft tokens`}, which`;
    const hint = whole ? 'Compress it (e.g. method truncate or a learned method) or send a shorter text.' : 'Use a higher ratio (or a smaller budget).';
    const lead = this.c.leadLength === 1 ? 'BOS' : `${this.c.leadLength} tokens: the QA demonstration`;
    throw new HttpError(
      413,
      'context_too_long',
      `${what} with its lead (${lead}) and room for a question (${this.c.minRoom} positions) needs ${need} positions, but the base model's window is ${this.window} tokens. ${hint}`,
      'text',
    );
  }
}
