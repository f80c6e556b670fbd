/**
 * ComprExIT — context compression via explicit information transmission (arXiv 2602.03784;
 * papers/comprexit.md). The base model stays frozen and runs once over the context with every
 * hidden state returned; two small learned "transmission" modules and a projector turn those
 * states into soft tokens:
 *
 *   states   h_0..h_L     [B, T, L+1, H]   base model, no grad (it never trains)
 *   depth    anchors x_t  [B, T, H]        per-token attention over the L+1 layers
 *   width    slots z_j    [B*nW, K, H]     entropic optimal transport (log-domain Sinkhorn) of
 *                                          each window of W = 128 anchors into K slots
 *   output   soft tokens  [B, k, H]        projector(slots), each item's valid slots first
 *
 * Budgets (how many slots a window gets, and which tokens form each slot's block):
 * - {ratio r}: K = ceil(W / r) slots per window; token i of a window (0-based) belongs to
 *   block ceil((i + 1) / r) - 1, i.e. contiguous blocks of r tokens (floor(i / r) for integer
 *   r; blocks of floor(r) or ceil(r) tokens otherwise). A block with no real token is an invalid
 *   slot, so an item gets sum over its windows of ceil(n_w / r) soft tokens (n_w = its real
 *   tokens in window w). That is ceil(T / r) whenever r divides 128 (r = 2, 4, 8, 16, ...).
 * - {tokens k}: every item gets exactly k. Window w receives k_w slots in proportion to its
 *   real tokens (k * n_w / T, largest-remainder rounding, at least 1 and at most n_w), and its
 *   n_w tokens split into k_w contiguous blocks of near-equal size (token i → floor(i k_w / n_w)).
 *   Budgets that cannot be honoured this way are refused: k > T (a slot needs a token) or
 *   k < ceil(T / 128) (every window needs a slot).
 *
 * The output keeps only valid slots, in window order, left-aligned per item; its width is the
 * batch's largest count (meta.softTokens), and the mask marks the real ones.
 *
 * Layout (options `separateNorms`, `bias`, `bos`; issue #28), as the official code has it:
 * - three LayerNorms in the width module, one per role: LN_x for the anchors' side of the cost,
 *   LN_c for the prototypes' side, LN_v for the source mass and the transported values (the
 *   summary writes all three as "LN"; which LayerNorm feeds which role is our reading);
 * - biases on every Linear (W_q, W_k, W_v, W_c, W_v'), PyTorch's default init for weights and
 *   biases (U(±1/sqrt(in))); the projector as published (Xavier, zero biases);
 * - the encoder input starts with BOS (when the base's tokenizer starts sequences with it); the
 *   BOS states are not anchors, so the ratio counts context tokens only. The official code
 *   left-pads a batch; we right-pad with positions from the padding mask, which gives every item
 *   exactly the states it has alone (so the two are equal).
 * Compressors saved before these options (models/comprexit*) have one LayerNorm shared by all
 * roles, bias-free maps and no BOS: loading their compressor.json keeps that layout
 * (COMPREXIT_LEGACY).
 */
import { Tensor, cat, noGrad, stack, tensor, tidy, where, zeros } from '../tensor/index.js';
import { LayerNorm, Linear, Module, type Parameter } from '../nn/index.js';
import type { LlamaModel } from '../models/llama.js';
import { encoderBosDefault, registerCompressor, type CompressorEnv } from './registry.js';
import { optBool } from './options.js';
import { code, ours, paper, recipeOptions, type MethodRecipe } from './recipe.js';
import { checkBudget, type Budget, type Compressor, type CompressorConfig, type SoftContext, type Stage } from './types.js';

// ---- hyperparameters ---------------------------------------------------------------------------

export interface ComprExITOptions {
  /** Anchors per width-wise window (W). */
  window: number;
  /** Query/key width of the depth-wise attention (d_k). */
  keyDim: number;
  /** Temperature of the depth-wise softmax (tau). */
  depthTau: number;
  /** Output width of the cost projection W_c. */
  costDim: number;
  /** Entropic regularisation of the transport (epsilon). */
  epsilon: number;
  /** Sinkhorn iterations (unrolled). */
  iterations: number;
  /** Share of the source mass spread uniformly (lambda). */
  uniformMix: number;
  /** Temperature of the source-mass softmax (tau_s). */
  sourceTau: number;
}

/** The published settings (papers/comprexit.md). */
export const COMPREXIT_DEFAULTS: Readonly<ComprExITOptions> = Object.freeze({
  window: 128,
  keyDim: 256,
  depthTau: 0.7,
  costDim: 256,
  epsilon: 0.1,
  iterations: 30,
  uniformMix: 0.05,
  sourceTau: 1,
});

/**
 * ComprExIT's training recipe (papers/comprexit.md, "Training"; the layout from the official
 * code as issue #28 reads it). Stage 1 is next-token prediction of 128 tokens after a 512-token
 * context at r = 4; stage 2 QA fine-tuning on answer + EOS.
 */
export const COMPREXIT_RECIPE: MethodRecipe = {
  method: 'comprexit',
  source: 'arXiv 2602.03784 (papers/comprexit.md); layout from the official code (issue #28)',
  options: {
    ...Object.fromEntries(Object.entries(COMPREXIT_DEFAULTS).map(([k, v]) => [k, paper(v)])),
    separateNorms: code(true, 'three LayerNorms'),
    bias: code(true, 'biases on every Linear'),
    bos: code(true, "BOS first, as the base's tokenizer starts sequences"),
  },
  stages: {
    lm: {
      lr: paper(1e-4),
      minLrFraction: ours(0.1),
      warmupFraction: paper(0.05),
      schedule: ours('cosine'),
      weightDecay: ours(0.01),
      betas: ours([0.9, 0.95]),
      clip: paper(20),
    },
    qa: {
      lr: ours(1e-4, "stage 1's"),
      minLrFraction: ours(0.1),
      warmupFraction: ours(0.05, "stage 1's"),
      schedule: ours('cosine'),
      weightDecay: ours(0.01),
      betas: ours([0.9, 0.95]),
      clip: ours(20, "stage 1's"),
    },
  },
  train: {
    ratios: paper([4]),
    contextLen: paper(512),
    continuationLen: paper(128),
  },
  deviations: [
    {
      key: 'qa prompt',
      paper: '[BOS] slots question answer-prompt',
      ours: 'the evaluation\'s QA format: [lead] slots "\\nQuestion: q\\nAnswer:" (lead BOS, or a one-shot demonstration on instruct bases)',
      why: 'one QA format for training and evaluation (models/chat.ts qaPromptFormat)',
    },
    {
      key: 'LayerNorm roles',
      paper: 'three LayerNorms (official code)',
      ours: 'LN_x (anchors in the cost), LN_c (prototypes), LN_v (source mass and values)',
      why: 'our summary writes each as "LN"; which LayerNorm takes which role is our reading',
    },
  ],
};

/** The options of compressors saved before the layout options existed (one LayerNorm, no biases, no BOS). */
export const COMPREXIT_LEGACY = Object.freeze({ separateNorms: false, bias: false, bos: false });

/** Defaults overridden by known keys of `options` (e.g. a saved compressor.json); checked. */
export function comprexitOptions(options: Record<string, unknown> = {}): ComprExITOptions {
  const out = { ...COMPREXIT_DEFAULTS };
  const ints = new Set<keyof ComprExITOptions>(['window', 'keyDim', 'costDim', 'iterations']);
  for (const key of Object.keys(COMPREXIT_DEFAULTS) as (keyof ComprExITOptions)[]) {
    const v = options[key];
    if (v === undefined) continue;
    const bad =
      typeof v !== 'number' || !Number.isFinite(v) || (ints.has(key) ? !Number.isInteger(v) || v < 1 : key === 'uniformMix' ? v < 0 || v > 1 : v <= 0);
    if (bad)
      throw new Error(
        `comprexit: option ${key} must be ${ints.has(key) ? 'a positive integer' : key === 'uniformMix' ? 'a number in [0, 1]' : 'a positive number'}, got ${JSON.stringify(v)}`,
      );
    out[key] = v as number;
  }
  return out;
}

/**
 * Stands in for log 0 and for masked logits. Finite on purpose: exp of it is exactly 0 in
 * float32, but a row with no valid entry stays finite (-inf - (-inf) would be NaN).
 */
const NEG = -1e4;

// ---- depth-wise transmission -------------------------------------------------------------------

/** One anchor per token: attention over that token's L+1 hidden states. */
export class DepthTransmission extends Module {
  /** w [L+1], init 0: the layer mix the query is read from. */
  readonly layerLogits: Parameter;
  /** W_q: H -> d_k. */
  readonly query: Linear;
  /** W_k: H -> d_k. */
  readonly key: Linear;
  /** e [L+1, d_k], init N(0, 0.02): per-layer key embeddings. */
  readonly layerEmb: Parameter;
  /** W_v: H -> H. */
  readonly value: Linear;

  constructor(
    hidden: number,
    readonly numStates: number,
    readonly keyDim: number,
    readonly tau: number,
    bias = false,
  ) {
    super();
    this.layerLogits = this.param('layer_logits', zeros([numStates]));
    this.query = this.module('q_proj', torchLinear(hidden, keyDim, bias));
    this.key = this.module('k_proj', torchLinear(hidden, keyDim, bias));
    this.layerEmb = this.param(
      'layer_emb',
      noGrad(() => zeros([numStates, keyDim]).normal_(0, 0.02)),
    );
    this.value = this.module('v_proj', torchLinear(hidden, hidden, bias));
  }

  /**
   * states [B, T, L+1, H], mask [B, T] (bool, true = real token) → anchors [B, T, H] and the
   * layer weights alpha [B, T, L+1] (a distribution over layers at real tokens, 0 at padding).
   */
  forward(states: Tensor, mask: Tensor): { anchors: Tensor; alpha: Tensor } {
    const [b, t, n] = states.shape;
    if (n !== this.numStates) throw new Error(`comprexit: ${n} hidden states, the depth module was built for ${this.numStates}`);
    const mix = this.layerLogits.value.softmax(0).view(1, n); // softmax(w) [1, L+1]
    const q = this.query.forward(mix.matmul(states)); // [B, T, 1, d_k]
    // q . k_l = q . (W_k h_l + e_l) = (W_k^T q) . h_l + q . e_l: the same scores without
    // projecting every layer's states (L+1 times fewer multiply-adds).
    // With a bias b_k, q . b_k is the same for every layer and the softmax over layers cancels
    // it; it is added anyway, so the scores are exactly q . k_l.
    const qk = q.matmul(this.key.weight.value); // [B, T, 1, H]
    let scores = qk.matmul(states.transpose(-2, -1)).add(q.matmul(this.layerEmb.value.T)); // [B, T, 1, L+1]
    if (this.key.bias) scores = scores.add(q.matmul(this.key.bias.value.unsqueeze(-1)));
    const realTokens = mask.to('float32').view(b, t, 1, 1);
    const alpha = scores
      .mul(1 / (Math.sqrt(this.keyDim) * this.tau))
      .softmax(-1)
      .mul(realTokens);
    // sum_l alpha_l (W_v h_l + b_v) = W_v (sum_l alpha_l h_l) + b_v (the alphas sum to 1): project
    // the mix once. Padding tokens have alpha = 0, hence anchor 0.
    let anchors = this.value.forward(alpha.matmul(states).squeeze(2)); // [B, T, H]
    if (this.value.bias) anchors = anchors.mul(realTokens.view(b, t, 1));
    return { anchors, alpha: alpha.squeeze(2) };
  }
}

// ---- width-wise transmission -------------------------------------------------------------------

/** x / |x| over the last dim (0 stays 0), as in cosine similarity. */
function unit(x: Tensor): Tensor {
  return x.div(x.norm(2, -1, true).clamp(1e-8, null));
}

/**
 * Masked block means: anchors x [N, W, H] and block membership [N, W, K] (1 where token i is a
 * real token of block j, else 0) → prototypes [N, K, H] (0 for a block with no real token).
 */
export function blockMeans(x: Tensor, member: Tensor): Tensor {
  const counts = member.sum(1).clamp(1, null).unsqueeze(-1); // [N, K, 1]
  return member.transpose(1, 2).matmul(x).div(counts);
}

/**
 * Source mass a [N, W] from scores [N, W]: (1 - lambda) softmax(scores / tau) + lambda uniform,
 * over the real tokens of each window only, renormalised (an empty window gets all zeros).
 */
export function sourceMass(scores: Tensor, rowMask: Tensor, lambda: number, tau: number): Tensor {
  const real = rowMask.to('float32');
  const p = scores.div(tau).maskedFill(rowMask.logicalNot(), NEG).softmax(-1);
  const uniform = real.div(real.sum(-1, true).clamp(1, null));
  const a = p
    .mul(1 - lambda)
    .add(uniform.mul(lambda))
    .mul(real);
  return a.div(a.sum(-1, true).clamp(1e-30, null));
}

/** Target mass b [N, K]: 1 / K_valid on valid slots, 0 elsewhere. */
export function targetMass(colMask: Tensor): Tensor {
  const valid = colMask.to('float32');
  return valid.div(valid.sum(-1, true).clamp(1, null));
}

export interface SinkhornOptions {
  epsilon: number;
  iterations: number;
}

/**
 * Entropic optimal transport in the log domain, in float32, unrolled (gradients flow through
 * every iteration). cost [N, W, K]; source mass a [N, W] and target mass b [N, K], each summing
 * to 1 over its valid entries; rowMask [N, W] and colMask [N, K] bool (true = valid).
 * From u = v = 0:  u <- log a - logsumexp_j(-C/eps + v);  v <- log b - logsumexp_i(-C/eps + u).
 * Returns the plan P = exp(-C/eps + u + v) [N, W, K]: columns sum to b (exactly after the last
 * v update), rows to a (as converged), and P is exactly 0 on invalid rows and columns.
 */
export function sinkhorn(cost: Tensor, a: Tensor, b: Tensor, rowMask: Tensor, colMask: Tensor, opts: SinkhornOptions): Tensor {
  const valid = rowMask.unsqueeze(2).logicalAnd(colMask.unsqueeze(1)); // [N, W, K]
  const logits = where(valid, cost.to('float32').mul(-1 / opts.epsilon), NEG);
  const logA = where(rowMask, a.to('float32').clamp(1e-30, null).log(), NEG); // [N, W]
  const logB = where(colMask, b.to('float32').clamp(1e-30, null).log(), NEG); // [N, K]
  let u = zeros(logA.shape);
  let v = zeros(logB.shape);
  for (let i = 0; i < opts.iterations; i++) {
    u = logA.sub(logits.add(v.unsqueeze(1)).logsumexp(2));
    v = logB.sub(logits.add(u.unsqueeze(2)).logsumexp(1));
  }
  // Masked entries sit near NEG, so exp cannot overflow there (no inf * 0 in the backward).
  return where(valid, logits.add(u.unsqueeze(2)).add(v.unsqueeze(1)).exp(), 0);
}

/**
 * Slots as transport-weighted averages: z_j = (sum_i P_ij v_i) / b_j. plan [N, W, K], values
 * [N, W, H], target mass b [N, K] → [N, K, H] (0 at invalid slots, whose plan column is 0).
 */
export function transportSlots(plan: Tensor, values: Tensor, b: Tensor): Tensor {
  const safeB = where(b.gt(0), b, 1).unsqueeze(-1); // [N, K, 1]
  return plan.transpose(1, 2).matmul(values).div(safeB);
}

/** Moves each window's anchors into its slots with a Sinkhorn transport plan. */
export class WidthTransmission extends Module {
  /** LN of the anchors in the cost (with separateNorms false: the one LN of every role). */
  readonly norm: LayerNorm;
  /** LN of the prototypes in the cost (the same module as `norm` without separateNorms). */
  readonly protoNorm: LayerNorm;
  /** LN of the anchors for the source mass and the values (likewise). */
  readonly valueNorm: LayerNorm;
  /** W_c: H -> costDim. */
  readonly costProj: Linear;
  /**
   * w_s [H] and b_s [1], init 0 (so the source mass starts uniform). b_s shifts every score of
   * a window alike, which the softmax over tokens cancels: it is kept as published, but its
   * gradient is always 0.
   */
  readonly sourceWeight: Parameter;
  readonly sourceBias: Parameter;
  /** W_v': H -> H. */
  readonly value: Linear;

  constructor(
    hidden: number,
    costDim: number,
    readonly opts: Pick<ComprExITOptions, 'epsilon' | 'iterations' | 'uniformMix' | 'sourceTau'>,
    layout: { separateNorms?: boolean; bias?: boolean } = {},
  ) {
    super();
    if (layout.separateNorms) {
      this.norm = this.module('anchor_norm', new LayerNorm(hidden));
      this.protoNorm = this.module('proto_norm', new LayerNorm(hidden));
      this.valueNorm = this.module('value_norm', new LayerNorm(hidden));
    } else {
      this.norm = this.protoNorm = this.valueNorm = this.module('norm', new LayerNorm(hidden));
    }
    this.costProj = this.module('cost_proj', torchLinear(hidden, costDim, !!layout.bias));
    this.sourceWeight = this.param('source_weight', zeros([hidden]));
    this.sourceBias = this.param('source_bias', zeros([1]));
    this.value = this.module('v_proj', torchLinear(hidden, hidden, !!layout.bias));
  }

  /** C_ij = 1 - cos(W_c LN_x(x_i), W_c LN_c(c_j)): normed anchors [N, W, H], prototypes [N, K, H] → [N, W, K]. */
  cost(normed: Tensor, prototypes: Tensor): Tensor {
    const f = unit(this.costProj.forward(normed));
    const g = unit(this.costProj.forward(this.protoNorm.forward(prototypes)));
    return f.matmul(g.transpose(1, 2)).rsub(1);
  }

  /**
   * anchors [N, W, H] (windows), rowMask [N, W] (real tokens), member [N, W, K] (block
   * membership of real tokens), colMask [N, K] (valid slots) → slots [N, K, H] and the plan.
   */
  forward(anchors: Tensor, rowMask: Tensor, member: Tensor, colMask: Tensor): { slots: Tensor; plan: Tensor } {
    const normed = this.norm.forward(anchors); // LN_x(x) [N, W, H]
    const cost = this.cost(normed, blockMeans(anchors, member));
    const forValues = this.valueNorm === this.norm ? normed : this.valueNorm.forward(anchors); // LN_v(x)
    const scores = forValues.matmul(this.sourceWeight.value).add(this.sourceBias.value); // [N, W]
    const a = sourceMass(scores, rowMask, this.opts.uniformMix, this.opts.sourceTau);
    const b = targetMass(colMask);
    const plan = sinkhorn(cost, a, b, rowMask, colMask, this.opts);
    return { slots: transportSlots(plan, this.value.forward(forValues), b), plan };
  }
}

// ---- projector ---------------------------------------------------------------------------------

/**
 * A Linear as PyTorch's nn.Linear starts: weight and (optional) bias U(-1/sqrt(in), 1/sqrt(in)).
 * (Our Linear starts biases at 0.)
 */
function torchLinear(inFeatures: number, outFeatures: number, bias: boolean): Linear {
  const l = new Linear(inFeatures, outFeatures, { bias });
  if (l.bias) {
    const bound = 1 / Math.sqrt(inFeatures);
    noGrad(() => l.bias!.value.uniform_(-bound, bound));
  }
  return l;
}

/** Xavier-uniform init in place: U(-g sqrt(6 / (in + out)), +g sqrt(6 / (in + out))). */
function xavierUniform(p: Parameter, gain: number): void {
  const [out, inn] = p.value.shape;
  const bound = gain * Math.sqrt(6 / (inn + out));
  noGrad(() => p.value.uniform_(-bound, bound));
}

/** Linear(H, H) -> GELU -> Linear(H, H): slots into the decoder's input-embedding space. */
export class Projector extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(hidden: number) {
    super();
    this.fc1 = this.module('fc1', new Linear(hidden, hidden, { bias: true }));
    this.fc2 = this.module('fc2', new Linear(hidden, hidden, { bias: true }));
    xavierUniform(this.fc1.weight, 0.4);
    xavierUniform(this.fc2.weight, 0.4); // biases start at 0 (Linear's default)
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(this.fc1.forward(x).gelu());
  }
}

/** Everything that trains (and is saved): depth.*, width.*, projector.*. */
export class ComprExITModule extends Module {
  readonly depth: DepthTransmission;
  readonly width: WidthTransmission;
  readonly projector: Projector;
  constructor(hidden: number, numStates: number, opts: ComprExITOptions, layout: { separateNorms?: boolean; bias?: boolean } = {}) {
    super();
    this.depth = this.module('depth', new DepthTransmission(hidden, numStates, opts.keyDim, opts.depthTau, !!layout.bias));
    this.width = this.module('width', new WidthTransmission(hidden, opts.costDim, opts, layout));
    this.projector = this.module('projector', new Projector(hidden));
  }
}

// ---- windows, blocks and budgets ---------------------------------------------------------------

/** Where every token of a batch goes: its window, and the slot (block) within the window. */
export interface BlockLayout {
  /** Windows per item (the batch's longest context decides). */
  windows: number;
  /** Slots per window (K). */
  slots: number;
  /** Slot of token i of window w of item b at [(b * windows + w) * window + i]; -1 for padding. */
  blockOf: Int32Array;
  /** Valid slots of each item's windows [B][windows]. */
  perWindow: number[][];
  /** Valid slots per item (the sum of perWindow[b]). */
  counts: number[];
}

/** Splits k slots over windows with n_w tokens: proportional, largest remainder, 1 <= k_w <= n_w. */
function apportion(tokensPerWindow: number[], k: number): number[] {
  const total = tokensPerWindow.reduce((s, n) => s + n, 0);
  const quota = tokensPerWindow.map((n) => (k * n) / total);
  const out = quota.map((q) => Math.max(1, Math.floor(q)));
  let left = k - out.reduce((s, n) => s + n, 0);
  const order = quota.map((q, w) => ({ w, rest: q - out[w] })).sort((x, y) => y.rest - x.rest || x.w - y.w);
  while (left > 0) {
    for (const { w } of order) {
      if (left === 0) break;
      if (out[w] < tokensPerWindow[w]) {
        out[w]++;
        left--;
      }
    }
  }
  return out;
}

/** The block layout of contexts of these lengths under a budget (see the module comment). */
export function layoutBlocks(lengths: number[], budget: Budget, window: number): BlockLayout {
  checkBudget(budget);
  const windows = Math.ceil(Math.max(0, ...lengths) / window);
  const tokensIn = (len: number, w: number) => Math.min(window, Math.max(0, len - w * window));
  // Block of token i (0-based) of a window that holds n tokens and gets k slots.
  let blockFn: (i: number, n: number, k: number) => number;
  let perWindow: number[][];
  let slots: number;
  if (budget.ratio !== undefined) {
    const r = budget.ratio;
    // ceil((i + 1) / r) - 1; the relative nudge keeps (i + 1) / r = 3.0000000000000004 at 3.
    const blockOfIndex = (i: number) => Math.ceil(((i + 1) / r) * (1 - 1e-12)) - 1;
    blockFn = (i) => blockOfIndex(i);
    slots = blockOfIndex(window - 1) + 1; // ceil(W / r)
    perWindow = lengths.map((len) => Array.from({ length: windows }, (_, w) => (tokensIn(len, w) > 0 ? blockOfIndex(tokensIn(len, w) - 1) + 1 : 0)));
  } else {
    const k = budget.tokens!;
    perWindow = lengths.map((len, b) => {
      const need = Math.ceil(len / window);
      if (k > len) throw new Error(`comprexit: a budget of ${k} soft tokens needs at least ${k} context tokens (one per slot); item ${b} has ${len}`);
      if (k < need)
        throw new Error(
          `comprexit: a budget of ${k} soft tokens is too small for item ${b} (${len} tokens): every ${window}-token window needs a slot, so at least ${need}`,
        );
      const tokens = Array.from({ length: windows }, (_, w) => tokensIn(len, w));
      const used = tokens.slice(0, need);
      return [...(need ? apportion(used, k) : []), ...new Array(windows - need).fill(0)];
    });
    blockFn = (i, n, kw) => Math.floor((i * kw) / n);
    slots = Math.max(1, ...perWindow.flat());
  }
  const blockOf = new Int32Array(lengths.length * windows * window).fill(-1);
  lengths.forEach((len, b) => {
    for (let w = 0; w < windows; w++) {
      const n = tokensIn(len, w);
      const base = (b * windows + w) * window;
      for (let i = 0; i < n; i++) blockOf[base + i] = blockFn(i, n, perWindow[b][w]);
    }
  });
  return { windows, slots, blockOf, perWindow, counts: perWindow.map((ws) => ws.reduce((s, n) => s + n, 0)) };
}

// ---- the compressor ----------------------------------------------------------------------------

export interface ParameterReport {
  depth: number;
  width: number;
  projector: number;
  /** All of the compressor's trainable parameters. */
  trainable: number;
  /** Parameters of the (frozen) base model. */
  base: number;
  /** trainable / base. */
  share: number;
}

export class ComprExIT implements Compressor {
  readonly method = 'comprexit';
  readonly config: CompressorConfig;
  readonly opts: ComprExITOptions;
  readonly module: ComprExITModule;
  /** The layout (see the module comment). */
  readonly separateNorms: boolean;
  readonly bias: boolean;
  /** Whether the encoder input starts with the base's BOS. */
  readonly bos: boolean;

  constructor(
    readonly base: LlamaModel,
    options: Record<string, unknown> = {},
    env: CompressorEnv = {},
  ) {
    const m = this.method;
    this.opts = comprexitOptions(options);
    const d = recipeOptions(COMPREXIT_RECIPE);
    this.separateNorms = optBool(m, options, 'separateNorms', d.separateNorms as boolean);
    this.bias = optBool(m, options, 'bias', d.bias as boolean);
    this.bos = optBool(m, options, 'bos', encoderBosDefault(base, env)) && base.config.bosTokenId !== undefined;
    this.config = { method: m, ...this.opts, separateNorms: this.separateNorms, bias: this.bias, bos: this.bos };
    this.module = new ComprExITModule(base.dim, base.config.numLayers + 1, this.opts, { separateNorms: this.separateNorms, bias: this.bias });
  }

  /** The transmission modules and the projector, at every stage (the base never trains). */
  trainable(_stage: Stage): [string, Parameter][] {
    return this.module.namedParameters().filter(([, p]) => p.trainable);
  }

  setTraining(on: boolean): void {
    this.module.train(on);
  }

  /**
   * The frozen base over the right-padded batch, run once without gradients: every hidden
   * state stacked as [B, T, L+1, H] (float32) and the padding mask [B, T] (bool).
   */
  baseStates(contexts: number[][], t: number): { states: Tensor; mask: Tensor } {
    const b = contexts.length;
    const head = this.bos ? [this.base.config.bosTokenId!] : [];
    const n = head.length;
    const ids = contexts.flatMap((c) => [...head, ...c, ...new Array(t - c.length).fill(0)]);
    const real = contexts.flatMap((c) => Array.from({ length: t }, (_, i) => (i < c.length ? 1 : 0)));
    const mask = tensor(real, [b, t], { dtype: 'bool' });
    // Its own scope: the per-layer tensors are freed as soon as they are stacked.
    const states = tidy(() =>
      noGrad(() => {
        const padding = n
          ? tensor(
              contexts.flatMap((c) => Array.from({ length: n + t }, (_, i) => (i < n + c.length ? 1 : 0))),
              [b, n + t],
              { dtype: 'bool' },
            )
          : mask;
        const out = this.base.forward({ ids: tensor(ids, [b, n + t], { dtype: 'int64' }), paddingMask: padding, outputHiddenStates: true, logits: 'none' });
        const all = stack(out.hiddenStates!, 2); // [B, n + T, L+1, H]
        return (n ? all.narrow(1, n, t) : all).to('float32');
      }),
    );
    return { states, mask };
  }

  compress(contexts: number[][], budget: Budget): SoftContext {
    checkBudget(budget);
    const vocab = this.base.config.vocabSize;
    contexts.forEach((c, i) => {
      const bad = c.find((id) => !Number.isInteger(id) || id < 0 || id >= vocab);
      if (bad !== undefined) throw new Error(`comprexit: context ${i} has token id ${bad} outside 0..${vocab - 1}`);
    });
    const W = this.opts.window;
    const lengths = contexts.map((c) => c.length);
    const layout = layoutBlocks(lengths, budget, W);
    const meta = { method: this.method, budget, sourceTokens: lengths, softTokens: layout.counts, baseFingerprint: this.base.fingerprint() };
    const b = contexts.length;
    const h = this.base.dim;
    const k = Math.max(0, ...layout.counts);

    return tidy(() => {
      if (k === 0) return { softTokens: zeros([b, 0, h], { dtype: this.base.dtype }), mask: zeros([b, 0], { dtype: 'bool' }), meta };
      const t = Math.max(...lengths);
      const { states, mask } = this.baseStates(contexts, t);
      const { anchors } = this.module.depth.forward(states, mask); // [B, T, H]

      // All windows of all items as one batch: [B * nW, W, H], zero-padded to whole windows.
      const nW = layout.windows;
      const K = layout.slots;
      const padded = nW * W > t ? cat([anchors, zeros([b, nW * W - t, h])], 1) : anchors;
      const windows = padded.reshape(b * nW, W, h);
      const member = new Float32Array(b * nW * W * K);
      const rows = new Uint8Array(b * nW * W);
      layout.blockOf.forEach((j, pos) => {
        if (j < 0) return;
        rows[pos] = 1;
        member[pos * K + j] = 1;
      });
      const cols = layout.perWindow.flatMap((ws) => ws.flatMap((n) => Array.from({ length: K }, (_, j) => (j < n ? 1 : 0))));
      const { slots } = this.module.width.forward(
        windows,
        tensor(rows, [b * nW, W], { dtype: 'bool' }),
        tensor(member, [b * nW, W, K]),
        tensor(cols, [b * nW, K], { dtype: 'bool' }),
      ); // [B * nW, K, H]

      // Valid slots first, in window order: gather them from [B, nW * K, H] into [B, k, H].
      const order: number[] = [];
      const keep: number[] = [];
      for (const ws of layout.perWindow) {
        const row: number[] = [];
        ws.forEach((n, w) => {
          for (let j = 0; j < n; j++) row.push(w * K + j);
        });
        keep.push(...Array.from({ length: k }, (_, i) => (i < row.length ? 1 : 0)));
        order.push(...row, ...new Array(k - row.length).fill(0));
      }
      const index = tensor(order, [b, k, 1], { dtype: 'int64' }).expand(b, k, h);
      const softMask = tensor(keep, [b, k], { dtype: 'bool' });
      const chosen = slots.reshape(b, nW * K, h).gather(1, index);
      // Padding positions are exactly 0 (the decoder masks them anyway).
      const softTokens = this.module.projector.forward(chosen).mul(softMask.to('float32').unsqueeze(-1));
      return { softTokens: softTokens.to(this.base.dtype), mask: softMask, meta };
    });
  }
}

/** Trainable parameters by part, and their share of the base model's parameters. */
export function comprexitParameters(c: ComprExIT): ParameterReport {
  const m = c.module;
  const trainable = m.numParameters(true);
  const base = c.base.numParameters();
  return {
    depth: m.depth.numParameters(true),
    width: m.width.numParameters(true),
    projector: m.projector.numParameters(true),
    trainable,
    base,
    share: trainable / base,
  };
}

registerCompressor(
  'comprexit',
  'ComprExIT: frozen base, depth-wise anchors + Sinkhorn transport into slots + projector (arXiv 2602.03784)',
  true,
  (base, options, env) => new ComprExIT(base, options, env),
  { recipe: COMPREXIT_RECIPE, savedDefaults: COMPREXIT_LEGACY },
);
