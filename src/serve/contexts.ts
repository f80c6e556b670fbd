/**
 * Stored contexts as the server sees them: their metadata from the ContextStore (LMDB), and the
 * ones in use kept parsed in memory (tensors, with their prefix keys/values once computed), least
 * recently used first out beyond `cacheBytes`. Each belongs to an owner (an API key's owner id,
 * or `anonymous`): another owner's context is not found (404), whether stored or in memory.
 */
import type { LlamaModel } from '../models/llama.js';
import type { LoraAdapters } from '../nn/layers.js';
import { SoftContextError, freeSoftContext, parseSoftContext, type Budget, type Compressor, type SoftContext } from '../compress/index.js';
import { ownerOfRecord, type ContextStore, type StoredContext } from './store.js';
import { HttpError, round } from './errors.js';
import { freeKv, type KvSlot } from './prefix-kv.js';

/** A stored context parsed in memory. */
export interface Loaded extends KvSlot {
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
  /** Rows of contexts with equal groups may share a decoder forward. */
  group: string;
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

export function view(m: StoredContext): ContextView {
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

export class Contexts {
  private readonly loaded = new Map<string, Loaded>();
  private loadedBytes = 0;

  constructor(
    readonly store: ContextStore,
    private readonly model: LlamaModel,
    private readonly modelName: string,
    private readonly compressors: ReadonlyMap<string, Compressor>,
    private readonly cacheBytes: number,
  ) {}

  private get fingerprint(): string {
    return this.store.fingerprint;
  }

  stats(): { contexts: number; bytes: number; maxBytes: number } {
    return { contexts: this.loaded.size, bytes: this.loadedBytes, maxBytes: this.cacheBytes };
  }

  notFound(id: string): HttpError {
    return new HttpError(404, 'context_not_found', `no context with id '${id}' (never created, deleted, or evicted from the store)`, 'id');
  }

  private mismatch(m: StoredContext): HttpError {
    return new HttpError(
      409,
      'base_model_mismatch',
      `context ${m.id} was made for base model ${m.baseFingerprint}, but this server runs base model ${this.fingerprint} (${this.modelName}); its soft tokens mean nothing to this model. Compress the text again (and DELETE this one).`,
    );
  }

  /** A stored context's metadata (404 unknown or another owner's, 409 another base model). */
  get(id: string, owner: string): ContextView {
    const m = this.store.getMeta(id);
    if (!m || ownerOfRecord(m) !== owner) throw this.notFound(id);
    if (m.baseFingerprint !== this.fingerprint) throw this.mismatch(m);
    return view(m);
  }

  /** The owner's contexts of this base model, most recently used first. */
  list(limit: number, owner: string): ContextView[] {
    return this.store.list({ limit, filter: (m) => ownerOfRecord(m) === owner && m.baseFingerprint === this.fingerprint }).map(view);
  }

  /** Deletes one of the owner's contexts (404 unknown or another owner's). */
  delete(id: string, owner: string): void {
    if (!this.store.delete(id, { owner })) throw this.notFound(id);
    this.unload(id);
  }

  /** Keeps a context just stored (or just read from the store) parsed in memory. */
  remember(m: StoredContext, ctx: SoftContext): Loaded {
    const memoryLen = ctx.memoryKv?.[0]?.k.size(2) ?? 0;
    const lora = this.compressors.get(m.method)?.decoderLora;
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
    this.shrink();
    return e;
  }

  /** Counts bytes added to an entry (its prefix keys/values), unless it has left the cache. */
  grow(e: Loaded, bytes: number): void {
    e.bytes += bytes;
    if (this.loaded.get(e.id) === e) this.loadedBytes += bytes;
  }

  private shrink(): void {
    if (this.loadedBytes <= this.cacheBytes) return;
    const idle = [...this.loaded.values()].filter((e) => e.refs === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const e of idle) {
      if (this.loadedBytes <= this.cacheBytes) break;
      this.unload(e.id);
    }
  }

  /** Drops a context from memory (freed now, or when its last user releases it). */
  unload(id: string): void {
    const e = this.loaded.get(id);
    if (!e) return;
    this.loaded.delete(id);
    this.loadedBytes -= e.bytes;
    e.dead = true;
    if (e.refs === 0) this.free(e);
  }

  private free(e: Loaded): void {
    freeSoftContext(e.ctx);
    freeKv(e.kv);
    e.kv = undefined;
  }

  /**
   * Takes a reference to one of the owner's stored contexts, loading it when needed (another
   * owner's is not found). Release it with release().
   */
  acquire(id: string, owner: string): { entry: Loaded; loadMs: number } {
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
        throw new HttpError(
          409,
          'method_unavailable',
          `context ${id} was made by method '${ctx.meta.method}', which this server has not loaded (start it with --compressor DIR for that method)`,
        );
      }
      e = this.remember(m, ctx);
    }
    e.refs++;
    e.lastUsed = performance.now();
    void this.store.touch(id).catch(() => {});
    return { entry: e, loadMs: performance.now() - t0 };
  }

  release(e: Loaded): void {
    e.refs--;
    if (e.refs === 0 && e.dead) this.free(e);
    else this.shrink();
  }

  /** Frees every context in memory. */
  clear(): void {
    for (const id of [...this.loaded.keys()]) this.unload(id);
  }
}
