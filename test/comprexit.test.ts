/**
 * ComprExIT (src/compress/comprexit.ts): the Sinkhorn plan's marginals and masking, slots as
 * block means under a block-diagonal cost, gradients of the source-mass parameters, depth-wise
 * mixing as convex combinations (checked against the unfactored formula), shapes, masks and
 * budgets of ragged batches, the frozen base run once per call without gradients, parameter
 * counts, and save/load through the registry.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Tensor, isGradEnabled, manualSeed, noGrad, randn, tensor, tidy, zeros } from '../src/tensor/index.js';
import { LlamaModel, type ForwardOptions, type ForwardResult } from '../src/models/llama.js';
import { createCompressor, loadCompressor, saveCompressor, tailLoss } from '../src/compress/index.js';
import { randomModel } from './helpers/tiny.js';
import {
  COMPREXIT_DEFAULTS,
  ComprExIT,
  comprexitParameters,
  layoutBlocks,
  sinkhorn,
  sourceMass,
  targetMass,
  transportSlots,
} from '../src/compress/comprexit.js';

const VOCAB = 64;

/** A small random base model (H = 32, L = 2), weights redrawn so hidden states differ by layer. */
function tinyBase(seed = 3): LlamaModel {
  return randomModel(
    {
      vocab_size: VOCAB,
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 512,
      rms_norm_eps: 1e-5,
    },
    { seed },
  );
}

/** Deterministic pseudo-random ids in [1, VOCAB). */
function ids(n: number, seed: number): number[] {
  const out: number[] = [];
  let s = seed * 7919 + 17;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    out.push(1 + (s % (VOCAB - 1)));
  }
  return out;
}

const near = (got: number, want: number, tol: number, what: string) => assert.ok(Math.abs(got - want) <= tol, `${what}: ${got} vs ${want} (tol ${tol})`);
const scoped = (fn: () => void) => () => tidy(fn);
const SINKHORN = { epsilon: COMPREXIT_DEFAULTS.epsilon, iterations: COMPREXIT_DEFAULTS.iterations };

/** Masks for N windows of W tokens and K slots, valid prefixes of the given lengths. */
function prefixMask(lengths: number[], size: number): Tensor {
  return tensor(
    lengths.flatMap((n) => Array.from({ length: size }, (_, i) => (i < n ? 1 : 0))),
    [lengths.length, size],
    { dtype: 'bool' },
  );
}

// ---- Sinkhorn ------------------------------------------------------------------------------------

test(
  'sinkhorn: rows sum to the source mass and columns to the target mass; invalid rows/columns are exactly 0',
  scoped(() => {
    manualSeed(5);
    const W = 128;
    const K = 32;
    // Windows: full, ragged, tiny, and one with nothing valid at all.
    const rowsValid = [128, 77, 5, 0];
    const colsValid = [32, 20, 2, 0];
    const n = rowsValid.length;
    const rowMask = prefixMask(rowsValid, W);
    const colMask = prefixMask(colsValid, K);
    // A cosine cost in [0, 2] like the module's (features of 16 dims so costs really vary).
    const f = randn([n, W, 16]);
    const g = randn([n, K, 16]);
    const unit = (x: Tensor) => x.div(x.norm(2, -1, true));
    const cost = unit(f).matmul(unit(g).transpose(1, 2)).rsub(1);
    const a = sourceMass(randn([n, W]).mul(2), rowMask, 0.05, 1);
    const b = targetMass(colMask);
    const plan = sinkhorn(cost, a, b, rowMask, colMask, SINKHORN);
    assert.deepEqual(plan.shape, [n, W, K]);
    const P = plan.toNumbers();
    const A = a.toNumbers();
    const B = b.toNumbers();
    assert.ok(P.every(Number.isFinite), 'plan is finite');
    let worstRow = 0;
    let worstCol = 0;
    for (let w = 0; w < n; w++) {
      for (let i = 0; i < W; i++) {
        let s = 0;
        for (let j = 0; j < K; j++) {
          const p = P[(w * W + i) * K + j];
          if (i >= rowsValid[w] || j >= colsValid[w]) assert.equal(p, 0, `window ${w} entry (${i}, ${j}) is invalid and must be exactly 0`);
          s += p;
        }
        if (i < rowsValid[w] && colsValid[w] > 0) worstRow = Math.max(worstRow, Math.abs(s - A[w * W + i]));
      }
      for (let j = 0; j < K; j++) {
        let s = 0;
        for (let i = 0; i < W; i++) s += P[(w * W + i) * K + j];
        if (j < colsValid[w] && rowsValid[w] > 0) worstCol = Math.max(worstCol, Math.abs(s - B[w * K + j]));
      }
    }
    assert.ok(worstRow < 1e-3, `row sums within 1e-3 of a (worst ${worstRow})`);
    assert.ok(worstCol < 1e-3, `column sums within 1e-3 of b (worst ${worstCol})`);
    // The masses themselves: a sums to 1 over real tokens (0 in the empty window), b = 1 / K_valid.
    near(
      A.slice(0, W).reduce((s, x) => s + x, 0),
      1,
      1e-5,
      'sum a',
    );
    near(
      A.slice(3 * W).reduce((s, x) => s + x, 0),
      0,
      0,
      'sum a of the empty window',
    );
    near(B[K + 3], 1 / 20, 1e-7, 'b');
  }),
);

test(
  'sinkhorn: with uniform masses and a block-diagonal cost, slots are the block means of the values',
  scoped(() => {
    manualSeed(6);
    const W = 16;
    const K = 4;
    const r = 4;
    const realTokens = [16, 12]; // window 2: three full blocks, the fourth slot invalid
    const realSlots = [4, 3];
    const rowMask = prefixMask(realTokens, W);
    const colMask = prefixMask(realSlots, K);
    const costVals: number[] = [];
    for (let w = 0; w < 2; w++) for (let i = 0; i < W; i++) for (let j = 0; j < K; j++) costVals.push(Math.floor(i / r) === j ? 0 : 1);
    const cost = tensor(costVals, [2, W, K]);
    const a = sourceMass(zeros([2, W]), rowMask, 0.05, 1); // uniform over real tokens
    const b = targetMass(colMask);
    const H = 8;
    const values = randn([2, W, H]);
    const slots = transportSlots(sinkhorn(cost, a, b, rowMask, colMask, SINKHORN), values, b);
    const V = values.toNumbers();
    const Z = slots.toNumbers();
    // Off-block leakage is about (W - r) e^-10 / r ~ 1.4e-4 of a slot's mass here.
    for (let w = 0; w < 2; w++) {
      for (let j = 0; j < K; j++) {
        for (let d = 0; d < H; d++) {
          let mean = 0;
          if (j < realSlots[w]) for (let i = j * r; i < (j + 1) * r; i++) mean += V[(w * W + i) * H + d] / r;
          const got = Z[(w * K + j) * H + d];
          if (j >= realSlots[w]) assert.equal(got, 0, 'an invalid slot is exactly 0');
          else near(got, mean, 2e-3, `window ${w} slot ${j} dim ${d}`);
        }
      }
    }
  }),
);

test(
  "width module: slots are block means of W_v' LN(x) when the cost favours the diagonal blocks",
  scoped(() => {
    const c = new ComprExIT(tinyBase(), {});
    const width = c.module.width;
    manualSeed(8);
    const W = 128;
    const r = 8;
    const K = W / r;
    const x = randn([1, W, 32]);
    const rowMask = prefixMask([W], W);
    const colMask = prefixMask([K], K);
    const costVals: number[] = [];
    for (let i = 0; i < W; i++) for (let j = 0; j < K; j++) costVals.push(Math.floor(i / r) === j ? 0 : 2);
    const a = sourceMass(zeros([1, W]), rowMask, 0.05, 1);
    const b = targetMass(colMask);
    const plan = sinkhorn(tensor(costVals, [1, W, K]), a, b, rowMask, colMask, SINKHORN);
    const values = width.value.forward(width.valueNorm.forward(x));
    const Z = transportSlots(plan, values, b).toNumbers();
    const V = values.toNumbers();
    let worst = 0;
    for (let j = 0; j < K; j++) {
      for (let d = 0; d < 32; d++) {
        let mean = 0;
        for (let i = j * r; i < (j + 1) * r; i++) mean += V[i * 32 + d] / r;
        worst = Math.max(worst, Math.abs(Z[j * 32 + d] - mean));
      }
    }
    assert.ok(worst < 1e-4, `slots equal the block means of W_v' LN(x) (worst ${worst})`);
  }),
);

// ---- gradients -------------------------------------------------------------------------------------

test(
  'gradients: the source-mass parameters get finite gradients (w_s non-zero from its zero init); every module gets some',
  scoped(() => {
    const c = new ComprExIT(tinyBase(), {});
    const contexts = [ids(200, 1), ids(90, 2)];
    const ctx = c.compress(contexts, { ratio: 4 });
    manualSeed(9);
    const loss = ctx.softTokens!.mul(randn(ctx.softTokens!.shape)).sum();
    loss.backward();
    const grads = new Map(c.module.namedParameters().map(([n, p]) => [n, p.value.grad?.toNumbers() ?? null]));
    for (const [n, g] of grads) {
      assert.ok(g, `${n} has a gradient`);
      assert.ok(g.every(Number.isFinite), `${n}: finite gradient`);
    }
    const ws = grads.get('width.source_weight')!;
    assert.ok(
      ws.some((v) => Math.abs(v) > 1e-7),
      `w_s gets a non-zero gradient at w_s = 0 (max |g| ${Math.max(...ws.map(Math.abs))})`,
    );
    // b_s shifts every score of a window equally, and the softmax over tokens cancels a shift:
    // its gradient is zero by construction (up to rounding), though finite.
    const bs = grads.get('width.source_bias')!;
    assert.ok(Math.abs(bs[0]) < 1e-4 * Math.max(...ws.map(Math.abs)) + 1e-9, `b_s gradient ~ 0 by shift invariance (${bs[0]})`);
    for (const part of [
      'depth.layer_logits',
      'depth.layer_emb',
      'depth.q_proj.weight',
      'depth.k_proj.weight',
      'depth.v_proj.weight',
      'width.cost_proj.weight',
      'width.v_proj.weight',
      'projector.fc1.weight',
      'projector.fc2.bias',
    ]) {
      assert.ok(
        grads.get(part)!.some((v) => v !== 0),
        `${part} gets a non-zero gradient`,
      );
    }
  }),
);

test(
  'gradients: the source-mass gradient flows through the unrolled Sinkhorn (finite difference on w_s)',
  scoped(() => {
    const c = new ComprExIT(tinyBase(), {});
    const contexts = [ids(64, 4)];
    manualSeed(10);
    const probe = randn([1, 16, 32]);
    const lossOf = () => c.compress(contexts, { ratio: 4 }).softTokens!.mul(probe).sum();
    const loss = lossOf();
    loss.backward();
    const g = c.module.width.sourceWeight.value.grad!.toNumbers();
    const d = g.reduce((best, v, i) => (Math.abs(v) > Math.abs(g[best]) ? i : best), 0);
    const h = 1e-2;
    const w = c.module.width.sourceWeight.value;
    const bump = (delta: number) => noGrad(() => w.copy_(w.add(tensor(Array.from({ length: 32 }, (_, i) => (i === d ? delta : 0))))));
    bump(h);
    const up = noGrad(lossOf).item();
    bump(-2 * h);
    const down = noGrad(lossOf).item();
    bump(h);
    const fd = (up - down) / (2 * h);
    near(g[d], fd, 0.01 * Math.abs(fd) + 1e-4, 'autograd vs central difference for w_s');
  }),
);

// ---- depth-wise transmission -------------------------------------------------------------------

test(
  'depth: alpha is a distribution over layers at real tokens and 0 at padding; anchors are the alpha-mix of W_v h_l',
  scoped(() => {
    const base = tinyBase();
    const c = new ComprExIT(base, {});
    const contexts = [ids(10, 1), ids(4, 2)];
    const { states, mask } = c.baseStates(contexts, 10);
    assert.deepEqual(states.shape, [2, 10, 3, 32]);
    const depth = c.module.depth;
    // A non-trivial layer mix, so the test does not rest on the zero init.
    noGrad(() => depth.layerLogits.value.copy_(tensor([0.3, -0.5, 1.2])));
    const { anchors, alpha } = depth.forward(states, mask);
    assert.deepEqual(alpha.shape, [2, 10, 3]);
    const A = alpha.toNumbers();
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 10; t++) {
        const row = A.slice((b * 10 + t) * 3, (b * 10 + t + 1) * 3);
        const real = t < contexts[b].length;
        if (real) {
          near(
            row.reduce((s, x) => s + x, 0),
            1,
            1e-5,
            `alpha sums to 1 at item ${b} token ${t}`,
          );
          assert.ok(
            row.every((x) => x >= 0),
            'alpha >= 0',
          );
        } else assert.deepEqual(row, [0, 0, 0], `alpha is 0 at padding (item ${b} token ${t})`);
      }
    }
    // The unfactored formula: q = W_q(sum softmax(w)_l h_l), k_l = W_k h_l + e_l, v_l = W_v h_l.
    const mix = depth.layerLogits.value.softmax(0).view(1, 3);
    const q = depth.query.forward(mix.matmul(states)); // [B, T, 1, dk]
    const k = depth.key.forward(states).add(depth.layerEmb.value); // [B, T, L+1, dk]
    const v = depth.value.forward(states); // [B, T, L+1, H]
    const ref = q
      .matmul(k.transpose(-2, -1))
      .mul(1 / Math.sqrt(256) / 0.7)
      .softmax(-1); // [B, T, 1, L+1]
    const R = ref.toNumbers();
    const refAnchors = ref.matmul(v).squeeze(2).toNumbers();
    const X = anchors.toNumbers();
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 10; t++) {
        const real = t < contexts[b].length;
        for (let l = 0; l < 3; l++) if (real) near(A[(b * 10 + t) * 3 + l], R[(b * 10 + t) * 3 + l], 1e-5, 'alpha vs the unfactored formula');
        for (let d = 0; d < 32; d++) near(X[(b * 10 + t) * 32 + d], real ? refAnchors[(b * 10 + t) * 32 + d] : 0, 1e-4, `anchor item ${b} token ${t} dim ${d}`);
      }
    }
  }),
);

// ---- shapes, masks, budgets ---------------------------------------------------------------------

test('layout: blocks of r tokens per 128-token window; per-item counts sum ceil(n_w / r) over windows', () => {
  const lengths = [300, 129, 7, 0];
  const expect = (r: number) => lengths.map((n) => [0, 1, 2].reduce((s, w) => s + Math.ceil(Math.min(128, Math.max(0, n - 128 * w)) / r), 0));
  for (const r of [4, 8, 16]) {
    const l = layoutBlocks(lengths, { ratio: r }, 128);
    assert.equal(l.windows, 3);
    assert.equal(l.slots, 128 / r);
    assert.deepEqual(l.counts, expect(r), `counts at ratio ${r}`);
    // Powers of two divide the window: the count is ceil(T / r), as softCount says.
    assert.deepEqual(
      l.counts,
      lengths.map((n) => Math.ceil(n / r)),
    );
    assert.equal(l.blockOf[5], Math.floor(5 / r));
    assert.equal(l.blockOf[(3 * 3 + 0) * 128 + 7], -1, 'padding (the empty item) is in no block');
    assert.equal(l.blockOf[(2 * 3 + 0) * 128 + 7], -1, 'padding after 7 tokens is in no block');
  }
  // A ratio that does not divide 128, and a non-integer one.
  assert.deepEqual(layoutBlocks([300], { ratio: 3 }, 128).counts, [43 + 43 + 15]);
  const l25 = layoutBlocks([10], { ratio: 2.5 }, 128);
  assert.deepEqual(l25.counts, [4]);
  assert.deepEqual(Array.from(l25.blockOf.slice(0, 10)), [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
  // Fixed budgets: exactly k for every item, spread by tokens per window.
  const lk = layoutBlocks([300, 129, 50], { tokens: 20 }, 128);
  assert.deepEqual(lk.counts, [20, 20, 20]);
  assert.deepEqual(lk.perWindow, [
    [9, 8, 3],
    [19, 1, 0],
    [20, 0, 0],
  ]);
  assert.deepEqual(Array.from(lk.blockOf.slice(2 * 3 * 128, 2 * 3 * 128 + 6)), [0, 0, 0, 1, 1, 2]);
  assert.throws(() => layoutBlocks([300], { tokens: 2 }, 128), /at least 3/);
  assert.throws(() => layoutBlocks([50], { tokens: 60 }, 128), /at least 60 context tokens/);
  assert.throws(() => layoutBlocks([50], { ratio: 0.5 }, 128), /ratio must be/);
  // Ratios above the window: one slot per window; 1.1 does not divide exactly in floating point.
  assert.deepEqual(layoutBlocks([300], { ratio: 1e12 }, 128).counts, [3]);
  assert.deepEqual(layoutBlocks([11], { ratio: 1.1 }, 128).counts, [10]);
});

test(
  'compress: ragged batches at ratios 4, 8 and 16 — shapes, masks, meta, zero padding',
  scoped(() => {
    const base = tinyBase();
    const c = createCompressor('comprexit', base) as ComprExIT;
    const contexts = [ids(300, 1), ids(129, 2), ids(7, 3), []];
    for (const r of [4, 8, 16]) {
      const ctx = c.compress(contexts, { ratio: r });
      const counts = contexts.map((x) => Math.ceil(x.length / r));
      const k = Math.max(...counts);
      assert.deepEqual(ctx.meta.softTokens, counts, `meta at ratio ${r}`);
      assert.deepEqual(ctx.meta.sourceTokens, [300, 129, 7, 0]);
      assert.equal(ctx.meta.method, 'comprexit');
      assert.equal(ctx.meta.baseFingerprint, base.fingerprint());
      assert.deepEqual(ctx.softTokens!.shape, [4, k, 32]);
      assert.deepEqual(ctx.mask!.shape, [4, k]);
      const M = ctx.mask!.toNumbers();
      const S = ctx.softTokens!.toNumbers();
      assert.ok(S.every(Number.isFinite), 'finite soft tokens');
      for (let b = 0; b < 4; b++) {
        assert.deepEqual(
          M.slice(b * k, (b + 1) * k),
          Array.from({ length: k }, (_, i) => (i < counts[b] ? 1 : 0)),
          `mask row ${b}`,
        );
        for (let i = counts[b]; i < k; i++)
          assert.ok(
            S.slice((b * k + i) * 32, (b * k + i + 1) * 32).every((x) => x === 0),
            'padding soft tokens are 0',
          );
        if (counts[b] > 0)
          assert.ok(
            S.slice(b * k * 32, (b * k + 1) * 32).some((x) => x !== 0),
            'a real soft token is not 0',
          );
      }
    }
    // A fixed budget: exactly k each.
    const fixed = c.compress(contexts.slice(0, 3), { tokens: 7 });
    assert.deepEqual(fixed.meta.softTokens, [7, 7, 7]);
    assert.deepEqual(fixed.softTokens!.shape, [3, 7, 32]);
    assert.throws(() => c.compress(contexts, { tokens: 7 }), /at least 7 context tokens/);
    assert.throws(() => c.compress([[1, 2, VOCAB]], { ratio: 4 }), /outside 0\.\.63/);
    // Nothing to compress: an empty [B, 0, H] context.
    const empty = c.compress([[], []], { ratio: 4 });
    assert.deepEqual(empty.softTokens!.shape, [2, 0, 32]);
    assert.deepEqual(empty.meta.softTokens, [0, 0]);
  }),
);

test(
  "compress: an item's soft tokens do not depend on the rest of the batch (padding is invisible)",
  scoped(() => {
    const c = new ComprExIT(tinyBase(), {});
    const long = ids(200, 5);
    const short = ids(37, 6);
    const together = noGrad(() => c.compress([long, short], { ratio: 4 }));
    const alone = noGrad(() => c.compress([short], { ratio: 4 }));
    const n = Math.ceil(37 / 4);
    const a = together.softTokens!.narrow(0, 1, 1).narrow(1, 0, n).toNumbers();
    const b = alone.softTokens!.toNumbers();
    assert.equal(b.length, a.length);
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
    assert.ok(worst < 1e-4, `batched vs alone (worst ${worst})`);
  }),
);

// ---- the frozen base ----------------------------------------------------------------------------

test(
  'base: run once per compress call, without gradients, and it receives no gradients',
  scoped(() => {
    const base = tinyBase();
    const c = new ComprExIT(base, {});
    const calls: { grad: boolean; states: boolean }[] = [];
    const original = base.forward.bind(base);
    base.forward = (opts: ForwardOptions): ForwardResult => {
      calls.push({ grad: isGradEnabled(), states: !!opts.outputHiddenStates });
      return original(opts);
    };
    try {
      assert.ok(isGradEnabled(), 'the caller records gradients');
      const ctx = c.compress([ids(150, 1), ids(20, 2)], { ratio: 4 });
      assert.deepEqual(calls, [{ grad: false, states: true }], 'one forward, under no-grad, with hidden states');
      ctx.softTokens!.square().sum().backward();
    } finally {
      base.forward = original;
    }
    for (const [name, p] of base.namedParameters()) assert.equal(p.value.grad, null, `${name} has no gradient`);
    const names = c.trainable('lm').map(([n]) => n);
    assert.deepEqual(
      names,
      c.module.namedParameters().map(([n]) => n),
      'trainable = the compressor module',
    );
    assert.ok(names.every((n) => /^(depth|width|projector)\./.test(n)));
    assert.deepEqual(
      c.trainable('qa').map(([n]) => n),
      names,
    );
  }),
);

test(
  'decoder: the soft context feeds tailLoss and gradients reach the compressor only through it',
  scoped(() => {
    const base = tinyBase();
    base.freeze();
    const c = new ComprExIT(base, {});
    const ctx = c.compress([ids(60, 1), ids(33, 2)], { ratio: 8 });
    const { loss } = tailLoss(base, ctx, [ids(5, 3), ids(3, 4)], [0, 0], { bos: 1, pad: 0 });
    assert.ok(Number.isFinite(loss.item()));
    loss.backward();
    assert.ok(c.module.projector.fc2.weight.value.grad!.toNumbers().some((v) => v !== 0));
    assert.ok(c.module.depth.layerLogits.value.grad!.toNumbers().every(Number.isFinite));
  }),
);

// ---- parameters, save / load --------------------------------------------------------------------

test('parameters: counts by part and share of the base', () => {
  const base = tinyBase();
  const c = new ComprExIT(base, {});
  const H = 32;
  const L1 = 3;
  const dk = 256;
  const rep = comprexitParameters(c);
  // The official layout: biases on W_q, W_k, W_v, W_c, W_v'; three LayerNorms (weight + bias).
  assert.equal(rep.depth, L1 + (H * dk + dk) * 2 + L1 * dk + H * H + H);
  assert.equal(rep.width, 3 * 2 * H + H * 256 + 256 + H + 1 + H * H + H);
  assert.equal(rep.projector, 2 * (H * H + H));
  assert.equal(rep.trainable, rep.depth + rep.width + rep.projector);
  assert.equal(rep.trainable, c.module.numParameters());
  assert.equal(rep.base, base.numParameters());
  near(rep.share, rep.trainable / rep.base, 1e-12, 'share');
});

test(
  'layout: the official one by default (three LayerNorms, biases, BOS first); a compressor.json without layout options loads the old one',
  scoped(() => {
    // A base with a BOS id, so that the encoder input starts with it.
    const base = tinyBase();
    const withBos = new LlamaModel({ ...base.config, bosTokenId: 1 });
    noGrad(() => withBos.loadStateDict(base.stateDict()));
    withBos.eval();
    const c = new ComprExIT(withBos, {});
    assert.deepEqual([c.separateNorms, c.bias, c.bos], [true, true, true]);
    const names = c.module.namedParameters().map(([n]) => n);
    for (const n of [
      'width.anchor_norm.weight',
      'width.proto_norm.weight',
      'width.value_norm.bias',
      'depth.q_proj.bias',
      'depth.k_proj.bias',
      'depth.v_proj.bias',
      'width.cost_proj.bias',
      'width.v_proj.bias',
    ])
      assert.ok(names.includes(n), n);
    assert.ok(!names.includes('width.norm.weight'));
    // The encoder reads [BOS] context; the states are the context's only.
    const ctx = ids(20, 9);
    const { states } = c.baseStates([ctx], 20);
    const ref = withBos.forward({ ids: tensor([1, ...ctx], [1, 21], { dtype: 'int64' }), outputHiddenStates: true, logits: 'none' }).hiddenStates!;
    for (let l = 0; l < ref.length; l++)
      near(
        states
          .select(2, l)
          .sub(ref[l].narrow(1, 1, 20))
          .abs()
          .max()
          .item(),
        0,
        1e-5,
        `layer ${l} states after BOS`,
      );
    // A tokenizer that starts sequences without BOS (SmolLM2's) turns it off.
    const noBos = createCompressor('comprexit', withBos, {}, { tokenizer: { addsBos: false } as never }) as ComprExIT;
    assert.equal(noBos.bos, false);
    // Saved before the layout options existed (models/comprexit*): one shared LayerNorm, no biases, no BOS.
    const dir = mkdtempSync(join(tmpdir(), 'comprexit-legacy-'));
    try {
      const old = createCompressor('comprexit', withBos, { separateNorms: false, bias: false, bos: false }) as ComprExIT;
      saveCompressor(old, dir);
      const cfgPath = join(dir, 'compressor.json');
      const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
      for (const k of ['separateNorms', 'bias', 'bos']) delete cfg[k];
      writeFileSync(cfgPath, JSON.stringify(cfg));
      const back = loadCompressor(dir, withBos) as ComprExIT;
      assert.deepEqual([back.separateNorms, back.bias, back.bos], [false, false, false]);
      assert.ok(back.module.namedParameters().some(([n]) => n === 'width.norm.weight'));
      assert.equal(back.module.width.protoNorm, back.module.width.norm, 'one LayerNorm for every role');
      const x = noGrad(() => old.compress([ctx], { ratio: 4 }).softTokens!.toNumbers());
      assert.deepEqual(
        noGrad(() => back.compress([ctx], { ratio: 4 }).softTokens!.toNumbers()),
        x,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }),
);

test(
  'save / load: the registry round-trips weights and options; outputs match',
  scoped(() => {
    const base = tinyBase();
    const c = createCompressor('comprexit', base, { iterations: 20 }) as ComprExIT;
    assert.equal(c.opts.iterations, 20);
    assert.throws(() => createCompressor('comprexit', base, { epsilon: -1 }), /epsilon must be a positive number/);
    const dir = mkdtempSync(join(tmpdir(), 'comprexit-'));
    try {
      noGrad(() => c.module.width.sourceWeight.value.copy_(randn([32]).mul(0.1)));
      saveCompressor(c, dir);
      const back = loadCompressor(dir, base) as ComprExIT;
      assert.equal(back.opts.iterations, 20);
      const contexts = [ids(140, 7)];
      const x = noGrad(() => c.compress(contexts, { ratio: 4 }).softTokens!.toNumbers());
      const y = noGrad(() => back.compress(contexts, { ratio: 4 }).softTokens!.toNumbers());
      assert.deepEqual(y, x);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }),
);
