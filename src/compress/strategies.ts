/**
 * The context strategies that need no training (papers/baselines.md): `full` (the whole
 * context, as its token embeddings), `none` (nothing) and `truncate` (the last ceil(T / r)
 * tokens, the naive hard compression at the same token budget).
 */
import { noGrad, tensor } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import { registerCompressor } from './registry.js';
import { noSoftTokens } from './decode.js';
import { checkBudget, softCount, type Budget, type Compressor, type SoftContext } from './types.js';

function tokenContext(base: LlamaModel, method: string, contexts: number[][], kept: number[][], budget: Budget): SoftContext {
  const b = contexts.length;
  const k = Math.max(0, ...kept.map((x) => x.length));
  const softTokens = noGrad(() => {
    if (k === 0) return noSoftTokens(base, b);
    // Right-padded with the pad id's embedding; the mask (from meta.softTokens) hides it.
    const ids = kept.flatMap((x) => [...x, ...new Array(k - x.length).fill(0)]);
    return base.embed(tensor(ids, [b, k], { dtype: 'int64' }));
  });
  return {
    softTokens,
    meta: { method, budget, sourceTokens: contexts.map((c) => c.length), softTokens: kept.map((x) => x.length), baseFingerprint: base.fingerprint() },
  };
}

/** A strategy keeps some of the context's tokens: `count` of them (at most T) for T context tokens. */
function strategy(
  method: string,
  count: (contextTokens: number, budget: Budget) => number,
  opts: { budgetFree?: boolean } = {},
): (base: LlamaModel) => Compressor {
  // The last `count` tokens (all of them for full, none for none).
  const keep = (ids: number[], budget: Budget) => {
    const k = count(ids.length, budget);
    return k === 0 ? [] : ids.slice(ids.length - k);
  };
  return (base) => ({
    method,
    base,
    config: { method },
    module: null,
    budgetFree: opts.budgetFree,
    trainable: () => [],
    setTraining: () => {},
    softTokensFor(contextTokens: number, budget: Budget): number {
      checkBudget(budget);
      return count(contextTokens, budget);
    },
    compress(contexts: number[][], budget: Budget): SoftContext {
      checkBudget(budget);
      return tokenContext(
        base,
        method,
        contexts,
        contexts.map((ids) => keep(ids, budget)),
        budget,
      );
    },
  });
}

registerCompressor(
  'full',
  'the whole context as tokens (quality and cost ceiling)',
  false,
  strategy('full', (t) => t, { budgetFree: true }),
);
registerCompressor(
  'none',
  'no context at all (the floor)',
  false,
  strategy('none', () => 0, { budgetFree: true }),
);
registerCompressor(
  'truncate',
  'the last ceil(T/r) context tokens (same token budget as ratio r)',
  false,
  strategy('truncate', (t, budget) => Math.min(t, softCount(t, budget))),
);
