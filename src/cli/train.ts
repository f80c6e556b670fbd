/**
 * softpress train --base DIR --method NAME [--ratio R[,R2...] | --budget K]
 *   --stage ae|lm|qa|ae+lm|ae:0.5,lm:0.5 --out DIR [--resume] [--steps N] [--batch N]
 *   [--accum N] [--lr X] [--min-lr X] [--warmup N] [--weight-decay X] [--clip X] [--betas B1,B2]
 *   [--schedule cosine|linear] [--context-len N] [--continuation-len N] [--ae-lengths 128,256,512]
 *   [--doc-len N] [--reservoir K] [--seed S] [--init DIR] [--babi DIR]
 *   [--corpora sotu,moby-dick,brown|none] [--data PATH] [--qa-examples N]
 *   [--eval-every N] [--checkpoint-every N] [--valid-batches N] [--stop-after N]
 *   [--method-option key=value ...] [--quiet]
 *   [--nproc N | --rank R --world-size W --master ADDR:PORT] [--dist-timeout SECONDS]
 * Every optimiser, schedule, ratio and length flag not given takes the method's recipe (its
 * paper's settings, compress/<method>.ts), else softpress's defaults; the card of the trained
 * compressor (compressor.json "recipe", README.md) records what was used and from where.
 * --nproc N trains data-parallel in N local processes; --rank/--world-size/--master joins a group
 * across machines (launch.ts): each rank takes its share of every batch (--batch is the global
 * batch), and rank 0 writes the run folder.
 */
import { parseArgs } from 'node:util';
import { compressorNames } from '../compress/index.js';
import { TRAIN_DEFAULTS, applyRecipe, parseStages, trainCompressor, type CompressorTrainConfig } from '../train/train-compressor.js';
import { methodOptions, numberOpt, ratioList } from './args.js';
import { DIST_OPTIONS, DIST_USAGE, distPlan, runPlanned } from './launch.js';

const USAGE = `usage: softpress train --base DIR --method NAME [--ratio R[,R2...] | --budget K] --stage ae|lm|qa|ae+lm|ae:W,lm:W --out DIR
  [--resume] [--steps ${TRAIN_DEFAULTS.steps}] [--batch ${TRAIN_DEFAULTS.batch}] [--accum ${TRAIN_DEFAULTS.accum}]
  [--lr X] [--min-lr X] [--warmup N] [--weight-decay X] [--clip X] [--betas B1,B2] [--schedule cosine|linear]
  [--context-len N] [--continuation-len N] [--ae-lengths 128,256,512] [--doc-len N] [--reservoir K] [--seed ${TRAIN_DEFAULTS.seed}]
  [--init DIR] [--babi DIR] [--corpora ${TRAIN_DEFAULTS.corpora.join(',')}|none] [--data PATH] [--qa-examples ${TRAIN_DEFAULTS.qaExamples}]
  [--eval-every ${TRAIN_DEFAULTS.evalEvery}] [--checkpoint-every ${TRAIN_DEFAULTS.checkpointEvery}] [--valid-batches ${TRAIN_DEFAULTS.validBatches}] [--stop-after N]
  [--method-option key=value ...] [--quiet]
  ${DIST_USAGE}
Optimiser, schedule, ratios and lengths not given take the method's recipe (its paper's settings; softpress's
defaults for what the paper does not state: lr ${TRAIN_DEFAULTS.lr}, min lr lr/10, warmup 5%, weight decay ${TRAIN_DEFAULTS.weightDecay},
clip ${TRAIN_DEFAULTS.clip}, betas 0.9,0.95, context ${TRAIN_DEFAULTS.contextLen} + ${TRAIN_DEFAULTS.continuationLen}). CCF: --doc-len tokens per training document
(default 16 segments, fewer when the base's position window cannot hold them), --reservoir K encoder graphs kept.
Data-parallel: --nproc N starts N local workers (SOFTPRESS_THREADS = cores / N each unless set); on several machines
run one command per machine with --rank R --world-size W --master ADDR:PORT (rank 0's address; README). --batch is the
global batch, shared by the ranks; rank 0 writes the run folder; --resume works with any number of ranks.`;

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      base: { type: 'string' },
      method: { type: 'string' },
      ratio: { type: 'string' },
      budget: { type: 'string' },
      stage: { type: 'string' },
      out: { type: 'string' },
      resume: { type: 'boolean', default: false },
      steps: { type: 'string' },
      batch: { type: 'string' },
      accum: { type: 'string' },
      lr: { type: 'string' },
      'min-lr': { type: 'string' },
      warmup: { type: 'string' },
      'weight-decay': { type: 'string' },
      clip: { type: 'string' },
      betas: { type: 'string' },
      schedule: { type: 'string' },
      'doc-len': { type: 'string' },
      reservoir: { type: 'string' },
      'context-len': { type: 'string' },
      'continuation-len': { type: 'string' },
      'ae-lengths': { type: 'string' },
      seed: { type: 'string' },
      init: { type: 'string' },
      babi: { type: 'string' },
      corpora: { type: 'string' },
      data: { type: 'string' },
      'qa-examples': { type: 'string' },
      'eval-every': { type: 'string' },
      'checkpoint-every': { type: 'string' },
      'valid-batches': { type: 'string' },
      'stop-after': { type: 'string' },
      'method-option': { type: 'string', multiple: true },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
      ...DIST_OPTIONS,
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n\nlearned methods: ${compressorNames({ learnedOnly: true }).join(', ')}\n`);
    return;
  }
  for (const f of ['base', 'method', 'stage', 'out'] as const) if (!values[f]) throw new Error(`--${f} is required\n${USAGE}`);
  if (values.ratio !== undefined && values.budget !== undefined) throw new Error(`give --ratio R[,R2...] or --budget K, not both\n${USAGE}`);
  const d = TRAIN_DEFAULTS;
  const int = (flag: string, v: string | undefined, def: number, min = 1) => numberOpt(flag, v, { integer: true, min }) ?? def;
  const real = (flag: string, v: string | undefined) => numberOpt(flag, v, { min: 0 });
  const opts = methodOptions(values['method-option']);
  if (values.init && Object.keys(opts).length) throw new Error('--method-option cannot be combined with --init (the saved compressor brings its own options)');
  const corpora =
    values.corpora === undefined
      ? d.corpora
      : values.corpora === 'none' || values.corpora === ''
        ? []
        : values.corpora
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean);
  let betas: [number, number] | undefined;
  if (values.betas !== undefined) {
    const parts = values.betas.split(',');
    if (parts.length !== 2) throw new Error(`--betas must be two numbers B1,B2 in [0, 1), got '${values.betas}'`);
    betas = parts.map((p) => numberOpt('betas', p.trim(), { min: 0 })!) as [number, number];
    if (betas.some((b) => !(b < 1))) throw new Error(`--betas must be two numbers B1,B2 in [0, 1), got '${values.betas}'`);
  }
  if (values.schedule !== undefined && values.schedule !== 'cosine' && values.schedule !== 'linear')
    throw new Error(`--schedule must be cosine or linear, got '${values.schedule}'`);
  const stages = parseStages(values.stage!);
  const steps = int('steps', values.steps, d.steps);
  const method = values.method!;
  // Every flag not given takes the method's recipe (its paper's settings), else softpress's defaults.
  const lr = numberOpt('lr', values.lr, { gt: 0 });
  const r = applyRecipe(method, stages, steps, {
    lr,
    minLr: real('min-lr', values['min-lr']),
    warmup: numberOpt('warmup', values.warmup, { integer: true, min: 0 }),
    weightDecay: real('weight-decay', values['weight-decay']),
    clip: real('clip', values.clip),
    betas,
    schedule: values.schedule as 'cosine' | 'linear' | undefined,
    ratios: values.ratio !== undefined ? ratioList(values.ratio) : undefined,
    budgetTokens: values.budget !== undefined ? numberOpt('budget', values.budget, { integer: true, min: 1 }) : undefined,
    contextLen: numberOpt('context-len', values['context-len'], { integer: true, min: 1 }),
    continuationLen: numberOpt('continuation-len', values['continuation-len'], { integer: true, min: 0 }),
    docLen: numberOpt('doc-len', values['doc-len'], { integer: true, min: 2 }),
    reservoir: numberOpt('reservoir', values.reservoir, { integer: true, min: 1 }),
  });
  if (r.ratios === undefined && r.budgetTokens === undefined)
    throw new Error(`give --ratio R[,R2...] or --budget K (exactly one; '${method}' has no recipe ratios)\n${USAGE}`);
  const cfg: CompressorTrainConfig = {
    base: values.base!,
    method,
    methodOptions: opts,
    init: values.init,
    ratios: r.ratios,
    budgetTokens: r.budgetTokens,
    stages,
    steps,
    batch: int('batch', values.batch, d.batch),
    accum: int('accum', values.accum, d.accum),
    lr: r.lr,
    // A given --lr without --min-lr keeps the recipe's end of decay relative to it.
    minLr: r.minLr,
    warmup: Math.min(r.warmup, steps),
    weightDecay: r.weightDecay,
    clip: r.clip,
    betas: r.betas,
    schedule: r.schedule,
    contextLen: r.contextLen,
    continuationLen: r.continuationLen,
    docLen: r.docLen,
    reservoir: r.reservoir,
    aeLengths: values['ae-lengths'] === undefined ? undefined : values['ae-lengths'].split(',').map((v) => int('ae-lengths', v.trim(), 0)),
    seed: int('seed', values.seed, d.seed, 0),
    corpora,
    data: values.data,
    babi: values.babi,
    qaExamples: int('qa-examples', values['qa-examples'], d.qaExamples),
    evalEvery: int('eval-every', values['eval-every'], d.evalEvery),
    checkpointEvery: int('checkpoint-every', values['checkpoint-every'], d.checkpointEvery),
    validBatches: int('valid-batches', values['valid-batches'], d.validBatches),
    recipe: r.recipe,
  };
  if (cfg.stages.lm !== undefined && cfg.continuationLen < 1) throw new Error('the lm stage needs --continuation-len >= 1');
  if (corpora.length === 0 && !cfg.data) throw new Error('no training text: give --corpora and/or --data');
  const stopAfter = numberOpt('stop-after', values['stop-after'], { integer: true, min: 1 });
  const plan = distPlan(values);
  if (plan.kind === 'launch' && cfg.batch < plan.nproc)
    throw new Error(`a batch of ${cfg.batch} cannot be shared by ${plan.nproc} processes: use --batch ${plan.nproc} or more`);
  const result = await runPlanned(
    'train',
    argv,
    plan,
    (dist) => trainCompressor(cfg, values.out!, { resume: values.resume, stopAfter, quiet: values.quiet, dist }),
    { quiet: values.quiet },
  );
  if (!result) return; // reported by rank 0
  const { summary, saved } = result;
  const valid = summary.lastValid
    ? `; valid ${Object.entries(summary.lastValid)
        .map(([k, v]) => `${k} ${v.toFixed(4)}`)
        .join(', ')}`
    : '';
  process.stdout.write(
    `${summary.alreadyFinished ? 'already trained' : saved ? 'trained' : 'stopped'} ${cfg.method} to step ${summary.steps}/${cfg.steps} in ${summary.seconds.toFixed(1)} s; last loss ${Number.isFinite(summary.lastLoss) ? summary.lastLoss.toFixed(4) : 'n/a'}${valid}${saved ? `; saved in ${values.out}` : ''}\n`,
  );
}
