/**
 * softpress compress --base DIR (--compressor DIR | --method full|none|truncate)
 *   [--ratio R | --budget K] --in FILE.txt --out FILE.softctx
 * Compresses a text file into a stored soft context. Without --ratio/--budget a trained
 * compressor uses the first ratio (or budget) it was trained at.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { noGrad, tidy } from '../tensor/index.js';
import { loadModel } from '../models/load.js';
import type { LlamaModel } from '../models/llama.js';
import { createCompressor, describeBudget, isLearned, loadCompressor, saveSoftContext, type Budget, type Compressor } from '../compress/index.js';
import { budgetOpt } from './args.js';

const USAGE = 'usage: softpress compress --base DIR (--compressor DIR | --method full|none|truncate) [--ratio R | --budget K] --in FILE.txt --out FILE.softctx';

/** The compressor of --compressor DIR or --method NAME (strategies only), and its default budget. */
export function openCompressor(model: LlamaModel, dir: string | undefined, method: string | undefined): { compressor: Compressor; defaultBudget?: Budget } {
  if ((dir === undefined) === (method === undefined)) throw new Error('give --compressor DIR (a trained compressor) or --method NAME (full, none, truncate), exactly one');
  if (dir !== undefined) {
    const compressor = loadCompressor(dir, model);
    let defaultBudget: Budget | undefined;
    try {
      const saved = JSON.parse(readFileSync(join(dir, 'compressor.json'), 'utf8')) as { training?: { ratios?: number[]; budgetTokens?: number } };
      if (saved.training?.ratios?.length) defaultBudget = { ratio: saved.training.ratios[0] };
      else if (saved.training?.budgetTokens !== undefined) defaultBudget = { tokens: saved.training.budgetTokens };
    } catch {
      // no training notes: the budget must be given
    }
    return { compressor, defaultBudget };
  }
  if (isLearned(method!)) throw new Error(`'${method}' is a learned method: give --compressor DIR of a trained one (softpress train)`);
  return { compressor: createCompressor(method!, model), defaultBudget: method === 'full' || method === 'none' ? { ratio: 1 } : undefined };
}

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
  const { model, tokenizer } = loadModel(values.base!);
  if (!tokenizer) throw new Error(`${values.base}: no tokenizer next to the model`);
  const { compressor, defaultBudget } = openCompressor(model, values.compressor, values.method);
  const budget = budgetOpt(values.ratio, values.budget, defaultBudget);
  const ids = tokenizer.encode(text);
  const t0 = performance.now();
  const { ms, soft } = tidy(() =>
    noGrad(() => {
      const ctx = compressor.compress([ids], budget);
      const elapsed = performance.now() - t0;
      saveSoftContext(values.out!, ctx);
      return { ms: elapsed, soft: ctx.meta.softTokens[0] };
    }),
  );
  process.stdout.write(`${compressor.method} at ${describeBudget(budget)}: ${ids.length} source tokens -> ${soft} soft tokens in ${ms.toFixed(1)} ms; wrote ${values.out}\n`);
}
