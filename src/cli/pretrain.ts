/**
 * softpress pretrain --config FILE --out DIR [--resume] [--stop-after N]
 *   [--nproc N | --rank R --world-size W --master ADDR:PORT] [--dist-timeout SECONDS]
 * Data-parallel as `softpress train` (launch.ts): batchSize is the global batch.
 */
import { parseArgs } from 'node:util';
import { pretrain, readPretrainConfig } from '../train/pretrain.js';
import { DIST_OPTIONS, DIST_USAGE, distPlan, runPlanned } from './launch.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      out: { type: 'string' },
      resume: { type: 'boolean', default: false },
      'stop-after': { type: 'string' },
      quiet: { type: 'boolean', default: false },
      export: { type: 'boolean', default: false },
      ...DIST_OPTIONS,
    },
    strict: true,
  });
  if (!values.config || !values.out)
    throw new Error(
      `usage: softpress pretrain --config FILE --out DIR [--resume] [--stop-after N] [--export (write OUT/model from the last checkpoint)] ${DIST_USAGE}`,
    );
  const stopAfter = values['stop-after'] === undefined ? undefined : Number(values['stop-after']);
  if (stopAfter !== undefined && !(Number.isInteger(stopAfter) && stopAfter > 0))
    throw new Error(`--stop-after must be a positive integer, got '${values['stop-after']}'`);
  const cfg = readPretrainConfig(values.config);
  const s = await runPlanned(
    'pretrain',
    argv,
    distPlan(values),
    (dist) => pretrain(cfg, values.out!, { resume: values.resume, stopAfter, quiet: values.quiet, exportOnly: values.export, dist }),
    { quiet: values.quiet },
  );
  if (!s) return; // reported by rank 0
  const how = s.alreadyFinished ? 'already finished' : s.steps >= cfg.steps ? 'finished' : s.interrupted ? 'interrupted' : 'stopped';
  const loss = Number.isFinite(s.lastLoss) ? s.lastLoss.toFixed(4) : 'n/a';
  process.stdout.write(`${how} at step ${s.steps}/${cfg.steps}; last loss ${loss}${s.lastValid ? `; valid ${JSON.stringify(s.lastValid)}` : ''}\n`);
}
