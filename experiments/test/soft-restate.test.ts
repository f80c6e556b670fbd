// Soft-prefix restate rows (experiments/pretrain/soft-restate.ts) and their use in pretraining.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { withRunDir } from '../../test/helpers/run-dir.js';
import { TINY_MODEL, writeTinyCorpus } from './helpers.js';
import { drawSoftRestateShape, groupMeanWeights, plainRestateLoss, softRestateLoss, type SoftRestate } from '../pretrain/soft-restate.js';
import { readExperimentConfig } from '../pretrain/config.js';
import { pretrainExperiment } from '../pretrain/terms.js';
import { cat, crossEntropy, manualSeed, noGrad, tensor, tidy } from '../../src/tensor/index.js';
import { AdamW } from '../../src/nn/index.js';
import { configFromHf } from '../../src/models/config.js';
import { LlamaModel } from '../../src/models/llama.js';
import { Rng } from '../../src/data/rng.js';

function tinyModel(vocab: number, seed = 0): LlamaModel {
  manualSeed(seed);
  return noGrad(() => new LlamaModel(configFromHf({ model_type: 'llama', ...TINY_MODEL, vocab_size: vocab, max_position_embeddings: 256 })));
}

test('group-mean weights: consecutive groups of r, the shorter last group averaged over its own length', () => {
  const w = groupMeanWeights(10, 4);
  assert.deepEqual(w.shape, [3, 10]);
  assert.deepEqual(
    Array.from(w.toArray() as Float32Array),
    [
      [0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 0, 0.5, 0.5],
    ].flat(),
  );
  assert.deepEqual(Array.from(groupMeanWeights(3, 1).toArray() as Float32Array), [1, 0, 0, 0, 1, 0, 0, 0, 1]);
});

test("soft restate loss: [BOS] means <|restate|> passage, scored on the passage and EOS, pointer on each token's group", () => {
  const model = tinyModel(40);
  model.eval();
  const ids = { bos: 1, eos: 2, restate: 3 };
  const passages = Int32Array.from([10, 11, 12, 13, 14, 20, 21, 22, 23, 24]); // 2 rows of 5
  for (const norm of ['none', 'final'] as const) {
    const s: SoftRestate = { rows: 2, lengths: [5], ratios: [2], norm, pointer: { layer: 1, heads: [0, 1], weight: 1, copyWeight: 1 } };
    noGrad(() =>
      tidy(() => {
        const got = softRestateLoss(model, passages, 2, 5, 2, ids, s);
        // By hand: groups {0,1} {2,3} {4} of each row.
        const emb = (i: number) => model.embed(tensor([i], [1, 1], { dtype: 'int64' }));
        const mean = (xs: number[]) => {
          const m = cat(xs.map(emb), 1).mean(1, true);
          return norm === 'final' ? model.model.norm.forward(m) : m;
        };
        const row = (p: number[]) => cat([emb(1), mean([p[0]!, p[1]!]), mean([p[2]!, p[3]!]), mean([p[4]!]), emb(3), ...p.map(emb)], 1);
        const embeds = cat([row([10, 11, 12, 13, 14]), row([20, 21, 22, 23, 24])], 0); // [2, 10, dim]
        const out = model.forward({ inputsEmbeds: embeds, outputAttentions: true, outputAttnInputs: true });
        const logits = out.logits!.narrow(1, 4, 6).reshape(12, -1); // <|restate|> at 4 predicts t_1
        const targets = tensor([10, 11, 12, 13, 14, 2, 20, 21, 22, 23, 24, 2], [12], { dtype: 'int64' });
        assert.ok(Math.abs(got.loss.item() - crossEntropy(logits, targets).item()) < 1e-5, `${norm}: loss`);
        // Query 4 + j predicts token j, whose soft token is 1 + floor(j / 2); both heads, mean.
        let nll = 0;
        for (const head of [0, 1]) {
          const probs = out.attentions![1]!.select(1, head); // [2, 10, 10]
          for (let r = 0; r < 2; r++)
            for (let j = 0; j < 5; j++)
              nll -= Math.log(
                probs
                  .select(0, r)
                  .select(0, 4 + j)
                  .select(0, 1 + Math.floor(j / 2))
                  .item() + 1e-6,
              );
        }
        assert.ok(Math.abs(got.pointed!.item() - nll / 20) < 1e-4, `${norm}: pointer ${got.pointed!.item()} vs ${nll / 20}`);
        // Copy loss: the two heads' summed output with all attention on token j's soft token,
        // through the output embedding, against token j.
        const { numHeads: h, numKvHeads: kv, headDim: hd } = model.config;
        const attn = model.layers[1]!.selfAttn;
        const headOut = (head: number) => {
          const kvHead = Math.floor(head / (h / kv));
          const values = out.attnInputs![1]!.matmul(attn.vProj.weight.value.narrow(0, kvHead * hd, hd).T); // [2, 10, hd]
          return values.matmul(attn.oProj.weight.value.narrow(1, head * hd, hd).T); // [2, 10, dim]
        };
        const heads = model.head(headOut(0).add(headOut(1))); // [2, 10, vocab]
        const picked = tensor(
          [0, 1, 2, 0, 1, 2].map((g, i) => g + 1 + (i >= 3 ? 10 : 0)),
          [6],
          { dtype: 'int64' },
        );
        const perGroup = heads.reshape(20, -1).indexSelect(0, picked); // the 3 soft tokens of each row
        const rowsOfJ = tensor([0, 0, 1, 1, 2, 3, 3, 4, 4, 5], [10], { dtype: 'int64' }); // token j -> its group's soft token
        const copyWant = crossEntropy(perGroup.indexSelect(0, rowsOfJ), tensor([10, 11, 12, 13, 14, 20, 21, 22, 23, 24], [10], { dtype: 'int64' })).item();
        assert.ok(Math.abs(got.copied!.item() - copyWant) < 1e-4, `${norm}: copy ${got.copied!.item()} vs ${copyWant}`);
      }),
    );
  }
  // Without a pointer (or with weight 0) there is no attention term.
  noGrad(() => tidy(() => assert.equal(softRestateLoss(model, passages, 2, 5, 2, ids, { rows: 2, lengths: [5], ratios: [2] }).pointed, undefined)));
  assert.throws(() => softRestateLoss(model, passages, 3, 5, 2, ids, { rows: 3, lengths: [5], ratios: [2] }), /10 ids for 3 rows of 5/);
  // Shapes are drawn from the lists, deterministically in the seed.
  const s: SoftRestate = { rows: 1, lengths: [8, 16, 32], ratios: [2, 4] };
  const shapes = Array.from({ length: 40 }, (_, i) => drawSoftRestateShape(s, `x:${i}`));
  assert.deepEqual(
    shapes,
    Array.from({ length: 40 }, (_, i) => drawSoftRestateShape(s, `x:${i}`)),
  );
  assert.equal(new Set(shapes.map((x) => `${x.length}/${x.ratio}`)).size, 6);
});

test('plain restate rows: [BOS] passage <|restate|> passage, scored on the restated part and EOS', () => {
  const model = tinyModel(40);
  model.eval();
  const ids = { bos: 1, eos: 2, restate: 3 };
  const passages = Int32Array.from([10, 11, 12, 20, 21, 22, 30, 31, 32]); // 3 rows of 3; the third is unused
  noGrad(() =>
    tidy(() => {
      const got = plainRestateLoss(model, passages, 2, 3, ids).item();
      const rows = tensor([1, 10, 11, 12, 3, 10, 11, 12, 1, 20, 21, 22, 3, 20, 21, 22], [2, 8], { dtype: 'int64' });
      const logits = model.forward({ ids: rows }).logits!.narrow(1, 4, 4).reshape(8, -1); // <|restate|> at 4 predicts t_1
      const want = crossEntropy(logits, tensor([10, 11, 12, 2, 20, 21, 22, 2], [8], { dtype: 'int64' })).item();
      assert.ok(Math.abs(got - want) < 1e-5, `${got} vs ${want}`);
    }),
  );
  assert.throws(() => plainRestateLoss(model, passages, 4, 3, ids), /9 ids for 4 rows of 3/);
});

test('a tiny model learns to read pairs of tokens back out of their mean embeddings', { timeout: 180_000 }, () => {
  // Passages of 8 ids from a pool of 16 (chance: ln 16 = 2.77 nats), ratio 2: each soft token is the
  // mean of two embeddings. Held-out rows before and after training on fresh rows each step.
  const model = tinyModel(24, 1);
  const ids = { bos: 1, eos: 2, restate: 3 };
  const s: SoftRestate = { rows: 16, lengths: [8], ratios: [2], norm: 'final', pointer: { layer: 1, heads: [0], weight: 1 } };
  const rowsOf = (seed: string) => {
    const rng = new Rng(seed);
    return Int32Array.from({ length: 16 * 8 }, () => 8 + rng.int(16));
  };
  const heldOut = () => {
    model.eval();
    return noGrad(() => tidy(() => softRestateLoss(model, rowsOf('held-out'), 16, 8, 2, ids, s).loss.item()));
  };
  const opt = new AdamW(
    model.namedParameters().map(([, p]) => p),
    { lr: 3e-3, weightDecay: 0 },
  );
  const before = heldOut();
  model.train();
  for (let step = 0; step < 400; step++) {
    tidy(() => {
      const r = softRestateLoss(model, rowsOf(`train:${step}`), 16, 8, 2, ids, s);
      opt.zeroGrad();
      r.loss.add(r.pointed!).backward();
      opt.step();
    });
  }
  const after = heldOut();
  opt.freeState();
  assert.ok(before > 2.5, `before ${before}`);
  // Knowing each pair but not its order costs ln 2 on 4 of the 9 targets (0.31): the floor. Measured: 3.22 -> 0.49.
  assert.ok(after < 1.2, `held-out soft restate loss ${before} -> ${after}`);
});

test('pretraining with soft restate rows: logged, validated, adds up; bad configs are refused', { timeout: 180_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const data = writeTinyCorpus(dir, 60, 40, (d, i) => `The word${(d * 7 + i * 3) % 50} stood beside item${(d + i) % 11} near the river.`);
    const raw = {
      model: TINY_MODEL,
      tokenizer: resolve('models/softpress-base/tokenizer.json'),
      corpora: [],
      data,
      qaShare: 0,
      restateShare: 0.2,
      softRestate: { rows: 3, lengths: [16, 32], ratios: [2, 4], weight: 0.5, pointer: { layer: 1, heads: [1], weight: 0.25, copyWeight: 2 }, plainRows: 2 },
      seqLen: 128,
      batchSize: 2,
      steps: 12,
      warmup: 2,
      lr: 3e-3,
      weightDecay: 0,
      evalEvery: 12,
      validChunks: 1,
      checkpointEvery: 12,
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(raw));
    await pretrainExperiment(readExperimentConfig(join(dir, 'config.json')), join(dir, 'a'), { quiet: true });
    const rows = readFileSync(join(dir, 'a', 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    const steps = rows.filter((r) => r.loss !== undefined);
    assert.equal(steps.length, 12);
    for (const r of steps) {
      assert.ok(
        r.soft_restate_loss! > 0 && r.soft_restate_attn_loss! > 0 && r.soft_restate_copy_loss! > 0 && r.plain_restate_loss! > 0,
        `step ${r.step}: soft restate terms logged`,
      );
      const want = r.text_loss! + 0.5 * (r.soft_restate_loss! + r.plain_restate_loss!) + 0.25 * r.soft_restate_attn_loss! + 2 * r.soft_restate_copy_loss!;
      assert.ok(Math.abs(want - r.loss!) < 1e-3 * Math.max(1, r.loss!), `step ${r.step}: ${r.loss} vs ${want}`);
    }
    const valid = rows.find((r) => r.valid_soft_restate_loss !== undefined);
    assert.ok(valid && valid.valid_soft_restate_loss! > 0 && valid.valid_plain_restate_loss! > 0, 'validation measures soft and plain restating');
    const bad = (extra: Record<string, unknown>) => {
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, ...extra }));
      return pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true });
    };
    await assert.rejects(bad({ softRestate: { ...raw.softRestate, ratios: [0] } }), /'ratios' must be a non-empty list of integers >= 1/);
    await assert.rejects(
      bad({ softRestate: { ...raw.softRestate, pointer: { layer: 1, heads: [1, 5], weight: 1 } } }),
      /'pointer.heads' must be distinct heads in 0..1/,
    );
    await assert.rejects(bad({ softRestate: { ...raw.softRestate, lengths: [200] } }), /exceed the model's 128 positions/);
    await assert.rejects(bad({ softRestate: { ...raw.softRestate, plainRows: 4 } }), /'plainRows' must be an integer in 0..rows/);
    await assert.rejects(bad({ softRestate: { ...raw.softRestate, lengths: [64] } }), /plain rows of 64 tokens need 129 positions, the model has 128/);
    await assert.rejects(bad({ softRestate: { ...raw.softRestate, norm: 'layer' } }), /'norm' must be 'final' or 'none'/);
    await assert.rejects(
      bad({ softRestate: { ...raw.softRestate, pointer: { layer: 1, heads: [1], weight: 1, copyWeight: -1 } } }),
      /'pointer.copyWeight' must be a number >= 0/,
    );
  }),
);
