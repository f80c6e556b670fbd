/**
 * softpress ship --base DIR --compressor DIR --out DIR [--dtype float16]
 * Writes a trained compressor in its final, shippable form (fp16 weights by default), with its
 * card: compressor.json keeps the training record and the recipe used, README.md shows them.
 * A compressor trained in stages (--init) carries its earlier stages: their training records
 * (compressor.json "earlierStages", oldest first), a table of every stage in the card, and each
 * stage's loss plot (loss-stage<N>.svg) when the run folders are still there.
 */
import { parseArgs } from 'node:util';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadModel } from '../models/load.js';
import { loadCompressor, saveCompressor } from '../compress/index.js';
import type { DType } from '../tensor/index.js';
import { compressorCard, type RecipeRecord } from '../train/train-compressor.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { base: { type: 'string' }, compressor: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string', default: 'float16' } },
    strict: true,
  });
  if (!values.base || !values.compressor || !values.out)
    throw new Error('usage: softpress ship --base DIR --compressor DIR --out DIR [--dtype float16|bfloat16|float32]');
  if (!['float16', 'bfloat16', 'float32'].includes(values.dtype!)) throw new Error(`--dtype must be float16, bfloat16 or float32, got ${values.dtype}`);
  const { model } = loadModel(values.base);
  const c = loadCompressor(values.compressor, model);
  const cfg = JSON.parse(readFileSync(join(values.compressor, 'compressor.json'), 'utf8')) as Record<string, unknown>;
  const extra = Object.fromEntries(Object.entries(cfg).filter(([k]) => !(k in c.config) && k !== 'baseFingerprint'));
  const training = (cfg.training as Record<string, unknown>) ?? {};
  const stages = trainingStages(values.compressor);
  if (stages.length > 1) extra.earlierStages = stages.slice(0, -1).map((s) => s.training);
  saveCompressor(c, values.out, extra, { dtype: values.dtype as DType });
  stages.forEach((s, i) => {
    const plot = stagePlot(s, i + 1);
    const to = join(values.out!, `loss-stage${i + 1}.svg`);
    if (plot && resolve(plot) !== resolve(to)) copyFileSync(plot, to);
  });
  const recipe = cfg.recipe as RecipeRecord | undefined;
  if (recipe) writeFileSync(join(values.out, 'README.md'), compressorCard(c.method, recipe, training) + stagesSection(stages, values.out));
  process.stdout.write(`wrote ${values.out} (${c.method}, ${values.dtype}${recipe ? ', README.md card' : ''})\n`);
}

interface Stage {
  /** The folder it was trained in, or the shipped folder that records it. */
  dir: string;
  training: Record<string, unknown>;
}

/** The loss plot of stage n: its run folder's loss.svg, or its shipped folder's loss-stage<n>.svg. */
function stagePlot(s: Stage, n: number): string | undefined {
  return [join(s.dir, 'loss.svg'), join(s.dir, `loss-stage${n}.svg`)].find((f) => existsSync(f));
}

/**
 * The compressor's training stages, oldest first, following `training.init` back to a run
 * folder without one, or to a shipped folder, whose `earlierStages` are the stages before it.
 * A shipped folder's stages keep it as `dir`: their plots are its loss-stage<n>.svg.
 */
function trainingStages(dir: string): Stage[] {
  const stages: Stage[] = [];
  let at: string | undefined = dir;
  while (at !== undefined && stages.length < 16) {
    const from: string = at;
    const json = JSON.parse(readFileSync(join(from, 'compressor.json'), 'utf8')) as {
      training?: Record<string, unknown>;
      earlierStages?: Record<string, unknown>[];
    };
    const training = json.training ?? {};
    stages.unshift({ dir: from, training });
    if (json.earlierStages) {
      stages.unshift(...json.earlierStages.map((e) => ({ dir: from, training: e })));
      break;
    }
    const init = training.init;
    at = typeof init === 'string' && existsSync(join(init, 'compressor.json')) ? init : undefined;
  }
  return stages;
}

/** The card's table of stages (objective, steps, time, validation loss against full / no context) and plots. */
function stagesSection(stages: Stage[], out: string): string {
  const fmt = (x: unknown) => (typeof x === 'number' ? x.toFixed(4) : '-');
  const lines = [
    '',
    '## Training stages',
    '',
    '| stage | objective | steps | hours | valid loss | full context | no context |',
    '|---:|---|---:|---:|---:|---:|---:|',
  ];
  stages.forEach((s, i) => {
    const t = s.training;
    const valid = t.valid as Record<string, number> | undefined;
    const refs = t.validReferences as Record<string, number> | undefined;
    const objective = Object.keys((t.stages as Record<string, number>) ?? {}).join('+') || '-';
    const hours = typeof t.seconds === 'number' ? (t.seconds / 3600).toFixed(2) : '-';
    lines.push(`| ${i + 1} | ${objective} | ${String(t.steps ?? '-')} | ${hours} | ${fmt(valid?.loss)} | ${fmt(refs?.full)} | ${fmt(refs?.none)} |`);
  });
  const plots = stages.map((_, i) => i + 1).filter((n) => existsSync(join(out, `loss-stage${n}.svg`)));
  if (plots.length) lines.push('', ...plots.map((n) => `![loss of stage ${n}](loss-stage${n}.svg)`));
  return lines.join('\n') + '\n';
}
