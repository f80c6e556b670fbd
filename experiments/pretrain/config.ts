/**
 * An experiment's pretraining config: the fields of softpress pretrain (src/train/pretrain.ts
 * PretrainConfig) plus the experiment fields below, in one JSON file. Read by
 * experiments/pretrain/run.ts, which hands the plain fields to pretrain() and the experiment
 * fields to it as extensions (terms.ts).
 */
import { parsePretrainConfig, readJson, type PretrainConfig } from '../../src/train/pretrain-config.js';
import type { AnswerPointer } from './answer-pointer.js';
import type { InductionSupervision } from './induction.js';
import type { SoftRestate } from './soft-restate.js';

export interface ExperimentFields {
  /** Share of recall documents (a passage with 2–8 planted facts, all asked back); default 0. */
  recallShare?: number;
  /** Share of restate documents (passage <|restate|> passage); default 0. */
  restateShare?: number;
  /** Fraction of restate documents whose words are shuffled (default 0). */
  restateShuffled?: number;
  /**
   * Synthetic copy rows (random ids with repeated spans, copy-task.ts) added to every
   * micro-batch, copyLen tokens each (default 0), their loss on the copied tokens only. With
   * batchSize 0 a phase trains on copy rows only (the text still validates).
   */
  copyRows?: number;
  /** Tokens per copy row (default seqLen). */
  copyLen?: number;
  /** Copy rows draw their ids from this many non-special ids, a random subset fixed by the seed (default: all). */
  copyPool?: number;
  /** Supervision of a previous-token head and an induction head (induction.ts), on text and copy rows. */
  inductionSupervision?: InductionSupervision;
  /** Extra weight on the answers of QA documents in text rows (logged as `answer_loss`; default 0). */
  answerWeight?: number;
  /** Supervision of one head to point, at each answer token, at that token earlier in the row (answer-pointer.ts). */
  answerPointer?: AnswerPointer;
  /** The same on restate documents: the k-th restated token's query points at the passage's k-th token. */
  restatePointer?: AnswerPointer;
  /** Extra weight on the restated tokens of restate documents (logged as `restate_loss`; default 0). */
  restateWeight?: number;
  /** Soft-prefix restate rows added to every micro-batch (soft-restate.ts). */
  softRestate?: SoftRestate;
}

const EXPERIMENT_FIELDS: readonly (keyof ExperimentFields)[] = [
  'recallShare',
  'restateShare',
  'restateShuffled',
  'copyRows',
  'copyLen',
  'copyPool',
  'inductionSupervision',
  'answerWeight',
  'answerPointer',
  'restatePointer',
  'restateWeight',
  'softRestate',
];

export interface ExperimentConfig {
  base: PretrainConfig;
  experiment: ExperimentFields;
}

/** Splits a config's JSON fields into softpress's and the experiment's, and checks both. */
export function parseExperimentConfig(raw: Record<string, unknown>, path: string): ExperimentConfig {
  const experiment: Record<string, unknown> = {};
  const plain: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) ((EXPERIMENT_FIELDS as readonly string[]).includes(k) ? experiment : plain)[k] = v;
  // softpress wants text rows; an experiment may train on its own rows only.
  const noText = plain.batchSize === 0;
  const base = parsePretrainConfig(noText ? { ...plain, batchSize: 1 } : plain, path);
  if (noText) base.batchSize = 0;
  const x = experiment as ExperimentFields;
  const bad = (k: string, what: string) => new Error(`${path}: '${k}' must be ${what}, got ${JSON.stringify((x as Record<string, unknown>)[k])}`);
  const num = (v: unknown) => typeof v === 'number' && v >= 0;
  if (x.copyRows !== undefined && !(Number.isInteger(x.copyRows) && x.copyRows >= 0)) throw bad('copyRows', 'an integer >= 0');
  if (x.copyLen !== undefined && !(Number.isInteger(x.copyLen) && x.copyLen >= 16 && x.copyLen <= base.seqLen))
    throw bad('copyLen', 'an integer in [16, seqLen]');
  if (x.copyPool !== undefined && !(Number.isInteger(x.copyPool) && x.copyPool >= 2)) throw bad('copyPool', 'an integer >= 2');
  for (const k of ['answerWeight', 'restateWeight', 'recallShare', 'restateShare'] as const)
    if (x[k] !== undefined && !num(x[k])) throw bad(k, 'a number >= 0');
  if ((x.restateWeight ?? 0) > 0 && !((x.restateShare ?? 0) > 0)) throw new Error(`${path}: 'restateWeight' needs restate documents (restateShare > 0)`);
  if (base.batchSize + (x.copyRows ?? 0) + (x.softRestate?.rows ?? 0) === 0)
    throw new Error(`${path}: 'batchSize' is 0 and there are no copy rows: nothing to train on`);
  return { base, experiment: x };
}

export function readExperimentConfig(path: string): ExperimentConfig {
  return parseExperimentConfig(readJson(path), path);
}
