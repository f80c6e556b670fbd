/**
 * Training a compressor over a frozen base model (softpress train): data from the TRAIN split
 * (text stream for ae/lm, generated needle/cloze QA and bAbI train stories for qa), validation
 * on a fixed small set of VALID batches, the one trainer (warmup-cosine, clipping, checkpoints,
 * exact resume, progress, log.jsonl, loss.svg), and at the end the compressor saved in the run
 * folder (compressor.json + weights.safetensors) after proving the base weights unchanged.
 *
 * The optimiser, schedule, ratios and lengths default to the method's recipe (its paper's,
 * compress/recipe.ts) for every setting the caller does not give (applyRecipe); the compressor's
 * card (compressor.json "recipe", and README.md) records each setting used, where it came from,
 * and where it differs from the paper.
 *
 * Run folder: train-config.json, data/{train,valid}.tokens (token caches), checkpoint/,
 * log.jsonl, loss.svg, compressor.json, weights.safetensors, README.md (the card).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { manualSeed, noGrad, tidy, type ProcessGroup } from '../tensor/index.js';
import { warmupCosine, warmupLinear, type Parameter } from '../nn/index.js';
import { loadModel } from '../models/load.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import {
  compressorRecipe,
  createCompressor,
  isLearned,
  loadCompressor,
  recipeTable,
  saveCompressor,
  stageRecipe,
  type Budget,
  type Compressor,
  type MethodRecipe,
  type RecipeDeviation,
  type Stage,
} from '../compress/index.js';
import { buildMixture, loadDocs } from '../data/pretrain-mix.js';
import { splitDocuments, type SplitName } from '../data/splits.js';
import { cachedTokenStream } from '../data/lm.js';
import { makeClozeExamples, makeNeedleExamples, type QAExample } from '../data/qa.js';
import { loadBabiFile } from '../data/babi.js';
import { Rng } from '../data/rng.js';
import type { Doc } from '../data/corpora.js';
import { ObjectiveSampler, batchLoss, shardBatch, type Batch } from './objectives.js';
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
  /** AdamW betas (default (0.9, 0.95), or the recipe's). */
  betas?: [number, number];
  /** Decay after the warm-up (default cosine, or the recipe's). */
  schedule?: 'cosine' | 'linear';
  /** Tokens per training document, for a method that trains on long documents (CCF; default: the method's). */
  docLen?: number;
  /** Encoder graphs kept per document, for a method that backpropagates segment by segment (CCF; default: the recipe's). */
  reservoir?: number;
  /** What the method's recipe set and what the caller did (applyRecipe); written into the card. */
  recipe?: RecipeRecord;
}

/** One setting of a run and where it came from. */
export interface RecipeSetting {
  value: unknown;
  /** 'paper' | 'code' | 'not stated' (the recipe's own choice) | 'flag' (given) | 'softpress' (no recipe entry). */
  from: string;
  /** The paper's (or official code's) value, when the recipe has one. */
  paper?: unknown;
}

/** The recipe a run used, as recorded in its compressor's card. */
export interface RecipeRecord {
  method: string;
  /** The recipe stage whose optimiser was used (null: the method has no recipe). */
  stage: Stage | null;
  source: string;
  settings: Record<string, RecipeSetting>;
  /** Where what was used differs from the paper, and why. */
  deviations: RecipeDeviation[];
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
  const parts = spec
    .split(/[+,]/)
    .map((s) => s.trim())
    .filter((s) => s !== '');
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

/** Settings a caller gave explicitly (undefined: the recipe decides). */
export interface TrainOverrides {
  lr?: number;
  minLr?: number;
  warmup?: number;
  weightDecay?: number;
  clip?: number;
  betas?: [number, number];
  schedule?: 'cosine' | 'linear';
  ratios?: number[];
  budgetTokens?: number;
  contextLen?: number;
  continuationLen?: number;
  docLen?: number;
  reservoir?: number;
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/**
 * The optimiser and data settings of a run: each from `given` when there, else from the
 * method's recipe (the stage of the mix that the recipe has first), else softpress's defaults
 * (TRAIN_DEFAULTS). Also the record of it for the card (completed by recordOptions once the
 * compressor exists).
 */
export function applyRecipe(
  method: string,
  stages: Partial<Record<Stage, number>>,
  steps: number,
  given: TrainOverrides,
  recipe: MethodRecipe | undefined = compressorRecipe(method),
): Required<Pick<CompressorTrainConfig, 'lr' | 'minLr' | 'warmup' | 'weightDecay' | 'clip' | 'betas' | 'schedule' | 'contextLen' | 'continuationLen'>> &
  Pick<CompressorTrainConfig, 'ratios' | 'budgetTokens' | 'docLen' | 'reservoir'> & { recipe: RecipeRecord } {
  const d = TRAIN_DEFAULTS;
  const settings: Record<string, RecipeSetting> = {};
  const st = recipe ? stageRecipe(recipe, Object.keys(stages) as Stage[]) : undefined;
  const pick = <T>(key: string, flag: T | undefined, rec: { value: T; source: string } | undefined, fallback: T, value: (v: T) => T = (v) => v): T => {
    const paperValue = rec && rec.source !== 'not stated' ? rec.value : undefined;
    const out = flag !== undefined ? flag : rec ? value(rec.value) : fallback;
    settings[key] = {
      value: out,
      from: flag !== undefined ? 'flag' : rec ? rec.source : 'softpress',
      ...(paperValue !== undefined ? { paper: value(paperValue) } : {}),
    };
    return out;
  };
  const r = st?.recipe;
  const lr = pick('lr', given.lr, r?.lr, d.lr);
  const minLr = pick('minLr', given.minLr, r ? { value: lr * r.minLrFraction.value, source: r.minLrFraction.source } : undefined, lr / 10);
  const warmup = pick(
    'warmup',
    given.warmup,
    r ? { value: Math.ceil(steps * r.warmupFraction.value), source: r.warmupFraction.source } : undefined,
    Math.min(d.warmup, Math.ceil(steps / 20)),
  );
  const weightDecay = pick('weightDecay', given.weightDecay, r?.weightDecay, d.weightDecay);
  const clip = pick('clip', given.clip, r?.clip, d.clip);
  const betas = pick<[number, number]>('betas', given.betas, r?.betas, [0.9, 0.95]);
  const schedule = pick<'cosine' | 'linear'>('schedule', given.schedule, r?.schedule, 'cosine');
  const t = (recipe?.train ?? {}) as Record<string, { value: unknown; source: string } | undefined>;
  let ratios: number[] | undefined;
  let budgetTokens: number | undefined;
  if (given.budgetTokens !== undefined) {
    budgetTokens = given.budgetTokens;
    settings.budgetTokens = { value: budgetTokens, from: 'flag' };
  } else {
    ratios = pick<number[] | undefined>('ratios', given.ratios, t.ratios as { value: number[]; source: string } | undefined, undefined);
    if (ratios === undefined) delete settings.ratios;
  }
  const contextLen = pick('contextLen', given.contextLen, t.contextLen as { value: number; source: string } | undefined, d.contextLen);
  const continuationLen = pick('continuationLen', given.continuationLen, t.continuationLen as { value: number; source: string } | undefined, d.continuationLen);
  const out = {
    lr,
    minLr,
    warmup,
    weightDecay,
    clip,
    betas,
    schedule,
    contextLen,
    continuationLen,
    ratios,
    budgetTokens,
    docLen: given.docLen,
    reservoir: given.reservoir,
  };
  // Settings of a method's own training procedure: the document length is known once the
  // compressor exists (segment length, window), so only a given one is recorded here.
  if (given.docLen !== undefined) settings.docLen = { value: given.docLen, from: 'flag' };
  if (given.reservoir !== undefined || t.reservoir !== undefined)
    out.reservoir = pick('reservoir', given.reservoir, t.reservoir as { value: number; source: string } | undefined, 2);
  return { ...out, recipe: { method, stage: st?.stage ?? null, source: recipe?.source ?? 'no recipe: softpress defaults', settings, deviations: [] } };
}

/**
 * Completes a run's recipe record with the compressor's options (used vs the recipe's) and the
 * deviations: every setting used that differs from the paper's value (with the recipe's reason,
 * or "given by flag"), and the recipe's standing deviations that still hold.
 */
export function recordOptions(
  rec: RecipeRecord,
  config: Record<string, unknown>,
  given: Record<string, unknown>,
  opts: { init?: string; recipe?: MethodRecipe } = {},
): RecipeRecord {
  const recipe = opts.recipe ?? compressorRecipe(rec.method);
  const settings = { ...rec.settings };
  for (const [k, v] of Object.entries(recipe?.options ?? {})) {
    if (!(k in config)) continue;
    const from = opts.init ? `init (${opts.init})` : k in given ? 'flag' : v.source;
    settings[`options.${k}`] = { value: config[k], from, ...(v.source !== 'not stated' ? { paper: v.value } : {}) };
  }
  const standing = recipe?.deviations ?? [];
  const deviations: RecipeDeviation[] = [];
  const keyOf = (k: string) => (k.startsWith('options.') ? k : `train.${k}`);
  for (const [k, s] of Object.entries(settings)) {
    if (s.paper === undefined || same(s.value, s.paper)) continue;
    const known = standing.find((x) => x.key === keyOf(k) || x.key === k);
    deviations.push({
      key: k,
      paper: JSON.stringify(s.paper),
      ours: JSON.stringify(s.value),
      why: s.from === 'flag' ? 'given by flag' : s.from.startsWith('init') ? `from ${s.from}` : (known?.why ?? 'see the recipe'),
    });
  }
  for (const x of standing) {
    const k = x.key.startsWith('train.') ? x.key.slice(6) : x.key;
    const s = settings[k];
    if (s && (s.paper === undefined ? false : same(s.value, s.paper))) continue; // holds the paper's value here
    if (deviations.some((y) => y.key === k)) continue;
    deviations.push(x);
  }
  return { ...rec, settings, deviations };
}

/** The card (README.md) of a trained compressor: what it is, its recipe, and what differs from the paper. */
export function compressorCard(method: string, rec: RecipeRecord, training: Record<string, unknown>): string {
  const recipe = compressorRecipe(method);
  const lines = [`# ${method} compressor`, '', `Trained by \`softpress train\`. Recipe: ${rec.source}; optimiser of stage ${rec.stage ?? 'n/a'}.`, ''];
  const valid = training.valid as Record<string, number> | undefined;
  const refs = training.validReferences as Record<string, number> | undefined;
  if (valid?.loss !== undefined) {
    const time = typeof training.seconds === 'number' ? ` in ${(training.seconds / 3600).toFixed(2)} h` : '';
    const against = refs ? ` (on the same batches: full context ${refs.full?.toFixed(4)}, no context ${refs.none?.toFixed(4)})` : '';
    lines.push(`Validation loss ${valid.loss.toFixed(4)} nats/token after ${String(training.steps)} steps${time}${against}.`, '');
  }
  lines.push('## Settings used', '', '| setting | value | from | paper |', '|---|---|---|---|');
  for (const [k, s] of Object.entries(rec.settings))
    lines.push(`| ${k} | ${JSON.stringify(s.value)} | ${s.from} | ${s.paper === undefined ? 'not stated' : JSON.stringify(s.paper)} |`);
  lines.push('', '## Differences from the paper', '');
  if (rec.deviations.length === 0) lines.push('None.');
  else {
    lines.push('| setting | paper | used | why |', '|---|---|---|---|');
    for (const x of rec.deviations) lines.push(`| ${x.key} | ${x.paper} | ${x.ours} | ${x.why} |`);
  }
  lines.push('', '## Training', '', '```json', JSON.stringify(training, null, 2), '```');
  if (recipe) lines.push('', "## The method's recipe", '', recipeTable(recipe));
  return lines.join('\n') + '\n';
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
  const files = readdirSync(dir)
    .filter((f) => /^qa\d+_.*\.txt$/.test(f))
    .sort();
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
export function buildQaExamples(
  docs: readonly Doc[],
  split: SplitName,
  cfg: Pick<CompressorTrainConfig, 'babi' | 'seed' | 'contextLen'>,
  count: number,
  tok: Tokenizer,
): QAExample[] {
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

/**
 * The validation loss of the strategies that bracket every compressor, on the run's own
 * validation batches: `full` (the context as its token embeddings) and `none` (no context).
 * Computed once per run folder (references.json) and drawn on loss.svg.
 */
function referenceLosses(model: LlamaModel, tok: Tokenizer, validSet: Batch[], outDir: string, log: (s: string) => void): Record<string, number> {
  const path = join(outDir, 'references.json');
  if (existsSync(path)) return JSON.parse(readFileSync(path, 'utf8')) as Record<string, number>;
  const out: Record<string, number> = {};
  for (const method of ['full', 'none']) {
    const c = createCompressor(method, model);
    let sum = 0;
    noGrad(() => {
      for (const b of validSet) sum += tidy(() => batchLoss(c, b, tok).loss.item());
    });
    out[method] = sum / validSet.length;
  }
  writeFileSync(path, JSON.stringify(out, null, 2) + '\n');
  log(
    `validation loss of the references: ${Object.entries(out)
      .map(([k, v]) => `${k} ${v.toFixed(4)}`)
      .join(', ')}`,
  );
  return out;
}

export interface TrainCompressorResult {
  summary: TrainSummary;
  compressor: Compressor;
  /** Saved (training finished) or not (interrupted / stopAfter). */
  saved: boolean;
}

/**
 * Trains (or resumes) a compressor into outDir. With `dist` (a process group), data-parallel:
 * every rank builds the same compressor and data, trains on its shard of every batch, and rank 0
 * alone logs and writes into outDir (the other ranks write only their token caches there).
 */
export async function trainCompressor(
  cfg: CompressorTrainConfig,
  outDir: string,
  opts: { resume?: boolean; stopAfter?: number; quiet?: boolean; log?: (s: string) => void; dist?: ProcessGroup } = {},
): Promise<TrainCompressorResult> {
  const lead = !opts.dist || opts.dist.rank === 0;
  const log = !lead
    ? () => {}
    : (opts.log ??
      ((s: string) => {
        if (!opts.quiet) process.stderr.write(s + '\n');
      }));
  if (!lead) opts = { ...opts, quiet: true };
  if ((cfg.ratios === undefined || cfg.ratios.length === 0) === (cfg.budgetTokens === undefined)) throw new Error('give ratios or a token budget (not both)');
  if (!cfg.init && !isLearned(cfg.method)) throw new Error(`'${cfg.method}' is a strategy with nothing to train`);
  if (opts.dist && cfg.batch < opts.dist.worldSize)
    throw new Error(`a batch of ${cfg.batch} cannot be shared by ${opts.dist.worldSize} ranks: use --batch ${opts.dist.worldSize} or more`);
  mkdirSync(outDir, { recursive: true });
  const cfgPath = join(outDir, 'train-config.json');
  const cfgText = JSON.stringify(cfg, null, 2);
  if (lead) {
    const hasCheckpoint = existsSync(join(outDir, 'checkpoint', 'state.json'));
    if (opts.resume) {
      if (existsSync(cfgPath) && readFileSync(cfgPath, 'utf8') !== cfgText)
        throw new Error(`${outDir}: --resume with different settings than the run was started with (see ${cfgPath})`);
    } else if (hasCheckpoint) {
      throw new Error(`${outDir} already holds a training run; pass --resume to continue it, or choose another --out`);
    }
    writeFileSync(cfgPath, cfgText);
  }

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
    // The tokenizer tells new compressors whether sequences start with BOS.
    compressor = createCompressor(cfg.method, model, cfg.methodOptions, { tokenizer });
    const unknown = Object.keys(cfg.methodOptions).filter((k) => !(k in compressor.config));
    if (unknown.length)
      throw new Error(
        `${cfg.method}: unknown option(s) ${unknown.join(', ')} (known: ${
          Object.keys(compressor.config)
            .filter((k) => k !== 'method')
            .join(', ') || 'none'
        })`,
      );
  }
  log(`compressor ${compressor.method} ${JSON.stringify(compressor.config)}`);
  // The recipe record of the card: the run's settings, and the compressor's options against the recipe's.
  const baseRecord =
    cfg.recipe ??
    applyRecipe(cfg.method, cfg.stages, cfg.steps, {
      lr: cfg.lr,
      minLr: cfg.minLr,
      warmup: cfg.warmup,
      weightDecay: cfg.weightDecay,
      clip: cfg.clip,
      betas: cfg.betas,
      schedule: cfg.schedule,
      ratios: cfg.ratios,
      budgetTokens: cfg.budgetTokens,
      contextLen: cfg.contextLen,
      continuationLen: cfg.continuationLen,
    }).recipe;
  let record = recordOptions(baseRecord, compressor.config, cfg.methodOptions, { init: cfg.init });
  for (const x of record.deviations) log(`recipe: ${x.key} ${x.ours} (paper ${x.paper}): ${x.why}`);

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
    log(
      `text: train ${trainMix.counts.documents} documents, ${(trainStream.length / 1e6).toFixed(2)} M tokens; valid ${validMix.counts.documents} documents, ${validStream.length} tokens`,
    );
    const need = cfg.contextLen + cfg.continuationLen + 1;
    if (validStream.length < need)
      throw new Error(
        `the valid split has ${validStream.length} tokens, fewer than one chunk of ${need} (context ${cfg.contextLen} + continuation ${cfg.continuationLen} + 1); use more data or shorter --context-len`,
      );
  }
  let trainQa: QAExample[] | undefined;
  let validQa: QAExample[] | undefined;
  if (stageNames.includes('qa')) {
    const splits = splitDocuments(loadDocs(mixOpts), { seed: cfg.seed });
    trainQa = buildQaExamples(splits.train, 'train', cfg, cfg.qaExamples, tokenizer);
    validQa = buildQaExamples(
      splits.valid.length ? splits.valid : splits.train.slice(0, 1),
      'valid',
      cfg,
      Math.max(32, cfg.validBatches * cfg.batch),
      tokenizer,
    );
    if (!splits.valid.length) log('warning: the valid split has no documents; validation QA uses a train document');
    const kinds = (xs: QAExample[]) =>
      Object.entries(xs.reduce<Record<string, number>>((a, x) => ((a[x.kind] = (a[x.kind] ?? 0) + 1), a), {}))
        .map(([k, n]) => `${n} ${k}`)
        .join(', ');
    log(`QA: train ${kinds(trainQa)}; valid ${kinds(validQa)}`);
  }

  // Trainable parameters: those of every stage in the mix.
  const byName = new Map<string, Parameter>();
  for (const s of stageNames) for (const [n, p] of compressor.trainable(s)) byName.set(n, p);
  if (byName.size === 0) throw new Error(`${compressor.method} has nothing to train at stage(s) ${stageNames.join(', ')}`);
  const params = [...byName.entries()];
  log(
    `training ${params.reduce((a, [, p]) => a + p.value.numel, 0)} parameters (${params.length} tensors); stages ${JSON.stringify(cfg.stages)}; ${cfg.ratios ? `ratios ${cfg.ratios.join(', ')}` : `${cfg.budgetTokens} soft tokens`}`,
  );

  // A method with its own training procedure (CCF) trains by it; the others by the objectives.
  const own = compressor.trainingProcedure?.({
    stages: stageNames,
    ratios: cfg.ratios,
    budgetTokens: cfg.budgetTokens,
    trainStream,
    validStream,
    docSeparator: tokenizer.eos,
    batchSize: cfg.batch,
    gradAccum: cfg.accum,
    seed: cfg.seed,
    validBatches: cfg.validBatches,
    docLen: cfg.docLen,
    reservoir: cfg.reservoir,
  });
  let task: TrainTask;
  let references: Record<string, number> | undefined;
  if (own) {
    record = { ...record, settings: { ...record.settings, ...own.settings }, deviations: [...record.deviations, ...own.deviations] };
    log(own.description);
    task = own;
  } else {
    const objective = {
      stages: cfg.stages,
      ratios: cfg.ratios,
      budgetTokens: cfg.budgetTokens,
      contextLen: cfg.contextLen,
      continuationLen: cfg.continuationLen,
      aeLengths: cfg.aeLengths,
      batchSize: cfg.batch,
      seed: cfg.seed,
    };
    const sampler = new ObjectiveSampler(objective, { tokenizer, stream: trainStream, qa: trainQa });
    const validSampler = new ObjectiveSampler(objective, { tokenizer, stream: validStream, qa: validQa });
    const budgets: Budget[] = cfg.ratios ? cfg.ratios.map((ratio) => ({ ratio })) : [{ tokens: cfg.budgetTokens! }];
    const validSet: Batch[] = [];
    for (const s of stageNames) for (const b of budgets) for (let i = 0; i < cfg.validBatches; i++) validSet.push(validSampler.batch(i, 0, s, b));
    if (lead) references = referenceLosses(model, tokenizer, validSet, outDir, log);
    task = {
      params,
      sharded: true,
      microBatch(step, micro, shard) {
        compressor.setTraining(true);
        return batchLoss(compressor, shardBatch(sampler.batch(step, micro), shard), tokenizer);
      },
      validate(): Record<string, number> {
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
      },
    };
  }
  const decay = cfg.schedule === 'linear' ? warmupLinear : warmupCosine;
  const summary = await train(task, {
    outDir,
    totalSteps: cfg.steps,
    gradAccum: cfg.accum,
    clip: cfg.clip,
    schedule: decay({ peakLr: cfg.lr, warmupSteps: Math.min(cfg.warmup, cfg.steps), totalSteps: cfg.steps, minLr: cfg.minLr }),
    betas: cfg.betas,
    weightDecay: cfg.weightDecay,
    checkpointEvery: cfg.checkpointEvery,
    evalEvery: cfg.evalEvery,
    resume: opts.resume,
    stopAfter: opts.stopAfter,
    title: `${compressor.method} (${stageNames.join('+')}) loss`,
    references,
    quiet: opts.quiet,
    dist: opts.dist,
  });
  compressor.setTraining(false);

  // The base must come out exactly as it went in.
  model.invalidateFingerprint();
  if (model.fingerprint() !== fingerprint || weightsDigest(model) !== digest) {
    throw new Error(
      `the base model's weights changed during training (fingerprint ${fingerprint} -> ${model.fingerprint()}); this is a bug in ${compressor.method}: nothing was saved`,
    );
  }
  const finished = summary.steps >= cfg.steps;
  if (finished && lead) {
    const training = {
      stages: cfg.stages,
      ratios: cfg.ratios,
      budgetTokens: cfg.budgetTokens,
      steps: summary.steps,
      contextLen: cfg.contextLen,
      aeLengths: cfg.aeLengths,
      ...own?.training,
      seconds: Math.round(summary.seconds),
      lastLoss: summary.lastLoss,
      valid: summary.lastValid,
      validReferences: references,
      init: cfg.init,
    };
    saveCompressor(compressor, outDir, { training, recipe: record });
    writeFileSync(join(outDir, 'README.md'), compressorCard(compressor.method, record, training));
    log(`saved ${join(outDir, 'compressor.json')}, weights.safetensors and the card README.md`);
  } else if (!finished) {
    log(`stopped at step ${summary.steps}/${cfg.steps}: checkpoint saved; continue with --resume`);
  }
  return { summary, compressor, saved: finished && lead };
}
