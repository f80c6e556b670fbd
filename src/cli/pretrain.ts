/** softpress pretrain --config FILE --out DIR [--resume] [--stop-after N] */
import { parseArgs } from 'node:util';
import { pretrain, readPretrainConfig } from '../train/pretrain.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, out: { type: 'string' }, resume: { type: 'boolean', default: false }, 'stop-after': { type: 'string' }, quiet: { type: 'boolean', default: false }, export: { type: 'boolean', default: false } },
    strict: true,
  });
  if (!values.config || !values.out) throw new Error('usage: softpress pretrain --config FILE --out DIR [--resume] [--stop-after N] [--export (write OUT/model from the last checkpoint)]');
  const stopAfter = values['stop-after'] === undefined ? undefined : Number(values['stop-after']);
  if (stopAfter !== undefined && !(Number.isInteger(stopAfter) && stopAfter > 0)) throw new Error(`--stop-after must be a positive integer, got '${values['stop-after']}'`);
  const cfg = readPretrainConfig(values.config);
  const s = await pretrain(cfg, values.out, { resume: values.resume, stopAfter, quiet: values.quiet, exportOnly: values.export });
  const how = s.alreadyFinished ? 'already finished' : s.steps >= cfg.steps ? 'finished' : s.interrupted ? 'interrupted' : 'stopped';
  const loss = Number.isFinite(s.lastLoss) ? s.lastLoss.toFixed(4) : 'n/a';
  process.stdout.write(`${how} at step ${s.steps}/${cfg.steps}; last loss ${loss}${s.lastValid ? `; valid ${JSON.stringify(s.lastValid)}` : ''}\n`);
}
