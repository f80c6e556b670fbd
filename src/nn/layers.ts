/** The basic layers: Linear (optionally with LoRA), Embedding, RMSNorm, LayerNorm. */
import {
  Tensor,
  blockLinear,
  cat,
  dropout,
  embedding,
  empty,
  layerNorm,
  linear,
  noGrad,
  ones,
  quantizeBlocks,
  rand,
  randn,
  rmsNorm,
  zeros,
  type BlockWeights,
  type DType,
} from '../tensor/index.js';
import { Module, type Parameter } from './module.js';

let initialise = true;

/**
 * Builds modules whose Linear and Embedding weights are left uninitialised, for a model whose
 * weights are loaded right after (random init of a 135 M-parameter model costs ~2.7 s here).
 */
export function withoutInit<T>(build: () => T): T {
  const before = initialise;
  initialise = false;
  try {
    return build();
  } finally {
    initialise = before;
  }
}

export interface LoraConfig {
  rank: number;
  alpha: number;
  dropout?: number;
}

/** Something that adds an update to a projection's output (its dropout follows its own mode). */
export interface LoraDelta {
  delta(x: Tensor): Tensor;
}

/** y = x W^T + b, W [out, in]. Optional LoRA: y += (alpha / rank) * B(A(dropout(x))). */
export class Linear extends Module {
  readonly weight: Parameter;
  readonly bias?: Parameter;
  loraA?: Parameter;
  loraB?: Parameter;
  private loraScale = 0;
  private loraDropout = 0;
  /** The weight's exact 8-bit copy, for one-row products without gradients (see inferenceLinear). */
  readonly blockWeights = new BlockWeightCache();

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: { bias?: boolean; std?: number; dtype?: DType } = {},
  ) {
    super();
    const dtype = opts.dtype ?? 'float32';
    // PyTorch's default: U(-1/sqrt(in), 1/sqrt(in)); or N(0, std) when asked (LLM style).
    const w = !initialise
      ? empty([outFeatures, inFeatures], { dtype })
      : opts.std !== undefined
        ? randn([outFeatures, inFeatures], { dtype }).mul_(opts.std)
        : rand([outFeatures, inFeatures], { dtype })
            .mul_(2)
            .add_(-1)
            .mul_(1 / Math.sqrt(inFeatures));
    this.weight = this.param('weight', w);
    if (opts.bias) this.bias = this.param('bias', zeros([outFeatures], { dtype }));
  }

  /**
   * Attaches a LoRA adapter: A [rank, in] ~ U(-1/sqrt(in), 1/sqrt(in)), B [out, rank] = 0, so the
   * layer's output is unchanged until B trains.
   */
  addLora(cfg: LoraConfig): this {
    if (this.loraA) throw new Error('addLora: this layer already has a LoRA adapter');
    const dtype = this.weight.value.dtype;
    const a = rand([cfg.rank, this.inFeatures], { dtype })
      .mul_(2)
      .add_(-1)
      .mul_(1 / Math.sqrt(this.inFeatures));
    this.loraA = this.param('lora_A.weight', a);
    this.loraB = this.param('lora_B.weight', zeros([this.outFeatures, cfg.rank], { dtype }));
    this.loraScale = cfg.alpha / cfg.rank;
    this.loraDropout = cfg.dropout ?? 0;
    return this;
  }

  /**
   * x [..., in] -> [..., out]. An external adapter (e.g. a compressor's LoRA, kept outside the
   * shared base model) adds its delta too.
   */
  forward(x: Tensor, adapter?: LoraDelta | null): Tensor {
    let y = linear(x, this.weight.value, this.bias?.value);
    if (this.loraA && this.loraB) y = y.add(this.loraDelta(x));
    if (adapter) y = y.add(adapter.delta(x));
    return y;
  }

  /** The adapter's contribution alone: scale * B A dropout(x). */
  loraDelta(x: Tensor): Tensor {
    if (!this.loraA || !this.loraB) throw new Error('loraDelta: no LoRA adapter attached');
    const h = linear(dropout(x, this.loraDropout, this.training), this.loraA.value);
    return linear(h, this.loraB.value).mul(this.loraScale);
  }

  /** The base projection only (ignores LoRA). */
  forwardBase(x: Tensor): Tensor {
    return linear(x, this.weight.value, this.bias?.value);
  }
}

/**
 * Linears over the same input whose weights (and biases) are consecutive rows of one buffer.
 * Each Linear keeps its own Parameter, now a view of the buffer: training, the optimiser,
 * state dicts and in-place loading see the usual separate parameters (and write through to
 * the buffer), while inference can run one product for all of them (`fused()`).
 */
export class FusedLinears {
  private buffer?: { weight: Tensor; bias?: Tensor; parts: Tensor[] };
  /** The buffer's exact 8-bit copy, for one-row products (see inferenceLinear). */
  readonly blockWeights = new BlockWeightCache();
  /** Output features of each Linear, in order. */
  readonly sizes: number[];
  constructor(readonly linears: Linear[]) {
    if (linears.length < 2) throw new Error('FusedLinears: give at least two Linears');
    const inF = linears[0].inFeatures;
    if (linears.some((l) => l.inFeatures !== inF || !!l.bias !== !!linears[0].bias))
      throw new Error('FusedLinears: the Linears must share inFeatures and bias-ness');
    this.sizes = linears.map((l) => l.outFeatures);
    this.bind();
  }

  /**
   * (Re)builds the buffer from the Linears' current parameters and makes those parameters
   * views of it (trainability kept). Needed again after a parameter's tensor is replaced, e.g.
   * by Module.toDtype.
   */
  bind(): void {
    noGrad(() => {
      const weightParams = this.linears.map((l) => l.weight);
      const biasParams = this.linears[0].bias ? this.linears.map((l) => l.bias!) : undefined;
      const rebind = (params: Parameter[]): Tensor => {
        const whole = cat(
          params.map((p) => p.value),
          0,
        ).keep();
        let offset = 0;
        for (const p of params) {
          const n = p.value.size(0);
          const trainable = p.trainable;
          const old = p.value;
          // detach: a plain leaf sharing the buffer's storage (not a view created under no-grad,
          // which autograd would refuse to modify in place later).
          p.value = whole.narrow(0, offset, n).detach().keep();
          p.trainable = trainable;
          old.free();
          offset += n;
        }
        return whole;
      };
      const previous = this.buffer;
      const weight = rebind(weightParams);
      const bias = biasParams ? rebind(biasParams) : undefined;
      this.buffer = { weight, bias, parts: [...weightParams, ...(biasParams ?? [])].map((p) => p.value) };
      previous?.weight.free();
      previous?.bias?.free();
    });
  }

  /**
   * The buffer as one weight [sum(out), in] (and bias), or null when it no longer backs every
   * parameter (one was replaced) or a Linear carries its own LoRA adapter.
   */
  fused(): { weight: Tensor; bias?: Tensor } | null {
    const b = this.buffer;
    if (!b) return null;
    let i = 0;
    for (const l of this.linears) if (l.loraA || l.weight.value !== b.parts[i++]) return null;
    if (b.bias) for (const l of this.linears) if (l.bias?.value !== b.parts[i++]) return null;
    return b;
  }

  /** Frees the buffer (the Linears' parameters are views of it: free the module too). */
  free(): void {
    this.buffer?.weight.free();
    this.buffer?.bias?.free();
    this.buffer = undefined;
    this.blockWeights.free();
  }
}

/**
 * An exact 8-bit copy of a float32 weight for one-row products without gradients (batch-1
 * decoding, bound by reading the weights): made on first use when every weight is reproduced
 * (quantizeBlocks), remade when the weight changes in place (its version counter) or is
 * replaced. A weight that is not exactly representable is remembered as such and stays float32.
 */
export class BlockWeightCache {
  private source?: Tensor;
  private version = -1;
  private weights: BlockWeights | null = null;
  /** The 8-bit form of `weight`, or null when it has none. */
  get(weight: Tensor): BlockWeights | null {
    const version = weight.version;
    if (this.source !== weight || this.version !== version) {
      this.free();
      this.weights = weight.dtype === 'float32' ? noGrad(() => quantizeBlocks(weight)) : null;
      if (this.weights) for (const t of Object.values(this.weights)) t.keep();
      this.source = weight;
      this.version = version;
    }
    return this.weights;
  }
  free(): void {
    if (this.weights) for (const t of Object.values(this.weights)) t.free();
    this.weights = null;
    this.source = undefined;
    this.version = -1;
  }
}

/**
 * linear() for callers running without gradients: one float32 row goes through the weight's
 * exact 8-bit copy when `cache` is given and the weight has one, anything else through linear().
 */
export function inferenceLinear(x: Tensor, weight: Tensor, bias?: Tensor | null, cache?: BlockWeightCache): Tensor {
  if (cache && x.dtype === 'float32') {
    const s = x.shape;
    if (x.numel === s[s.length - 1]) {
      const w = cache.get(weight);
      if (w) return blockLinear(x, w, bias);
    }
  }
  return linear(x, weight, bias);
}

/** Rows of a [vocab, dim] table. */
export class Embedding extends Module {
  readonly weight: Parameter;
  constructor(
    readonly numEmbeddings: number,
    readonly dim: number,
    opts: { std?: number; dtype?: DType } = {},
  ) {
    super();
    this.weight = this.param(
      'weight',
      initialise ? randn([numEmbeddings, dim], { dtype: opts.dtype }).mul_(opts.std ?? 1) : empty([numEmbeddings, dim], { dtype: opts.dtype }),
    );
  }
  /** ids [...] (int64) -> [..., dim] */
  forward(ids: Tensor): Tensor {
    return embedding(this.weight.value, ids);
  }
}

/** x / rms(x) * weight over the last dim (computed in float32). */
export class RMSNorm extends Module {
  readonly weight: Parameter;
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = this.param('weight', ones([dim]));
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight.value, this.eps);
  }
}

export class LayerNorm extends Module {
  readonly weight: Parameter;
  readonly bias?: Parameter;
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
    opts: { bias?: boolean } = {},
  ) {
    super();
    this.weight = this.param('weight', ones([dim]));
    if (opts.bias ?? true) this.bias = this.param('bias', zeros([dim]));
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, [this.dim], this.weight.value, this.bias?.value, this.eps);
  }
}

/**
 * LoRA adapters kept outside the model they adapt, keyed by "layer.target" (e.g. "3.q"), so that
 * one frozen base model can serve several compressors, each with its own adapters, and run
 * without any of them. Parameters: "<key>.lora_A.weight" [rank, in], "<key>.lora_B.weight"
 * [out, rank] (B starts at zero: no change until it trains).
 */
export class LoraAdapters extends Module {
  private readonly adapters = new Map<string, LoraDelta>();
  readonly scale: number;
  constructor(
    specs: { key: string; inFeatures: number; outFeatures: number }[],
    readonly cfg: LoraConfig,
  ) {
    super();
    this.scale = cfg.alpha / cfg.rank;
    for (const s of specs) {
      const a = this.param(
        `${s.key}.lora_A.weight`,
        rand([cfg.rank, s.inFeatures])
          .mul_(2)
          .add_(-1)
          .mul_(1 / Math.sqrt(s.inFeatures)),
      );
      const b = this.param(`${s.key}.lora_B.weight`, zeros([s.outFeatures, cfg.rank]));
      const scale = this.scale;
      const p = cfg.dropout ?? 0;
      // Dropout follows the adapters' own train/eval mode, not the (frozen, eval-mode) base's.
      // The factors keep their own dtype (float32, so that small updates survive a bfloat16 or
      // float16 base): the delta is computed in it and returned in the input's dtype.
      this.adapters.set(s.key, {
        delta: (x) => {
          const own = a.value.dtype;
          const d = linear(linear(dropout(x.dtype === own ? x : x.to(own), p, this.training), a.value), b.value).mul(scale);
          return d.dtype === x.dtype ? d : d.to(x.dtype);
        },
      });
    }
  }
  get(key: string): LoraDelta | undefined {
    return this.adapters.get(key);
  }
  has(key: string): boolean {
    return this.adapters.has(key);
  }
}
