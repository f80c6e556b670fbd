/**
 * node dist/experiments/pretrain/run.js --config FILE --out DIR [--resume] [--stop-after N] [--export] [--quiet]
 * `softpress pretrain` for a config with experiment fields (config.ts); build first with
 * `npx tsc -p experiments/tsconfig.json`.
 */
import { parseArgs } from 'node:util';
import { readExperimentConfig } from './config.js';
import { pretrainExperiment } from './terms.js';

const { values } = parseArgs({
  options: {
    config: { type: 'string' },
    out: { type: 'string' },
    resume: { type: 'boolean', default: false },
    'stop-after': { type: 'string' },
    quiet: { type: 'boolean', default: false },
    export: { type: 'boolean', default: false },
  },
  strict: true,
});
if (!values.config || !values.out) {
  console.error('usage: node dist/experiments/pretrain/run.js --config FILE --out DIR [--resume] [--stop-after N] [--export] [--quiet]');
  process.exit(2);
}
const stopAfter = values['stop-after'] === undefined ? undefined : Number(values['stop-after']);
const cfg = readExperimentConfig(values.config);
const s = await pretrainExperiment(cfg, values.out, { resume: values.resume, stopAfter, quiet: values.quiet, exportOnly: values.export });
process.stdout.write(
  `${s.steps >= cfg.base.steps ? 'finished' : 'stopped'} at step ${s.steps}/${cfg.base.steps}; last loss ${s.lastLoss}${s.lastValid ? `; valid ${JSON.stringify(s.lastValid)}` : ''}\n`,
);
