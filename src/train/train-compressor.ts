/**
 * Training a compressor over a frozen base model (softpress train): data from the TRAIN split
 * (text stream for ae/lm, generated needle/cloze QA and bAbI train stories for qa), validation
 * on a fixed small set of VALID batches, the one trainer (warmup-cosine, clipping, checkpoints,
 * exact resume, progress, log.jsonl, loss.svg), and at the end the compressor saved in the run
 * folder (compressor.json + weights.safetensors) after proving the base weights unchanged.
 *
 * Run folder: train-config.json, data/{train,valid}.tokens (token caches), checkpoint/,
 * log.jsonl, loss.svg, compressor.json, weights.safetensors.
 */
import { trainCcf } from './ccf-trainer.js';
import type { CcfCompressor } from '../compress/ccf.js';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { manualSeed, noGrad, tidy } from '../tensor/index.js';
import { warmupCosine, type Parameter } from '../nn/index.js';
import { loadModel } from '../models/load.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { createCompressor, isLearned, loadCompressor, saveCompressor, type Budget, type Compressor, type Stage } from '../compress/index.js';
import { buildMixture, loadDocs } from '../data/pretrain-mix.js';
import { splitDocuments, type SplitName } from '../data/splits.js';
import { cachedTokenStream } from '../data/lm.js';
import { makeClozeExamples, makeNeedleExamples, type QAExample } from '../data/qa.js';
import { loadBabiFile } from '../data/babi.js';
import { Rng } from '../data/rng.js';
import type { Doc } from '../data/corpora.js';
import { ObjectiveSampler, batchLoss, type Batch } from './objectives.js';
import { train, type TrainSummary, type TrainTask } from './trainer.js';

export const STAGES: readonly Stage[] = ['ae', 'lm', 'qa'];

export interface CompressorTrainConfig {
  /** Base model folder (Hugging Face layout with tokenizer.json). */
  base: string;
  method: string;
  /** Method options (ignored with init, which brings its own). */
  methodOptions: Record<string, unknown>;
  /** A saved compressor to start from (e.g. stage 2 from stage 1). */
  init?: string;
  ratios?: number[];
  budgetTokens?: number;
  /** Stage weights, e.g. {ae: 0.5, lm: 0.5}. */
  stages: Partial<Record<Stage, number>>;
  steps: number;
  batch: number;
  accum: number;
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  clip: number;
  contextLen: number;
  continuationLen: number;
  /** Autoencoding context lengths drawn per micro-batch (default: contextLen). */
  aeLengths?: number[];
  seed: number;
  corpora: string[];
  data?: string;
  babi?: string;
  /** Needle + cloze QA examples generated from the train documents (and as many bAbI at most). */
  qaExamples: number;
  evalEvery: number;
  checkpointEvery: number;
  /** Validation batches per stage and budget. */
  validBatches: number;
}

export const TRAIN_DEFAULTS: Omit<CompressorTrainConfig, 'base' | 'method' | 'methodOptions' | 'stages'> = {
  steps: 1000,
  batch: 8,
  accum: 1,
  lr: 1e-3,
  minLr: 1e-4,
  warmup: 50,
  weightDecay: 0.01,
  clip: 1.0,
  contextLen: 512,
  continuationLen: 128,
  seed: 0,
  corpora: ['sotu', 'moby-dick', 'brown'],
  qaExamples: 4000,
  evalEvery: 100,
  checkpointEvery: 50,
  validBatches: 4,
};

/** "ae", "ae+lm" (equal weights) or "ae:0.7,lm:0.3". */
export function parseStages(spec: string): Partial<Record<Stage, number>> {
  const out: Partial<Record<Stage, number>> = {};
  const parts = spec.split(/[+,]/).map((s) => s.trim()).filter((s) => s !== '');
  if (parts.length === 0) throw new Error(`--stage: empty (use ae, lm, qa, ae+lm or ae:0.5,lm:0.5)`);
  for (const p of parts) {
    const [name, w] = p.split(':');
    if (!(STAGES as readonly string[]).includes(name)) throw new Error(`--stage: unknown stage '${name}' (known: ${STAGES.join(', ')})`);
    const weight = w === undefined ? 1 : Number(w);
    if (!(Number.isFinite(weight) && weight > 0)) throw new Error(`--stage: weight of ${name} must be a number > 0, got '${w}'`);
    if (out[name as Stage] !== undefined) throw new Error(`--stage: ${name} is listed twice`);
    out[name as Stage] = weight;
  }
  return out;
}

/** sha256 of every parameter's bytes (the fingerprint reads only the head of each tensor). */
export function weightsDigest(model: LlamaModel): string {
  const h = createHash('sha256');
  tidy(() => {
    for (const [name, p] of model.namedParameters()) {
      h.update(name);
      h.update(p.value.detach().contiguous().toBytes());
    }
  });
  return h.digest('hex');
}

function babiFiles(dir: string): string[] {
  if (!existsSync(dir)) throw new Error(`bAbI folder not found: ${dir}`);
  const files = readdirSync(dir).filter((f) => /^qa\d+_.*\.txt$/.test(f)).sort();
  if (files.length === 0) throw new Error(`${dir}: no bAbI files (qaN_*.txt)`);
  return files.map((f) => join(dir, f));
}

/** Rough characters per token of some documents (to ask the QA generators for ~N tokens). */
function charsPerToken(docs: readonly Doc[], tok: Tokenizer): number {
  let chars = 0;
  let tokens = 0;
  for (const d of docs.slice(0, 40)) {
    const t = d.text.slice(0, 4000);
    chars += t.length;
    tokens += tok.encode(t).length;
  }
  return tokens > 0 ? chars / tokens : 4;
}

/** QA examples of one split: needles and cloze from its documents, and bAbI stories. */
export function buildQaExamples(docs: readonly Doc[], split: SplitName, cfg: Pick<CompressorTrainConfig, 'babi' | 'seed' | 'contextLen'>, count: number, tok: Tokenizer): QAExample[] {
  const chars = Math.max(200, Math.round(cfg.contextLen * charsPerToken(docs, tok)));
  const half = Math.ceil(count / 2);
  const out: QAExample[] = [
    ...makeNeedleExamples(docs, { seed: `compressor:${cfg.seed}:${split}:needle`, count: half, chars }),
    ...makeClozeExamples(docs, { seed: `compressor:${cfg.seed}:${split}:cloze`, count: count - half, chars }),
  ];
  if (cfg.babi) {
    const files = babiFiles(cfg.babi);
    const perFile = Math.max(1, Math.ceil(count / files.length));
    const rng = new Rng(`compressor:${cfg.seed}:${split}:babi`);
    for (const f of files) {
      const all = loadBabiFile(f, { split: split === 'train' ? 'train' : 'valid' });
      // Stories that fit the context length (a sample of each task, tokenized once).
      for (const ex of rng.sample(all, perFile * 2)) {
        if (tok.encode(ex.story).length > cfg.contextLen) continue;
        out.push({ kind: 'babi', id: ex.id, context: ex.story, question: ex.question, answer: ex.answer, docIds: [] });
        if (out.length >= count * 2) break;
      }
    }
  }
  return new Rng(`compressor:${cfg.seed}:${split}:qa-order`).shuffle(out);
}

export interface TrainCompressorResult {
  summary: TrainSummary;
  compressor: Compressor;
  /** Saved (training finished) or not (interrupted / stopAfter). */
  saved: boolean;
}

/** Trains (or resumes) a compressor into outDir. */
export async function trainCompressor(cfg: CompressorTrainConfig, outDir: string, opts: { resume?: boolean; stopAfter?: number; quiet?: boolean; log?: (s: string) => void } = {}): Promise<TrainCompressorResult> {
  const log =
    opts.log ??
    ((s: string) => {
      if (!opts.quiet) process.stderr.write(s + '\n');
    });
  if ((cfg.ratios === undefined || cfg.ratios.length === 0) === (cfg.budgetTokens === undefined)) throw new Error('give ratios or a token budget (not both)');
  if (!cfg.init && !isLearned(cfg.method)) throw new Error(`'${cfg.method}' is a strategy with nothing to train`);
  mkdirSync(outDir, { recursive: true });
  const cfgPath = join(outDir, 'train-config.json');
  const cfgText = JSON.stringify(cfg, null, 2);
  const hasCheckpoint = existsSync(join(outDir, 'checkpoint', 'state.json'));
  if (opts.resume) {
    if (existsSync(cfgPath) && readFileSync(cfgPath, 'utf8') !== cfgText) throw new Error(`${outDir}: --resume with different settings than the run was started with (see ${cfgPath})`);
  } else if (hasCheckpoint) {
    throw new Error(`${outDir} already holds a training run; pass --resume to continue it, or choose another --out`);
  }
  writeFileSync(cfgPath, cfgText);

  const { model, tokenizer } = loadModel(cfg.base);
  if (!tokenizer) throw new Error(`${cfg.base}: no tokenizer (tokenizer.json) next to the model`);
  const fingerprint = model.fingerprint();
  const digest = weightsDigest(model);
  log(`base ${cfg.base}: ${(model.numParameters() / 1e6).toFixed(2)} M parameters, fingerprint ${fingerprint}`);

  // --- compressor ---
  manualSeed(cfg.seed);
  let compressor: Compressor;
  if (cfg.init) {
    compressor = loadCompressor(cfg.init, model);
    if (compressor.method !== cfg.method) throw new Error(`--init ${cfg.init} holds a '${compressor.method}' compressor, not '${cfg.method}'`);
    log(`starting from ${cfg.init}`);
  } else {
    compressor = createCompressor(cfg.method, model, cfg.methodOptions);
    const unknown = Object.keys(cfg.methodOptions).filter((k) => !(k in compressor.config));
    if (unknown.length) throw new Error(`${cfg.method}: unknown option(s) ${unknown.join(', ')} (known: ${Object.keys(compressor.config).filter((k) => k !== 'method').join(', ') || 'none'})`);
  }
  log(`compressor ${compressor.method} ${JSON.stringify(compressor.config)}`);

  // --- data (train split for training, valid split for validation) ---
  const stageNames = Object.keys(cfg.stages) as Stage[];
  const needStream = stageNames.includes('ae') || stageNames.includes('lm');
  const tokId = existsSync(join(cfg.base, 'tokenizer.json')) ? readFileSync(join(cfg.base, 'tokenizer.json'), 'utf8') : `fingerprint:${fingerprint}`;
  const mixOpts = { corpora: cfg.corpora, data: cfg.data, qaShare: 0, seed: cfg.seed };
  let trainStream: Int32Array | undefined;
  let validStream: Int32Array | undefined;
  if (needStream) {
    const tick = (label: string) => (done: number, total: number) => {
      if (!opts.quiet && (done % 500 === 0 || done === total)) process.stderr.write(`\rtokenizing ${label}: ${done}/${total}${done === total ? '\n' : ''}`);
    };
    const trainMix = buildMixture(mixOpts, 'train');
    const validMix = buildMixture(mixOpts, 'valid');
    trainStream = cachedTokenStream(join(outDir, 'data', 'train.tokens'), trainMix.texts, tokenizer, tokId, tick('train'));
    validStream = cachedTokenStream(join(outDir, 'data', 'valid.tokens'), validMix.texts, tokenizer, tokId, tick('valid'));
    log(`text: train ${trainMix.counts.documents} documents, ${(trainStream.length / 1e6).toFixed(2)} M tokens; valid ${validMix.counts.documents} documents, ${validStream.length} tokens`);
    const need = cfg.contextLen + cfg.continuationLen + 1;
    if (validStream.length < need) throw new Error(`the valid split has ${validStream.length} tokens, fewer than one chunk of ${need} (context ${cfg.contextLen} + continuation ${cfg.continuationLen} + 1); use more data or shorter --context-len`);
  }
  let trainQa: QAExample[] | undefined;
  let validQa: QAExample[] | undefined;
  if (stageNames.includes('qa')) {
    const splits = splitDocuments(loadDocs(mixOpts), { seed: cfg.seed });
    trainQa = buildQaExamples(splits.train, 'train', cfg, cfg.qaExamples, tokenizer);
    validQa = buildQaExamples(splits.valid.length ? splits.valid : splits.train.slice(0, 1), 'valid', cfg, Math.max(32, cfg.validBatches * cfg.batch), tokenizer);
    if (!splits.valid.length) log('warning: the valid split has no documents; validation QA uses a train document');
    const kinds = (xs: QAExample[]) => Object.entries(xs.reduce<Record<string, number>>((a, x) => ((a[x.kind] = (a[x.kind] ?? 0) + 1), a), {})).map(([k, n]) => `${n} ${k}`).join(', ');
    log(`QA: train ${kinds(trainQa)}; valid ${kinds(validQa)}`);
  }

  // Trainable parameters: those of every stage in the mix.
  const byName = new Map<string, Parameter>();
  for (const s of stageNames) for (const [n, p] of compressor.trainable(s)) byName.set(n, p);
  if (byName.size === 0) throw new Error(`${compressor.method} has nothing to train at stage(s) ${stageNames.join(', ')}`);
  const params = [...byName.entries()];
  log(`training ${params.reduce((a, [, p]) => a + p.value.numel, 0)} parameters (${params.length} tensors); stages ${JSON.stringify(cfg.stages)}; ${cfg.ratios ? `ratios ${cfg.ratios.join(', ')}` : `${cfg.budgetTokens} soft tokens`}`);

  if (compressor.method === 'ccf') return trainCcfRun(compressor as CcfCompressor);

  const objective = { stages: cfg.stages, ratios: cfg.ratios, budgetTokens: cfg.budgetTokens, contextLen: cfg.contextLen, continuationLen: cfg.continuationLen, aeLengths: cfg.aeLengths, batchSize: cfg.batch, seed: cfg.seed };
  const sampler = new ObjectiveSampler(objective, { tokenizer, stream: trainStream, qa: trainQa });
  const validSampler = new ObjectiveSampler(objective, { tokenizer, stream: validStream, qa: validQa });
  const budgets: Budget[] = cfg.ratios ? cfg.ratios.map((ratio) => ({ ratio })) : [{ tokens: cfg.budgetTokens! }];
  const validSet: Batch[] = [];
  for (const s of stageNames) for (const b of budgets) for (let i = 0; i < cfg.validBatches; i++) validSet.push(validSampler.batch(i, 0, s, b));

  const validate = (): Record<string, number> => {
    compressor.setTraining(false);
    const sums: Record<string, number[]> = {};
    noGrad(() => {
      for (const b of validSet) {
        const l = tidy(() => batchLoss(compressor, b, tokenizer).loss.item());
        (sums[`${b.stage}_loss`] ??= []).push(l);
        (sums.loss ??= []).push(l);
      }
    });
    return Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v.reduce((a, x) => a + x, 0) / v.length]));
  };

  const task: TrainTask = {
    params,
    microBatch(step, micro) {
      compressor.setTraining(true);
      return batchLoss(compressor, sampler.batch(step, micro), tokenizer);
    },
    validate,
  };
  const summary = await train(task, {
    outDir,
    totalSteps: cfg.steps,
    gradAccum: cfg.accum,
    clip: cfg.clip,
    schedule: warmupCosine({ peakLr: cfg.lr, warmupSteps: Math.min(cfg.warmup, cfg.steps), totalSteps: cfg.steps, minLr: cfg.minLr }),
    weightDecay: cfg.weightDecay,
    checkpointEvery: cfg.checkpointEvery,
    evalEvery: cfg.evalEvery,
    resume: opts.resume,
    stopAfter: opts.stopAfter,
    title: `${compressor.method} (${stageNames.join('+')}) loss`,
    quiet: opts.quiet,
  });
  compressor.setTraining(false);

  // The base must come out exactly as it went in.
  model.invalidateFingerprint();
  if (model.fingerprint() !== fingerprint || weightsDigest(model) !== digest) {
    throw new Error(`the base model's weights changed during training (fingerprint ${fingerprint} -> ${model.fingerprint()}); this is a bug in ${compressor.method}: nothing was saved`);
  }
  const finished = summary.steps >= cfg.steps;
  if (finished) {
    saveCompressor(compressor, outDir, {
      training: { stages: cfg.stages, ratios: cfg.ratios, budgetTokens: cfg.budgetTokens, steps: summary.steps, contextLen: cfg.contextLen, aeLengths: cfg.aeLengths, lastLoss: summary.lastLoss, valid: summary.lastValid, init: cfg.init },
    });
    log(`saved ${join(outDir, 'compressor.json')} and weights.safetensors`);
  } else {
    log(`stopped at step ${summary.steps}/${cfg.steps}: checkpoint saved; continue with --resume`);
  }
  return { summary, compressor, saved: finished };

  /** CCF backpropagates segment by segment: its own procedure, on the same data and trainer. */
  async function trainCcfRun(ccf: CcfCompressor): Promise<TrainCompressorResult> {
    if (!trainStream || !validStream || stageNames.join() !== 'lm') throw new Error('ccf trains with --stage lm (segment-wise language modelling over documents of --context-len + --continuation-len tokens)');
    if (!cfg.ratios) throw new Error('ccf trains at ratios (--ratio), not a token budget');
    const summary = await trainCcf({
      compressor: ccf,
      stream: trainStream,
      docLen: cfg.contextLen + cfg.continuationLen,
      ratios: cfg.ratios,
      steps: cfg.steps,
      gradAccum: cfg.accum,
      batchSize: cfg.batch,
      lr: cfg.lr,
      minLr: cfg.minLr,
      weightDecay: cfg.weightDecay,
      clip: cfg.clip,
      seed: cfg.seed,
      outDir,
      saveDir: outDir,
      checkpointEvery: cfg.checkpointEvery,
      evalEvery: cfg.evalEvery,
      valid: { stream: validStream, docs: cfg.validBatches },
      resume: opts.resume,
      stopAfter: opts.stopAfter,
      quiet: opts.quiet,
    });
    model.invalidateFingerprint();
    if (model.fingerprint() !== fingerprint || weightsDigest(model) !== digest) throw new Error(`the base model's weights changed during ccf training; nothing was saved`);
    return { summary, compressor: ccf, saved: summary.steps >= cfg.steps };
  }
}
