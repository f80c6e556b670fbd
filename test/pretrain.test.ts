/**
 * Pretraining: a run interrupted and resumed ends with exactly the weights of an uninterrupted
 * run (same data order, same RNG), a stopped run can be exported as a model folder, a continued
 * phase starts from another run's weights with its own mixture, and extra loss terms and documents
 * plug in.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { withRunDir, writeCorpus, writeConfig } from './helpers/run-dir.js';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pretrain, readPretrainConfig } from '../src/train/pretrain.js';
import { loadModel } from '../src/models/load.js';
import { buildMixture, type ExtraDocuments } from '../src/data/pretrain-mix.js';
import { crossEntropy, tensor } from '../src/tensor/index.js';
import type { LossTerm, PretrainRun } from '../src/train/pretrain.js';

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
    const steps = readFileSync(join(dir, 'b', 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: number; loss?: number })
      .filter((r) => r.loss !== undefined)
      .map((r) => r.step);
    assert.deepEqual(steps, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.ok(existsSync(join(dir, 'b', 'loss.svg')));
    // A resume with a different config is refused.
    await assert.rejects(pretrain({ ...cfg, lr: 1e-3 }, join(dir, 'b'), { quiet: true, resume: true }), /different config/);
    // The saved folder loads as a model with its tokenizer.
    const { model, tokenizer } = loadModel(join(dir, 'a', 'model'));
    assert.equal(model.config.hiddenSize, 32);
    assert.ok(tokenizer);
  }),
);

test('pretraining: a stopped run exports its checkpoint as a model folder', { timeout: 120_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const cfg = readPretrainConfig(writeConfig(dir, writeCorpus(dir)));
    await pretrain(cfg, join(dir, 'c'), { quiet: true, stopAfter: 3 });
    const exported = await pretrain(cfg, join(dir, 'c'), { quiet: true, exportOnly: true });
    assert.equal(exported.steps, 3);
    const training = JSON.parse(readFileSync(join(dir, 'c', 'model', 'training.json'), 'utf8')) as { steps: number; plannedSteps: number };
    assert.equal(training.steps, 3);
    assert.equal(training.plannedSteps, 8);
  }),
);

test('pretraining: a continued phase starts from another run; the QA mix follows qaShare and babiFraction', { timeout: 120_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const data = writeCorpus(dir);
    const cfg = readPretrainConfig(writeConfig(dir, data));
    await pretrain(cfg, join(dir, 'a'), { quiet: true });
    // bAbI's share of the QA characters follows babiFraction (0.4 by default).
    const babiDir = resolve('../shared/fixtures/babi/en-10k');
    if (existsSync(babiDir)) {
      const qa4 = buildMixture({ corpora: [], data, babiDir, qaShare: 0.3, seed: 0 }, 'train');
      const qa8 = buildMixture({ corpora: [], data, babiDir, qaShare: 0.3, babiFraction: 0.8, seed: 0 }, 'train');
      assert.ok(qa8.counts.babi > 1.5 * qa4.counts.babi, `bAbI stories ${qa4.counts.babi} -> ${qa8.counts.babi}`);
      assert.throws(() => buildMixture({ corpora: [], data, babiDir, qaShare: 0.3, babiFraction: 1.5, seed: 0 }, 'train'), /babiFraction must be in \[0, 1\]/);
    }
    const qa = buildMixture({ corpora: [], data, qaShare: 0.3, seed: 0 }, 'train');
    // At least its share (generated in rounds of whole passages, so a small corpus overshoots).
    assert.ok(qa.qaChars / (qa.corpusChars + qa.qaChars) > 0.25, `QA share ${qa.qaChars / (qa.corpusChars + qa.qaChars)}`);
    assert.equal(qa.texts.filter((x) => x.includes('\nQuestion: ')).length, qa.counts.needle! + qa.counts.cloze!);
    assert.equal(buildMixture({ corpora: [], data, qaShare: 0, seed: 0 }, 'train').qaChars, 0);
    assert.throws(() => buildMixture({ corpora: [], data, qaShare: 0.95, seed: 0 }, 'train'), /below 0.9/);

    // The phase's first validation (step 0 weights = run a's); with lr 0 it leaves the weights as it found them.
    const cont = { ...cfg, init: join(dir, 'a'), qaShare: 0.3, steps: 2, evalEvery: 1 };
    await pretrain(cont, join(dir, 'b'), { quiet: true });
    await pretrain({ ...cont, lr: 0, minLr: 0 }, join(dir, 'c'), { quiet: true });
    assert.equal(loadModel(join(dir, 'c', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
    assert.notEqual(loadModel(join(dir, 'b', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
    await assert.rejects(pretrain({ ...cont, init: join(dir, 'nowhere') }, join(dir, 'd'), { quiet: true }), /no checkpoint/);
  }),
);

test(
  'pretraining extensions: a loss term on the text rows and rows of its own adds up in the log, validates and resumes exactly; extra documents join the mixture at their share',
  { timeout: 120_000 },
  (t) =>
    withRunDir(t, async (dir) => {
      const data = writeCorpus(dir);
      const cfg = { ...readPretrainConfig(writeConfig(dir, data)), steps: 4, evalEvery: 2, checkpointEvery: 2 };
      // Extra documents: their own share of the characters, counted by name, built from the split's documents.
      const shout: ExtraDocuments = {
        name: 'shout',
        share: 0.2,
        make(docs, _split, chars) {
          const out: string[] = [];
          for (let i = 0, n = 0; n < chars; i++) {
            out.push(docs[i % docs.length]!.text.toUpperCase());
            n += out[i]!.length;
          }
          return out;
        },
      };
      const mix = buildMixture({ corpora: [], data, qaShare: 0.1, extra: [shout], seed: 0 }, 'train');
      const total = mix.corpusChars + mix.qaChars + mix.extraChars.shout!;
      assert.ok(mix.counts.shout! > 0 && Math.abs(mix.extraChars.shout! / total - 0.2) < 0.05, `shout share ${mix.extraChars.shout! / total}`);
      assert.equal(mix.texts.filter((x) => x === x.toUpperCase()).length, mix.counts.shout);
      assert.throws(() => buildMixture({ corpora: [], data, qaShare: 0.5, extra: [{ ...shout, share: 0.5 }], seed: 0 }, 'train'), /below 0.9/);
      // A term: half the loss of each text row's first prediction, plus one fixed row of the valid stream.
      const term = (run: PretrainRun): LossTerm => {
        const fixed = run.validStream.slice(0, 17);
        const ownLoss = () => {
          const ids = tensor(fixed, [1, 17]).to('int64');
          const logits = run.model.forward({ ids: ids.narrow(1, 0, 16) }).logits!.reshape(16, -1);
          return crossEntropy(logits, ids.narrow(1, 1, 16).reshape(16));
        };
        return {
          onText: (r) => {
            const first = crossEntropy(r.logits.narrow(0, 0, 1), r.targets.narrow(0, 0, 1));
            return { loss: first.mul(0.5), parts: { first_loss: first.item() } };
          },
          ownRows: () => {
            const l = ownLoss();
            return { loss: l, parts: { own_loss: l.item() }, tokens: 16 };
          },
          validate: () => ({ own_loss: ownLoss().item() }),
          summary: (steps) => ({ ownTokensSeen: 16 * steps }),
        };
      };
      const extensions = { terms: [term], documents: [shout] };
      await pretrain(cfg, join(dir, 'a'), { quiet: true, extensions });
      const log = readFileSync(join(dir, 'a', 'log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, number>);
      const steps = log.filter((r) => r.loss !== undefined);
      assert.equal(steps.length, 4);
      for (const r of steps) assert.ok(Math.abs(r.text_loss! + 0.5 * r.first_loss! + r.own_loss! - r.loss!) < 1e-4, `step ${r.step}: ${JSON.stringify(r)}`);
      assert.ok(
        log.some((r) => r.valid_own_loss! > 0 && r.valid_ppl! > 0),
        "validation has the term's figure",
      );
      const training = JSON.parse(readFileSync(join(dir, 'a', 'model', 'training.json'), 'utf8')) as { ownTokensSeen: number; mixture: Record<string, number> };
      assert.equal(training.ownTokensSeen, 64);
      assert.ok(training.mixture.shout! > 0);
      await pretrain(cfg, join(dir, 'b'), { quiet: true, stopAfter: 2, extensions });
      await pretrain(cfg, join(dir, 'b'), { quiet: true, resume: true, extensions });
      assert.equal(loadModel(join(dir, 'b', 'model')).model.fingerprint(), loadModel(join(dir, 'a', 'model')).model.fingerprint());
      // Experiment fields are not softpress's: a config with one is refused, naming it.
      const raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, copyRows: 2 }));
      assert.throws(() => readPretrainConfig(join(dir, 'bad.json')), /unknown field\(s\) copyRows .*experiments\/README.md/);
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, batchSize: 0 }));
      assert.throws(() => readPretrainConfig(join(dir, 'bad.json')), /'batchSize' must be a positive integer/);
    }),
);
