/**
 * softpress pull NAME [--list]: puts a named model into the cache ($SOFTPRESS_HOME, default
 * ~/.cache/softpress) and prints its path last. Idempotent.
 */
import { parseArgs } from 'node:util';
import { MODELS, cachedModelPath, pullModel } from '../io/model-source.js';

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, options: { list: { type: 'boolean', default: false } }, allowPositionals: true, strict: true });
  if (values.list || positionals.length === 0) {
    for (const m of MODELS) process.stdout.write(`${m.name.padEnd(24)} ${cachedModelPath(m) ? 'cached' : 'not pulled'}  ${m.license}  ${m.about}\n`);
    if (positionals.length === 0 && !values.list) process.stderr.write('usage: softpress pull NAME (the models above)\n');
    return;
  }
  if (positionals.length > 1) throw new Error('usage: softpress pull NAME (one model at a time)');
  const path = await pullModel(positionals[0], { log: (line) => process.stderr.write(`softpress pull: ${line}\n`) });
  process.stdout.write(`${path}\n`);
}
