/**
 * What is particular to the learned baselines (the shared checks are in compressors.test.ts):
 * mean-pool's groups and exact means (embeddings and last-layer states), ICAE's slot limit,
 * memory init, LoRA kept off the base model, its dropout following the compressor's own mode,
 * and its soft tokens being the base's final states at the memory positions.
 */
import test from 'node:test';
import assert from 'node:assert/strict';

import { cat, noGrad, randn, tensor, tidy } from '../src/tensor/index.js';
import { createCompressor, softTokensOf } from '../src/compress/index.js';
import { poolGroups, MeanPoolCompressor } from '../src/compress/meanpool.js';
import { IcaeCompressor } from '../src/compress/icae.js';
import { tinyBase } from './helpers/tiny.js';
import { maxDiff } from './helpers/close.js';

const { model: base, tokenizer: tok } = tinyBase();

const ids = (row: number[]) => tensor(row, [1, row.length], { dtype: 'int64' });
const ctxA = tok.encode('Call me Ishmael. Some years ago, never mind how long precisely, having little money.');
const ctxB = tok.encode('It is a way I have of driving off the spleen.');

test('meanpool groups: ratio (last group shorter, fractional ratios) and token budgets', () => {
  assert.deepEqual(poolGroups(7, { ratio: 4 }), [
    [0, 4],
    [4, 7],
  ]);
  assert.deepEqual(poolGroups(8, { ratio: 4 }), [
    [0, 4],
    [4, 8],
  ]);
  assert.deepEqual(poolGroups(1, { ratio: 8 }), [[0, 1]]);
  assert.deepEqual(poolGroups(5, { ratio: 2.5 }), [
    [0, 2],
    [2, 5],
  ]);
  assert.deepEqual(poolGroups(7, { tokens: 3 }), [
    [0, 2],
    [2, 4],
    [4, 7],
  ]);
  assert.deepEqual(poolGroups(2, { tokens: 3 }), [
    [0, 1],
    [0, 1],
    [1, 2],
  ]);
  assert.deepEqual(poolGroups(0, { ratio: 4 }), []);
  for (const T of [1, 5, 31, 50]) {
    for (const budget of [{ ratio: 3 }, { ratio: 4 }, { ratio: 8 }, { tokens: 5 }]) {
      const g = poolGroups(T, budget);
      assert.equal(g.length, budget.ratio ? Math.ceil(T / budget.ratio) : 5);
      if (T >= g.length) {
        assert.equal(g[0][0], 0);
        assert.equal(g[g.length - 1][1], T);
        for (let j = 1; j < g.length; j++) assert.equal(g[j][0], g[j - 1][1], 'contiguous');
      }
    }
  }
});

test('meanpool untrained = exact group means (identity projector) of embeddings and of last-layer states', () => {
  tidy(() =>
    noGrad(() => {
      for (const source of ['embeddings', 'hidden'] as const) {
        const c = new MeanPoolCompressor(base, { source });
        for (const budget of [{ ratio: 4 }, { tokens: 3 }]) {
          const ctx = c.compress([ctxA, ctxB], budget);
          [ctxA, ctxB].forEach((row, i) => {
            const reps =
              source === 'embeddings' ? base.embed(ids(row)) : base.forward({ ids: ids([tok.bos, ...row]), logits: 'none' }).hidden.narrow(1, 1, row.length);
            const groups = poolGroups(row.length, budget);
            const want = cat(
              groups.map(([s, e]) => reps.narrow(1, s, e - s).mean(1, true)),
              1,
            );
            const got = ctx.softTokens!.narrow(0, i, 1).narrow(1, 0, groups.length);
            assert.ok(maxDiff(got, want) < 1e-5, `${source} ${JSON.stringify(budget)} item ${i}`);
          });
        }
      }
    }),
  );
});

test('meanpool: empty contexts give no soft tokens; bad options are named', () => {
  tidy(() =>
    noGrad(() => {
      const c = createCompressor('meanpool', base);
      const ctx = c.compress([[], ctxB], { ratio: 4 });
      assert.deepEqual(ctx.meta.softTokens, [0, Math.ceil(ctxB.length / 4)]);
      assert.deepEqual(ctx.mask!.toNumbers().slice(0, ctx.mask!.size(1)), new Array(ctx.mask!.size(1)).fill(0));
      const none = c.compress([[]], { ratio: 4 });
      assert.deepEqual(none.softTokens!.shape, [1, 0, base.dim]);
    }),
  );
  assert.throws(() => createCompressor('meanpool', base, { source: 'logits' }), /meanpool: option 'source' must be one of embeddings, hidden/);
  assert.throws(() => createCompressor('meanpool', base).compress([ctxA], { ratio: 0.5 }), /ratio must be a number >= 1/);
});

test('icae: slot limit, options from strings, LoRA kept off the base model', () => {
  const c = createCompressor('icae', base, { maxSlots: '8', loraRank: '4', loraTargets: 'q,k,v' }) as IcaeCompressor;
  assert.equal(c.maxSlots, 8);
  const names = c.module.namedParameters().map(([n]) => n);
  assert.ok(names.includes('memory'));
  assert.equal(names.filter((n) => n.startsWith('lora.')).length, base.config.numLayers * 3 * 2);
  assert.deepEqual(c.module.memory.value.shape, [8, base.dim]);
  assert.equal(base.namedParameters().filter(([n]) => n.includes('lora')).length, 0, 'no adapter attached to the shared base');
  assert.throws(
    () => c.compress([ctxA], { ratio: 2 }),
    new RegExp(`asks for ${Math.ceil(ctxA.length / 2)} memory tokens for a context of ${ctxA.length} tokens, but this compressor has 8 slots \\(maxSlots\\)`),
  );
  assert.throws(() => c.compress([ctxA], { tokens: 9 }), /maxSlots/);
  assert.throws(() => createCompressor('icae', base, { loraTargets: 'q,x' }), /loraTargets/);
  tidy(() => noGrad(() => assert.deepEqual(c.compress([ctxA], { ratio: 3 }).meta.softTokens, [Math.ceil(ctxA.length / 3)])));
});

test('icae: memory rows start as learned vectors at the embedding scale (or near a given token); untrained soft tokens are the base states at the memory positions', () => {
  const c = new IcaeCompressor(base, { maxSlots: 16 });
  c.setTraining(false);
  assert.equal(c.config.memTokenId, null);
  tidy(() =>
    noGrad(() => {
      // No token needed: rows drawn N(0, std of the embedding table), distinct from each other.
      const table = base.model.embedTokens.weight.value;
      const std = table.sub(table.mean()).square().mean().sqrt().item();
      const mem = c.module.memory.value;
      const memStd = mem.square().mean().sqrt().item();
      assert.ok(Math.abs(memStd / std - 1) < 0.1, `memory rms ${memStd} vs embedding std ${std}`);
      assert.ok(
        mem
          .narrow(0, 0, 1)
          .sub(mem.narrow(0, 1, 1))
          .abs()
          .max()
          .item() >
          0.1 * std,
        'rows differ',
      );
      // The [AE] token is a learned vector too; [LM] is off by default (the official code's default).
      assert.deepEqual(c.module.ae!.value.shape, [base.dim]);
      assert.equal(c.module.lm, undefined);
      assert.deepEqual(c.taskEmbeddings('ae')!.shape, [1, base.dim]);
      assert.equal(c.taskEmbeddings('lm'), undefined);
      assert.equal(c.taskEmbeddings('qa'), undefined);
      const ctx = c.compress([ctxA, ctxB], { ratio: 4 });
      [ctxA, ctxB].forEach((row, i) => {
        const k = Math.ceil(row.length / 4);
        const embeds = cat([base.embed(ids([tok.bos, ...row])), c.module.memory.value.narrow(0, 0, k).unsqueeze(0)], 1);
        const { hidden } = base.forward({ inputsEmbeds: embeds, logits: 'none' }); // LoRA B = 0: no change yet
        const want = hidden.narrow(1, 1 + row.length, k);
        assert.ok(maxDiff(ctx.softTokens!.narrow(0, i, 1).narrow(1, 0, k), want) < 1e-5, `item ${i}`);
      });
      // A given token (how compressors saved with memTokenId were made): its row plus small noise.
      const t = new IcaeCompressor(base, { maxSlots: 16, memTokenId: 6 });
      const row6 = base.embed(ids([6])).reshape(1, -1);
      const rel = t.module.memory.value.sub(row6).norm().item() / (row6.norm().item() * 4);
      assert.ok(rel > 0.02 && rel < 0.3, `relative init noise ${rel}`);
    }),
  );
});

test('icae: LoRA dropout follows the compressor mode (the shared base stays in eval mode)', () => {
  const c = new IcaeCompressor(base, { maxSlots: 16, loraDropout: 0.5 });
  tidy(() =>
    noGrad(() => {
      for (const [n, p] of c.module.namedParameters()) if (n.includes('lora_B')) p.value.add_(randn(p.value.shape).mul(0.5));
    }),
  );
  tidy(() =>
    noGrad(() => {
      c.setTraining(true);
      const a = c.compress([ctxA], { ratio: 4 }).softTokens!;
      const b = c.compress([ctxA], { ratio: 4 }).softTokens!;
      assert.ok(maxDiff(a, b) > 1e-4, 'training mode: dropout makes two calls differ');
      c.setTraining(false);
      const e1 = c.compress([ctxA], { ratio: 4 }).softTokens!;
      const e2 = c.compress([ctxA], { ratio: 4 }).softTokens!;
      assert.equal(maxDiff(e1, e2), 0, 'eval mode: identical');
      assert.equal(base.training, false);
    }),
  );
});

test('strategies: full and none ignore the budget; the soft tokens they announce are the ones they make', () => {
  const contexts = [
    [5, 6, 7, 8, 9, 10, 11],
    [12, 13],
  ];
  for (const method of ['full', 'none', 'truncate']) {
    const c = createCompressor(method, base);
    assert.equal(!!c.budgetFree, method !== 'truncate', `${method}: budget-free`);
    for (const budget of [{ ratio: 1 }, { ratio: 3 }, { tokens: 1 }]) {
      const made = c.compress(contexts, budget).meta.softTokens;
      assert.deepEqual(
        contexts.map((x) => softTokensOf(c, x.length, budget)),
        made,
        `${method} at ${JSON.stringify(budget)}`,
      );
    }
  }
  assert.deepEqual(createCompressor('truncate', base).compress(contexts, { ratio: 3 }).meta.softTokens, [3, 1]);
  // A learned method announces softCount: ceil(T / r).
  assert.equal(softTokensOf(createCompressor('meanpool', base), 7, { ratio: 3 }), 3);
});
