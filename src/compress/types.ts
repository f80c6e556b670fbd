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
