/**
 * softpress ship --base DIR --compressor DIR --out DIR [--dtype float16]
 * Writes a trained compressor in its final, shippable form (fp16 weights by default), with its
 * card: compressor.json keeps the training record and the recipe used, README.md shows them.
 */
import { parseArgs } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel } from '../models/load.js';
import { loadCompressor, saveCompressor } from '../compress/index.js';
import type { DType } from '../tensor/index.js';
import { compressorCard, type RecipeRecord } from '../train/train-compressor.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { base: { type: 'string' }, compressor: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string', default: 'float16' } }, strict: true });
  if (!values.base || !values.compressor || !values.out) throw new Error('usage: softpress ship --base DIR --compressor DIR --out DIR [--dtype float16|bfloat16|float32]');
  if (!['float16', 'bfloat16', 'float32'].includes(values.dtype!)) throw new Error(`--dtype must be float16, bfloat16 or float32, got ${values.dtype}`);
  const { model } = loadModel(values.base);
  const c = loadCompressor(values.compressor, model);
  const cfg = JSON.parse(readFileSync(join(values.compressor, 'compressor.json'), 'utf8')) as Record<string, unknown>;
  const extra = Object.fromEntries(Object.entries(cfg).filter(([k]) => !(k in c.config) && k !== 'baseFingerprint'));
  saveCompressor(c, values.out, extra, { dtype: values.dtype as DType });
  const recipe = cfg.recipe as RecipeRecord | undefined;
  if (recipe) writeFileSync(join(values.out, 'README.md'), compressorCard(c.method, recipe, (cfg.training as Record<string, unknown>) ?? {}));
  process.stdout.write(`wrote ${values.out} (${c.method}, ${values.dtype}${recipe ? ', README.md card' : ''})\n`);
}
