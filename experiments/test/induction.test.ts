// Attention supervision for an induction head (experiments/pretrain/induction.ts) and its use in pretraining.
import test from 'node:test';
import assert from 'node:assert/strict';
import { withRunDir } from '../../test/helpers/run-dir.js';
import { TINY_MODEL, writeTinyCorpus } from './helpers.js';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { inductionSupervisionLoss, inductionTargets } from '../pretrain/induction.js';
import { readExperimentConfig } from '../pretrain/config.js';
import { pretrainExperiment, copyPoolIds } from '../pretrain/terms.js';
import { pretrain } from '../../src/train/pretrain.js';
import { loadModel } from '../../src/models/load.js';
import { tensor, tidy } from '../../src/tensor/index.js';
import { answerTargets } from '../pretrain/answer-pointer.js';
import { BpeTokenizer } from '../../src/models/bpe.js';

test('induction targets: the position after every earlier occurrence of the query token', () => {
  // Row 0: A B C A B  -> query 3 (A) looks at 1 (after A@0); query 4 (B) looks at 2 (after B@1).
  // Row 1: D D D      -> query 1 looks at 1 (after D@0); query 2 looks at 1 and 2.
  // Rows have a stride of 6 (inputs + the target id, ignored).
  const ids = Int32Array.from([5, 6, 7, 5, 6, 99, 8, 8, 8, 0, 0, 99]);
  const { targets, queries } = inductionTargets(ids, 2, 5, 6);
  const at = (r: number, i: number) => Array.from(targets.subarray((r * 5 + i) * 5, (r * 5 + i + 1) * 5));
  assert.deepEqual(Array.from(queries), [3, 4, 5 + 1, 5 + 2, 5 + 4]);
  assert.deepEqual(at(0, 3), [0, 1, 0, 0, 0]);
  assert.deepEqual(at(0, 4), [0, 0, 1, 0, 0]);
  assert.deepEqual(at(0, 2), [0, 0, 0, 0, 0]);
  assert.deepEqual(at(1, 1), [0, 1, 0, 0, 0]);
  assert.deepEqual(at(1, 2), [0, 1, 1, 0, 0]);
  // Row 1 positions 3 and 4 are 0 0: 0@3 has no earlier 0, 0@4 looks after 0@3.
  assert.deepEqual(at(1, 4), [0, 0, 0, 0, 1]);
  assert.throws(() => inductionTargets(ids, 3, 5, 6), /cannot hold 3 rows/);
  // match 2: of the earlier 6s (at 1 and 4), only the one preceded by 5 like the query is a target.
  const text = Int32Array.from([5, 6, 7, 9, 6, 7, 5, 6]);
  const row7 = (m: number) => Array.from(inductionTargets(text, 1, 8, 8, m).targets.subarray(7 * 8, 8 * 8));
  assert.deepEqual(row7(1), [0, 0, 1, 0, 0, 1, 0, 0]);
  assert.deepEqual(row7(2), [0, 0, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual(row7(8), row7(2));
  // minMatch 2: queries 5 (6 7 as at 1 2) and 7 (5 6 as at 0 1) stay; 4 (6 after 9) and 6 (5) match
  // one token only and go.
  const strict = inductionTargets(text, 1, 8, 8, 4, 2);
  assert.deepEqual(Array.from(strict.queries), [5, 7]);
  assert.deepEqual(Array.from(strict.targets.subarray(7 * 8, 8 * 8)), row7(2));
});

test('induction supervision loss: -log of the weight on the previous token and on the induction targets', () => {
  tidy(() => {
    const len = 4;
    const ids = Int32Array.from([3, 4, 3, 9]); // query 2 (id 3) should look at 1
    // Two heads; head 1 is the supervised one. Uniform causal attention for both layers.
    const probs = new Float32Array(2 * len * len);
    for (let h = 0; h < 2; h++) for (let i = 0; i < len; i++) for (let j = 0; j <= i; j++) probs[(h * len + i) * len + j] = 1 / (i + 1);
    const attn = tensor(probs, [1, 2, len, len]);
    const { prev, induction } = inductionSupervisionLoss([attn, attn], ids, 1, len, len, { prevLayer: 0, inductionLayer: 1, head: 1, weight: 1 });
    // Previous token: weights 1/2, 1/3, 1/4 at positions 1..3.
    const wantPrev = -(Math.log(1 / 2) + Math.log(1 / 3) + Math.log(1 / 4)) / 3;
    assert.ok(Math.abs(prev.item() - wantPrev) < 1e-4, `prev ${prev.item()} vs ${wantPrev}`);
    assert.ok(Math.abs(induction.item() - -Math.log(1 / 3)) < 1e-4, `induction ${induction.item()}`);
  });
});

test('copy pool: a fixed random subset of the given ids', () => {
  const ids = Int32Array.from({ length: 100 }, (_, i) => 16 + i);
  const a = copyPoolIds(ids, 10, 0);
  assert.equal(a.length, 10);
  assert.equal(new Set(a).size, 10);
  assert.ok(a.every((id) => id >= 16 && id < 116));
  assert.deepEqual(copyPoolIds(ids, 10, 0), a);
  assert.notDeepEqual(copyPoolIds(ids, 10, 1), a);
  assert.equal(copyPoolIds(ids, undefined, 0), ids);
});

test(
  'pretraining with induction supervision and answer weighting: the losses are logged, the attention losses fall; a phase can start from a model folder',
  { timeout: 180_000 },
  (t) =>
    withRunDir(t, async (dir) => {
      const data = writeTinyCorpus(dir, 40, 30, (d, i) => `word${(d * 7 + i * 3) % 50} and item${(d + i) % 11}.`);
      const raw = {
        model: TINY_MODEL,
        tokenizer: resolve('models/softpress-base/tokenizer.json'),
        corpora: [],
        data,
        qaShare: 0.3,
        answerWeight: 0.5,
        seqLen: 48,
        batchSize: 2,
        steps: 60,
        warmup: 5,
        lr: 3e-3,
        weightDecay: 0,
        evalEvery: 60,
        validChunks: 1,
        checkpointEvery: 60,
        copyRows: 4,
        copyLen: 48,
        copyPool: 64,
        inductionSupervision: { prevLayer: 0, inductionLayer: 1, head: 1, weight: 1 },
      };
      writeFileSync(join(dir, 'config.json'), JSON.stringify(raw));
      const cfg = readExperimentConfig(join(dir, 'config.json'));
      await pretrainExperiment(cfg, join(dir, 'a'), { quiet: true });
      const log = readFileSync(join(dir, 'a', 'log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, number>)
        .filter((r) => r.loss !== undefined);
      for (const r of log) {
        // total = text + copy + weight x (prev + induction) on text rows and on copy rows + answerWeight
        // x the loss on QA answers (when the text rows hold one)
        const want =
          r.text_loss +
          r.copy_loss +
          r.prev_attn_loss +
          r.induction_attn_loss +
          r.copy_prev_attn_loss +
          r.copy_induction_attn_loss +
          0.5 * (r.answer_loss ?? 0);
        assert.ok(Math.abs(want - r.loss) < 1e-3 * Math.max(1, r.loss), `step ${r.step}: ${r.loss} vs ${want}`);
      }
      assert.ok(log.filter((r) => r.answer_loss > 0).length >= 5, `steps see a QA answer: ${log.filter((r) => r.answer_loss > 0).length}`);
      const mean = (rs: Record<string, number>[], k: string) => rs.reduce((a, r) => a + r[k], 0) / rs.length;
      const first = log.slice(0, 5);
      const last = log.slice(-5);
      assert.ok(
        mean(last, 'prev_attn_loss') < 0.3 * mean(first, 'prev_attn_loss'),
        `previous-token head: ${mean(first, 'prev_attn_loss')} -> ${mean(last, 'prev_attn_loss')}`,
      );
      assert.ok(
        mean(last, 'induction_attn_loss') < mean(first, 'induction_attn_loss') - 0.3,
        `induction head: ${mean(first, 'induction_attn_loss')} -> ${mean(last, 'induction_attn_loss')}`,
      );

      // A continued phase from the exported model folder (fp16): with lr 0 the weights stay those of the folder.
      const cont = { ...cfg.base, init: join(dir, 'a', 'model'), steps: 1, warmup: 0, lr: 0, minLr: 0 };
      await pretrain(cont, join(dir, 'b'), { quiet: true });
      assert.equal(loadModel(join(dir, 'b', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());

      // Bad supervision configs are refused with the field named.
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, inductionSupervision: { prevLayer: 0, inductionLayer: 0, head: 0, weight: 1 } }));
      await assert.rejects(async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'c'), { quiet: true }), /inductionLayer/);
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, copyPool: 1 }));
      assert.throws(() => readExperimentConfig(join(dir, 'bad.json')), /copyPool/);
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, answerWeight: -1 }));
      assert.throws(() => readExperimentConfig(join(dir, 'bad.json')), /answerWeight/);
    }),
);

test('answer targets: the tokens after "\\nAnswer:" up to and including the line end', () => {
  // marker [7, 8], stop 9; rows of 9 inputs + 1 (stride 10)
  const ids = Int32Array.from([1, 7, 8, 5, 6, 9, 2, 7, 8, 4, /* row 1 */ 7, 8, 3, 3, 3, 3, 3, 3, 3, 3]);
  assert.deepEqual(Array.from(answerTargets(ids, 2, 9, 10, [7, 8], new Set([9]))), [2, 3, 4, 8, 9 + 1, 9 + 2, 9 + 3, 9 + 4, 9 + 5, 9 + 6, 9 + 7, 9 + 8]);
  assert.throws(() => answerTargets(ids, 2, 9, 10, [], new Set([9])), /empty marker/);
  if (!existsSync('models/softpress-base/tokenizer.json')) return;
  // On real text: the answer of a QA document, then its newline.
  const tok = BpeTokenizer.fromFile('models/softpress-base/tokenizer.json');
  const row = Int32Array.from(tok.encode('Mary went to the garden.\nQuestion: Where is Mary?\nAnswer: garden\nThe end'));
  const at = answerTargets(row, 1, row.length - 1, row.length, tok.encode('\nAnswer:'), new Set([...tok.encode('\n'), tok.eos]));
  assert.equal(tok.decode(Array.from(at, (p) => row[p + 1])), ' garden\n');
});
