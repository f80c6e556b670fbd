/**
 * Batching shared by the compressors: the groups of consecutive tokens a merging method forms
 * under a budget, and reshaping soft contexts across a batch (one stored context repeated for
 * several prompts, items of a batch picked, with repeats, and one item picked out of a batch).
 */
import { softCount, type Budget, type SoftContext } from './types.js';
import { tensor, type Tensor } from '../tensor/index.js';

/**
 * Start index of each group over n tokens (groups are consecutive; group g ends where g+1
 * starts, the last at n). Ratio r: groups of r tokens with a shorter final group, so
 * ceil(n / r) groups (a non-integer r alternates floor/ceil sizes, starts at floor(g r)).
 * Budget of k tokens: min(k, n) near-equal groups, starts floor(g n / k), sizes differing by
 * at most one (never an empty group, so never more soft tokens than context tokens).
 */
export function groupStarts(n: number, budget: Budget): number[] {
  if (budget.tokens !== undefined) {
    const k = Math.min(budget.tokens, n);
    return Array.from({ length: k }, (_, g) => Math.floor((g * n) / k));
  }
  const r = budget.ratio!;
  return Array.from({ length: softCount(n, budget) }, (_, g) => Math.floor(g * r + 1e-9));
}

function repeatRows(t: Tensor, n: number): Tensor {
  const shape = t.shape;
  return t.expand(n, ...shape.slice(1)).contiguous();
}

/** A context of one item as a batch of n copies of it (for n prompts). */
export function repeatSoftContext(ctx: SoftContext, n: number): SoftContext {
  const b = ctx.meta.sourceTokens.length;
  if (b !== 1) throw new Error(`repeatSoftContext: the context holds ${b} items; pick one first (selectSoftContext)`);
  if (!Number.isInteger(n) || n < 1) throw new Error(`repeatSoftContext: n must be a positive integer, got ${n}`);
  return {
    softTokens: ctx.softTokens && repeatRows(ctx.softTokens, n),
    mask: ctx.mask && repeatRows(ctx.mask, n),
    memoryKv: ctx.memoryKv?.map((kv) => ({ k: repeatRows(kv.k, n), v: repeatRows(kv.v, n) })),
    memoryMask: ctx.memoryMask && repeatRows(ctx.memoryMask, n),
    meta: { ...ctx.meta, sourceTokens: new Array(n).fill(ctx.meta.sourceTokens[0]), softTokens: new Array(n).fill(ctx.meta.softTokens[0]) },
  };
}

/**
 * A batch of rows.length items, item j being item rows[j] of ctx (an index may repeat): e.g. the
 * contexts of a batch compressed once each, laid out along the questions asked about them.
 */
export function indexSoftContext(ctx: SoftContext, rows: readonly number[]): SoftContext {
  const b = ctx.meta.sourceTokens.length;
  for (const r of rows) if (!Number.isInteger(r) || r < 0 || r >= b) throw new Error(`indexSoftContext: item ${r} outside 0..${b - 1}`);
  if (rows.length === 0) throw new Error('indexSoftContext: no rows');
  const index = tensor([...rows], [rows.length], { dtype: 'int64' });
  const pick = (t: Tensor) => t.indexSelect(0, index);
  return {
    softTokens: ctx.softTokens && pick(ctx.softTokens),
    mask: ctx.mask && pick(ctx.mask),
    memoryKv: ctx.memoryKv?.map((kv) => ({ k: pick(kv.k), v: pick(kv.v) })),
    memoryMask: ctx.memoryMask && pick(ctx.memoryMask),
    meta: { ...ctx.meta, sourceTokens: rows.map((r) => ctx.meta.sourceTokens[r]!), softTokens: rows.map((r) => ctx.meta.softTokens[r]!) },
  };
}

/** Item i of a batched context, as a context of one item (its padding slots trimmed). */
export function selectSoftContext(ctx: SoftContext, i: number): SoftContext {
  const b = ctx.meta.sourceTokens.length;
  if (!Number.isInteger(i) || i < 0 || i >= b) throw new Error(`selectSoftContext: item ${i} outside 0..${b - 1}`);
  const n = ctx.meta.softTokens[i];
  const soft = ctx.softTokens && ctx.softTokens.narrow(0, i, 1);
  const mem = ctx.memoryKv?.map((kv) => ({ k: kv.k.narrow(0, i, 1), v: kv.v.narrow(0, i, 1) }));
  return {
    softTokens: soft && soft.narrow(1, 0, Math.min(n, soft.size(1))).contiguous(),
    mask:
      ctx.mask &&
      ctx.mask
        .narrow(0, i, 1)
        .narrow(1, 0, Math.min(n, ctx.mask.size(1)))
        .contiguous(),
    // Memory slots are kept whole (their layout is the method's); the mask says which are real.
    memoryKv: mem?.map((kv) => ({ k: kv.k.contiguous(), v: kv.v.contiguous() })),
    memoryMask: ctx.memoryMask && ctx.memoryMask.narrow(0, i, 1).contiguous(),
    meta: { ...ctx.meta, sourceTokens: [ctx.meta.sourceTokens[i]], softTokens: [n] },
  };
}
