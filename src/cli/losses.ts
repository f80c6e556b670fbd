/**
 * softpress losses --base DIR --methods full,none,truncate,DIR... [--ratio 4] [--stage ae,lm]
 *                  [--batches 8] [--batch 4] [--context-len 256] [--continuation-len 64] [--json]
 * The training objectives' losses (autoencoding, continuation) of several methods on the same
 * held-out batches of the VALID split: what a compressor keeps, next to the none/full bounds.
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { noGrad, tidy } from '../tensor/index.js';
import { loadModel } from '../models/load.js';
import { createCompressor, loadCompressor, type Compressor, type Stage } from '../compress/index.js';
import { buildMixture } from '../data/pretrain-mix.js';
import { cachedTokenStream } from '../data/lm.js';
import { ObjectiveSampler, batchLoss } from '../train/objectives.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      base: { type: 'string', default: 'models/softpress-base' },
      methods: { type: 'string', default: 'full,none,truncate' },
      ratio: { type: 'string', default: '4' },
      stage: { type: 'string', default: 'ae,lm' },
      batches: { type: 'string', default: '8' },
      batch: { type: 'string', default: '4' },
      'context-len': { type: 'string', default: '256' },
      'continuation-len': { type: 'string', default: '64' },
      cache: { type: 'string', default: '.softpress/data' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const int = (name: string, v: string | undefined) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got '${v}'`);
    return n;
  };
  const ratios = values.ratio!.split(',').map(Number);
  if (ratios.some((r) => !(r >= 1))) throw new Error(`--ratio must be numbers >= 1, got '${values.ratio}'`);
  const stages = values.stage!.split(',') as Stage[];
  for (const s of stages) if (s !== 'ae' && s !== 'lm') throw new Error(`--stage takes ae and/or lm, got '${s}'`);
  const nBatches = int('batches', values.batches);
  const cfg = {
    stages: Object.fromEntries(stages.map((s) => [s, 1])),
    ratios,
    contextLen: int('context-len', values['context-len']),
    continuationLen: int('continuation-len', values['continuation-len']),
    batchSize: int('batch', values.batch),
    seed: 0,
  };

  const { model, tokenizer } = loadModel(values.base!);
  if (!tokenizer) throw new Error(`${values.base}: no tokenizer`);
  const tokId = existsSync(join(values.base!, 'tokenizer.json')) ? readFileSync(join(values.base!, 'tokenizer.json'), 'utf8') : model.fingerprint();
  const valid = buildMixture({ corpora: ['sotu', 'moby-dick', 'brown'], qaShare: 0, seed: 0 }, 'valid');
  const stream = cachedTokenStream(join(values.cache!, 'valid.tokens'), valid.texts, tokenizer, tokId);
  const sampler = new ObjectiveSampler(cfg, { tokenizer, stream });

  const methods: Compressor[] = values
    .methods!.split(',')
    .map((m) => (existsSync(join(m, 'compressor.json')) ? loadCompressor(m, model) : createCompressor(m, model, {}, { tokenizer })));
  const names = values.methods!.split(',');
  const rows: { method: string; stage: Stage; ratio: number; loss: number; batches: number }[] = [];
  for (const stage of stages) {
    for (const ratio of ratios) {
      const batches = Array.from({ length: nBatches }, (_, i) => sampler.batch(i, 0, stage, { ratio }));
      methods.forEach((c, mi) => {
        c.setTraining(false);
        let sum = 0;
        noGrad(() => {
          for (const b of batches) sum += tidy(() => batchLoss(c, b, tokenizer).loss.item());
        });
        const row = { method: names[mi], stage, ratio, loss: sum / batches.length, batches: batches.length };
        rows.push(row);
        if (values.json) process.stdout.write(JSON.stringify(row) + '\n');
      });
    }
  }
  if (!values.json) {
    process.stdout.write(`| method | stage | ratio | loss (nats/token) | perplexity |\n|---|---|---:|---:|---:|\n`);
    for (const r of rows) process.stdout.write(`| ${r.method} | ${r.stage} | ${r.ratio} | ${r.loss.toFixed(4)} | ${Math.exp(r.loss).toFixed(1)} |\n`);
  }
}
