/**
 * Learned mean-pool baseline (papers/baselines.md): contiguous groups of a context's token
 * representations are averaged and mapped to soft tokens by one trained Linear(dim, dim),
 * initialised to the identity (zero bias), so that before training a soft token is exactly the
 * mean of its group.
 *
 * Representations (`source`): 'embeddings' — the base model's input embeddings of the tokens;
 * 'hidden' — its last-layer states after the final norm, from a no-grad base forward over
 * [BOS] context (the BOS position is dropped).
 *
 * Groups: ratio r → ceil(T / r) groups [floor(j r), min(floor((j+1) r), T)) (the last one may
 * be shorter; it is averaged over its own length); token budget k → k near-equal contiguous
 * groups [floor(j T / k), floor((j+1) T / k)) (when T < k, groups repeat a token so none is
 * empty). An empty context gives no soft tokens.
 *
 * Batches of contexts of different lengths: soft tokens are right-padded to the batch's
 * largest count (padding rows are zero), with meta.softTokens the per-item counts and mask
 * [batch, k] (true = real).
 */
import { Tensor, cat, noGrad, tensor, tidy, eye, zeros } from '../tensor/index.js';
import { Linear, Module, type Parameter } from '../nn/index.js';
import type { LlamaModel } from '../models/llama.js';
import { encoderBosDefault, registerCompressor, type CompressorEnv } from './registry.js';
import { checkBudget, softCount, type Budget, type Compressor, type CompressorConfig, type SoftContext, type Stage } from './types.js';
import { optBool, optEnum } from './options.js';
import { ours, paper, type MethodRecipe, type StageRecipe } from './recipe.js';

export type MeanPoolSource = 'embeddings' | 'hidden';

export interface MeanPoolOptions {
  /** What is averaged (default 'embeddings'). */
  source?: MeanPoolSource;
  /** With source 'hidden': run the base over [BOS] context (default: as the base's tokenizer starts sequences). */
  bos?: boolean;
}

/** The optimiser: papers/baselines.md gives none for the baseline; softpress's own settings. */
const MEANPOOL_STAGE: StageRecipe = {
  lr: ours(1e-3),
  minLrFraction: ours(0.1),
  warmupFraction: ours(0.05),
  schedule: ours('cosine'),
  weightDecay: ours(0.01),
  betas: ours([0.9, 0.95]),
  clip: ours(1.0),
};

/** The mean-pool baseline's recipe (papers/baselines.md: group means, a trained linear projector). */
export const MEANPOOL_RECIPE: MethodRecipe = {
  method: 'meanpool',
  source: 'papers/baselines.md (softpress baseline)',
  options: {
    source: paper('embeddings', 'input embeddings or last-layer states'),
  },
  stages: { ae: MEANPOOL_STAGE, lm: MEANPOOL_STAGE, qa: MEANPOOL_STAGE },
  train: {},
  deviations: [],
};

/** [start, end) token ranges of the groups of a context of T tokens under a budget. */
export function poolGroups(T: number, budget: Budget): [number, number][] {
  const k = softCount(T, budget);
  if (T === 0) return [];
  const out: [number, number][] = [];
  if (budget.ratio !== undefined) {
    const r = budget.ratio;
    for (let j = 0; j < k; j++) out.push([Math.floor(j * r), Math.min(Math.floor((j + 1) * r), T)]);
  } else {
    for (let j = 0; j < k; j++) {
      const start = Math.floor((j * T) / k);
      out.push([start, Math.max(start + 1, Math.floor(((j + 1) * T) / k))]);
    }
  }
  return out;
}

class MeanPoolModule extends Module {
  readonly proj: Linear;
  constructor(dim: number) {
    super();
    this.proj = this.module('proj', new Linear(dim, dim, { bias: true }));
    tidy(() => noGrad(() => this.proj.weight.value.copy_(eye(dim))));
  }
}

export class MeanPoolCompressor implements Compressor {
  readonly method = 'meanpool';
  readonly config: CompressorConfig;
  readonly module: MeanPoolModule;
  readonly source: MeanPoolSource;
  readonly bos: boolean;

  constructor(
    readonly base: LlamaModel,
    options: Record<string, unknown> = {},
    env: CompressorEnv = {},
  ) {
    this.source = optEnum(this.method, options, 'source', ['embeddings', 'hidden'] as const, MEANPOOL_RECIPE.options.source.value as MeanPoolSource);
    this.bos = optBool(this.method, options, 'bos', encoderBosDefault(base, env));
    this.config = { method: this.method, source: this.source, bos: this.bos };
    this.module = new MeanPoolModule(base.dim);
    this.module.eval();
  }

  trainable(_stage: Stage): [string, Parameter][] {
    return this.module.namedParameters().filter(([, p]) => p.trainable);
  }

  setTraining(on: boolean): void {
    this.module.train(on);
  }

  /** Token representations [B, Tmax, dim] (float32, no graph), right-padded. */
  private representations(contexts: number[][], tMax: number): Tensor {
    const b = contexts.length;
    return noGrad(() => {
      const bosId = this.base.config.bosTokenId;
      const off = this.source === 'hidden' && this.bos && bosId !== undefined ? 1 : 0;
      const ids: number[] = [];
      for (const c of contexts) {
        if (off) ids.push(bosId!);
        ids.push(...c, ...new Array(tMax - c.length).fill(0));
      }
      const idT = tensor(ids, [b, off + tMax], { dtype: 'int64' });
      // Right padding under causal attention: real positions never see the padding, and their
      // positions are 0.. as if alone, so no padding mask is needed.
      const reps = this.source === 'embeddings' ? this.base.embed(idT) : this.base.forward({ ids: idT, logits: 'none' }).hidden;
      return (off ? reps.narrow(1, off, tMax) : reps).to('float32');
    });
  }

  compress(contexts: number[][], budget: Budget): SoftContext {
    checkBudget(budget);
    const b = contexts.length;
    if (b === 0) throw new Error('meanpool: no contexts to compress');
    const groups = contexts.map((c) => poolGroups(c.length, budget));
    const counts = groups.map((g) => g.length);
    const k = Math.max(0, ...counts);
    const tMax = Math.max(0, ...contexts.map((c) => c.length));
    const meta = {
      method: this.method,
      budget: { ...budget },
      sourceTokens: contexts.map((c) => c.length),
      softTokens: counts,
      baseFingerprint: this.base.fingerprint(),
    };
    const maskVals: boolean[] = [];
    for (const n of counts) for (let j = 0; j < k; j++) maskVals.push(j < n);
    if (k === 0) return { softTokens: zeros([b, 0, this.base.dim], { dtype: this.base.dtype }), mask: zeros([b, 0], { dtype: 'bool' }), meta };
    const mask = tensor(maskVals, [b, k], { dtype: 'bool' });

    const reps = this.representations(contexts, tMax);
    // Group sums from prefix sums (float64, so long contexts lose nothing), divided by each
    // group's own length: O(batch x tokens x dim) whatever the budget.
    const starts: number[] = [];
    const ends: number[] = [];
    const sizes: number[] = [];
    groups.forEach((gs) => {
      for (let j = 0; j < k; j++) {
        const [s, e] = gs[j] ?? [0, 1];
        starts.push(s);
        ends.push(e);
        sizes.push(e - s);
      }
    });
    const pooled = noGrad(() => {
      const reps64 = reps.to('float64');
      const prefix = cat([zeros([b, 1, this.base.dim], { dtype: 'float64' }), reps64.cumsum(1)], 1); // [B, Tmax+1, dim]
      const at = (idx: number[]) => prefix.gather(1, tensor(idx, [b, k, 1], { dtype: 'int64' }).expand(b, k, this.base.dim));
      return at(ends)
        .sub(at(starts))
        .div(tensor(sizes, [b, k, 1], { dtype: 'float64' }))
        .to('float32');
    });
    const projected = this.module.proj.forward(pooled);
    const softTokens = projected.mul(mask.unsqueeze(-1).to('float32')).to(this.base.dtype);
    return { softTokens, mask, meta };
  }
}

registerCompressor(
  'meanpool',
  'mean of each group of r token embeddings (or last-layer states), through a trained linear projector',
  true,
  (base, options, env) => new MeanPoolCompressor(base, options, env),
  { recipe: MEANPOOL_RECIPE },
);
