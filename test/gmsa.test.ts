/**
 * GMSA (src/compress/gmsa.ts) on a tiny random base model: group boundaries and exact group
 * means (remainder group included), the LSA block as an exact copy of the decoder's first layer
 * and final norm, the whole pipeline against a hand-built one, ragged batches at ratios 4 and 8
 * and at a token budget, which parameters each stage trains (and that the base model never
 * changes), the decoder delta, the ablation options, save/load, and parameter counts for the
 * real base's dimensions.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Tensor, manualSeed, noGrad, randn, tensor, tidy } from '../src/tensor/index.js';
import { AdamW, constant, type Module, type Parameter } from '../src/nn/index.js';
import { configFromHf } from '../src/models/config.js';
import { LlamaModel } from '../src/models/llama.js';
import { GmsaCompressor, mergeGroups } from '../src/compress/gmsa.js';
import { groupStarts } from '../src/compress/batching.js';
import { createCompressor, isLearned, loadCompressor, saveCompressor } from '../src/compress/registry.js';
import { tailLoss } from '../src/compress/decode.js';
import type { Budget, Compressor, SoftContext } from '../src/compress/types.js';
import { train } from '../src/train/trainer.js';
import { maxDiff } from './helpers/close.js';
import { randomModel } from './helpers/tiny.js';

// ---- helpers ---------------------------------------------------------------------------------

const BOS = 1;
const EOS = 2;
const PAD = 0;
const VOCAB = 61;

/** A tiny random frozen base (dim 32, 4 layers, GQA 4/2 heads, tied embeddings like ours). */
function tinyBase(seed = 3): LlamaModel {
  return randomModel(
    {
      vocab_size: VOCAB,
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 64,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: true,
      bos_token_id: BOS,
      eos_token_id: EOS,
    },
    { seed, freeze: true },
  );
}

function randomIds(n: number, seed: number): number[] {
  let s = seed * 2654435761;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return 3 + (s % (VOCAB - 3));
  });
}

/** Every parameter's bytes, by name. */
function snapshot(m: Module): Map<string, Buffer> {
  return new Map(m.namedParameters().map(([n, p]) => [n, Buffer.from(p.value.toBytes())]));
}
function changed(before: Map<string, Buffer>, m: Module): string[] {
  return m
    .namedParameters()
    .filter(([n, p]) => !before.get(n)!.equals(Buffer.from(p.value.toBytes())))
    .map(([n]) => n);
}

/** [rows][cols] of a [B, k, H] tensor's item b. */
function rowsOf(t: Tensor, b: number): number[][] {
  const [, k, h] = t.shape;
  const xs = t.select(0, b).toNumbers();
  return Array.from({ length: k }, (_, i) => xs.slice(i * h, (i + 1) * h));
}

/** The autoencoding tails of papers/gmsa.md: <restate> context EOS, loss from the context on. */
function aeTails(contexts: number[][]): { tails: number[][]; lossFrom: number[] } {
  return { tails: contexts.map((c) => [4, ...c, EOS]), lossFrom: contexts.map(() => 1) };
}

/** The autoencoding loss through the decoder delta, or (withDelta false) through the plain base. */
function lossOf(c: Compressor, contexts: number[][], budget: Budget, withDelta = true): number {
  return tidy(() =>
    noGrad(() => {
      const ctx = c.compress(contexts, budget);
      const { tails, lossFrom } = aeTails(contexts);
      return tailLoss(c.base, ctx, tails, lossFrom, { bos: BOS, pad: PAD, lora: withDelta ? c.decoderLora : undefined }).loss.item();
    }),
  );
}

/** A few AdamW steps of a stage's objective over its trainable parameters. */
function trainSteps(c: Compressor, stage: 'ae' | 'qa', steps: number, lr = 1e-2): number[] {
  const params = c.trainable(stage);
  const opt = new AdamW(
    params.map(([, p]) => p),
    { lr, weightDecay: 0.01 },
  );
  const contexts = [randomIds(12, 1), randomIds(9, 2)];
  const losses: number[] = [];
  c.setTraining(true);
  for (let s = 0; s < steps; s++) {
    tidy(() => {
      const ctx = c.compress(contexts, { ratio: 4 });
      const { tails, lossFrom } = aeTails(contexts);
      const { loss } = tailLoss(c.base, ctx, tails, lossFrom, { bos: BOS, pad: PAD, lora: c.decoderLora });
      loss.backward();
      losses.push(loss.item());
      opt.step();
      opt.zeroGrad();
    });
  }
  opt.freeState();
  c.setTraining(false);
  return losses;
}

function freeCtx(ctx: SoftContext): void {
  ctx.softTokens?.free();
  ctx.mask?.free();
}

// ---- group merging ---------------------------------------------------------------------------

test('group boundaries: groups of r with a remainder group; k near-equal groups for a token budget', () => {
  assert.deepEqual(groupStarts(10, { ratio: 4 }), [0, 4, 8]); // 4, 4, 2
  assert.deepEqual(groupStarts(16, { ratio: 8 }), [0, 8]);
  assert.deepEqual(groupStarts(17, { ratio: 8 }), [0, 8, 16]); // 8, 8, 1
  assert.deepEqual(groupStarts(3, { ratio: 4 }), [0]);
  assert.deepEqual(groupStarts(0, { ratio: 4 }), []);
  assert.deepEqual(groupStarts(10, { ratio: 2.5 }), [0, 2, 5, 7]); // ceil(10 / 2.5) = 4
  assert.deepEqual(groupStarts(10, { tokens: 3 }), [0, 3, 6]); // 3, 3, 4
  assert.deepEqual(groupStarts(7, { tokens: 3 }), [0, 2, 4]); // 2, 2, 3
  assert.deepEqual(groupStarts(2, { tokens: 5 }), [0, 1]); // never an empty group
  for (let n = 1; n < 40; n++) for (const r of [1, 2, 3, 4, 8]) assert.equal(groupStarts(n, { ratio: r }).length, Math.ceil(n / r));
});

test('group merging: exact means of consecutive groups, the remainder group averaged, ragged rows zero', () => {
  tidy(() => {
    manualSeed(11);
    const h = 3;
    const states = randn([2, 10, h], { dtype: 'float64' });
    const x = [rowsOf(states, 0), rowsOf(states, 1)]; // [b][t][h]
    const mean = (b: number, from: number, to: number) => Array.from({ length: h }, (_, d) => x[b].slice(from, to).reduce((a, r) => a + r[d], 0) / (to - from));
    const zero = [0, 0, 0];
    const close = (got: number[][], want: number[][], what: string) => {
      assert.equal(got.length, want.length, what);
      got.forEach((r, i) => r.forEach((v, d) => assert.ok(Math.abs(v - want[i][d]) < 1e-12, `${what} [${i}][${d}]: ${v} vs ${want[i][d]}`)));
    };

    // T = 10, r = 4: groups 0-3, 4-7, 8-9; a 7-token item: 0-3, 4-6 and a zero row.
    const r4 = mergeGroups(states, [10, 7], { ratio: 4 });
    assert.deepEqual(r4.counts, [3, 2]);
    assert.deepEqual(r4.merged.shape, [2, 3, h]);
    close(rowsOf(r4.merged, 0), [mean(0, 0, 4), mean(0, 4, 8), mean(0, 8, 10)], 'r=4 item 0');
    close(rowsOf(r4.merged, 1), [mean(1, 0, 4), mean(1, 4, 7), zero], 'r=4 item 1');

    // A budget of 3 tokens: sizes 3, 3, 4 and 2, 2, 3.
    const k3 = mergeGroups(states, [10, 7], { tokens: 3 });
    close(rowsOf(k3.merged, 0), [mean(0, 0, 3), mean(0, 3, 6), mean(0, 6, 10)], 'k=3 item 0');
    close(rowsOf(k3.merged, 1), [mean(1, 0, 2), mean(1, 2, 4), mean(1, 4, 7)], 'k=3 item 1');

    // Ablation 'strided': the last state of each group.
    const st = mergeGroups(states, [10, 7], { ratio: 4 }, 'strided');
    close(rowsOf(st.merged, 0), [x[0][3], x[0][7], x[0][9]], 'strided item 0');
    close(rowsOf(st.merged, 1), [x[1][3], x[1][6], zero], 'strided item 1');

    // Ablation 'queries': a zero query is the exact mean; otherwise a softmax within each group.
    const q0 = mergeGroups(states, [10, 7], { ratio: 4 }, 'queries', tensor([0, 0, 0], [3], { dtype: 'float64' }));
    assert.ok(maxDiff(q0.merged, r4.merged) < 1e-12, 'queries at q = 0 is the mean');
    const q = [0.7, -1.3, 0.4];
    const pooled = (b: number, from: number, to: number) => {
      const e = x[b].slice(from, to).map((r) => Math.exp(r.reduce((a, v, d) => a + v * q[d], 0)));
      const z = e.reduce((a, v) => a + v, 0);
      return Array.from({ length: h }, (_, d) => x[b].slice(from, to).reduce((a, r, i) => a + (e[i] / z) * r[d], 0));
    };
    const qs = mergeGroups(states, [10, 7], { ratio: 4 }, 'queries', tensor(q, [3], { dtype: 'float64' }));
    close(rowsOf(qs.merged, 0), [pooled(0, 0, 4), pooled(0, 4, 8), pooled(0, 8, 10)], 'queries item 0');
    close(rowsOf(qs.merged, 1), [pooled(1, 0, 4), pooled(1, 4, 7), zero], 'queries item 1');
  });
});

// ---- structure -------------------------------------------------------------------------------

test('LSA starts as an exact copy of the decoder first layer and final norm; stages name their parameters', () => {
  const base = tinyBase();
  const c = new GmsaCompressor(base);
  assert.equal(c.encoderLayers, 2); // min(8, ceil(4 / 2))
  assert.equal(c.config.loraRank, 32); // min(128, hidden 32)
  assert.equal(c.config.loraAlpha, 32); // the paper's
  const baseParams = new Map(base.namedParameters());
  const lsaLayer = c.module.lsa.layer!;
  const names = lsaLayer.namedParameters().map(([n]) => n);
  assert.equal(names.length, base.layers[0].namedParameters().length);
  for (const [name, p] of lsaLayer.namedParameters()) {
    const src = baseParams.get(`model.layers.0.${name}`);
    assert.ok(src, `no base parameter for lsa.layer.${name}`);
    assert.ok(Buffer.from(p.value.toBytes()).equals(Buffer.from(src.value.toBytes())), `lsa.layer.${name} differs from model.layers.0.${name}`);
    assert.notEqual(p.value, src.value, 'a copy, not the same tensor');
  }
  assert.ok(Buffer.from(c.module.lsa.norm.weight.value.toBytes()).equals(Buffer.from(base.model.norm.weight.value.toBytes())), 'lsa.norm is the final norm');
  assert.equal(c.module.lsa.norm.weight.trainable, false, 'the copied norm is frozen');

  const ae = c.trainable('ae').map(([n]) => n);
  assert.ok(!ae.includes('lsa.norm.weight'));
  assert.equal(ae.filter((n) => n.startsWith('lsa.layer.')).length, names.length);
  // LoRA on all seven projections of each encoder layer, nothing above it.
  const enc = ae.filter((n) => n.startsWith('encoder.'));
  assert.equal(enc.length, 2 * 7 * 2);
  for (const l of [0, 1])
    for (const t of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'])
      assert.ok(enc.includes(`encoder.${l}.${t}.lora_A.weight`) && enc.includes(`encoder.${l}.${t}.lora_B.weight`), `${l}.${t}`);
  assert.equal(ae.length, enc.length + names.length);
  assert.ok(
    c.decoderLora.namedParameters().every(([, p]) => !p.trainable),
    'ae: the decoder delta records no gradients',
  );

  const qa = c.trainable('qa').map(([n]) => n);
  assert.deepEqual(qa.sort(), [0, 1, 2, 3].flatMap((l) => ['q', 'k', 'v'].map((t) => `${l}.${t}.delta.weight`)).sort());
  assert.ok(
    c.module.parameters().every((p) => !p.trainable),
    'qa: encoder and LSA record no gradients',
  );
  assert.ok(c.decoderLora.parameters().every((p) => p.trainable));
});

test('compress equals the hand-built pipeline: encoder (BOS + bottom layers + norm), group means, LSA (= base layer 0 + norm at positions 0..k-1)', () => {
  const base = tinyBase();
  const ctxIds = randomIds(10, 5);
  for (const lsa of [true, false]) {
    const c = new GmsaCompressor(base, { lsa });
    c.setTraining(false);
    tidy(() =>
      noGrad(() => {
        const got = c.compress([ctxIds], { ratio: 4 });
        // Fresh LoRA (B = 0) leaves the encoder equal to the base model's bottom layers.
        const enc = base.forward({ ids: tensor([BOS, ...ctxIds], [1, 11], { dtype: 'int64' }), numLayers: 2, logits: 'none' }).hidden.narrow(1, 1, 10);
        const { merged } = mergeGroups(enc, [10], { ratio: 4 });
        const want = lsa ? base.forward({ inputsEmbeds: merged, numLayers: 1, logits: 'none' }).hidden : base.model.norm.forward(merged);
        assert.deepEqual(got.softTokens!.shape, [1, 3, 32]);
        assert.ok(maxDiff(got.softTokens!, want) < 1e-5, `lsa ${lsa}: ${maxDiff(got.softTokens!, want)}`);
      }),
    );
  }
});

test('ragged batches at ratios 4 and 8 and a token budget: shapes, masks, counts, zero padding, batch independence', () => {
  const base = tinyBase();
  const c = new GmsaCompressor(base);
  trainSteps(c, 'ae', 2); // non-trivial encoder LoRA and LSA
  const contexts = [randomIds(10, 1), randomIds(3, 2), randomIds(17, 3), [], randomIds(8, 4)];
  const cases: [Budget, number[]][] = [
    [{ ratio: 4 }, [3, 1, 5, 0, 2]],
    [{ ratio: 8 }, [2, 1, 3, 0, 1]],
    [{ tokens: 4 }, [4, 3, 4, 0, 4]],
  ];
  for (const [budget, counts] of cases) {
    tidy(() => {
      const ctx = c.compress(contexts, budget);
      const k = Math.max(...counts);
      assert.deepEqual(ctx.meta.softTokens, counts, JSON.stringify(budget));
      assert.deepEqual(ctx.meta.sourceTokens, [10, 3, 17, 0, 8]);
      assert.equal(ctx.meta.method, 'gmsa');
      assert.deepEqual(ctx.softTokens!.shape, [5, k, 32]);
      assert.deepEqual(ctx.mask!.shape, [5, k]);
      assert.deepEqual(
        Array.from(ctx.mask!.toNumbers()),
        counts.flatMap((n) => Array.from({ length: k }, (_, i) => (i < n ? 1 : 0))),
      );
      assert.equal(ctx.softTokens!.requiresGrad, false, 'eval mode: no graph');
      contexts.forEach((ids, b) => {
        const row = ctx.softTokens!.select(0, b);
        if (counts[b] < k)
          assert.equal(
            row
              .narrow(0, counts[b], k - counts[b])
              .abs()
              .max()
              .item(),
            0,
            'padded rows are zero',
          );
        if (counts[b] === 0) return;
        const alone = c.compress([ids], budget);
        assert.ok(
          maxDiff(row.narrow(0, 0, counts[b]).unsqueeze(0), alone.softTokens!) < 1e-5,
          `item ${b} differs from itself alone (${JSON.stringify(budget)})`,
        );
      });
      // The decoder reads it.
      const { tails, lossFrom } = aeTails(contexts);
      const loss = noGrad(() => tailLoss(base, ctx, tails, lossFrom, { bos: BOS, pad: PAD, lora: c.decoderLora }).loss.item());
      assert.ok(Number.isFinite(loss));
    });
  }
  const none = c.compress([[], []], { ratio: 4 });
  assert.deepEqual(none.softTokens!.shape, [2, 0, 32]);
  freeCtx(none);
});

// ---- training ----------------------------------------------------------------------------------

test('stage ae trains encoder LoRA and LSA only; the decoder delta, the copied norm and the base model never change', () => {
  const base = tinyBase();
  const baseBefore = snapshot(base);
  const fp = base.fingerprint();
  const c = new GmsaCompressor(base);
  const own = snapshot(c.module);
  const dec = snapshot(c.decoderLora);
  const lossBefore = lossOf(c, [randomIds(12, 1), randomIds(9, 2)], { ratio: 4 });
  const losses = trainSteps(c, 'ae', 6);
  assert.ok(losses.every(Number.isFinite));
  const moved = changed(own, c.module);
  assert.ok(
    moved.some((n) => n.startsWith('encoder.') && n.endsWith('lora_B.weight')),
    'encoder LoRA trained',
  );
  assert.ok(
    moved.some((n) => n.startsWith('lsa.layer.')),
    'LSA block trained',
  );
  assert.ok(!moved.includes('lsa.norm.weight'), 'the copied norm stays frozen');
  assert.deepEqual(changed(dec, c.decoderLora), [], 'decoder delta untouched');
  assert.deepEqual(changed(baseBefore, base), [], 'base model untouched');
  base.invalidateFingerprint();
  assert.equal(base.fingerprint(), fp);
  assert.ok(lossOf(c, [randomIds(12, 1), randomIds(9, 2)], { ratio: 4 }) < lossBefore, 'autoencoding loss went down');
});

test('stage qa (through the trainer) trains only the decoder delta; encoder, LSA and base stay bit-identical; the delta changes decoding', async () => {
  const base = tinyBase();
  const baseBefore = snapshot(base);
  const c = new GmsaCompressor(base, { merge: 'queries' });
  trainSteps(c, 'ae', 2);
  const contexts = [randomIds(12, 1), randomIds(9, 2)];
  // A zero delta decodes as the plain base model (to float rounding: without adapters q/k/v come
  // from one fused product, with them from three, so hidden states differ in the last bits).
  const [withZeroDelta, plain] = [lossOf(c, contexts, { ratio: 4 }), lossOf(c, contexts, { ratio: 4 }, false)];
  assert.ok(Math.abs(withZeroDelta - plain) <= 1e-5 * plain, `zero delta ${withZeroDelta} vs plain base ${plain}`);
  const own = snapshot(c.module);
  const dec = snapshot(c.decoderLora);
  const params = c.trainable('qa');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-gmsa-'));
  try {
    const summary = await train(
      {
        params,
        microBatch() {
          c.setTraining(true);
          const ctx = c.compress(contexts, { ratio: 4 });
          // QA-style: loss on the "answer" only (the last 4 tail tokens).
          const tails = contexts.map((x) => [4, ...x, EOS]);
          return tailLoss(
            base,
            ctx,
            tails,
            tails.map((t) => t.length - 4),
            { bos: BOS, pad: PAD, lora: c.decoderLora },
          );
        },
      },
      { outDir: dir, totalSteps: 3, schedule: constant({ lr: 1e-2 }), clip: 2, weightDecay: 0.01, quiet: true },
    );
    assert.equal(summary.steps, 3);
    assert.ok(fs.existsSync(path.join(dir, 'checkpoint', 'params.safetensors')), 'the trainer checkpoints the delta by name');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(changed(own, c.module), [], 'encoder LoRA, merge query and LSA bit-identical');
  assert.equal(changed(dec, c.decoderLora).length, 12, 'every q/k/v delta of the 4 layers moved');
  assert.deepEqual(changed(baseBefore, base), [], 'base model untouched');
  const [trained, untouched] = [lossOf(c, contexts, { ratio: 4 }), lossOf(c, contexts, { ratio: 4 }, false)];
  assert.ok(Math.abs(trained - untouched) > 1e-3 * untouched, `the delta changes decoding: ${trained} vs ${untouched}`);
});

// ---- options, registry, save/load ---------------------------------------------------------------

test('options: ablations through createCompressor, defaults in the config, bad values refused', () => {
  const base = tinyBase();
  assert.ok(isLearned('gmsa'));
  const c = createCompressor('gmsa', base, { merge: 'strided', lsa: false, baseFingerprint: 'ignored' });
  assert.deepEqual(c.config, { method: 'gmsa', encoderLayers: 2, loraRank: 32, loraAlpha: 32, loraDropout: 0.05, merge: 'strided', lsa: false, bos: true });
  assert.equal((c as GmsaCompressor).module.lsa.layer, undefined, 'no LSA block without LSA');
  assert.deepEqual(
    c
      .trainable('ae')
      .map(([n]) => n)
      .filter((n) => n.startsWith('lsa')),
    [],
  );
  // CLI-style string values are read too.
  assert.equal(createCompressor('gmsa', base, { encoderLayers: '3', lsa: 'true' }).config.encoderLayers, 3);
  assert.throws(() => createCompressor('gmsa', base, { merge: 'max' }), /merge.*mean, strided, queries/);
  assert.throws(() => createCompressor('gmsa', base, { encoderLayers: 5 }), /encoderLayers/);
  assert.throws(() => createCompressor('gmsa', base, { loraRank: 0 }), /loraRank/);
});

test('save/load round-trips weights.safetensors, decoder.safetensors and the options', () => {
  const base = tinyBase();
  for (const options of [{}, { merge: 'queries', encoderLayers: 1, loraRank: 8 }, { merge: 'strided', lsa: false }]) {
    const c = createCompressor('gmsa', base, options) as GmsaCompressor;
    trainSteps(c, 'ae', 2);
    trainSteps(c, 'qa', 2);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-gmsa-'));
    try {
      saveCompressor(c, dir);
      for (const f of ['compressor.json', 'weights.safetensors', 'decoder.safetensors']) assert.ok(fs.existsSync(path.join(dir, f)), f);
      const loaded = loadCompressor(dir, base) as GmsaCompressor;
      assert.deepEqual(loaded.config, c.config);
      const same = (a: [string, Parameter][], b: [string, Parameter][], what: string) => {
        assert.deepEqual(
          a.map(([n]) => n),
          b.map(([n]) => n),
          what,
        );
        a.forEach(([n, p], i) => assert.ok(Buffer.from(p.value.toBytes()).equals(Buffer.from(b[i][1].value.toBytes())), `${what} ${n}`));
      };
      same(loaded.module.namedParameters(), c.module.namedParameters(), 'weights');
      same(loaded.decoderLora.namedParameters(), c.decoderLora.namedParameters(), 'decoder');
      assert.ok(
        c.decoderLora.parameters().some((p) => tidy(() => p.value.abs().max().item()) > 0),
        'a non-zero delta was saved',
      );
      tidy(() => {
        const contexts = [randomIds(11, 7)];
        assert.equal(maxDiff(loaded.compress(contexts, { ratio: 4 }).softTokens!, c.compress(contexts, { ratio: 4 }).softTokens!), 0);
      });
      assert.equal(lossOf(loaded, [randomIds(11, 7)], { ratio: 4 }), lossOf(c, [randomIds(11, 7)], { ratio: 4 }));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('parameter counts at the real base dimensions (hidden 256, 6 layers, ffn 688, 8 heads, 4 kv heads)', (t) => {
  manualSeed(0);
  const base = noGrad(() =>
    new LlamaModel(
      configFromHf({
        model_type: 'llama',
        vocab_size: 64,
        hidden_size: 256,
        intermediate_size: 688,
        num_hidden_layers: 6,
        num_attention_heads: 8,
        num_key_value_heads: 4,
        tie_word_embeddings: true,
        bos_token_id: 1,
      }),
    ).freeze(),
  );
  const c = new GmsaCompressor(base);
  assert.equal(c.encoderLayers, 3);
  assert.equal(c.config.loraRank, 128); // the paper's
  assert.equal(c.config.loraAlpha, 32);
  const count = (ps: [string, Parameter][]) => ps.reduce((a, [, p]) => a + p.value.numel, 0);
  const own = c.module.namedParameters();
  const encoder = count(own.filter(([n]) => n.startsWith('encoder.')));
  const lsaBlock = count(own.filter(([n]) => n.startsWith('lsa.layer.')));
  const norm = count(own.filter(([n]) => n === 'lsa.norm.weight'));
  const delta = count(c.decoderLora.namedParameters());
  // LoRA r (in + out) per projection: q, o 256+256; k, v 256+128; gate, up, down 256+688.
  assert.equal(encoder, 3 * 128 * (2 * 512 + 2 * 384 + 3 * 944));
  assert.equal(lsaBlock, 256 * 256 * 2 + 256 * 128 * 2 + 3 * 256 * 688 + 2 * 256);
  assert.equal(norm, 256);
  assert.equal(delta, 6 * (256 * 256 + 2 * 256 * 128));
  assert.equal(count(c.trainable('ae')), encoder + lsaBlock);
  assert.equal(count(c.trainable('qa')), delta);
  const layerParams = base.layers[0].numParameters();
  t.diagnostic(
    `encoder LoRA ${encoder} (${((100 * encoder) / (3 * layerParams)).toFixed(1)}% of the 3 encoder blocks), LSA block ${lsaBlock}, frozen norm ${norm}, decoder delta ${delta}; stage ae trains ${encoder + lsaBlock}, stage qa ${delta}`,
  );
});
