/**
 * Pretraining: a run interrupted and resumed ends with exactly the weights of an uninterrupted
 * run (same data order, same RNG), a stopped run can be exported as a model folder, and a continued
 * phase starts from another run's weights with its own mixture.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { withRunDir } from './helpers/run-dir.js';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pretrain, readPretrainConfig } from '../src/train/pretrain.js';
import { loadModel } from '../src/models/load.js';
import { BpeTokenizer } from '../src/models/bpe.js';
import { buildMixture } from '../src/data/pretrain-mix.js';
import { makeCopyRows } from '../src/data/copy-task.js';
import { Rng } from '../src/data/rng.js';

const names = ['Ahab', 'Ishmael', 'Lincoln', 'Adams', 'Starbuck', 'Jefferson'];
const things = ['harbor', 'treaty', 'river', 'whale', 'congress', 'frontier', 'lantern', 'railroad'];
const verbs = ['watched', 'described', 'praised', 'remembered', 'followed', 'measured'];

function writeCorpus(dir: string): string {
  // 60 small documents of plain sentences, enough for every split to hold several chunks.
  const lines: string[] = [];
  for (let d = 0; d < 60; d++) {
    const sentences = Array.from({ length: 12 }, (_, i) => {
      const k = d * 13 + i * 7;
      return `${names[k % names.length]} ${verbs[(k >> 1) % verbs.length]} the ${things[(k >> 2) % things.length]} near the ${things[(k + 3) % things.length]}.`;
    });
    lines.push(JSON.stringify({ id: `doc${d}`, text: sentences.join(' ') }));
  }
  const path = join(dir, 'corpus.jsonl');
  writeFileSync(path, lines.join('\n') + '\n');
  return path;
}

function writeConfig(dir: string, data: string): string {
  const cfg = {
    model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 64, tie_word_embeddings: true },
    tokenizer: resolve('models/softpress-base/tokenizer.json'),
    corpora: [],
    data,
    qaShare: 0.1,
    seqLen: 32,
    batchSize: 2,
    steps: 8,
    warmup: 2,
    lr: 3e-3,
    evalEvery: 4,
    validChunks: 2,
    checkpointEvery: 3,
  };
  const path = join(dir, 'config.json');
  writeFileSync(path, JSON.stringify(cfg));
  return path;
}


test('pretraining: interrupted + resumed equals uninterrupted, bit for bit', { timeout: 120_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const cfg = readPretrainConfig(writeConfig(dir, writeCorpus(dir)));
    const straight = await pretrain(cfg, join(dir, 'a'), { quiet: true });
    assert.equal(straight.steps, 8);
    const first = await pretrain(cfg, join(dir, 'b'), { quiet: true, stopAfter: 5 });
    assert.equal(first.steps, 5);
    assert.equal(existsSync(join(dir, 'b', 'model', 'model.safetensors')), false, 'no model before the last step');
    const resumed = await pretrain(cfg, join(dir, 'b'), { quiet: true, resume: true });
    assert.equal(resumed.steps, 8);
    const a = readFileSync(join(dir, 'a', 'model', 'model.safetensors'));
    const b = readFileSync(join(dir, 'b', 'model', 'model.safetensors'));
    assert.ok(a.equals(b), 'resumed weights differ from the uninterrupted run');
    // The loss log has one row per step, none repeated by the resume.
    const steps = readFileSync(join(dir, 'b', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss?: number }).filter((r) => r.loss !== undefined).map((r) => r.step);
    assert.deepEqual(steps, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.ok(existsSync(join(dir, 'b', 'loss.svg')));
    // A resume with a different config is refused.
    await assert.rejects(pretrain({ ...cfg, lr: 1e-3 }, join(dir, 'b'), { quiet: true, resume: true }), /different config/);
    // The saved folder loads as a model with its tokenizer.
    const { model, tokenizer } = loadModel(join(dir, 'a', 'model'));
    assert.equal(model.config.hiddenSize, 32);
    assert.ok(tokenizer);
  }));

test('pretraining: a stopped run exports its checkpoint as a model folder', { timeout: 120_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const cfg = readPretrainConfig(writeConfig(dir, writeCorpus(dir)));
    await pretrain(cfg, join(dir, 'c'), { quiet: true, stopAfter: 3 });
    const exported = await pretrain(cfg, join(dir, 'c'), { quiet: true, exportOnly: true });
    assert.equal(exported.steps, 3);
    const training = JSON.parse(readFileSync(join(dir, 'c', 'model', 'training.json'), 'utf8')) as { steps: number; plannedSteps: number };
    assert.equal(training.steps, 3);
    assert.equal(training.plannedSteps, 8);
  }));

test('pretraining: a continued phase starts from another run, with restate documents in its mixture', { timeout: 120_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const data = writeCorpus(dir);
    const cfg = readPretrainConfig(writeConfig(dir, data));
    await pretrain(cfg, join(dir, 'a'), { quiet: true });
    const mix = buildMixture({ corpora: [], data, qaShare: 0.1, restateShare: 0.3, seed: 0 }, 'train');
    assert.ok(mix.counts.restate > 0);
    const restated = mix.texts.filter((x) => x.includes('<|restate|>'));
    assert.equal(restated.length, mix.counts.restate);
    for (const x of restated) {
      const [a, b] = x.split('<|restate|>');
      assert.equal(a, b, 'a restate document repeats its passage');
    }
    // Shares are of all characters: restate ~0.3 of the total.
    const total = mix.corpusChars + mix.qaChars + mix.restateChars + mix.recallChars;
    assert.ok(Math.abs(mix.restateChars / total - 0.3) < 0.05, `restate share ${mix.restateChars / total}`);
    assert.throws(() => buildMixture({ corpora: [], data, qaShare: 0.5, restateShare: 0.5, seed: 0 }, 'train'), /below 0.9/);
    // Recall documents: their own share, several questions each, and the mixture without them unchanged.
    const recall = buildMixture({ corpora: [], data, qaShare: 0.1, restateShare: 0.3, recallShare: 0.2, seed: 0 }, 'train');
    assert.ok((recall.counts.recall ?? 0) > 0 && mix.counts.recall === undefined);
    const all = recall.corpusChars + recall.qaChars + recall.restateChars + recall.recallChars;
    assert.ok(Math.abs(recall.recallChars / all - 0.2) < 0.05, `recall share ${recall.recallChars / all}`);
    assert.ok(recall.texts.filter((x) => (x.match(/\nQuestion: /g) ?? []).length >= 2).length >= recall.counts.recall!);
    assert.throws(() => buildMixture({ corpora: [], data, qaShare: 0.4, restateShare: 0.3, recallShare: 0.3, seed: 0 }, 'train'), /below 0.9/);
    // Shuffled restate documents: word lists, still repeated exactly; the plain mixture is unchanged by the option's default.
    const shuffled = buildMixture({ corpora: [], data, qaShare: 0.1, restateShare: 0.3, restateShuffled: 1, seed: 0 }, 'train');
    assert.equal(shuffled.counts.restateShuffled, shuffled.counts.restate);
    const pairs = shuffled.texts.filter((x) => x.includes('<|restate|>')).map((x) => x.split('<|restate|>'));
    for (const [a, b] of pairs) assert.equal(a, b);
    const plainPassages = restated.map((x) => x.split('<|restate|>')[0]);
    assert.ok(pairs.some(([a]) => !plainPassages.includes(a)), 'passages are shuffled');
    assert.ok(pairs.every(([a]) => a.split(/\s+/).length > 1));
    assert.deepEqual(buildMixture({ corpora: [], data, qaShare: 0.1, restateShare: 0.3, restateShuffled: 0, seed: 0 }, 'train').texts, mix.texts);
    // bAbI's share of the QA characters follows babiFraction (0.4 by default).
    const babiDir = resolve('../shared/fixtures/babi/en-10k');
    const qa4 = buildMixture({ corpora: [], data, babiDir, qaShare: 0.3, seed: 0 }, 'train');
    const qa8 = buildMixture({ corpora: [], data, babiDir, qaShare: 0.3, babiFraction: 0.8, seed: 0 }, 'train');
    assert.ok(qa8.counts.babi > 1.5 * qa4.counts.babi, `bAbI stories ${qa4.counts.babi} -> ${qa8.counts.babi}`);
    assert.throws(() => buildMixture({ corpora: [], data, babiDir, qaShare: 0.3, babiFraction: 1.5, seed: 0 }, 'train'), /babiFraction must be in \[0, 1\]/);

    // The phase's first validation (step 0 weights = run a's) and its data stream with the <|restate|> id.
    const cont = { ...cfg, init: join(dir, 'a'), restateShare: 0.3, steps: 2, evalEvery: 1 };
    await pretrain(cont, join(dir, 'b'), { quiet: true });
    const tok = BpeTokenizer.fromFile(cfg.tokenizer);
    const buf = readFileSync(join(dir, 'b', 'data', 'train.tokens'));
    const ids = new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    assert.ok(ids.includes(tok.special.get('<|restate|>')!), 'restate documents carry the special token id');
    // With lr 0 the phase leaves the weights as it found them: exactly run a's.
    await pretrain({ ...cont, lr: 0, minLr: 0 }, join(dir, 'c'), { quiet: true });
    assert.equal(loadModel(join(dir, 'c', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
    assert.notEqual(loadModel(join(dir, 'b', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
    await assert.rejects(pretrain({ ...cont, init: join(dir, 'nowhere') }, join(dir, 'd'), { quiet: true }), /no checkpoint/);
  }));

test('copy rows: every copied target is predictable by finding its earlier occurrence; rows are deterministic', () => {
  const pool = Int32Array.from({ length: 500 }, (_, i) => 16 + i);
  const len = 300;
  const a = makeCopyRows(new Rng('copy:0:1:0'), { rows: 3, len, pool });
  assert.deepEqual(makeCopyRows(new Rng('copy:0:1:0'), { rows: 3, len, pool }), a);
  assert.notDeepEqual(makeCopyRows(new Rng('copy:0:2:0'), { rows: 3, len, pool }).ids, a.ids);
  assert.ok(a.ids.every((id) => id >= 16 && id < 516), 'ids come from the pool');
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
    const cfg = { ...readPretrainConfig(writeConfig(dir, writeCorpus(dir))), copyRows: 1, steps: 4, evalEvery: 2, checkpointEvery: 2 };
    await pretrain(cfg, join(dir, 'a'), { quiet: true });
    const log = readFileSync(join(dir, 'a', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
    const steps = log.filter((r) => r.loss !== undefined);
    assert.equal(steps.length, 4);
    for (const r of steps) assert.ok(Math.abs(r.text_loss + r.copy_loss - r.loss) < 1e-4 && r.copy_loss > 0);
    assert.ok(log.some((r) => r.valid_copy_loss > 0), 'validation measures copying');
    await pretrain(cfg, join(dir, 'b'), { quiet: true, stopAfter: 2 });
    await pretrain(cfg, join(dir, 'b'), { quiet: true, resume: true });
    assert.equal(loadModel(join(dir, 'b', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
    // A copy warm-up: copy rows only (short ones), text still validated.
    await pretrain({ ...cfg, batchSize: 0, copyRows: 2, copyLen: 16, steps: 2 }, join(dir, 'w'), { quiet: true });
    const wlog = readFileSync(join(dir, 'w', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
    for (const r of wlog.filter((x) => x.loss !== undefined)) assert.ok(r.loss === r.copy_loss && r.text_loss === undefined);
    assert.ok(wlog.some((r) => r.valid_ppl > 0));
    const training = JSON.parse(readFileSync(join(dir, 'w', 'model', 'training.json'), 'utf8')) as { tokensSeen: number; copyTokensSeen: number };
    assert.equal(training.tokensSeen, 0);
    assert.equal(training.copyTokensSeen, 2 * 2 * 16);
    const raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.throws(() => readPretrainConfig(writeJson(join(dir, 'bad.json'), { ...raw, copyRows: -1 })), /copyRows/);
    assert.throws(() => readPretrainConfig(writeJson(join(dir, 'bad.json'), { ...raw, copyRows: 1, copyLen: 4 })), /copyLen/);
    assert.throws(() => readPretrainConfig(writeJson(join(dir, 'bad.json'), { ...raw, batchSize: 0 })), /nothing to train on/);
  }));

function writeJson(path: string, value: unknown): string {
  writeFileSync(path, JSON.stringify(value));
  return path;
}
