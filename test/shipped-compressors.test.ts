/**
 * The compressors shipped in models/ (trained on models/softpress-base before the recipes and
 * layouts of issue #28) still load with the layout they were saved with — ComprExIT's one shared
 * LayerNorm without biases or BOS, ICAE without task tokens, CCF's pi from the mean embedding and
 * its 64-token segments, GMSA's rank-32 encoder — and still compress, restate and continue in the
 * shared prompts (compress/prompts.ts).
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { noGrad, tidy } from '../src/tensor/index.js';
import { loadModel } from '../src/models/load.js';
import { freeCompressor, loadCompressor, restateFormat, restateTail, tailLoss, withTaskEmbeddings, type Budget } from '../src/compress/index.js';
import type { ComprExIT } from '../src/compress/comprexit.js';
import type { IcaeCompressor } from '../src/compress/icae.js';
import type { CcfCompressor } from '../src/compress/ccf.js';

const MODELS = 'models';
const BASE = join(MODELS, 'softpress-base');
const shipped = existsSync(BASE) ? readdirSync(MODELS).filter((d) => existsSync(join(MODELS, d, 'compressor.json'))) : [];

test(
  'every compressor in models/ loads over the small base with its saved layout, and reads the shared prompts',
  { skip: shipped.length ? false : 'no shipped compressors', timeout: 300_000 },
  () => {
    const { model, tokenizer } = loadModel(BASE);
    const tok = tokenizer!;
    const text = tok.encode(
      'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world. It is a way I have of driving off the spleen and regulating the circulation.',
    );
    const ctx = text.slice(0, 64);
    assert.equal(ctx.length, 64);
    const restate = restateFormat(tok);
    for (const dir of shipped) {
      const c = loadCompressor(join(MODELS, dir), model);
      try {
        if (c.method === 'comprexit') {
          const x = c as ComprExIT;
          assert.deepEqual([x.separateNorms, x.bias, x.bos], [false, false, false], `${dir}: the layout it was trained with`);
        }
        if (c.method === 'icae') assert.equal((c as IcaeCompressor).taskEmbeddings('ae'), undefined, `${dir}: no [AE] token`);
        if (c.method === 'ccf') assert.equal((c as CcfCompressor).segmentLen, 64, `${dir}: its segments`);
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
    assert.ok(
      shipped.includes('comprexit') && shipped.includes('icae-r4') && shipped.includes('ccf') && shipped.includes('gmsa'),
      `shipped: ${shipped.join(', ')}`,
    );
  },
);
