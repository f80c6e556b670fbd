/**
 * softpress train --base DIR --method NAME (--ratio R[,R2...] | --budget K)
 *   --stage ae|lm|qa|ae+lm|ae:0.5,lm:0.5 --out DIR [--resume] [--steps N] [--batch N]
 *   [--accum N] [--lr X] [--min-lr X] [--warmup N] [--weight-decay X] [--clip X]
 *   [--context-len 512] [--continuation-len 128] [--ae-lengths 128,256,512] [--seed S] [--init DIR] [--babi DIR]
 *   [--corpora sotu,moby-dick,brown|none] [--data PATH] [--qa-examples N]
 *   [--eval-every N] [--checkpoint-every N] [--valid-batches N] [--stop-after N]
 *   [--method-option key=value ...] [--quiet]
 */
import { parseArgs } from 'node:util';
import { compressorNames } from '../compress/index.js';
import { TRAIN_DEFAULTS, parseStages, trainCompressor, type CompressorTrainConfig } from '../train/train-compressor.js';
import { methodOptions, numberOpt, ratioList } from './args.js';

const USAGE = `usage: softpress train --base DIR --method NAME (--ratio R[,R2...] | --budget K) --stage ae|lm|qa|ae+lm|ae:W,lm:W --out DIR
  [--resume] [--steps ${TRAIN_DEFAULTS.steps}] [--batch ${TRAIN_DEFAULTS.batch}] [--accum ${TRAIN_DEFAULTS.accum}] [--lr ${TRAIN_DEFAULTS.lr}] [--min-lr lr/10] [--warmup min(${TRAIN_DEFAULTS.warmup}, steps/20)]
  [--weight-decay ${TRAIN_DEFAULTS.weightDecay}] [--clip ${TRAIN_DEFAULTS.clip}] [--context-len ${TRAIN_DEFAULTS.contextLen}] [--continuation-len ${TRAIN_DEFAULTS.continuationLen}] [--ae-lengths 128,256,512] [--seed ${TRAIN_DEFAULTS.seed}]
  [--init DIR] [--babi DIR] [--corpora ${TRAIN_DEFAULTS.corpora.join(',')}|none] [--data PATH] [--qa-examples ${TRAIN_DEFAULTS.qaExamples}]
  [--eval-every ${TRAIN_DEFAULTS.evalEvery}] [--checkpoint-every ${TRAIN_DEFAULTS.checkpointEvery}] [--valid-batches ${TRAIN_DEFAULTS.validBatches}] [--stop-after N]
  [--method-option key=value ...] [--quiet]`;

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
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n\nlearned methods: ${compressorNames({ learnedOnly: true }).join(', ')}\n`);
    return;
  }
  for (const f of ['base', 'method', 'stage', 'out'] as const) if (!values[f]) throw new Error(`--${f} is required\n${USAGE}`);
  if ((values.ratio === undefined) === (values.budget === undefined)) throw new Error(`give --ratio R[,R2...] or --budget K (exactly one)\n${USAGE}`);
  const d = TRAIN_DEFAULTS;
  const int = (flag: string, v: string | undefined, def: number, min = 1) => numberOpt(flag, v, { integer: true, min }) ?? def;
  const real = (flag: string, v: string | undefined, def: number) => numberOpt(flag, v, { min: 0 }) ?? def;
  const opts = methodOptions(values['method-option']);
  if (values.init && Object.keys(opts).length) throw new Error('--method-option cannot be combined with --init (the saved compressor brings its own options)');
  const corpora = values.corpora === undefined ? d.corpora : values.corpora === 'none' || values.corpora === '' ? [] : values.corpora.split(',').map((s) => s.trim()).filter(Boolean);
  const cfg: CompressorTrainConfig = {
    base: values.base!,
    method: values.method!,
    methodOptions: opts,
    init: values.init,
    ratios: values.ratio !== undefined ? ratioList(values.ratio) : undefined,
    budgetTokens: values.budget !== undefined ? numberOpt('budget', values.budget, { integer: true, min: 1 }) : undefined,
    stages: parseStages(values.stage!),
    steps: int('steps', values.steps, d.steps),
    batch: int('batch', values.batch, d.batch),
    accum: int('accum', values.accum, d.accum),
    lr: numberOpt('lr', values.lr, { gt: 0 }) ?? d.lr,
    minLr: 0, // set below (default lr / 10)
    warmup: 0, // set below from the steps unless given
    weightDecay: real('weight-decay', values['weight-decay'], d.weightDecay),
    clip: real('clip', values.clip, d.clip),
    contextLen: int('context-len', values['context-len'], d.contextLen),
    continuationLen: int('continuation-len', values['continuation-len'], d.continuationLen, 0),
    aeLengths: values['ae-lengths'] === undefined ? undefined : values['ae-lengths'].split(',').map((v) => int('ae-lengths', v.trim(), 0)),
    seed: int('seed', values.seed, d.seed, 0),
    corpora,
    data: values.data,
    babi: values.babi,
    qaExamples: int('qa-examples', values['qa-examples'], d.qaExamples),
    evalEvery: int('eval-every', values['eval-every'], d.evalEvery),
    checkpointEvery: int('checkpoint-every', values['checkpoint-every'], d.checkpointEvery),
    validBatches: int('valid-batches', values['valid-batches'], d.validBatches),
  };
  cfg.minLr = real('min-lr', values['min-lr'], cfg.lr / 10);
  cfg.warmup = int('warmup', values.warmup, Math.min(d.warmup, Math.ceil(cfg.steps / 20)), 0);
  if (cfg.stages.lm !== undefined && cfg.continuationLen < 1) throw new Error('the lm stage needs --continuation-len >= 1');
  if (corpora.length === 0 && !cfg.data) throw new Error('no training text: give --corpora and/or --data');
  const stopAfter = numberOpt('stop-after', values['stop-after'], { integer: true, min: 1 });
  const { summary, saved } = await trainCompressor(cfg, values.out!, { resume: values.resume, stopAfter, quiet: values.quiet });
  const valid = summary.lastValid ? `; valid ${Object.entries(summary.lastValid).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ')}` : '';
  process.stdout.write(`${saved ? 'trained' : 'stopped'} ${cfg.method} to step ${summary.steps}/${cfg.steps} in ${summary.seconds.toFixed(1)} s; last loss ${Number.isFinite(summary.lastLoss) ? summary.lastLoss.toFixed(4) : 'n/a'}${valid}${saved ? `; saved in ${values.out}` : ''}\n`);
}
