/**
 * How the decoder reads any SoftContext, the same way for every method:
 *   [lead] [soft tokens] [tail tokens]   (memory KV, when present, sits inside attention)
 * The lead is BOS, or the tokens a chat template puts before the user's text (models/chat.ts).
 * Items with fewer soft tokens than the batch's k are padded on the left of their soft tokens
 * and masked, so the last prefix position is always real and positions stay contiguous.
 */
import { Tensor, cat, tensor, zeros } from '../tensor/index.js';
import { generate, type GenerateOptions, type GenerateResult } from '../models/generate.js';
import type { LlamaModel } from '../models/llama.js';
import type { LoraAdapters } from '../nn/layers.js';
import type { Compressor, SoftContext, Stage } from './types.js';

/**
 * The lead (BOS, or a chat head: at least one token) + soft tokens as input embeddings
 * [B, L+k, dim] and their mask [B, L+k].
 */
export function contextPrefix(model: LlamaModel, ctx: SoftContext, lead: number | readonly number[]): { embeds: Tensor; mask: Tensor } {
  const b = ctx.meta.sourceTokens.length;
  const leadIds = typeof lead === 'number' ? [lead] : [...lead];
  if (leadIds.length === 0) throw new Error('contextPrefix: the lead needs at least one token (BOS or a chat head)');
  const l = leadIds.length;
  const bosEmb = model.embed(tensor(Array.from({ length: b }, () => leadIds).flat(), [b, l], { dtype: 'int64' }));
  const leadMask = () => tensor(new Array(b * l).fill(1), [b, l], { dtype: 'bool' });
  const soft = ctx.softTokens;
  if (!soft || soft.size(1) === 0) return { embeds: bosEmb, mask: leadMask() };
  const k = soft.size(1);
  const counts = ctx.meta.softTokens;
  const ragged = counts.some((n) => n !== k);
  let softOut = soft.to(bosEmb.dtype);
  let softMask: Tensor;
  if (ragged) {
    // Move each row's n valid tokens to the end: order = [n..k-1 (pads), 0..n-1 (valid)].
    const order: number[] = [];
    const maskVals: number[] = [];
    for (const n of counts) {
      for (let i = n; i < k; i++) order.push(i);
      for (let i = 0; i < n; i++) order.push(i);
      for (let i = 0; i < k; i++) maskVals.push(i >= k - n ? 1 : 0);
    }
    const idx = tensor(order, [b, k, 1], { dtype: 'int64' }).expand(b, k, softOut.size(2));
    softOut = softOut.gather(1, idx);
    softMask = tensor(maskVals, [b, k], { dtype: 'bool' });
  } else {
    softMask = tensor(new Array(b * k).fill(1), [b, k], { dtype: 'bool' });
  }
  return {
    embeds: cat([bosEmb, softOut], 1),
    mask: cat([leadMask(), softMask], 1),
  };
}

export interface TailLossResult {
  /** Mean cross-entropy over the counted tail tokens. */
  loss: Tensor;
  /** Counted tokens. */
  tokens: number;
}

/**
 * Cross-entropy of tail tokens read after a soft context. tails[b] are ids; only positions
 * j >= lossFrom[b] count (e.g. the answer after a question). Runs with gradients, so it is
 * the training loss of every objective, and (under noGrad) the evaluation loss.
 */
export function tailLoss(
  model: LlamaModel,
  ctx: SoftContext,
  tails: number[][],
  lossFrom: number[],
  opts: { bos: number | readonly number[]; pad: number; lora?: LoraAdapters },
): TailLossResult {
  const b = tails.length;
  if (b !== ctx.meta.sourceTokens.length) throw new Error(`tailLoss: ${b} tails for ${ctx.meta.sourceTokens.length} contexts`);
  const len = Math.max(1, ...tails.map((t) => t.length));
  const ids: number[] = [];
  const mask: number[] = [];
  const targets: number[] = [];
  let counted = 0;
  tails.forEach((t, r) => {
    for (let j = 0; j < len; j++) {
      const real = j < t.length;
      ids.push(real ? t[j] : opts.pad);
      mask.push(real ? 1 : 0);
      const counts = real && j >= lossFrom[r];
      targets.push(counts ? t[j] : -100);
      if (counts) counted++;
    }
  });
  if (counted === 0) throw new Error('tailLoss: no tail token is counted');
  const prefix = contextPrefix(model, ctx, opts.bos);
  const p = prefix.embeds.size(1);
  const tailEmb = model.embed(tensor(ids, [b, len], { dtype: 'int64' }));
  const inputsEmbeds = cat([prefix.embeds, tailEmb], 1);
  const paddingMask = cat([prefix.mask, tensor(mask, [b, len], { dtype: 'bool' })], 1);
  const { hidden } = model.forward({ inputsEmbeds, paddingMask, kvPrefix: ctx.memoryKv, logits: 'none', lora: opts.lora });
  // Position p-1+j predicts tail token j.
  const loss = model.headLoss(hidden.narrow(1, p - 1, len), tensor(targets, [b * len], { dtype: 'int64' }), { ignoreIndex: -100 });
  return { loss, tokens: counted };
}

/** Generates answers to prompts (token ids) read after a soft context, one prompt per item. */
export function generateWithContext(
  model: LlamaModel,
  ctx: SoftContext,
  prompts: number[][],
  bos: number | readonly number[],
  opts: Omit<GenerateOptions, 'prefixEmbeds' | 'prefixMask' | 'kvPrefix'>,
): GenerateResult {
  const prefix = contextPrefix(model, ctx, bos);
  return generate(model, prompts, { ...opts, prefixEmbeds: prefix.embeds, prefixMask: prefix.mask, kvPrefix: ctx.memoryKv });
}

/**
 * The context with the compressor's task embeddings for `task` (Compressor.taskEmbeddings)
 * after each item's soft tokens: item i reads [its soft tokens][task embeddings] and then the
 * tail. Returns ctx itself when the compressor has none for the task; otherwise a new context
 * with new softTokens and mask that shares the rest (memory KV) with ctx.
 */
export function withTaskEmbeddings(c: Compressor | null | undefined, ctx: SoftContext, task: Stage | undefined): SoftContext {
  const extra = task && c?.taskEmbeddings ? c.taskEmbeddings(task) : undefined;
  if (!extra || extra.size(0) === 0) return ctx;
  const b = ctx.meta.sourceTokens.length;
  const n = extra.size(0);
  const dim = extra.size(1);
  const soft = ctx.softTokens;
  const counts = soft ? ctx.meta.softTokens : new Array(b).fill(0);
  const k = soft ? soft.size(1) : 0;
  const rows = extra.unsqueeze(0).expand(b, n, dim);
  const all = soft && k > 0 ? cat([soft.to(extra.dtype), rows], 1) : rows; // [B, k + n, dim]
  // Row i: its c_i real soft tokens, the n task embeddings, then its k - c_i padding rows.
  const order: number[] = [];
  const maskVals: boolean[] = [];
  for (const c0 of counts) {
    for (let j = 0; j < c0; j++) order.push(j);
    for (let j = 0; j < n; j++) order.push(k + j);
    for (let j = c0; j < k; j++) order.push(j);
    for (let j = 0; j < k + n; j++) maskVals.push(j < c0 + n);
  }
  const idx = tensor(order, [b, k + n, 1], { dtype: 'int64' }).expand(b, k + n, dim);
  return {
    ...ctx,
    softTokens: all.gather(1, idx),
    mask: tensor(maskVals, [b, k + n], { dtype: 'bool' }),
    meta: { ...ctx.meta, softTokens: counts.map((c0) => c0 + n) },
  };
}

/** An empty [b, 0, dim] soft-token tensor (the `none` strategy). */
export function noSoftTokens(model: LlamaModel, b: number): Tensor {
  return zeros([b, 0, model.dim], { dtype: model.dtype });
}
