/**
 * softpress compress --base DIR (--compressor DIR | --method full|none|truncate)
 *   [--ratio R | --budget K] --in FILE.txt --out FILE.softctx
 * Compresses a text file into a stored soft context. Without --ratio/--budget a trained
 * compressor uses the first ratio (or budget) it was trained at.
 */
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Softpress, type Method } from '../api.js';
import { describeBudget } from '../compress/index.js';
import { budgetOpt } from './args.js';

const USAGE = 'usage: softpress compress --base DIR (--compressor DIR | --method full|none|truncate) [--ratio R | --budget K] --in FILE.txt --out FILE.softctx';

/** The compressor of --compressor DIR or --method NAME; it lives in the library (src/api.ts). */
export { openCompressor } from '../api.js';

export function readText(path: string): string {
  if (!existsSync(path)) throw new Error(`file not found: ${path}`);
  const text = readFileSync(path, 'utf8');
  if (text.trim() === '') throw new Error(`${path} is empty`);
  return text;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      base: { type: 'string' },
      compressor: { type: 'string' },
      method: { type: 'string' },
      ratio: { type: 'string' },
      budget: { type: 'string' },
      in: { type: 'string' },
      out: { type: 'string' },
    },
    strict: true,
  });
  for (const f of ['base', 'in', 'out'] as const) if (!values[f]) throw new Error(`--${f} is required\n${USAGE}`);
  if (!values.out!.endsWith('.softctx')) throw new Error(`--out should name a .softctx file, got '${values.out}'`);
  const text = readText(values.in!);
  using sp = await Softpress.open({ base: values.base!, compressor: values.compressor, method: values.method as Method | undefined });
  const budget = budgetOpt(values.ratio, values.budget, sp.defaultBudget);
  const t0 = performance.now();
  using ctx = await sp.compress(text, { ratio: budget.ratio, budget: budget.tokens });
  const ms = performance.now() - t0;
  await ctx.save(values.out!);
  process.stdout.write(
    `${sp.method} at ${describeBudget(ctx.meta.budget)}: ${ctx.sourceTokens} source tokens -> ${ctx.softTokens} soft tokens in ${ms.toFixed(1)} ms; wrote ${values.out}\n`,
  );
}
