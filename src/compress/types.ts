/**
 * The one interface every compressor implements, and the SoftContext it returns. A compressor
 * turns contexts (token ids) into soft tokens [batch, k, dim] in the decoder's input-embedding
 * space, or into per-layer memory keys/values (CCF), at a budget: a ratio r
 * (k = ceil(T / r) per context of T tokens) or a fixed number of soft tokens.
 */
import type { DType, Tensor } from '../tensor/index.js';
import type { Module, Parameter } from '../nn/index.js';
import type { LayerKv, LlamaModel } from '../models/llama.js';
import type { LoraAdapters } from '../nn/layers.js';
import type { RecipeDeviation } from './recipe.js';
import type { Shard } from '../data/shard.js';

/** Exactly one of ratio (context tokens per soft token) or tokens (soft tokens per context). */
export interface Budget {
  ratio?: number;
  tokens?: number;
}

export interface SoftContextMeta {
  method: string;
  /** The budget asked for. */
  budget: Budget;
  /** Context tokens per batch item. */
  sourceTokens: number[];
  /** Soft tokens (or memory slots per layer) per batch item. */
  softTokens: number[];
  /** Fingerprint of the base model the context was made for. */
  baseFingerprint: string;
}

export interface SoftContext {
  /** [batch, k, dim] input embeddings, when the method makes soft tokens. */
  softTokens?: Tensor;
  /** [batch, k] bool: which soft tokens are real (items may have fewer than k). */
  mask?: Tensor;
  /** Per-layer keys/values [batch, kvHeads, m, headDim] (CCF-style memory). */
  memoryKv?: LayerKv[];
  /** [batch, m] bool for memoryKv slots. */
  memoryMask?: Tensor;
  meta: SoftContextMeta;
}

/** Stored beside a compressor's weights (compressor.json). */
export interface CompressorConfig {
  method: string;
  [key: string]: unknown;
}

/** Training stages the framework knows. */
export type Stage = 'ae' | 'lm' | 'qa';

export interface Compressor {
  readonly method: string;
  readonly base: LlamaModel;
  readonly config: CompressorConfig;
  /** The module holding the compressor's own parameters (what is saved with it); null for strategies. */
  readonly module: Module | null;
  /** Ratios the compressor supports; undefined means any. */
  readonly ratios?: readonly number[];
  /** Parameters that train at a stage (named as in the saved weights). */
  trainable(stage: Stage): [string, Parameter][];
  /** contexts: token ids per item (no BOS). */
  compress(contexts: number[][], budget: Budget): SoftContext;
  /**
   * Learned embeddings the decoder reads right after this compressor's soft tokens when it does
   * a task (ICAE's [AE] token for restating, its [LM] token for continuing): [n, dim] in the
   * base model's dtype, or undefined when the method has none for that task. Applied by
   * withTaskEmbeddings (decode.ts), in training and evaluation alike.
   */
  taskEmbeddings?(task: Stage): Tensor | undefined;
  /** Adapters the decoder uses when reading this compressor's contexts (e.g. GMSA stage 2). */
  readonly decoderLora?: LoraAdapters;
  /** Train/eval mode of the compressor's own modules (dropout). */
  setTraining(on: boolean): void;
  /** Frees native caches kept besides the parameters (freeCompressor frees those too). */
  dispose?(): void;
  /**
   * Soft tokens (or memory slots) a context of T tokens becomes at a budget, when that is not
   * softCount(T, budget): `full` keeps all T, `none` nothing, `truncate` at most T. Read through
   * softTokensOf.
   */
  softTokensFor?(contextTokens: number, budget: Budget): number;
  /** What this compressor makes does not depend on the budget (`full`, `none`): it has no ratio. */
  readonly budgetFree?: boolean;
  /**
   * The method's own training procedure, for a method that does not train by the shared
   * objectives (one loss per batch through compress() and the decoder, train/objectives.ts):
   * CCF backpropagates segment by segment. `softpress train` runs what it returns under the
   * shared trainer, on the run's data, and saves the compressor as for any other method.
   */
  trainingProcedure?(run: MethodTrainingRun): MethodTraining;
  /** Reading a long text segment by segment (CCF's memory grows with each), for methods that stream. */
  readonly streaming?: StreamingReader;
}

/** The soft tokens (or memory slots) compressor `c` makes of a context of T tokens at a budget. */
export function softTokensOf(c: Compressor, contextTokens: number, budget: Budget): number {
  return c.softTokensFor ? c.softTokensFor(contextTokens, budget) : softCount(contextTokens, budget);
}

/** What `softpress train` hands a method's own training procedure. */
export interface MethodTrainingRun {
  /** The stages of the run's mix. */
  stages: readonly Stage[];
  ratios?: readonly number[];
  budgetTokens?: number;
  /** Token streams of the training and validation splits (when a stage reads text); documents end with docSeparator. */
  trainStream?: Int32Array;
  validStream?: Int32Array;
  docSeparator: number;
  /** Rows side by side per micro-batch, and micro-batches per optimiser step. */
  batchSize: number;
  gradAccum: number;
  seed: number;
  /** Validation batches (or documents). */
  validBatches: number;
  /** Tokens per training document, for methods that train on long documents (default: the method's). */
  docLen?: number;
  /** Encoder graphs kept per document, for methods that backpropagate segment by segment (default: the method's). */
  reservoir?: number;
}

/**
 * A method's own training procedure, in the shape the shared trainer runs (train/trainer.ts
 * TrainTask): its parameters, the loss of micro-batch (step, micro), deterministic in both so
 * that a resumed run is exact, and validation figures.
 */
export interface MethodTraining {
  readonly params: [string, Parameter][];
  /**
   * The gradients may already be in the parameters; `loss` is then a fresh leaf (its backward
   * changes nothing). With a shard: its rows only, gradients weighted as TrainTask.microBatch says.
   */
  microBatch(step: number, micro: number, shard?: Shard): { loss: Tensor; tokens: number; parts?: Record<string, number> };
  /** microBatch honours its shard (needed to train on several ranks). */
  readonly sharded?: boolean;
  validate?(): Record<string, number>;
  /** Settings the procedure chose, for the compressor's card: name -> value and where it came from. */
  settings: Record<string, { value: unknown; from: string }>;
  /** Where those settings differ from the paper. */
  deviations: RecipeDeviation[];
  /** Facts saved with the compressor (compressor.json "training"). */
  training: Record<string, unknown>;
  /** One line for the run's log. */
  description: string;
}

/** A score of some tokens of a stream. */
export interface SegmentScore {
  /** Summed negative log-likelihood (nats) of the counted tokens. */
  nll: number;
  /** Tokens counted: the segment's tokens, except the very first token of the stream. */
  tokens: number;
  /** nll / tokens (NaN when nothing was counted). */
  loss: number;
}

/** A long text read segment by segment; holds native memory until free(). */
export interface CompressorStream {
  /** Scores a segment against what the stream holds of the text before it, then takes it in. */
  perplexityOf(segment: number[]): SegmentScore;
  /** Totals over the segments scored so far. */
  readonly nll: number;
  readonly tokens: number;
  /** Bytes of what the stream holds about the past. */
  readonly memoryBytes: number;
  free(): void;
}

export interface StreamingReader {
  /** Tokens per segment. */
  readonly segmentLen: number;
  open(budget: Budget): CompressorStream;
}

/** Soft tokens for a context of T tokens under a budget. */
export function softCount(contextTokens: number, budget: Budget): number {
  checkBudget(budget);
  if (budget.tokens !== undefined) return budget.tokens;
  return Math.ceil(contextTokens / budget.ratio!);
}

export function checkBudget(budget: Budget): void {
  const hasR = budget.ratio !== undefined;
  const hasK = budget.tokens !== undefined;
  if (hasR === hasK) throw new Error('budget: give exactly one of ratio or tokens');
  if (hasR && !(Number.isFinite(budget.ratio) && budget.ratio! >= 1)) throw new Error(`budget: ratio must be a number >= 1, got ${budget.ratio}`);
  if (hasK && !(Number.isInteger(budget.tokens) && budget.tokens! >= 0)) throw new Error(`budget: tokens must be an integer >= 0, got ${budget.tokens}`);
}

export function describeBudget(b: Budget): string {
  return b.ratio !== undefined ? `ratio ${b.ratio}` : `${b.tokens} soft tokens`;
}

/**
 * The dtype a compressor keeps its trainable parameters in, whatever the base's dtype: float32
 * (float64 over a float64 base). Never a 16-bit type: AdamW's small updates would round away.
 * Compressors cast inputs to it and results back to the base's dtype where they meet the base.
 */
export function trainableDtype(base: LlamaModel): DType {
  return base.dtype === 'float64' ? 'float64' : 'float32';
}
