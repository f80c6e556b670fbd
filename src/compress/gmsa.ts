/**
 * GMSA — Group Merging and Layer Semantic Alignment (Tang et al., arXiv 2505.12215;
 * papers/gmsa.md). An encoder–decoder soft compressor:
 *
 *   context ids [B, T]
 *     -> encoder: the base model's first N_enc blocks + LoRA on all their projections, then the
 *        final norm                                                          states [B, T, H]
 *     -> group merging: the exact mean of each group of consecutive valid tokens
 *                                                                            merged [B, k, H]
 *     -> LSA: one causal transformer block (a trained copy of the decoder's first layer) and a
 *        frozen copy of the final norm, at positions 0..k-1                  soft   [B, k, H]
 *     -> the shared base model decodes [BOS] soft ... (decode.ts), through this compressor's
 *        decoder delta (`decoderLora`, zero until stage 2 trains it).
 *
 * Stages: 'ae' (autoencoding; also 'lm' if a run mixes continuation in) trains the encoder LoRA
 * and the LSA block; 'qa' freezes both and trains the decoder's W_Q, W_K, W_V as a full delta
 * kept outside the base model (decoder.safetensors), so the base model file is never modified.
 *
 * Ablations (the paper's table), as options saved in compressor.json:
 *   merge 'mean'     group merging (the method)
 *         'strided'  no merging: one encoder state per group, the group's last token (every r-th
 *                    state; under the causal encoder it is the one that has read its whole group)
 *         'queries'  learned, non-uniform pooling within each group: weights softmax(q · h_t)
 *                    over the group's tokens with one trained query vector q [H] (no cross-
 *                    attention). q starts at zero, i.e. at the exact mean, so the ablation
 *                    isolates what "uniform aggregation" buys against letting tokens dominate.
 *   lsa   true       the LSA block
 *         false      merged vectors go to the decoder through only the frozen norm copy.
 */
import { Tensor, arange, linear, noGrad, tensor, tidy, where, zeros } from '../tensor/index.js';
import { Module, type Parameter } from '../nn/module.js';
import { LoraAdapters, RMSNorm, type LoraConfig, type LoraDelta } from '../nn/layers.js';
import { DecoderLayer, LORA_TARGETS, type LlamaModel } from '../models/llama.js';
import { encoderBosDefault, registerCompressor, type CompressorEnv } from './registry.js';
import { optBool, optEnum, optNumber } from './options.js';
import { ours, paper, type MethodRecipe } from './recipe.js';
import { groupStarts } from './batching.js';
import { checkBudget, trainableDtype, type Budget, type Compressor, type CompressorConfig, type SoftContext, type Stage } from './types.js';

export const GMSA_MERGES = ['mean', 'strided', 'queries'] as const;
export type GmsaMerge = (typeof GMSA_MERGES)[number];

export interface GmsaOptions {
  /**
   * Encoder depth N_enc. Default the paper's 8, at most half the base's layers: on a base of
   * fewer than 16 layers (ours has 6) a depth of 8 would leave no decoder-sized gap, and half the
   * model keeps compression at most half a forward pass of the context.
   */
  encoderLayers?: number;
  /** Encoder LoRA rank. Default the paper's 128 (at most the hidden size, on tiny bases). */
  loraRank?: number;
  /** LoRA alpha. Default the paper's 32. */
  loraAlpha?: number;
  /** LoRA dropout (paper 0.05); active only while the encoder trains. */
  loraDropout?: number;
  merge?: GmsaMerge;
  lsa?: boolean;
  /**
   * Prepend the base model's BOS to the encoder's input (default: as the base's tokenizer starts
   * sequences, registry.ts encoderBosDefault). Its state is not merged; ratios count context
   * tokens only.
   */
  bos?: boolean;
}

/**
 * GMSA's training recipe (papers/gmsa.md, "Modules" and "Training"): stage 1 autoencoding
 * ('ae'), stage 2 QA fine-tuning of the decoder's W_Q, W_K, W_V ('qa').
 */
export const GMSA_RECIPE: MethodRecipe = {
  method: 'gmsa',
  source: 'arXiv 2505.12215 (papers/gmsa.md)',
  options: {
    encoderLayers: paper(8),
    loraRank: paper(128),
    loraAlpha: paper(32),
    loraDropout: paper(0.05),
    merge: paper('mean'),
    lsa: paper(true, 'k_LSA = 1 block'),
  },
  stages: {
    ae: {
      lr: paper(1e-4),
      minLrFraction: paper(0, 'linear or cosine decay, to 0'),
      warmupFraction: paper(0.1),
      schedule: paper('cosine', 'linear or cosine'),
      weightDecay: paper(0.01),
      betas: ours([0.9, 0.95]),
      clip: paper(2.0),
    },
    qa: {
      lr: paper(1e-5),
      minLrFraction: paper(0, 'linear or cosine decay, to 0'),
      warmupFraction: paper(0.1),
      schedule: paper('cosine', 'linear or cosine'),
      weightDecay: paper(0.01),
      betas: ours([0.9, 0.95]),
      clip: paper(2.0),
    },
  },
  train: {
    ratios: paper([4, 8], 'sampled per batch'),
  },
  deviations: [
    {
      key: 'options.encoderLayers',
      paper: '8',
      ours: 'min(8, ceil(L / 2))',
      why: 'equal on bases of 15+ layers (SmolLM2: 8 of 30); softpress-base has 6 layers (3)',
    },
    { key: 'options.loraRank', paper: '128', ours: 'min(128, hidden size)', why: 'equal on every real base; only tiny test bases are narrower than 128' },
    {
      key: 'restate prompt (instruct bases)',
      paper: '[soft] "Restate the aforementioned text." context EOS',
      ours: 'the same inside the chat template: a user turn of [soft] + the instruction, the context as the reply',
      why: 'SmolLM2 with the passage as context restates at 0.312 nats/token this way, 0.437 in plain text (results/restate-format.md); base models read the plain text',
    },
    {
      key: 'qa prompt',
      paper: '[soft] question answer EOS',
      ours: 'the evaluation\'s QA format: [lead] [soft] "\\nQuestion: q\\nAnswer:" answer EOS (lead BOS, or a one-shot demonstration on instruct bases)',
      why: 'one QA format for training and evaluation (models/chat.ts qaPromptFormat)',
    },
  ],
};

// ---- group merging -------------------------------------------------------------------------

/** Per batch: token -> group (-1 for padding), whether it ends its group, and group counts. */
interface MergePlan {
  /** [B, T] int64, -1 on padding. */
  group: Tensor;
  /** [B, T] bool, true on each group's last token. */
  last: Tensor;
  /** Groups (soft tokens) per item. */
  counts: number[];
  /** max(counts). */
  k: number;
}

function mergePlan(lengths: number[], t: number, budget: Budget): MergePlan {
  const group: number[] = [];
  const last: boolean[] = [];
  const counts: number[] = [];
  for (const n of lengths) {
    const starts = groupStarts(n, budget);
    counts.push(starts.length);
    let g = -1;
    for (let i = 0; i < t; i++) {
      if (i < n && g + 1 < starts.length && starts[g + 1] === i) g++;
      group.push(i < n ? g : -1);
      const end = g + 1 < starts.length ? starts[g + 1] : n;
      last.push(i < n && i === end - 1);
    }
  }
  const b = lengths.length;
  return {
    group: tensor(group, [b, t], { dtype: 'int64' }),
    last: tensor(last, [b, t], { dtype: 'bool' }),
    counts,
    k: Math.max(0, ...counts),
  };
}

/**
 * Group merging over a right-padded batch: states [B, T, H] of items with `lengths` real
 * tokens -> merged [B, k, H], k = the most groups of any item (rows past an item's count are
 * zero), and the counts. A weight matrix W [B, k, T] holds each group's token weights (mean:
 * 1/|g|; strided: 1 on its last token; queries: softmax(q · h) over its tokens), so one matmul
 * serves every variant. query [H] is needed for 'queries' only.
 */
export function mergeGroups(
  states: Tensor,
  lengths: number[],
  budget: Budget,
  merge: GmsaMerge = 'mean',
  query?: Tensor,
): { merged: Tensor; counts: number[] } {
  const [b, t, h] = states.shape;
  if (lengths.length !== b || lengths.some((n) => n > t))
    throw new Error(`mergeGroups: lengths [${lengths.join(', ')}] do not fit states ${states.describe()}`);
  const plan = mergePlan(lengths, t, budget);
  if (plan.k === 0) return { merged: zeros([b, 0, h], { dtype: states.dtype }), counts: plan.counts };
  const member = plan.group.unsqueeze(1).eq(arange(0, plan.k, 1, { dtype: 'int64' }).reshape(1, plan.k, 1)); // [B, k, T]
  const dtype = states.dtype;
  let w: Tensor;
  if (merge === 'mean') {
    const m = member.to(dtype);
    w = m.div(m.sum(-1, true).clamp(1, null)); // padded groups: 0 / 1
  } else if (merge === 'strided') {
    w = member.logicalAnd(plan.last.unsqueeze(1)).to(dtype);
  } else {
    if (!query) throw new Error("mergeGroups: merge 'queries' needs the query vector");
    const scores = states.matmul(query.to(states.dtype)).unsqueeze(1); // [B, 1, T]
    // A padded group's row is all -1e30: softmax is then finite (uniform) and zeroed below.
    const soft = where(member, scores, -1e30).softmax(-1);
    w = soft.mul(member.to(dtype).amax(-1, true)); // [B, k, 1]: 1 for a real group, 0 for padding
  }
  return { merged: w.matmul(states), counts: plan.counts };
}

// ---- modules -------------------------------------------------------------------------------

/**
 * Stage 2's W_Q, W_K, W_V as full deltas outside the shared base model: the decoder computes
 * x (W + ΔW)^T, and dL/dΔW = dL/dW, so training ΔW from zero is training the projections
 * themselves (only weight decay differs: it pulls toward W instead of 0). A full rather than
 * low-rank delta because the paper trains the full matrices and ours are small (786k numbers
 * for the 6-layer base). It is a LoraAdapters so the decoder, tailLoss, generate and
 * saveCompressor use it unchanged; it has no low-rank factors (the parent's config is unused).
 * Parameters "<layer>.<q|k|v>.delta.weight" [out, in].
 */
class ProjectionDelta extends LoraAdapters {
  private readonly deltas = new Map<string, LoraDelta>();
  constructor(specs: { key: string; inFeatures: number; outFeatures: number }[]) {
    super([], { rank: 1, alpha: 1 });
    for (const s of specs) {
      const w = this.param(`${s.key}.delta.weight`, zeros([s.outFeatures, s.inFeatures]));
      // Kept in float32 whatever the base's dtype (small updates survive); cast at use.
      this.deltas.set(s.key, { delta: (x: Tensor) => (x.dtype === w.value.dtype ? linear(x, w.value) : linear(x.to(w.value.dtype), w.value).to(x.dtype)) });
    }
  }
  override get(key: string): LoraDelta | undefined {
    return this.deltas.get(key);
  }
  override has(key: string): boolean {
    return this.deltas.has(key);
  }
}

/**
 * Layer Semantic Alignment: a copy of the decoder's first block (trains) and of the final norm
 * (frozen), run causally over the merged vectors at positions 0..k-1. Without the block
 * (ablation) only the norm is applied. Parameters "layer.*" (as model.layers.0.*), "norm.weight".
 */
class Lsa extends Module {
  readonly layer?: DecoderLayer;
  readonly norm: RMSNorm;
  constructor(
    private readonly base: LlamaModel,
    withBlock: boolean,
  ) {
    super();
    const cfg = base.config;
    // The block trains, so it is kept in float32 whatever the base's dtype (a bfloat16 copy would
    // swallow AdamW's small updates); the copy of a bfloat16 or float16 base is exact in float32.
    if (withBlock) {
      this.layer = this.module('layer', new DecoderLayer(cfg, 0));
      this.layer.loadStateDict(base.layers[0].stateDict());
    }
    this.norm = this.module('norm', new RMSNorm(cfg.hiddenSize, cfg.rmsNormEps));
    this.norm.loadStateDict(base.model.norm.stateDict());
    this.norm.freeze();
  }

  /** x [B, k, H] (right-padded, any dtype) -> [B, k, H] in the block's own dtype. */
  forward(input: Tensor): Tensor {
    const x = input.to(this.norm.weight.value.dtype);
    if (!this.layer) return this.norm.forward(x);
    const k = x.size(1);
    // The base model's RoPE tables (its theta and scaling), positions 0..k-1.
    const tables = this.base.ropeTables(k);
    const rope = (t: Tensor) => t.narrow(0, 0, k).reshape(1, 1, k, -1).to(x.dtype);
    // Causal only: with right padding no real position can see a padded one.
    const causal = arange(0, k).unsqueeze(0).le(arange(0, k).unsqueeze(1)); // [k, k] key <= query
    const mask = where(causal, 0, -1e30).to(x.dtype).reshape(1, 1, 1, k, k);
    const { out } = this.layer.forward(x, { cos: rope(tables.cos), sin: rope(tables.sin), mask });
    return this.norm.forward(out);
  }
}

/** Everything GMSA saves in weights.safetensors: "encoder.*", "merge.query", "lsa.*". */
class GmsaModule extends Module {
  readonly encoder: LoraAdapters;
  readonly query?: Parameter;
  readonly lsa: Lsa;
  constructor(base: LlamaModel, nEnc: number, lora: LoraConfig, merge: GmsaMerge, withLsa: boolean) {
    super();
    const layers = Array.from({ length: nEnc }, (_, i) => i);
    this.encoder = this.module('encoder', new LoraAdapters(base.loraSpecs(LORA_TARGETS, layers), lora));
    if (merge === 'queries') this.query = this.param('merge.query', zeros([base.dim]));
    this.lsa = this.module('lsa', new Lsa(base, withLsa));
  }
}

// ---- the compressor ------------------------------------------------------------------------

/**
 * The GMSA compressor over a shared, frozen base model (options: GmsaOptions, also read from
 * compressor.json). Soft tokens per context: ceil(T / r) at ratio r, min(k, T) at a budget of k.
 */
export class GmsaCompressor implements Compressor {
  readonly method = 'gmsa';
  readonly config: CompressorConfig;
  readonly module: GmsaModule;
  readonly decoderLora: ProjectionDelta;
  readonly encoderLayers: number;
  readonly merge: GmsaMerge;
  readonly bos: boolean;
  /** The stage last asked for by trainable(); its frozen parts run in eval mode. */
  private stage?: Stage;
  private training = true;

  constructor(
    readonly base: LlamaModel,
    options: Record<string, unknown> = {},
    env: CompressorEnv = {},
  ) {
    const m = this.method;
    const { numLayers: L, hiddenSize: h } = base.config;
    const r = GMSA_RECIPE.options;
    this.encoderLayers = optNumber(m, options, 'encoderLayers', Math.min(r.encoderLayers.value as number, Math.ceil(L / 2)), { integer: true, min: 1, max: L });
    const rank = optNumber(m, options, 'loraRank', Math.min(r.loraRank.value as number, h), { integer: true, min: 1 });
    const alpha = optNumber(m, options, 'loraAlpha', r.loraAlpha.value as number, { min: 0 });
    const dropout = optNumber(m, options, 'loraDropout', r.loraDropout.value as number, { min: 0, max: 0.99 });
    this.merge = optEnum(m, options, 'merge', GMSA_MERGES, r.merge.value as GmsaMerge);
    const lsa = optBool(m, options, 'lsa', r.lsa.value as boolean);
    this.bos = optBool(m, options, 'bos', encoderBosDefault(base, env)) && base.config.bosTokenId !== undefined;
    this.config = {
      method: m,
      encoderLayers: this.encoderLayers,
      loraRank: rank,
      loraAlpha: alpha,
      loraDropout: dropout,
      merge: this.merge,
      lsa,
      bos: this.bos,
    };

    this.module = new GmsaModule(base, this.encoderLayers, { rank, alpha, dropout }, this.merge, lsa);
    this.decoderLora = new ProjectionDelta(base.loraSpecs(['q', 'k', 'v']));
    // Trainable parameters stay in float32 whatever the base's dtype (float64 over a float64
    // base): the adapters and the deltas cast their inputs and outputs (nn/layers.ts), the LSA
    // block runs in that dtype.
    const own = trainableDtype(base);
    if (own !== 'float32') {
      this.module.toDtype(own);
      this.decoderLora.toDtype(own);
    }
  }

  /**
   * The parameters of a stage, named as in the saved weights (encoder and LSA as in
   * weights.safetensors, the decoder delta as in decoder.safetensors). Also switches the
   * compressor to that stage: every other parameter of it stops recording gradients.
   *   ae / lm: encoder LoRA + LSA block (+ the merge query); the copied norm stays frozen.
   *   qa:      the decoder's W_Q, W_K, W_V deltas only.
   */
  trainable(stage: Stage): [string, Parameter][] {
    this.stage = stage;
    const own = this.module.namedParameters().filter(([name]) => name !== 'lsa.norm.weight');
    const dec = this.decoderLora.namedParameters();
    const on = stage === 'qa' ? dec : own;
    for (const [, p] of [...own, ...dec]) p.trainable = on.some(([, q]) => q === p);
    this.setTraining(this.training);
    return on;
  }

  setTraining(on: boolean): void {
    this.training = on;
    this.module.train(on);
    this.decoderLora.train(on);
    // A frozen encoder runs without dropout.
    if (this.stage === 'qa') this.module.eval();
  }

  /**
   * contexts (ids, no BOS) -> soft tokens [B, k, H], right-padded, k = max groups per item;
   * mask [B, k] marks the real ones, meta.softTokens counts them. Carries gradients while
   * training; in eval mode runs without autograd (stored contexts hold no graph).
   */
  compress(contexts: number[][], budget: Budget): SoftContext {
    checkBudget(budget);
    const b = contexts.length;
    const lengths = contexts.map((c) => c.length);
    const counts = lengths.map((n) => groupStarts(n, budget).length);
    const k = Math.max(0, ...counts);
    const meta = { method: this.method, budget: { ...budget }, sourceTokens: lengths, softTokens: counts, baseFingerprint: this.base.fingerprint() };
    if (k === 0) return { softTokens: zeros([b, 0, this.base.dim], { dtype: this.base.dtype }), mask: zeros([b, 0], { dtype: 'bool' }), meta };
    const t = Math.max(...lengths);
    const run = () =>
      tidy(() => {
        // Right padding: causal attention hides the pads from every real token, and real tokens
        // keep their positions, so no padding mask is needed.
        const head = this.bos ? [this.base.config.bosTokenId!] : [];
        const rows = contexts.flatMap((c) => [...head, ...c, ...new Array(t - c.length).fill(0)]);
        const ids = tensor(rows, [b, head.length + t], { dtype: 'int64' });
        const encoded = this.base.forward({ ids, numLayers: this.encoderLayers, lora: this.module.encoder, logits: 'none' });
        const states = encoded.hidden.narrow(1, head.length, t); // [B, T, H], the context tokens only
        const { merged } = mergeGroups(states, lengths, budget, this.merge, this.module.query?.value); // [B, k, H]
        const mask = arange(0, k, 1, { dtype: 'int64' })
          .unsqueeze(0)
          .lt(tensor(counts, [b, 1], { dtype: 'int64' })); // [B, k]
        // Padded rows are zeroed so that a stored context does not depend on its batch.
        const aligned = this.module.lsa.forward(merged);
        const softTokens = aligned.mul(mask.unsqueeze(-1).to(aligned.dtype)).to(this.base.dtype);
        return { softTokens, mask };
      });
    return { ...(this.training ? run() : noGrad(run)), meta };
  }
}

registerCompressor(
  'gmsa',
  'GMSA: encoder (bottom layers + LoRA), group merging of r states, LSA block; stage 2 adapts the decoder W_Q/W_K/W_V',
  true,
  (base, options, env) => new GmsaCompressor(base, options, env),
  { recipe: GMSA_RECIPE },
);
