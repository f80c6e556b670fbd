/**
 * What every generation row reads before its prompt, and the cache of its keys/values.
 *
 * A row's prefix is [lead][soft tokens] for a stored context (lead is qaPromptFormat's: [BOS] for
 * a base model, a one-shot QA demonstration for an instruct model; one prefix per context, so
 * its keys/values are computed once and shared by every kind of request), or the plain start
 * ([BOS] when the tokenizer adds one, nothing for a model trained without it) with no context.
 * The keys/values are computed in the engine's job lane, a chunk per unit, kept with the
 * context in memory (Contexts) or, for the plain start, here; later rows prefill only their prompt.
 */
import { cat, noGrad, tensor, tidy, type Tensor } from '../tensor/index.js';
import type { LayerKv, LlamaModel } from '../models/llama.js';
import { contextPrefix } from '../compress/index.js';
import type { Engine, RowOutcome, RowRequest } from './engine.js';
import { prefixKeysValues } from './decoder.js';
import { asHttpError } from './errors.js';
import type { Loaded } from './contexts.js';

/** Where a prefix's keys/values are cached: a stored context's entry, or the plain start. */
export interface KvSlot {
  kv?: LayerKv[];
  kvPending?: Promise<LayerKv[]>;
}

export function freeKv(kv: LayerKv[] | undefined): void {
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

/** A generation row's own settings (everything but its prefix). */
export interface RowSettings {
  maxTokens: number;
  temperature: number;
  topP?: number;
  seed: number;
  stopTokens: Set<number>;
  onToken?: (id: number) => boolean | void;
}

export interface Launched {
  /** Each row's outcome and when it finished. */
  outs: { r: RowOutcome; at: number }[];
  /** Computing the prefix's keys/values (0 when they were cached). */
  prefixMs: number;
}

export class PrefixKv {
  private readonly plainSlot: KvSlot = {};
  /** Rows waiting for their context's prefix keys/values before they can be queued. */
  private waitingForPrefix = 0;

  constructor(
    private readonly model: LlamaModel,
    private readonly engine: Engine,
    /** The lead before every stored context's soft tokens (at least one token). */
    readonly lead: readonly number[],
    /** What a sequence without a context starts with. */
    readonly start: readonly number[],
    /** Keep prefixes' keys/values after their first use. */
    readonly enabled: boolean,
    /** Told the bytes of a context's prefix keys/values once they are kept with it. */
    private readonly onCached: (e: Loaded, bytes: number) => void,
  ) {
    if (lead.length === 0) throw new Error('the QA format has an empty lead; a context prefix needs at least one token');
  }

  /** Positions of a row's prefix before its prompt (memory slots aside). */
  prefixLen(e: Loaded | null): number {
    return e ? this.lead.length + e.soft : this.start.length;
  }

  /** Token ids as embeddings [n, dim]. */
  private embedIds(ids: readonly number[]): Tensor {
    return this.model.embed(tensor([...ids], [1, ids.length], { dtype: 'int64' })).reshape(ids.length, this.model.dim);
  }

  /**
   * A prefix as [P, dim]: [lead][soft tokens] for a stored context (its soft tokens without the
   * left padding contextPrefix masks, so P = lead + soft), or the plain start without one.
   */
  private embeds(e: Loaded | null): { prefix: Tensor; memory?: LayerKv[] } {
    if (!e) return { prefix: this.embedIds(this.start) };
    const l = this.lead.length;
    const { embeds } = contextPrefix(this.model, e.ctx, this.lead); // [1, l+k, dim]
    const k = embeds.size(1) - l;
    const flat = embeds.reshape(l + k, this.model.dim);
    const n = e.soft;
    const prefix = n === k ? flat : cat([flat.narrow(0, 0, l), flat.narrow(0, l + k - n, n)], 0);
    return { prefix, memory: e.ctx.memoryKv };
  }

  /** Whether rows of this context share a prefix whose keys/values can be cached. */
  private cacheable(e: Loaded | null): boolean {
    return this.enabled && (e !== null || this.start.length > 0);
  }

  /** The prefix's keys/values, computed once (in the engine's job lane, a chunk per unit). */
  private ensure(e: Loaded | null): Promise<LayerKv[]> {
    const slot: KvSlot = e ?? this.plainSlot;
    if (slot.kv) return Promise.resolve(slot.kv);
    if (slot.kvPending) return slot.kvPending;
    const model = this.model;
    const steps = function* (this: PrefixKv): Generator<void, LayerKv[]> {
      const { prefix, memory } = noGrad(() => tidy(() => this.embeds(e)));
      try {
        return yield* prefixKeysValues(model, prefix, { memory, lora: e?.lora, chunk: 256 });
      } finally {
        prefix.free();
      }
    };
    const pending = this.engine
      .runSteps(() => steps.call(this))
      .then(
        (kv) => {
          slot.kvPending = undefined;
          if (e && e.dead && e.refs === 0) {
            freeKv(kv);
            return kv;
          }
          slot.kv = kv;
          if (e) this.onCached(e, kvBytes(kv));
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

  /** A generation row: the context's prefix (cached keys/values when there are), then the prompt. */
  row(e: Loaded | null, prompt: number[], o: RowSettings): RowRequest {
    if (!e && this.start.length === 0) {
      // No context and no start token (a model trained without BOS, e.g. SmolLM2). The batch
      // decoder reads every row as [prefix][prompt] with at least one prefix position, so the
      // prompt's own first token is the prefix: the model reads exactly the prompt's tokens, and
      // no stray BOS. Nothing is shared between such rows, so nothing is cached for them.
      // (Completions refuse an empty prompt here: there is no token to start from.)
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
        return this.embeds(e);
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
  launch(e: Loaded | null, rows: RowRequest[]): Promise<Launched> {
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
          await this.ensure(e);
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

  /** Frees the plain start's keys/values (after the engine has stopped). */
  async close(): Promise<void> {
    await this.plainSlot.kvPending?.catch(() => undefined);
    freeKv(this.plainSlot.kv);
    this.plainSlot.kv = undefined;
  }
}
