/**
 * The compressors shipped in models/ load over the base they were trained for and restate in the
 * shared prompts (compress/prompts.ts). Those for the small base (trained before the recipes and
 * layouts of issue #28) keep the layout they were saved with — ComprExIT's one shared LayerNorm
 * without biases or BOS, ICAE without task tokens, CCF's 64-token segments; those for SmolLM2
 * (models/*-smollm2) have the current layouts and are checked when SmolLM2 is in the cache.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { noGrad, tidy } from '../src/tensor/index.js';
import { loadModel } from '../src/models/load.js';
import { cachedModelPath, namedModel } from '../src/io/model-source.js';
import { freeCompressor, loadCompressor, restateFormat, restateTail, tailLoss, withTaskEmbeddings, type Budget } from '../src/compress/index.js';
import type { ComprExIT } from '../src/compress/comprexit.js';
import type { IcaeCompressor } from '../src/compress/icae.js';
import type { CcfCompressor } from '../src/compress/ccf.js';

const MODELS = 'models';
const BASE = join(MODELS, 'softpress-base');
const SMOLLM2 = 'smollm2-135m-instruct';
const smolPath = cachedModelPath(namedModel(SMOLLM2)!);
const all = readdirSync(MODELS).filter((d) => existsSync(join(MODELS, d, 'compressor.json')));
const forSmol = all.filter((d) => d.endsWith('-smollm2'));
const forSmall = existsSync(BASE) ? all.filter((d) => !d.endsWith('-smollm2')) : [];

/** Loads each compressor over `base` (loadCompressor refuses one made for another base), checks its layout, and restates a 64-token passage. */
function restatesOver(base: string, dirs: string[], layout: (dir: string, c: ReturnType<typeof loadCompressor>) => void): void {
  const { model, tokenizer } = loadModel(base);
  const tok = tokenizer!;
  const text = tok.encode(
    'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world. It is a way I have of driving off the spleen and regulating the circulation.',
  );
  const ctx = text.slice(0, 64);
  assert.equal(ctx.length, 64);
  const restate = restateFormat(tok);
  for (const dir of dirs) {
    const c = loadCompressor(join(MODELS, dir), model);
    try {
      layout(dir, c);
      const budget: Budget = { ratio: 4 };
      const loss = noGrad(() =>
        tidy(() => {
          const soft = withTaskEmbeddings(c, c.compress([ctx], budget), 'ae');
          const { tail, lossFrom } = restateTail(restate, ctx);
          return tailLoss(model, soft, [tail], [lossFrom], { bos: restate.lead, pad: tok.pad, lora: c.decoderLora }).loss.item();
        }),
      );
      assert.ok(Number.isFinite(loss) && loss > 0, `${dir}: restate loss ${loss}`);
    } finally {
      freeCompressor(c);
    }
  }
}

test(
  'every compressor in models/ for the small base loads with its saved layout, and reads the shared prompts',
  { skip: forSmall.length ? false : 'no shipped compressors', timeout: 300_000 },
  () => {
    restatesOver(BASE, forSmall, (dir, c) => {
      if (c.method === 'comprexit') {
        const x = c as ComprExIT;
        assert.deepEqual([x.separateNorms, x.bias, x.bos], [false, false, false], `${dir}: the layout it was trained with`);
      }
      if (c.method === 'icae') assert.equal((c as IcaeCompressor).taskEmbeddings('ae'), undefined, `${dir}: no [AE] token`);
      if (c.method === 'ccf') assert.equal((c as CcfCompressor).segmentLen, 64, `${dir}: its segments`);
    });
    assert.ok(
      forSmall.includes('comprexit') && forSmall.includes('icae-r4') && forSmall.includes('ccf') && forSmall.includes('gmsa'),
      `shipped: ${forSmall.join(', ')}`,
    );
  },
);

test(
  'every compressor in models/ for SmolLM2 loads over it with the current layouts, and reads the shared prompts',
  { skip: smolPath ? false : `${SMOLLM2} is not in the cache (softpress pull ${SMOLLM2})`, timeout: 300_000 },
  () => {
    const methods = forSmol.map((d) => d.replace(/-smollm2$/, '')).sort();
    assert.deepEqual(methods, ['ccf', 'comprexit', 'gmsa', 'icae', 'meanpool'], `shipped for SmolLM2: ${forSmol.join(', ')}`);
    restatesOver(SMOLLM2, forSmol, (dir, c) => {
      assert.equal(c.method, dir.replace(/-smollm2$/, ''), `${dir}: its method`);
      if (c.method === 'comprexit') {
        const x = c as ComprExIT;
        assert.deepEqual([x.separateNorms, x.bias], [true, true], `${dir}: the official code's layout`);
      }
      if (c.method === 'icae') assert.notEqual((c as IcaeCompressor).taskEmbeddings('ae'), undefined, `${dir}: its learned [AE] embedding`);
      if (c.method === 'ccf') assert.equal((c as CcfCompressor).segmentLen, 256, `${dir}: its segments`);
    });
  },
);
