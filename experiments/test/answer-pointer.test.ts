// Answer-pointer supervision (experiments/pretrain/answer-pointer.ts) and its use in pretraining.
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { withRunDir } from '../../test/helpers/run-dir.js';
import { TINY_MODEL, writeTinyCorpus } from './helpers.js';
import { answerCopyLoss, answerPointerLoss, answerPointerTargets, restatePointerTargets } from '../pretrain/answer-pointer.js';
import { readExperimentConfig } from '../pretrain/config.js';
import { pretrainExperiment } from '../pretrain/terms.js';
import { BpeTokenizer } from '../../src/models/bpe.js';
import { crossEntropy, manualSeed, noGrad, tensor, tidy, zeros } from '../../src/tensor/index.js';
import { AdamW } from '../../src/nn/index.js';
import { configFromHf } from '../../src/models/config.js';
import { LlamaModel } from '../../src/models/llama.js';

/** The keys (target positions) of each query, as [query, keys] pairs. */
function pairs(t: ReturnType<typeof answerPointerTargets>, len: number): [number, number[]][] {
  return Array.from(t.queries, (q, i) => [q, Array.from(t.targets.subarray(i * len, (i + 1) * len)).flatMap((v, k) => (v ? [k] : []))]);
}

test('pointer targets: each answer token points at the same token of every earlier occurrence of the answer', () => {
  // marker [7, 8], stop 9; rows of 12 inputs + 1 target (stride 13).
  // Row 0: answer "5 6" occurs at 0-1 and 3-4; then an answer "4" that occurs nowhere before.
  // Row 1: answer "5 6" runs off the row's end (no stop): still supervised, on its first token only
  // as the second is beyond the row.
  const ids = Int32Array.from([5, 6, 1, 5, 6, 7, 8, 5, 6, 9, 7, 8, 4, 3, 5, 6, 2, 2, 2, 2, 2, 2, 2, 7, 8, 5]);
  const t = answerPointerTargets(ids, 2, 12, 13, [7, 8], new Set([9]));
  assert.deepEqual(pairs(t, 12), [
    [6, [0, 3]], // ":" (8) predicts 5: look at the 5s of both occurrences
    [7, [1, 4]], // 5 predicts 6: look at the 6s
    [12 + 11, [1]], // row 1: 8 at 11 predicts 5 (the row's target id); 5 occurs at 1
  ]);
  // Nothing to point at: no answers, or answers found nowhere earlier.
  assert.equal(answerPointerTargets(Int32Array.from([1, 2, 3, 7, 8, 4, 9]), 1, 6, 7, [7, 8], new Set([9])).queries.length, 0);
});

test(
  "pointer targets on real text: the answer's tokens in the planted fact, yes/no answers skipped",
  { skip: !existsSync('models/softpress-base/tokenizer.json') && 'no tokenizer' },
  () => {
    const tok = BpeTokenizer.fromFile('models/softpress-base/tokenizer.json');
    const text =
      'Rain fell. The secret code of the green folder is BF4H. Mary went to the garden.\nQuestion: Is Mary here?\nAnswer: no\nQuestion: What is the secret code of the green folder?\nAnswer: BF4H\nQuestion: Where is Mary?\nAnswer: garden';
    const ids = Int32Array.from([tok.bos, ...tok.encode(text), tok.eos]);
    const len = ids.length - 1;
    const t = answerPointerTargets(ids, 1, len, len + 1, tok.encode('\nAnswer:'), new Set([...tok.encode('\n'), tok.eos]));
    const got = pairs(t, len).map(([q, ks]) => {
      assert.equal(ks.length, 1);
      assert.equal(ids[ks[0]!], ids[q + 1], 'the key holds the token the query predicts');
      return tok.decode([ids[q + 1]!]);
    });
    assert.equal(got.join(''), ' BF4H garden');
    // Every key is in the passage, before the first question.
    const passageEnd = 1 + tok.encode(text.slice(0, text.indexOf('\nQuestion'))).length;
    for (const [, ks] of pairs(t, len)) assert.ok(ks[0]! < passageEnd, `key ${ks[0]} after the passage (${passageEnd})`);
  },
);

test("restate pointer targets: the k-th restated token's query points at the k-th token of the passage", () => {
  // BOS 1, <|restate|> 9; rows of 12 inputs + 1 target (stride 13).
  // Row 0: passage "5 6 5" (positions 2-4) restated at 6-8, then EOS 2. The query at the marker
  // (5) predicts the first restated 5 and must look at position 2, not the other 5 at 4.
  // Row 1: a passage whose BOS is before the row (skipped), then one restated up to the row's
  // end: the last query's target (the row's extra target id) is still supervised.
  const ids = Int32Array.from([2, 1, 5, 6, 5, 9, 5, 6, 5, 2, 1, 7, 8, 4, 4, 9, 4, 4, 2, 1, 6, 7, 8, 9, 6, 7]);
  const t = restatePointerTargets(ids, 2, 12, 13, 9, 1);
  assert.deepEqual(pairs(t, 12), [
    [5, [2]],
    [6, [3]],
    [7, [4]],
    [12 + 10, [7]],
    [12 + 11, [8]],
  ]);
  // A restated token that differs from its source is not supervised.
  const off = restatePointerTargets(Int32Array.from([1, 5, 6, 9, 5, 7, 2]), 1, 6, 7, 9, 1);
  assert.deepEqual(pairs(off, 6), [[3, [1]]]);
});

test(
  'restate pointer targets on real text: every restated token, each pointing at its own source token',
  { skip: !existsSync('models/softpress-base/tokenizer.json') && 'no tokenizer' },
  () => {
    const tok = BpeTokenizer.fromFile('models/softpress-base/tokenizer.json');
    const passage = 'The the cat sat on the mat, and the mat sat under the cat.';
    const ids = Int32Array.from([
      ...tok.encode(`Before.`, { bos: true, eos: true }),
      ...tok.encode(`${passage}<|restate|>${passage}`, { bos: true, eos: true, allowSpecial: true }),
    ]);
    const len = ids.length - 1;
    const restate = tok.special.get('<|restate|>')!;
    const t = restatePointerTargets(ids, 1, len, len + 1, restate, tok.bos);
    const n = tok.encode(passage).length;
    assert.equal(t.queries.length, n, 'one query per restated token');
    const m = ids.indexOf(restate);
    pairs(t, len).forEach(([q, ks], k) => {
      assert.equal(q, m + k);
      assert.deepEqual(ks, [m - n + k]);
      assert.equal(ids[ks[0]!], ids[q + 1], 'the key holds the token the query predicts');
    });
  },
);

test("pointer loss: -log of the supervised head's weight on its targets", () => {
  tidy(() => {
    const len = 4;
    // Uniform causal attention in head 1 of layer 0; query 3 targets keys 0 and 2 -> weight 2/4.
    const probs = new Float32Array(2 * len * len);
    for (let h = 0; h < 2; h++) for (let i = 0; i < len; i++) for (let j = 0; j <= i; j++) probs[(h * len + i) * len + j] = 1 / (i + 1);
    const attn = tensor(probs, [1, 2, len, len]);
    const targets = new Float32Array(2 * len);
    targets[0] = 1;
    targets[2] = 1;
    targets[len + 1] = 1; // query 2 targets key 1 -> weight 1/3
    const loss = answerPointerLoss([attn], { queries: Int32Array.from([3, 2]), targets }, 1, len, { layer: 0, head: 1, weight: 1 });
    const want = -(Math.log(2 / 4) + Math.log(1 / 3)) / 2;
    assert.ok(Math.abs(loss!.item() - want) < 1e-4, `${loss!.item()} vs ${want}`);
    assert.equal(answerPointerLoss([attn], { queries: new Int32Array(0), targets: new Float32Array(0) }, 1, len, { layer: 0, head: 1, weight: 1 }), undefined);
  });
});

/**
 * A 2-layer model (3 heads of 16 features) whose layer 0 outputs head 0's attention alone: its MLP
 * and the other heads' output columns zeroed, head 0's scaled up so that its logits are far from
 * uniform; with `uniform`, its query projection zeroed too, so every head attends evenly to its
 * causal prefix.
 */
function headZeroModel(seed: number, d: number, uniform: boolean): LlamaModel {
  manualSeed(seed);
  const model = new LlamaModel(
    configFromHf({
      model_type: 'llama',
      hidden_size: d,
      num_hidden_layers: 2,
      num_attention_heads: 3,
      num_key_value_heads: 3,
      intermediate_size: 64,
      vocab_size: 40,
      max_position_embeddings: 32,
      tie_word_embeddings: true,
    }),
  );
  const layer = model.layers[0]!;
  noGrad(() => {
    layer.mlp.downProj.weight.load(zeros(layer.mlp.downProj.weight.value.shape));
    if (uniform) layer.selfAttn.qProj.weight.load(zeros(layer.selfAttn.qProj.weight.value.shape));
    const wo = layer.selfAttn.oProj.weight.value.toArray() as Float32Array;
    layer.selfAttn.oProj.weight.load(
      tensor(
        wo.map((w, i) => (i % d < d / 3 ? 400 * w : 0)),
        [d, d],
      ),
    );
  });
  return model;
}

test("pointer copy loss: the supervised head's own output through the output embedding", () => {
  // With layer 0's MLP switched off (down projection zeroed), layer 0's output minus its input is
  // its attention output; with o_proj's columns of heads 1 and 2 zeroed too, it is head 0's
  // alone (scaled up, so that its logits are far from uniform). Those vectors through the output
  // embedding must give the loss answerCopyLoss computes.
  const d = 48;
  const model = headZeroModel(1, d, false);
  tidy(() => {
    const len = 10;
    const flat = Int32Array.from([4, 9, 12, 5, 3, 9, 12, 7, 1, 1, 1, /* row 1 */ 20, 21, 22, 23, 8, 20, 21, 24, 1, 1, 1]);
    // Queries 3 (predicts 3) and row 1's 6 (predicts 24); their pointer targets play no part here.
    const t = { queries: Int32Array.from([3, len + 6]), targets: new Float32Array(2 * len) };
    const ids = tensor(flat, [2, len + 1])
      .to('int64')
      .narrow(1, 0, len);
    const out = noGrad(() => model.forward({ ids, outputAttentions: true, outputAttnInputs: true, outputHiddenStates: true }));
    const got = noGrad(() => answerCopyLoss(model, out.attnInputs![0]!, out.attentions!, t, flat, 2, len, len + 1, { layer: 0, head: 0, weight: 1 })!.item());
    const headOut = out
      .hiddenStates![1]!.sub(out.hiddenStates![0]!)
      .reshape(2 * len, d)
      .indexSelect(0, tensor(t.queries, [2]).to('int64'));
    const want = noGrad(() => crossEntropy(model.head(headOut), tensor([3, 24], [2]).to('int64')).item());
    assert.ok(Math.abs(got - want) < 1e-3, `${got} vs ${want}`);
    assert.ok(Math.abs(want - Math.log(40)) > 0.1, `logits far from uniform: ${want}`);
    // Another head's output is not this one's.
    const other = noGrad(() => answerCopyLoss(model, out.attnInputs![0]!, out.attentions!, t, flat, 2, len, len + 1, { layer: 0, head: 1, weight: 1 })!.item());
    assert.ok(Math.abs(other - want) > 0.05, `head 1: ${other}`);
  });
});

test('pointer copy loss with copyAttention "targets": the head\'s output as if it attended exactly to its targets', () => {
  // With layer 0's query projection zeroed, every head attends uniformly to its causal prefix. A
  // query whose targets are its whole prefix then mixes its values exactly as the head does, so
  // both copy losses equal the loss of head 0's real output (layer 0's output minus its input,
  // with the MLP and the other heads switched off as above); targets elsewhere give another loss.
  const d = 48;
  const model = headZeroModel(2, d, true);
  tidy(() => {
    const len = 10;
    const flat = Int32Array.from([4, 9, 12, 5, 3, 9, 12, 7, 1, 1, 1, /* row 1 */ 20, 21, 22, 23, 8, 20, 21, 24, 1, 1, 1]);
    const prefix = new Float32Array(2 * len);
    prefix.fill(1, 0, 4); // query 3: keys 0-3
    prefix.fill(1, len, len + 7); // row 1's query 6: keys 0-6
    const t = { queries: Int32Array.from([3, len + 6]), targets: prefix };
    const ids = tensor(flat, [2, len + 1])
      .to('int64')
      .narrow(1, 0, len);
    const out = noGrad(() => model.forward({ ids, outputAttentions: true, outputAttnInputs: true, outputHiddenStates: true }));
    const loss = (targets: Float32Array, copyAttention: 'head' | 'targets') =>
      noGrad(() =>
        answerCopyLoss(model, out.attnInputs![0]!, out.attentions!, { ...t, targets }, flat, 2, len, len + 1, {
          layer: 0,
          head: 0,
          weight: 1,
          copyAttention,
        })!.item(),
      );
    const headOut = out
      .hiddenStates![1]!.sub(out.hiddenStates![0]!)
      .reshape(2 * len, d)
      .indexSelect(0, tensor(t.queries, [2]).to('int64'));
    const want = noGrad(() => crossEntropy(model.head(headOut), tensor([3, 24], [2]).to('int64')).item());
    assert.ok(Math.abs(loss(prefix, 'head') - want) < 1e-3, `head: ${loss(prefix, 'head')} vs ${want}`);
    assert.ok(Math.abs(loss(prefix, 'targets') - want) < 1e-3, `targets: ${loss(prefix, 'targets')} vs ${want}`);
    const first = new Float32Array(2 * len);
    first[0] = 1;
    first[len] = 1; // both queries: key 0 only
    assert.ok(Math.abs(loss(first, 'targets') - want) > 0.05, `key 0 only: ${loss(first, 'targets')} vs ${want}`);
    assert.ok(Math.abs(loss(first, 'head') - want) < 1e-3, "the head's own attention ignores the targets");
  });
});

test('pointer loss trains the head: on a fixed batch of key lookups, the head learns to point at the answer', () => {
  // Rows of random facts "k v" (keys 10..41, values 50..81, 8 facts), filler, then "6 k 3 v 5":
  // the question for key k, the marker 3, the answer v, the stop 5. Whether the lookup also
  // generalises to unseen rows depends on when a previous-token head forms (400-700 steps,
  // depending on the CPU's float rounding), so this test checks what holds on any CPU: the
  // pointer loss's gradient moves the head onto its targets on the rows it trains on, from
  // spread attention (about ln 40 = 3.7) to under 1.6, well under ln 8 = 2.08 (attention spread
  // over the eight values, what a head that does not read the key reaches). Where it ends after
  // 200 steps depends on rounding too (0.6 to 1.02 seen): the bound leaves a margin above that.
  manualSeed(0);
  const model = new LlamaModel(
    configFromHf({
      model_type: 'llama',
      hidden_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      num_key_value_heads: 2,
      intermediate_size: 128,
      vocab_size: 96,
      max_position_embeddings: 64,
      tie_word_embeddings: true,
    }),
  );
  const rows = 16;
  const len = 40;
  const row = (seed: number): number[] => {
    let x = seed * 7919 + 17;
    const next = (n: number) => (x = (x * 48271) % 2147483647) % n;
    const keys = Array.from({ length: 32 }, (_, k) => k + 10);
    for (let i = keys.length - 1; i > 0; i--) {
      const j = next(i + 1);
      [keys[i], keys[j]] = [keys[j]!, keys[i]!];
    }
    const out = [1];
    const values: number[] = [];
    for (let f = 0; f < 8; f++) {
      values.push(50 + next(32));
      out.push(keys[f]!, values[f]!);
    }
    while (out.length < len + 1 - 5) out.push(90 + next(4)); // filler
    const f = next(8);
    out.push(6, keys[f]!, 3, values[f]!, 5);
    return out;
  };
  const flat = Int32Array.from(Array.from({ length: rows }, (_, r) => row(r)).flat());
  const targets = answerPointerTargets(flat, rows, len, len + 1, [3], new Set([5]));
  assert.equal(targets.queries.length, rows, 'one pointed answer token per row');
  const p = { layer: 1, head: 0, weight: 1 };
  const params = model
    .namedParameters()
    .filter(([, q]) => q.trainable)
    .map(([, q]) => q);
  const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0 });
  const pointerLoss = (learn: boolean) =>
    tidy(() => {
      const ids = tensor(flat, [rows, len + 1])
        .to('int64')
        .narrow(1, 0, len);
      const att = model.forward({ ids, outputAttentions: true }).attentions!;
      const loss = answerPointerLoss(att, targets, rows, len, p)!;
      if (learn) {
        loss.backward();
        opt.step();
        opt.zeroGrad();
      }
      return loss.item();
    });
  model.train();
  const before = pointerLoss(false);
  for (let s = 0; s < 200; s++) pointerLoss(true);
  const after = pointerLoss(false);
  opt.freeState();
  assert.ok(before > 3, `before ${before}`);
  assert.ok(after < 1.6, `pointer loss on the trained rows ${before} -> ${after}`);
});

test('pretraining with an answer pointer: the pointer loss is logged on steps with answers and adds up; bad configs are refused', { timeout: 180_000 }, (t) =>
  withRunDir(t, async (dir) => {
    const data = writeTinyCorpus(dir, 80, 40, (d, i) => `The word${(d * 7 + i * 3) % 50} stood beside item${(d + i) % 11} near the river.`);
    const raw = {
      model: TINY_MODEL,
      tokenizer: resolve('models/softpress-base/tokenizer.json'),
      corpora: [],
      data,
      qaShare: 0.05,
      recallShare: 0.4,
      answerWeight: 0.5,
      answerPointer: { layer: 1, head: 0, weight: 1, copyWeight: 0.25 },
      restateShare: 0.4,
      restatePointer: { layer: 1, head: 1, weight: 0.5, copyWeight: 0.75, copyAttention: 'targets' },
      restateWeight: 1.5,
      seqLen: 256,
      batchSize: 2,
      steps: 30,
      warmup: 5,
      lr: 3e-3,
      weightDecay: 0,
      evalEvery: 30,
      validChunks: 1,
      checkpointEvery: 30,
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(raw));
    await pretrainExperiment(readExperimentConfig(join(dir, 'config.json')), join(dir, 'a'), { quiet: true });
    const log = readFileSync(join(dir, 'a', 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>)
      .filter((r) => r.loss !== undefined);
    for (const r of log) {
      const want =
        r.text_loss +
        0.5 * (r.answer_loss ?? 0) +
        (r.pointer_attn_loss ?? 0) +
        0.25 * (r.pointer_copy_loss ?? 0) +
        0.5 * (r.restate_attn_loss ?? 0) +
        0.75 * (r.restate_copy_loss ?? 0) +
        1.5 * (r.restate_loss ?? 0);
      assert.ok(Math.abs(want - r.loss) < 1e-3 * Math.max(1, r.loss), `step ${r.step}: ${r.loss} vs ${want}`);
    }
    const pointed = log.filter((r) => r.pointer_attn_loss !== undefined);
    assert.ok(pointed.length >= 10, `steps with a pointer target: ${pointed.length}`);
    assert.ok(
      pointed.every((r) => r.pointer_copy_loss! > 0),
      'the copy loss is logged with the pointer loss',
    );
    const restated = log.filter((r) => r.restate_attn_loss !== undefined);
    assert.ok(restated.length >= 3, `steps with a restate target: ${restated.length}`);
    assert.ok(
      restated.every((r) => r.restate_copy_loss! > 0),
      'the restate copy loss is logged with its pointer loss',
    );
    assert.ok(
      restated.every((r) => r.restate_loss! > 0),
      "the restated tokens' loss is logged with the restate pointer loss",
    );
    // Spread attention at the start (learning is tested above, on a task a tiny model can learn in a test's time).
    assert.ok(pointed[0]!.pointer_attn_loss! > 2, `first pointer loss ${pointed[0]!.pointer_attn_loss}`);
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, answerPointer: { layer: 2, head: 0, weight: 1 } }));
    await assert.rejects(async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true }), /answerPointer.layer/);
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, answerPointer: { layer: 1, head: 0, weight: 1, copyWeight: -1 } }));
    await assert.rejects(
      async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true }),
      /answerPointer.copyWeight/,
    );
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, restatePointer: { layer: 1, head: 1, weight: 1, copyWeight: 1, copyAttention: 'oracle' } }));
    await assert.rejects(
      async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true }),
      /restatePointer.copyAttention must be "head" or "targets"/,
    );
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, restatePointer: { layer: 1, head: 9, weight: 1 } }));
    await assert.rejects(async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true }), /restatePointer.head/);
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, restateShare: 0 }));
    await assert.rejects(
      async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true }),
      /restateWeight' needs restate documents/,
    );
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, restateShare: 0, restateWeight: 0 }));
    await assert.rejects(
      async () => pretrainExperiment(readExperimentConfig(join(dir, 'bad.json')), join(dir, 'b'), { quiet: true }),
      /restatePointer needs restate documents/,
    );
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...raw, restateWeight: -2 }));
    assert.throws(() => readExperimentConfig(join(dir, 'bad.json')), /'restateWeight' must be a number >= 0/);
  }),
);
