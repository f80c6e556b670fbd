// Exact block-affine 8-bit weights (native/src/quant.cc) and the model's use of them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blockLinear, linear, manualSeed, noGrad, quantizeBlocks, randint, randn, tensor, tidy } from '../src/tensor/index.js';
import { BlockWeightCache } from '../src/nn/layers.js';

/** A [out, in] weight with Q4_1 blocks: per 32 values d * q + m, q in 0..15, d and m float16 (as GGUF stores them). */
function blockQuantized(out: number, inF: number) {
  const q = randint(0, 16, [out, inF / 32, 32]).float();
  const d = randn([out, inF / 32, 1])
    .abs()
    .mul(0.01)
    .to('float16')
    .float();
  const m = randn([out, inF / 32, 1])
    .mul(0.05)
    .to('float16')
    .float();
  return q.mul(d).add(m).reshape(out, inF);
}

test('quantizeBlocks: block-quantized weights are reproduced, ordinary float weights refused', () => {
  tidy(() => {
    manualSeed(1);
    const w = blockQuantized(48, 96);
    const bw = quantizeBlocks(w);
    assert.ok(bw, 'Q4_1-like weights are representable');
    assert.deepEqual(bw.codes.shape, [48, 96]);
    assert.equal(bw.codes.dtype, 'uint8');
    assert.deepEqual(bw.scale.shape, [48, 3]);
    const back = bw.codes.float().reshape(48, 3, 32).mul(bw.scale.unsqueeze(-1)).add(bw.offset.unsqueeze(-1)).reshape(48, 96);
    assert.ok(back.sub(w).abs().max().item() <= 1e-6 * w.abs().max().item());
    const q8 = randint(-128, 128, [16, 64]).float().mul(0.0029296875); // Q8_0-like: d * q, q in -128..127 (sparse levels), d float16
    assert.ok(quantizeBlocks(q8));
    assert.equal(quantizeBlocks(randn([16, 64])), null, 'ordinary float weights');
    assert.equal(quantizeBlocks(blockQuantized(4, 64).narrow(1, 0, 40).contiguous()), null, 'in not a multiple of 32');
  });
});

test('blockLinear: one row over 8-bit weights equals linear over the float weights up to rounding', () => {
  tidy(() =>
    noGrad(() => {
      manualSeed(2);
      const w = blockQuantized(200, 128);
      const bias = randn([200]);
      const x = randn([1, 1, 128]);
      const bw = quantizeBlocks(w)!;
      const y = blockLinear(x, bw, bias);
      assert.deepEqual(y.shape, [1, 1, 200]);
      const ref = linear(x, w, bias);
      assert.ok(y.sub(ref).abs().max().item() < 1e-5 * ref.abs().max().item() + 1e-6);
      assert.throws(() => blockLinear(randn([2, 128]), bw), /one float32 row/);
    }),
  );
});

test('BlockWeightCache: remade when the weight changes in place, null for float weights', () => {
  tidy(() =>
    noGrad(() => {
      manualSeed(3);
      const w = blockQuantized(8, 32);
      const cache = new BlockWeightCache();
      const a = cache.get(w)!;
      assert.equal(cache.get(w), a, 'cached while unchanged');
      w.mul_(2);
      const b = cache.get(w)!;
      assert.notEqual(b, a, 'remade after an in-place change');
      const x = randn([32]);
      assert.ok(blockLinear(x, b).sub(linear(x, w)).abs().max().item() < 1e-4);
      assert.equal(
        cache.get(
          tensor(
            new Float32Array(32 * 8).map(() => Math.random()),
            [8, 32],
          ),
        ),
        null,
      );
      cache.free();
    }),
  );
});
