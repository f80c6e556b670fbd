/**
 * The config of a pretraining run (softpress pretrain --config FILE): the model's architecture,
 * tokenizer, data mixture and schedule, with defaults and strict checks.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';

export interface PretrainConfig {
  /** Hugging Face config.json fields of the model (vocab_size is taken from the tokenizer). */
  model: Record<string, unknown>;
  /** tokenizer.json (byte-level BPE), relative to the config file. */
  tokenizer: string;
  /** Bundled corpora by name (softpress data list). */
  corpora: string[];
  /** A user corpus: a .txt file, a folder of .txt files or a .jsonl file with a "text" field. */
  data?: string;
  /** Folder of bAbI task files (qaN_*_train.txt) whose stories join the QA documents. */
  babiDir?: string;
  /** Share of the characters that are QA documents (bAbI stories, planted facts, cloze). */
  qaShare: number;
  /** Share of the QA characters that are bAbI stories when babiDir is given (default 0.4). */
  babiFraction?: number;
  /**
   * Start from the weights of another pretraining run (its folder, relative to the config) or of a
   * Hugging Face model folder (config.json + model.safetensors, e.g. a shipped model) instead of a
   * random initialisation: a continued phase with its own data mixture and schedule.
   */
  init?: string;
  seed: number;
  seqLen: number;
  batchSize: number;
  gradAccum: number;
  steps: number;
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  clip: number;
  evalEvery: number;
  validChunks: number;
  checkpointEvery: number;
}

const DEFAULTS: Omit<PretrainConfig, 'model' | 'tokenizer'> = {
  corpora: ['sotu', 'moby-dick', 'brown'],
  qaShare: 0.15,
  seed: 0,
  seqLen: 512,
  batchSize: 8,
  gradAccum: 1,
  steps: 1000,
  lr: 1e-3,
  minLr: 1e-4,
  warmup: 50,
  weightDecay: 0.1,
  clip: 1.0,
  evalEvery: 100,
  validChunks: 32,
  checkpointEvery: 50,
};

const FIELDS = new Set(['model', 'tokenizer', 'data', 'babiDir', 'babiFraction', 'init', ...Object.keys(DEFAULTS)]);

/** A pretraining config from its JSON fields; relative paths are resolved against `path`'s folder. */
export function parsePretrainConfig(raw: Record<string, unknown>, path: string): PretrainConfig {
  const unknown = Object.keys(raw).filter((k) => !FIELDS.has(k));
  if (unknown.length)
    throw new Error(
      `${path}: unknown field(s) ${unknown.join(', ')} (known: ${[...FIELDS].join(', ')}; the experiments' fields, such as copyRows or answerPointer, are read by experiments/pretrain: see experiments/README.md)`,
    );
  const cfg = { ...DEFAULTS, ...raw } as PretrainConfig;
  if (!cfg.model || typeof cfg.model !== 'object') throw new Error(`${path}: 'model' (Hugging Face config fields) is required`);
  if (typeof cfg.tokenizer !== 'string') throw new Error(`${path}: 'tokenizer' (path to tokenizer.json) is required`);
  const rel = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(dirname(path), p));
  cfg.tokenizer = rel(cfg.tokenizer)!;
  cfg.data = rel(cfg.data);
  cfg.babiDir = rel(cfg.babiDir);
  cfg.init = rel(cfg.init);
  for (const k of ['seqLen', 'batchSize', 'gradAccum', 'steps', 'warmup', 'evalEvery', 'validChunks', 'checkpointEvery'] as const) {
    if (!Number.isInteger(cfg[k]) || cfg[k] < (k === 'warmup' ? 0 : 1))
      throw new Error(`${path}: '${k}' must be a positive integer, got ${JSON.stringify(cfg[k])}`);
  }
  for (const k of ['lr', 'minLr', 'weightDecay', 'clip'] as const) {
    if (typeof cfg[k] !== 'number' || !(cfg[k] >= 0)) throw new Error(`${path}: '${k}' must be a number >= 0`);
  }
  return cfg;
}

/** Reads a pretraining config file (see parsePretrainConfig). */
export function readPretrainConfig(path: string): PretrainConfig {
  return parsePretrainConfig(readJson(path), path);
}

/** A JSON file's object, or an error naming the file. */
export function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}
