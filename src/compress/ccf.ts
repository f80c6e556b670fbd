/**
 * CCF (papers/ccf.md): a long context is cut into segments of l tokens; an encoder (the base
 * model + LoRA on q/v) turns each segment into c latent memory vectors per layer, and the
 * decoder (the base model) reads, at every layer n, the keys/values of all earlier segments'
 * memories, projected by the layer's k/v projections plus a second LoRA that acts on memories
 * only. The raw KV of a compressed segment is dropped: memory grows by c vectors per layer per
 * segment instead of l. ratio = l / c.
 *
 * Encoder, for a segment of n tokens and s memory slots (n = l, s = c for a full segment):
 *   input     [tok_0 .. tok_{n-1}; pi x s]                      pi: one learnable vector [dim]
 *   positions tok_t -> t, mem_j -> e_j = ceil((j+1) n / s)      (= (j+1) l / c when c | l)
 *   mask      tokens causal among themselves (they never see memory slots);
 *             mem_j sees tokens [0, e_j) and itself only (not the other memory slots)
 *   output    m^n = layer n's normalised attention input at the s memory positions, [B, s, dim]
 *             (m^0 is the normalised pi itself, before any mixing: layer 0's memory slots differ
 *             only by their RoPE positions in the decoder)
 * Decoder, for the next segment at layer n:
 *   K = [k_base+lora(m_0^n) .. k_base+lora(m_i^n), k_base(tokens)], V likewise,
 *   Q = q_base(tokens); RoPE positions over the concatenation (memories 0..m-1, then the tokens
 *   from m on); causal within the segment, every memory slot visible.
 * So a SoftContext from CCF carries `memoryKv` (post-RoPE, built with the decoder LoRA) and no
 * soft tokens; any decoder call that passes it as `kvPrefix` (decode.ts) reads it correctly,
 * with token positions continuing after the memory length.
 *
 * The decoder LoRA is deliberately NOT exposed as `Compressor.decoderLora`: that field is
 * applied to the decoder's own tokens by decode.ts, while CCF's adapter acts on memories only,
 * and its effect is already baked into memoryKv.
 */
import { Tensor, cat, crossEntropy, noGrad, tensor, tidy, type DType } from '../tensor/index.js';
import { Module, type Parameter } from '../nn/module.js';
import { LoraAdapters } from '../nn/layers.js';
import type { ForwardResult, LayerKv, LlamaModel } from '../models/llama.js';
import { registerCompressor } from './registry.js';
import { code, ours, paper, type MethodRecipe } from './recipe.js';
import { ccfTraining } from './ccf-training.js';
import {
  checkBudget,
  trainableDtype,
  type Budget,
  type Compressor,
  type CompressorConfig,
  type MethodTraining,
  type MethodTrainingRun,
  type CompressorStream,
  type SegmentScore,
  type SoftContext,
  type Stage,
  type StreamingReader,
} from './types.js';

// ---- segmentation ----------------------------------------------------------------------------

/** One segment of a context: tokens [start, start + length) compressed into `slots` memory vectors. */
export interface SegmentSpan {
  start: number;
  length: number;
  slots: number;
}

/**
 * Cuts `total` tokens into segments of `segmentLen` (the last may be shorter) with `c` memory
 * slots per full segment. A shorter last segment of n tokens gets ceil(n c / l) slots
 * ('proportional', so that a ratio budget gives ceil(T / ratio) slots in all) or c ('full', so
 * that a budget of k slots gives exactly k).
 */
export function segmentPlan(total: number, segmentLen: number, c: number, partial: 'proportional' | 'full' = 'proportional'): SegmentSpan[] {
  const out: SegmentSpan[] = [];
  for (let start = 0; start < total; start += segmentLen) {
    const length = Math.min(segmentLen, total - start);
    const slots = length === segmentLen || partial === 'full' ? c : Math.ceil((length * c) / segmentLen);
    out.push({ start, length, slots });
  }
  return out;
}

/**
 * End (exclusive) of memory slot j's token window, which is also its RoPE position:
 * ceil((j+1) n / s). With n = l, s = c and c dividing l this is the paper's (j+1) l / c exactly.
 */
export function memoryWindowEnd(j: number, n: number, s: number): number {
  return Math.ceil(((j + 1) * n) / s);
}

function bytesPerElement(dtype: DType): number {
  switch (dtype) {
    case 'float64':
    case 'int64':
      return 8;
    case 'float32':
    case 'int32':
      return 4;
    case 'float16':
    case 'bfloat16':
    case 'int16':
      return 2;
    default:
      return 1;
  }
}

/** Bytes held by per-layer memory keys/values. */
export function memoryKvBytes(kv: readonly LayerKv[] | null | undefined): number {
  let n = 0;
  for (const { k, v } of kv ?? []) n += k.numel * bytesPerElement(k.dtype) + v.numel * bytesPerElement(v.dtype);
  return n;
}

// ---- parameters ------------------------------------------------------------------------------

export interface CcfOptions {
  /**
   * Tokens per segment, l. Default the paper's 1024, at most a quarter of the base's position
   * window (softpress-base: 1024 positions, so 256), so that a document of several segments
   * and its memory fit the window.
   */
  segmentLen?: number;
  /** LoRA rank and alpha of both adapters (default the official code's 128 and 512). */
  rank?: number;
  alpha?: number;
  /**
   * pi starts as this token's embedding (default the base's EOS, a token every tokenizer has);
   * null: the mean embedding (compressors saved with memTokenId null were made that way).
   */
  memTokenId?: number | null;
  /** Segments encoded per encoder call in compress() (bounds the activation memory). */
  encodeBatch?: number;
}

/**
 * CCF's recipe (papers/ccf.md "Training"; LoRA sizes from the official code, issue #28). The
 * paper trains on documents of up to 128k tokens; the default here is 16 segments per document
 * (16,384 tokens at l = 1024), which exercises the reservoir (k = 2) on 14 of them.
 */
export const CCF_RECIPE: MethodRecipe = {
  method: 'ccf',
  source: 'arXiv 2509.09199 (papers/ccf.md); LoRA rank/alpha from the official code (issue #28)',
  options: {
    segmentLen: paper(1024),
    rank: code(128),
    alpha: code(512),
    memInit: paper('token', 'pi from an existing token embedding: EOS here'),
  },
  stages: {
    lm: {
      lr: paper(1e-4),
      minLrFraction: paper(0, 'cosine to 0'),
      warmupFraction: paper(0.01),
      schedule: paper('cosine'),
      weightDecay: paper(0.1),
      betas: paper([0.9, 0.95]),
      clip: paper(1.0),
    },
  },
  train: {
    ratios: paper([8], 'c = 128 per 1,024 tokens; c = 32 gives 32x'),
    reservoir: code(2),
    docSegments: ours(16, 'the paper trains on documents of up to 128k tokens'),
  },
  deviations: [
    {
      key: 'train.docSegments',
      paper: 'documents up to 128k tokens (~125 segments)',
      ours: '16 segments (16,384 tokens at l = 1,024)',
      why: "CPU compute; SmolLM2's window (8,192) also bounds memory + segment: at ratio 8, at most 56 segments of 1,024",
    },
    {
      key: 'options.segmentLen',
      paper: '1024',
      ours: 'min(1024, window / 4)',
      why: 'equal on SmolLM2 (8,192 positions); 256 on softpress-base (1,024 positions)',
    },
  ],
};

/** The compressor's own parameters: pi, the encoder LoRA (q, v) and the decoder LoRA (k, v). */
export class CcfModule extends Module {
  /** The memory token embedding [dim], repeated s times after each segment. */
  readonly pi: Parameter;
  /**
   * Keys "<layer>.q", "<layer>.v" for layers 0 .. L-2, used inside the encoder's forward. The
   * last layer's q/v act after its attention input, the last memory taken, so an adapter there
   * could never receive a gradient: it is left out.
   */
  readonly encoder: LoraAdapters;
  /** Keys "<layer>.k", "<layer>.v": used only to turn memories into keys/values. */
  readonly decoder: LoraAdapters;

  constructor(base: LlamaModel, cfg: { rank: number; alpha: number }, piInit: Tensor) {
    super();
    const lora = { rank: cfg.rank, alpha: cfg.alpha };
    // Trainable parameters in float32 whatever the base's dtype (trainableDtype): the adapters
    // cast at use, pi is cast where it meets the base's token embeddings.
    const own = trainableDtype(base);
    this.pi = this.param('pi', piInit.to(own));
    const belowTop = Array.from({ length: base.config.numLayers - 1 }, (_, i) => i);
    this.encoder = this.module('encoder', new LoraAdapters(base.loraSpecs(['q', 'v'], belowTop), lora).toDtype(own));
    this.decoder = this.module('decoder', new LoraAdapters(base.loraSpecs(['k', 'v']), lora).toDtype(own));
  }
}

function optInt(o: Record<string, unknown>, key: string, fallback: number | undefined, min: number): number | undefined {
  const v = o[key] ?? fallback;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new Error(`ccf: option '${key}' must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return v;
}

// ---- the compressor --------------------------------------------------------------------------

export class CcfCompressor implements Compressor {
  readonly method = 'ccf';
  readonly config: CompressorConfig;
  readonly net: CcfModule;
  /** l */
  readonly segmentLen: number;
  /** Ratios l / c with c an integer: the divisors of l from 2 up. */
  readonly ratios: readonly number[];
  readonly encodeBatch: number;
  /** A long text read segment by segment at a ratio: its memory grows by c slots per segment (CcfStream). */
  readonly streaming: StreamingReader;
  /** Encoder positions and masks by "n:s", built once. */
  private readonly layouts = new Map<string, { positions: Tensor; mask: Tensor }>();

  constructor(
    readonly base: LlamaModel,
    options: CcfOptions | Record<string, unknown> = {},
  ) {
    const o = options as Record<string, unknown>;
    const r = CCF_RECIPE.options;
    const window = base.config.maxPositions;
    this.segmentLen = optInt(o, 'segmentLen', Math.max(1, Math.min(r.segmentLen.value as number, Math.floor(window / 4))), 1)!;
    // The encoder puts the last memory slot at position l: it must be inside the window.
    if (this.segmentLen >= window)
      throw new Error(
        `ccf: segments of ${this.segmentLen} tokens do not fit the base model's ${window} positions (the encoder's last memory slot sits at position ${this.segmentLen}); use segmentLen < ${window}`,
      );
    const rank = optInt(o, 'rank', r.rank.value as number, 1)!;
    const alpha = o.alpha ?? r.alpha.value;
    if (typeof alpha !== 'number' || !(alpha > 0)) throw new Error(`ccf: option 'alpha' must be a number > 0, got ${JSON.stringify(o.alpha)}`);
    this.encodeBatch = optInt(o, 'encodeBatch', 16, 1)!;
    // pi starts as a token every tokenizer has (EOS); null (saved compressors): the mean embedding.
    const memTokenId = o.memTokenId === null ? undefined : optInt(o, 'memTokenId', base.config.eosTokenId, 0);
    if (memTokenId !== undefined && memTokenId >= base.config.vocabSize)
      throw new Error(`ccf: memTokenId ${memTokenId} is outside the vocabulary (${base.config.vocabSize})`);
    this.ratios = Object.freeze(Array.from({ length: this.segmentLen }, (_, i) => i + 1).filter((r) => r >= 2 && this.segmentLen % r === 0));

    // pi starts as an existing embedding, so the encoder first sees a familiar input.
    const piInit = tidy(() =>
      noGrad(() => {
        const table = base.model.embedTokens.weight.value;
        return (memTokenId !== undefined ? table.select(0, memTokenId) : table.mean(0)).clone();
      }),
    );
    this.net = new CcfModule(base, { rank, alpha }, piInit);
    this.config = { method: 'ccf', segmentLen: this.segmentLen, rank, alpha, memTokenId: memTokenId ?? null, encodeBatch: this.encodeBatch };
    this.streaming = {
      segmentLen: this.segmentLen,
      open: (budget: Budget) => {
        checkBudget(budget);
        if (budget.ratio === undefined) throw new Error('ccf: a stream reads at a ratio, not a token budget');
        return new CcfStream(this, { ratio: budget.ratio });
      },
    };
  }

  get module(): Module {
    return this.net;
  }

  trainable(_stage: Stage): [string, Parameter][] {
    // One procedure (ccf-training.ts) trains everything CCF owns, whatever the stage.
    return this.net.namedParameters().filter(([, p]) => p.trainable);
  }

  /** CCF trains segment by segment with reservoir sampling of the encoder graphs (ccf-training.ts). */
  trainingProcedure(run: MethodTrainingRun): MethodTraining {
    return ccfTraining(this, run, { reservoir: CCF_RECIPE.train.reservoir!.value as number, docSegments: CCF_RECIPE.train.docSegments!.value as number });
  }

  /**
   * Tokens per training document by default: CCF_RECIPE's segments per document (16), fewer when
   * the base's position window cannot hold the memory of all but the last segment plus that
   * segment at the smallest ratio (the largest memory). At least 2 segments.
   */
  defaultDocLen(ratios: readonly number[]): number {
    const r = Math.min(...ratios);
    let segments = CCF_RECIPE.train.docSegments!.value as number;
    while (segments > 2 && this.positionsNeeded(segments * this.segmentLen, r) > this.base.config.maxPositions) segments--;
    return segments * this.segmentLen;
  }

  setTraining(on: boolean): void {
    this.net.train(on);
  }

  /**
   * The decoder reads m memory slots at positions 0..m-1 and the segment's n tokens after them:
   * all of it must be inside the base's position window (its RoPE tables would otherwise be
   * extended past what it was trained on, silently).
   */
  checkPositions(memorySlots: number, tokens: number): void {
    const window = this.base.config.maxPositions;
    if (memorySlots + tokens > window) {
      throw new Error(
        `ccf: ${memorySlots} memory slots and ${tokens} tokens need positions up to ${memorySlots + tokens - 1}, beyond the base model's window of ${window} positions; ` +
          `use shorter documents or a larger ratio (at ratio r a document of S segments of ${this.segmentLen} tokens needs (S - 1) x ${this.segmentLen} / r + ${this.segmentLen} positions)`,
      );
    }
  }

  /** Positions a document of `total` tokens needs at a ratio: the memory of all but its last segment, then that segment. */
  positionsNeeded(total: number, ratio: number): number {
    const plan = segmentPlan(total, this.segmentLen, this.slotsForRatio(ratio), 'proportional');
    const before = plan.slice(0, -1).reduce((a, p) => a + p.slots, 0);
    return before + (plan[plan.length - 1]?.length ?? 0);
  }

  /** Memory slots per full segment for a ratio (c = l / ratio); a clear error if unsupported. */
  slotsForRatio(ratio: number): number {
    if (!this.ratios.includes(ratio)) {
      throw new Error(
        `ccf: ratio ${ratio} needs an integer number of memory slots per ${this.segmentLen}-token segment (supported: ${this.ratios.join(', ')})`,
      );
    }
    return this.segmentLen / ratio;
  }

  /** The segments of a T-token context under a budget. */
  plan(total: number, budget: Budget): SegmentSpan[] {
    checkBudget(budget);
    if (budget.ratio !== undefined) return segmentPlan(total, this.segmentLen, this.slotsForRatio(budget.ratio), 'proportional');
    const k = budget.tokens!;
    const segments = Math.ceil(total / this.segmentLen);
    if (k === 0 || segments === 0) return segmentPlan(total, this.segmentLen, 0, 'full');
    if (k % segments !== 0) {
      const lo = segments * Math.floor(k / segments);
      throw new Error(
        `ccf: a budget of ${k} memory slots must split evenly over the ${segments} segments of ${this.segmentLen} tokens (e.g. ${lo || segments} or ${lo + segments} slots)`,
      );
    }
    const c = k / segments;
    if (c > this.segmentLen) throw new Error(`ccf: ${c} memory slots per segment exceed the ${this.segmentLen} tokens of a segment`);
    return segmentPlan(total, this.segmentLen, c, 'full');
  }

  /** Positions [n + s] (int64) and the boolean attention mask [n + s, n + s] of the encoder. */
  encoderLayout(n: number, s: number): { positions: Tensor; mask: Tensor } {
    const key = `${n}:${s}`;
    let lay = this.layouts.get(key);
    if (!lay) {
      const t = n + s;
      const pos: number[] = [];
      for (let i = 0; i < n; i++) pos.push(i);
      const mask = new Uint8Array(t * t);
      for (let i = 0; i < n; i++) mask.fill(1, i * t, i * t + i + 1); // causal tokens
      for (let j = 0; j < s; j++) {
        const end = memoryWindowEnd(j, n, s);
        pos.push(end);
        mask.fill(1, (n + j) * t, (n + j) * t + end); // its window of tokens
        mask[(n + j) * t + n + j] = 1; // and itself
      }
      lay = { positions: tensor(pos, [t], { dtype: 'int64' }).keep(), mask: tensor(mask, [t, t], { dtype: 'bool' }).keep() };
      if (this.layouts.size > 64) this.freeLayouts();
      this.layouts.set(key, lay);
    }
    return lay;
  }

  private freeLayouts(): void {
    for (const l of this.layouts.values()) {
      l.positions.free();
      l.mask.free();
    }
    this.layouts.clear();
  }

  /**
   * The latent memory of segments: ids [N, n] (N segments of n tokens each) -> one tensor per
   * layer [N, s, dim], the normalised attention inputs at the s memory positions. Keeps the
   * autograd graph when gradients are on (the encoder LoRA and pi are in it).
   */
  encode(ids: Tensor, slots: number): Tensor[] {
    const [rows, n] = ids.shape;
    if (slots < 1) throw new Error(`ccf: encode needs at least one memory slot (got ${slots})`);
    const { positions, mask } = this.encoderLayout(n, slots);
    const tokens = this.base.embed(ids); // [N, n, dim]
    const memory = this.net.pi.value.to(tokens.dtype).view(1, 1, -1).expand(rows, slots, this.base.dim); // [N, s, dim]
    const { attnInputs } = this.base.forward({
      inputsEmbeds: cat([tokens, memory], 1),
      positionIds: positions,
      attnMask: mask,
      outputAttnInputs: true,
      logits: 'none',
      lora: this.net.encoder,
    });
    return attnInputs!.map((h) => h.narrow(1, n, slots));
  }

  /**
   * Keys/values of latent memories (per layer [B, m, dim]) for the decoder: the layer's k/v
   * projections plus the decoder LoRA, RoPE at positions start .. start+m-1. Per layer
   * [B, kvHeads, m, headDim].
   */
  memoryKv(latents: readonly Tensor[], start = 0): LayerKv[] {
    if (latents.length !== this.base.config.numLayers) throw new Error(`ccf: ${latents.length} memory layers for a ${this.base.config.numLayers}-layer model`);
    this.checkPositions(start + (latents[0]?.size(1) ?? 0), 0);
    return latents.map((m, n) => this.base.prefixKv(n, m, start, this.net.decoder));
  }

  /**
   * Decoder logits [B, n, vocab] of ids [B, n] reading a memory KV (or none): the base model
   * without any adapter on the tokens; their positions continue after the memory length.
   */
  decodeLogits(ids: Tensor, memory?: LayerKv[]): Tensor {
    return this.decode(ids, memory, 'all').logits!;
  }

  /**
   * Summed next-token loss of ids [B, n] against targets [B, n] read after the memory: what
   * decodeLogits gives to crossEntropy, without the logits [B, n, vocab] (LlamaModel.headLoss).
   */
  decodeLoss(ids: Tensor, targets: Tensor, memory?: LayerKv[]): Tensor {
    return this.base.headLoss(this.decode(ids, memory, 'none').hidden, targets, { reduction: 'sum' });
  }

  /** The base model over ids [B, n] after the memory (an empty memory is none). */
  private decode(ids: Tensor, memory: LayerKv[] | undefined, logits: 'all' | 'none'): ForwardResult {
    const kvPrefix = memory && memory[0].k.size(2) > 0 ? memory : undefined;
    this.checkPositions(kvPrefix ? kvPrefix[0].k.size(2) : 0, ids.size(1));
    return this.base.forward({ ids, kvPrefix, logits });
  }

  /**
   * Latent memories of equal-length contexts, all segments, per layer [B, m, dim]. Segments of
   * the same shape are encoded together, encodeBatch at a time.
   */
  encodeContexts(contexts: number[][], plan: SegmentSpan[]): Tensor[] {
    const b = contexts.length;
    const numLayers = this.base.config.numLayers;
    const perLayer: Tensor[][] = Array.from({ length: numLayers }, () => []);
    // Full segments first (all share a shape), then the shorter last one, if any.
    const full = plan.filter((p) => p.length === this.segmentLen && p.slots === plan[0].slots);
    const rest = plan.slice(full.length);
    if (full.length) {
      const c = full[0].slots;
      // Row b * S + s holds segment s of item b, so a reshape restores [B, S * c, dim].
      const rows = contexts.flatMap((ids) => full.map((p) => ids.slice(p.start, p.start + p.length)));
      const chunks: Tensor[][] = Array.from({ length: numLayers }, () => []);
      for (let r = 0; r < rows.length; r += this.encodeBatch) {
        const part = rows.slice(r, r + this.encodeBatch);
        const latents = this.encode(tensor(part.flat(), [part.length, this.segmentLen], { dtype: 'int64' }), c);
        latents.forEach((t, n) => chunks[n].push(t));
      }
      chunks.forEach((ts, n) => perLayer[n].push((ts.length === 1 ? ts[0] : cat(ts, 0)).reshape(b, full.length * c, this.base.dim)));
    }
    for (const p of rest) {
      if (p.slots === 0) continue;
      const ids = tensor(
        contexts.flatMap((x) => x.slice(p.start, p.start + p.length)),
        [b, p.length],
        { dtype: 'int64' },
      );
      this.encode(ids, p.slots).forEach((t, n) => perLayer[n].push(t));
    }
    return perLayer.map((ts) => (ts.length === 1 ? ts[0] : cat(ts, 1)));
  }

  /**
   * contexts (equal lengths: the decoder has no padding mask over memory slots) -> memory KV
   * per layer [B, kvHeads, m, headDim] with m = ceil(T / ratio) (ratio budgets) or k (a budget
   * of k slots, k a multiple of the number of segments). Autograd follows the caller's mode.
   */
  compress(contexts: number[][], budget: Budget): SoftContext {
    checkBudget(budget);
    if (contexts.length === 0) throw new Error('ccf: compress needs at least one context');
    const total = contexts[0].length;
    if (contexts.some((c) => c.length !== total)) {
      throw new Error(
        `ccf: contexts in one batch must have equal lengths (got ${[...new Set(contexts.map((c) => c.length))].join(', ')}); memory KV slots cannot be padded, so compress ragged contexts one at a time`,
      );
    }
    const plan = this.plan(total, budget);
    const slots = plan.reduce((a, p) => a + p.slots, 0);
    const b = contexts.length;
    const meta = {
      method: this.method,
      budget,
      sourceTokens: contexts.map((c) => c.length),
      softTokens: new Array(b).fill(slots),
      baseFingerprint: this.base.fingerprint(),
    };
    if (slots === 0) return { meta };
    return tidy(() => {
      const memoryKv = this.memoryKv(this.encodeContexts(contexts, plan), 0);
      const memoryMask = tensor(new Uint8Array(b * slots).fill(1), [b, slots], { dtype: 'bool' });
      return { memoryKv, memoryMask, meta };
    });
  }

  /** Frees cached encoder layouts (freeCompressor also frees the parameters). */
  dispose(): void {
    this.freeLayouts();
  }
}

// ---- streaming -------------------------------------------------------------------------------

/**
 * A long document read segment by segment: each segment is scored against the memory of the
 * earlier ones, then compressed into it (c more slots per layer); raw tokens are never kept.
 * The first token of a segment is scored with the previous segment's last prediction, so a
 * stream counts every token but the first, as one forward pass over the whole text would.
 * Holds native memory: call free() when done.
 */
export class CcfStream implements CompressorStream {
  /** Memory slots per full segment. */
  readonly slots: number;
  private kv: LayerKv[] | null = null;
  /** Logits [B, vocab] of the next token after the last segment read. */
  private pending: Tensor | null = null;
  private rows = 0;
  nll = 0;
  tokens = 0;
  segments = 0;

  constructor(
    readonly ccf: CcfCompressor,
    opts: { ratio?: number; slots?: number } = {},
  ) {
    if ((opts.ratio === undefined) === (opts.slots === undefined)) throw new Error('CcfStream: give exactly one of ratio or slots');
    this.slots = opts.slots ?? ccf.slotsForRatio(opts.ratio!);
    if (!Number.isInteger(this.slots) || this.slots < 1 || this.slots > ccf.segmentLen)
      throw new Error(`CcfStream: slots must be an integer in 1..${ccf.segmentLen}, got ${this.slots}`);
  }

  /** Tokens per segment. */
  get segmentLen(): number {
    return this.ccf.segmentLen;
  }
  /** Memory slots per layer so far. */
  get memoryLength(): number {
    return this.kv ? this.kv[0].k.size(2) : 0;
  }
  /** The memory so far, per layer [B, kvHeads, m, headDim] (live tensors: do not free). */
  get memoryKv(): LayerKv[] | undefined {
    return this.kv ?? undefined;
  }
  /** Bytes of the memory keys/values held. */
  get memoryBytes(): number {
    return memoryKvBytes(this.kv);
  }
  get perplexity(): number {
    return Math.exp(this.nll / this.tokens);
  }

  private checkRows(segment: number[] | number[][]): number[][] {
    const rows = Array.isArray(segment[0]) ? (segment as number[][]) : [segment as number[]];
    const n = rows[0]?.length ?? 0;
    if (n < 1 || n > this.ccf.segmentLen) throw new Error(`CcfStream: a segment has 1..${this.ccf.segmentLen} tokens, got ${n}`);
    if (rows.some((r) => r.length !== n)) throw new Error('CcfStream: the rows of a segment must have equal lengths');
    if (this.rows && rows.length !== this.rows) throw new Error(`CcfStream: ${rows.length} rows after ${this.rows}`);
    this.rows = rows.length;
    return rows;
  }

  /** Scores a segment (ids [n] or [B][n]) against the memory so far, then compresses it into memory. */
  perplexityOf(segment: number[] | number[][]): SegmentScore {
    const rows = this.checkRows(segment);
    const b = rows.length;
    const n = rows[0].length;
    const { nll, pending } = noGrad(() =>
      tidy(() => {
        const ids = tensor(rows.flat(), [b, n], { dtype: 'int64' });
        const logits = this.ccf.decodeLogits(ids, this.kv ?? undefined); // [B, n, V]
        let sum = 0;
        if (n > 1)
          sum += crossEntropy(logits.narrow(1, 0, n - 1).reshape(b * (n - 1), -1), ids.narrow(1, 1, n - 1).reshape(b * (n - 1)), { reduction: 'sum' }).item();
        if (this.pending) sum += crossEntropy(this.pending, ids.select(1, 0), { reduction: 'sum' }).item();
        return { nll: sum, pending: logits.select(1, n - 1).contiguous() };
      }),
    );
    const counted = b * (n - 1) + (this.pending ? b : 0);
    this.pending?.free();
    this.pending = pending.keep();
    this.append(rows);
    this.nll += nll;
    this.tokens += counted;
    return { nll, tokens: counted, loss: nll / counted };
  }

  /** Compresses a segment into memory without scoring it (e.g. a prompt to condition on). */
  append(segment: number[] | number[][]): void {
    const rows = this.checkRows(segment);
    const n = rows[0].length;
    const slots = n === this.ccf.segmentLen ? this.slots : Math.ceil((n * this.slots) / this.ccf.segmentLen);
    const start = this.memoryLength;
    const next = noGrad(() =>
      tidy(() => {
        const latents = this.ccf.encode(tensor(rows.flat(), [rows.length, n], { dtype: 'int64' }), slots);
        // RoPE positions are absolute, so the new slots' keys are those of the concatenation.
        const added = this.ccf.memoryKv(latents, start);
        return this.kv
          ? added.map((kv, i) => ({ k: cat([this.kv![i].k, kv.k], 2), v: cat([this.kv![i].v, kv.v], 2) }))
          : added.map((kv) => ({ k: kv.k.contiguous(), v: kv.v.contiguous() }));
      }),
    );
    for (const kv of next) {
      kv.k.keep();
      kv.v.keep();
    }
    this.freeMemory();
    this.kv = next;
    this.segments++;
  }

  private freeMemory(): void {
    for (const { k, v } of this.kv ?? []) {
      k.free();
      v.free();
    }
    this.kv = null;
  }

  free(): void {
    this.freeMemory();
    this.pending?.free();
    this.pending = null;
  }
}

registerCompressor(
  'ccf',
  'CCF: segment-wise per-layer memory KV (LoRA encoder on q/v, LoRA on memory k/v), streaming',
  true,
  (base, options) => new CcfCompressor(base, options),
  { recipe: CCF_RECIPE },
);
