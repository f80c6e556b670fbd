/**
 * Training objectives for compressors, as TrainTasks for the one trainer, in the formats the
 * evaluation reads (compress/prompts.ts, the one definition of both):
 *   ae  — restate: [lead] soft "Restate the aforementioned text." context <end>; loss on the
 *         context and the end token (autoencoding; chat-wrapped for instruct models)
 *   lm  — [BOS] soft continuation; loss on the continuation (next-token prediction)
 *   qa  — [lead] soft "\nQuestion: q\nAnswer:" " a" EOS; loss on the answer and EOS (the lead is
 *         BOS for a base model, the one-shot demonstration for an instruct model)
 * A compressor's own task embeddings (ICAE's [AE], [LM]) follow its soft tokens.
 * A mix of stages and a set of ratios are sampled per micro-batch from (seed, step, micro), so
 * batches are deterministic and one compressor serves several ratios.
 */
import type { Tokenizer } from '../models/tokenizer.js';
import { ChunkSampler } from '../data/lm.js';
import { Rng } from '../data/rng.js';
import type { QAExample } from '../data/qa.js';
import {
  lmLead,
  qaFormat,
  qaTail,
  restateFormat,
  restateTail,
  tailLoss,
  withTaskEmbeddings,
  type Budget,
  type Compressor,
  type Stage,
} from '../compress/index.js';
import { shardRange, type Shard } from '../data/shard.js';
import type { TrainTask, MicroBatchLoss } from './trainer.js';

export interface ObjectiveConfig {
  /** Stages and their sampling weights, e.g. {ae: 0.5, lm: 0.5}. */
  stages: Partial<Record<Stage, number>>;
  /** Ratios sampled per micro-batch (or a fixed budget of soft tokens). */
  ratios?: number[];
  budgetTokens?: number;
  /** Context tokens compressed (ae / lm). */
  contextLen: number;
  /**
   * Autoencoding context lengths, one drawn per micro-batch (default [contextLen]), so that one
   * compressor restates passages of several lengths. Each must be <= contextLen + continuationLen.
   */
  aeLengths?: number[];
  /** Continuation tokens after the context (lm). */
  continuationLen: number;
  batchSize: number;
  seed: number;
}

export interface ObjectiveData {
  tokenizer: Tokenizer;
  /** Token stream of training text (chunks of contextLen + continuationLen + 1 are drawn). */
  stream?: Int32Array;
  /** QA examples (training split only). */
  qa?: QAExample[];
}

/** The token id of a named special token, or an error naming the tokenizer's specials. */
export function specialId(tok: Tokenizer, name: string): number {
  const id = tok.special.get(name);
  if (id === undefined) throw new Error(`the tokenizer has no special token ${name} (it has ${[...tok.special.keys()].join(', ')})`);
  return id;
}

export interface Batch {
  stage: Stage;
  budget: Budget;
  /** Tokens before the soft context (the stage's format). */
  lead: number[];
  contexts: number[][];
  tails: number[][];
  lossFrom: number[];
}

/** Builds the batches of the objectives (pure in step and micro). */
export class ObjectiveSampler {
  private readonly chunks?: ChunkSampler;
  private readonly stageNames: Stage[];
  private readonly stageCum: number[];
  private readonly qaCache = new Map<number, { context: number[]; tail: number[]; lossFrom: number }>();

  constructor(
    readonly cfg: ObjectiveConfig,
    readonly data: ObjectiveData,
  ) {
    const entries = Object.entries(cfg.stages).filter(([, w]) => (w ?? 0) > 0) as [Stage, number][];
    if (entries.length === 0) throw new Error('objectives: give at least one stage with a positive weight');
    this.stageNames = entries.map(([s]) => s);
    const total = entries.reduce((a, [, w]) => a + w, 0);
    let acc = 0;
    this.stageCum = entries.map(([, w]) => (acc += w / total));
    if ((cfg.ratios === undefined || cfg.ratios.length === 0) === (cfg.budgetTokens === undefined)) throw new Error('objectives: give ratios or budgetTokens');
    if (this.stageNames.some((s) => s === 'ae' || s === 'lm')) {
      if (!data.stream) throw new Error('objectives: ae/lm stages need a token stream');
      this.chunks = new ChunkSampler(data.stream, cfg.contextLen + cfg.continuationLen, cfg.seed);
    }
    if (this.stageNames.includes('qa') && !data.qa?.length) throw new Error('objectives: the qa stage needs QA examples');
    for (const n of cfg.aeLengths ?? []) {
      if (!(Number.isInteger(n) && n >= 1 && n <= cfg.contextLen + cfg.continuationLen))
        throw new Error(`objectives: ae length ${n} must be an integer in [1, ${cfg.contextLen + cfg.continuationLen}] (context + continuation)`);
    }
  }

  private qaTokens(i: number): { context: number[]; tail: number[]; lossFrom: number } {
    let t = this.qaCache.get(i);
    if (!t) {
      const ex = this.data.qa![i];
      const tok = this.data.tokenizer;
      t = { context: tok.encode(ex.context), ...qaTail(qaFormat(tok), tok, ex.question, ex.answer) };
      if (this.qaCache.size > 20000) this.qaCache.clear();
      this.qaCache.set(i, t);
    }
    return t;
  }

  batch(step: number, micro: number, forceStage?: Stage, forceBudget?: Budget): Batch {
    const rng = new Rng(`objective:${this.cfg.seed}:${step}:${micro}`);
    const u = rng.next();
    const stage = forceStage ?? this.stageNames[this.stageCum.findIndex((c) => u < c)] ?? this.stageNames[this.stageNames.length - 1];
    const budget: Budget =
      forceBudget ?? (this.cfg.budgetTokens !== undefined ? { tokens: this.cfg.budgetTokens } : { ratio: this.cfg.ratios![rng.int(this.cfg.ratios!.length)] });
    // Drawn only when lengths are given, so runs without them keep their batches.
    const aeLen = stage === 'ae' && this.cfg.aeLengths?.length ? this.cfg.aeLengths[rng.int(this.cfg.aeLengths.length)] : this.cfg.contextLen;
    const tok = this.data.tokenizer;
    const restate = restateFormat(tok);
    const lead = stage === 'ae' ? restate.lead : stage === 'qa' ? qaFormat(tok).lead : lmLead(tok);
    const contexts: number[][] = [];
    const tails: number[][] = [];
    const lossFrom: number[] = [];
    const n = this.cfg.batchSize;
    for (let r = 0; r < n; r++) {
      if (stage === 'qa') {
        const t = this.qaTokens(rng.int(this.data.qa!.length));
        contexts.push(t.context);
        tails.push(t.tail);
        lossFrom.push(t.lossFrom);
        continue;
      }
      const chunk = Array.from(this.chunks!.chunk((step * 1009 + micro) * n + r));
      const ctx = chunk.slice(0, stage === 'ae' ? aeLen : this.cfg.contextLen);
      contexts.push(ctx);
      if (stage === 'ae') {
        const r = restateTail(restate, ctx);
        tails.push(r.tail);
        lossFrom.push(r.lossFrom);
      } else {
        tails.push(chunk.slice(this.cfg.contextLen, this.cfg.contextLen + this.cfg.continuationLen));
        lossFrom.push(0);
      }
    }
    return { stage, budget, lead, contexts, tails, lossFrom };
  }
}

/** The rows of a batch that a shard takes (the batch itself without a shard). */
export function shardBatch(batch: Batch, shard?: Shard): Batch {
  if (!shard || shard.count === 1) return batch;
  const [a, b] = shardRange(batch.contexts.length, shard);
  return { ...batch, contexts: batch.contexts.slice(a, b), tails: batch.tails.slice(a, b), lossFrom: batch.lossFrom.slice(a, b) };
}

/**
 * The loss of one batch through a compressor and the frozen (or adapted) decoder: [lead] soft
 * [task embeddings] tail.
 */
export function batchLoss(compressor: Compressor, batch: Batch, tok: Tokenizer): MicroBatchLoss {
  const ctx = withTaskEmbeddings(compressor, compressor.compress(batch.contexts, batch.budget), batch.stage);
  return tailLoss(compressor.base, ctx, batch.tails, batch.lossFrom, { bos: batch.lead, pad: tok.pad, lora: compressor.decoderLora });
}

/** A TrainTask training a compressor's parameters for a stage mix. */
export function compressorTask(compressor: Compressor, sampler: ObjectiveSampler, trainStage: Stage, validate?: () => Record<string, number>): TrainTask {
  const params = compressor.trainable(trainStage);
  if (params.length === 0) throw new Error(`${compressor.method} has nothing to train at stage ${trainStage}`);
  return {
    params,
    sharded: true,
    microBatch(step, micro, shard) {
      compressor.setTraining(true);
      return batchLoss(compressor, shardBatch(sampler.batch(step, micro), shard), sampler.data.tokenizer);
    },
    validate,
  };
}
