/**
 * The pretraining experiments' rows and documents: synthetic copy rows (their loss logged and
 * validated, resume exact, a phase of copy rows only), and restate and recall documents in the
 * mixture at their shares.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { withRunDir, writeConfig, writeCorpus } from '../../test/helpers/run-dir.js';
import { readPretrainConfig } from '../../src/train/pretrain.js';
import { loadModel } from '../../src/models/load.js';
import { BpeTokenizer } from '../../src/models/bpe.js';
import { buildMixture } from '../../src/data/pretrain-mix.js';
import { Rng } from '../../src/data/rng.js';
import { makeCopyRows } from '../pretrain/copy-task.js';
import { readExperimentConfig, type ExperimentConfig } from '../pretrain/config.js';
import { recallDocuments, restateDocuments } from '../pretrain/documents.js';
import { pretrainExperiment } from '../pretrain/terms.js';

function writeJson(path: string, value: unknown): string {
  writeFileSync(path, JSON.stringify(value));
  return path;
}

test(
  'restate and recall documents: their shares of the mixture, exact repeats, shuffled word lists, several questions per recall passage; the token stream carries <|restate|>',
  { timeout: 120_000 },
  (t) =>
    withRunDir(t, async (dir) => {
      const data = writeCorpus(dir);
      const cfg = readPretrainConfig(writeConfig(dir, data));
      const mix = buildMixture({ corpora: [], data, qaShare: 0.1, extra: [restateDocuments(0.3)], seed: 0 }, 'train');
      assert.ok(mix.counts.restate > 0);
      const restated = mix.texts.filter((x) => x.includes('<|restate|>'));
      assert.equal(restated.length, mix.counts.restate);
      for (const x of restated) {
        const [a, b] = x.split('<|restate|>');
        assert.equal(a, b, 'a restate document repeats its passage');
      }
      // Shares are of all characters: restate ~0.3 of the total.
      const total = mix.corpusChars + mix.qaChars + mix.extraChars.restate!;
      assert.ok(Math.abs(mix.extraChars.restate! / total - 0.3) < 0.05, `restate share ${mix.extraChars.restate! / total}`);
      assert.throws(() => buildMixture({ corpora: [], data, qaShare: 0.5, extra: [restateDocuments(0.5)], seed: 0 }, 'train'), /below 0.9/);
      // Recall documents: their own share, several questions each, and the mixture without them unchanged.
      const recall = buildMixture({ corpora: [], data, qaShare: 0.1, extra: [restateDocuments(0.3), recallDocuments(0.2)], seed: 0 }, 'train');
      assert.ok((recall.counts.recall ?? 0) > 0 && mix.counts.recall === undefined);
      const all = recall.corpusChars + recall.qaChars + recall.extraChars.restate! + recall.extraChars.recall!;
      assert.ok(Math.abs(recall.extraChars.recall! / all - 0.2) < 0.05, `recall share ${recall.extraChars.recall! / all}`);
      assert.ok(recall.texts.filter((x) => (x.match(/\nQuestion: /g) ?? []).length >= 2).length >= recall.counts.recall!);
      assert.throws(
        () => buildMixture({ corpora: [], data, qaShare: 0.4, extra: [restateDocuments(0.3), recallDocuments(0.3)], seed: 0 }, 'train'),
        /below 0.9/,
      );
      // Shuffled restate documents: word lists, still repeated exactly; the plain mixture is unchanged by the option's default.
      const shuffled = buildMixture({ corpora: [], data, qaShare: 0.1, extra: [restateDocuments(0.3, 1)], seed: 0 }, 'train');
      const pairs = shuffled.texts.filter((x) => x.includes('<|restate|>')).map((x) => x.split('<|restate|>'));
      for (const [a, b] of pairs) assert.equal(a, b);
      const plainPassages = restated.map((x) => x.split('<|restate|>')[0]);
      assert.ok(
        pairs.some(([a]) => !plainPassages.includes(a)),
        'passages are shuffled',
      );
      assert.ok(pairs.every(([a]) => a.split(/\s+/).length > 1));
      assert.deepEqual(buildMixture({ corpora: [], data, qaShare: 0.1, extra: [restateDocuments(0.3, 0)], seed: 0 }, 'train').texts, mix.texts);
      // The phase's first validation (step 0 weights = run a's) and its data stream with the <|restate|> id.
      await pretrainExperiment({ base: { ...cfg, steps: 2, evalEvery: 1 }, experiment: { restateShare: 0.3 } }, join(dir, 'b'), { quiet: true });
      const tok = BpeTokenizer.fromFile(cfg.tokenizer);
      const buf = readFileSync(join(dir, 'b', 'data', 'train.tokens'));
      const ids = new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
      assert.ok(ids.includes(tok.special.get('<|restate|>')!), 'restate documents carry the special token id');
    }),
);

test('copy rows: every copied target is predictable by finding its earlier occurrence; rows are deterministic', () => {
  const pool = Int32Array.from({ length: 500 }, (_, i) => 16 + i);
  const len = 300;
  const a = makeCopyRows(new Rng('copy:0:1:0'), { rows: 3, len, pool });
  assert.deepEqual(makeCopyRows(new Rng('copy:0:1:0'), { rows: 3, len, pool }), a);
  assert.notDeepEqual(makeCopyRows(new Rng('copy:0:2:0'), { rows: 3, len, pool }).ids, a.ids);
  assert.ok(
    a.ids.every((id) => id >= 16 && id < 516),
    'ids come from the pool',
  );
  // A sizeable share of targets are copies, each a bigram seen earlier in its row.
  assert.ok(a.copied.length > 0.2 * 3 * (len - 1), `copied ${a.copied.length}`);
  for (const f of a.copied) {
    const r = Math.floor(f / (len - 1));
    const p = f % (len - 1);
    const row = a.ids.subarray(r * len, (r + 1) * len);
    let seen = false;
    for (let j = 0; j < p && !seen; j++) seen = row[j] === row[p] && row[j + 1] === row[p + 1];
    assert.ok(seen, `row ${r} position ${p}: the copied bigram occurs earlier`);
  }
  assert.throws(() => makeCopyRows(new Rng(0), { rows: 1, len: 8, pool }), /len >= 16/);
  // Short rows still hold a repeat.
  for (let seed = 0; seed < 20; seed++) assert.ok(makeCopyRows(new Rng(seed), { rows: 1, len: 16, pool }).copied.length >= 3);
});

test('pretraining with copy rows: their loss is logged and validated, resume stays exact, and a phase may train on copy rows only', { timeout: 120_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const cfg: ExperimentConfig = {
      base: { ...readPretrainConfig(writeConfig(dir, writeCorpus(dir))), steps: 4, evalEvery: 2, checkpointEvery: 2 },
      experiment: { copyRows: 1 },
    };
    await pretrainExperiment(cfg, join(dir, 'a'), { quiet: true });
    const log = readFileSync(join(dir, 'a', 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    const steps = log.filter((r) => r.loss !== undefined);
    assert.equal(steps.length, 4);
    for (const r of steps) assert.ok(Math.abs(r.text_loss + r.copy_loss - r.loss) < 1e-4 && r.copy_loss > 0);
    assert.ok(
      log.some((r) => r.valid_copy_loss > 0),
      'validation measures copying',
    );
    await pretrainExperiment(cfg, join(dir, 'b'), { quiet: true, stopAfter: 2 });
    await pretrainExperiment(cfg, join(dir, 'b'), { quiet: true, resume: true });
    assert.equal(loadModel(join(dir, 'b', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
    // A copy warm-up: copy rows only (short ones), text still validated.
    await pretrainExperiment({ base: { ...cfg.base, batchSize: 0, steps: 2 }, experiment: { copyRows: 2, copyLen: 16 } }, join(dir, 'w'), { quiet: true });
    const wlog = readFileSync(join(dir, 'w', 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    for (const r of wlog.filter((x) => x.loss !== undefined)) assert.ok(r.loss === r.copy_loss && r.text_loss === undefined);
    assert.ok(wlog.some((r) => r.valid_ppl > 0));
    const training = JSON.parse(readFileSync(join(dir, 'w', 'model', 'training.json'), 'utf8')) as { tokensSeen: number; copyTokensSeen: number };
    assert.equal(training.tokensSeen, 0);
    assert.equal(training.copyTokensSeen, 2 * 2 * 16);
    const raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.throws(() => readExperimentConfig(writeJson(join(dir, 'bad.json'), { ...raw, copyRows: -1 })), /copyRows/);
    assert.throws(() => readExperimentConfig(writeJson(join(dir, 'bad.json'), { ...raw, copyRows: 1, copyLen: 4 })), /copyLen/);
    assert.throws(() => readExperimentConfig(writeJson(join(dir, 'bad.json'), { ...raw, batchSize: 0 })), /nothing to train on/);
  }),
);
