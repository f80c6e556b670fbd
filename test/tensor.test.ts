/** Forward values of operators on small hand-computed examples; creation; data out; RNG. */
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  Tensor,
  tensor,
  zeros,
  ones,
  full,
  empty,
  randn,
  rand,
  randint,
  arange,
  eye,
  zerosLike,
  onesLike,
  tidy,
  noGrad,
  enableGrad,
  isGradEnabled,
  manualSeed,
  getRngState,
  setRngState,
  cat,
  stack,
  where,
  embedding,
  linear,
  crossEntropy,
  layerNorm,
  rmsNorm,
  groupedAttention,
  scaledDotProductAttention,
  dropout,
  memoryStats,
  type AnyTypedArray,
} from '../src/tensor/index.js';
import { collectGarbage } from './helpers/gc.js';

function close(actual: ArrayLike<number> | AnyTypedArray | Tensor, expected: number[], tol = 1e-5): void {
  const a = actual instanceof Tensor ? actual.toNumbers() : Array.from(actual as ArrayLike<number>, Number);
  assert.equal(a.length, expected.length, `length ${a.length} vs ${expected.length}: [${a.join(', ')}]`);
  a.forEach((v, i) => {
    const e = expected[i];
    if (Number.isNaN(e)) assert.ok(Number.isNaN(v));
    else if (!Number.isFinite(e)) assert.equal(v, e);
    else assert.ok(Math.abs(v - e) <= tol * (1 + Math.abs(e)), `element ${i}: ${v} vs ${e} in [${a.join(', ')}]`);
  });
}

const t = (data: number[], shape?: number[]) => tensor(data, shape);
const ints = (data: number[], shape?: number[]) => tensor(data, shape, { dtype: 'int64' });

test('creation: zeros ones full empty eye arange (+ like)', () =>
  tidy(() => {
    const z = zeros([2, 3]);
    assert.deepEqual(z.shape, [2, 3]);
    assert.equal(z.dtype, 'float32');
    close(z, [0, 0, 0, 0, 0, 0]);
    const o = ones([2], { dtype: 'float64' });
    assert.equal(o.dtype, 'float64');
    close(o, [1, 1]);
    const f = full([2, 2], 3.5);
    close(f, [3.5, 3.5, 3.5, 3.5]);
    const fi = full([3], 7, { dtype: 'int32' });
    assert.equal(fi.dtype, 'int32');
    assert.deepEqual(Array.from(fi.toArray() as Int32Array), [7, 7, 7]);
    assert.deepEqual(empty([4, 0]).shape, [4, 0]);
    close(eye(3), [1, 0, 0, 0, 1, 0, 0, 0, 1]);
    const a = arange(5);
    assert.equal(a.dtype, 'int64');
    assert.deepEqual(a.toNumbers(), [0, 1, 2, 3, 4]);
    assert.deepEqual(arange(2, 10, 3).toNumbers(), [2, 5, 8]);
    const af = arange(0, 1, 0.25);
    assert.equal(af.dtype, 'float32');
    close(af, [0, 0.25, 0.5, 0.75]);
    assert.equal(arange(3, undefined, 1, { dtype: 'float64' }).dtype, 'float64');
    close(zerosLike(f), [0, 0, 0, 0]);
    close(onesLike(fi), [1, 1, 1]);
    assert.equal(onesLike(fi).dtype, 'int32');
    const s = tensor(2.5);
    assert.deepEqual(s.shape, []);
    assert.equal(s.item(), 2.5);
    assert.throws(() => zeros([2, -1]), /bad shape/);
    assert.throws(() => zeros([1.5]), /bad shape/);
  }));

test('tensor() from every typed array and dtype', () =>
  tidy(() => {
    const cases: [AnyTypedArray, string][] = [
      [new Float32Array([1.5, -2]), 'float32'],
      [new Float64Array([1.5, -2]), 'float64'],
      [new BigInt64Array([3n, -4n]), 'int64'],
      [new Int32Array([3, -4]), 'int32'],
      [new Int16Array([3, -4]), 'int16'],
      [new Int8Array([3, -4]), 'int8'],
      [new Uint8Array([3, 250]), 'uint8'],
    ];
    for (const [arr, dtype] of cases) {
      const x = tensor(arr);
      assert.equal(x.dtype, dtype);
      assert.deepEqual(x.shape, [2]);
      assert.deepEqual(Array.from(x.toArray() as ArrayLike<number | bigint>), Array.from(arr as ArrayLike<number | bigint>));
      assert.equal(x.toArray().constructor, arr.constructor);
    }
    // float16 / bfloat16 bits in a Uint16Array: 1, 2, -0.5
    const h = tensor(new Uint16Array([0x3c00, 0x4000, 0xb800]));
    assert.equal(h.dtype, 'float16');
    assert.ok(h.toArray() instanceof Float32Array);
    close(h, [1, 2, -0.5], 0);
    assert.deepEqual(Array.from(h.toBytes()), [0x00, 0x3c, 0x00, 0x40, 0x00, 0xb8]);
    const bf = tensor(new Uint16Array([0x3f80, 0x4000, 0xbf00]), undefined, { dtype: 'bfloat16' });
    assert.equal(bf.dtype, 'bfloat16');
    close(bf, [1, 2, -0.5], 0);
    assert.throws(() => tensor(new Uint16Array([1]), undefined, { dtype: 'int32' }), /float16 or bfloat16/);
    // from plain numbers, each dtype
    const h2 = tensor([0.5, 1000, -3], undefined, { dtype: 'float16' });
    assert.equal(h2.dtype, 'float16');
    close(h2, [0.5, 1000, -3], 0);
    const b2 = tensor([0.5, 256, -3], undefined, { dtype: 'bfloat16' });
    assert.equal(b2.dtype, 'bfloat16');
    close(b2, [0.5, 256, -3], 0);
    const i32 = tensor([1, -2, 3], [3], { dtype: 'int32' });
    assert.equal(i32.dtype, 'int32');
    assert.deepEqual(Array.from(i32.toArray() as Int32Array), [1, -2, 3]);
    const i64 = tensor([1, -2, 2 ** 40], undefined, { dtype: 'int64' });
    assert.equal(i64.dtype, 'int64');
    assert.deepEqual(Array.from(i64.toArray() as BigInt64Array), [1n, -2n, 2n ** 40n]);
    assert.deepEqual(i64.toNumbers(), [1, -2, 2 ** 40]);
    const b = tensor([true, false, true]);
    assert.equal(b.dtype, 'bool');
    assert.deepEqual(Array.from(b.toArray() as Uint8Array), [1, 0, 1]);
    const b3 = tensor(new Uint8Array([1, 0]), undefined, { dtype: 'bool' });
    assert.equal(b3.dtype, 'bool');
    const f64 = tensor([1, 2, 3, 4, 5, 6], [2, 3], { dtype: 'float64' });
    assert.equal(f64.dtype, 'float64');
    assert.deepEqual(f64.shape, [2, 3]);
    // a typed array converted to another dtype
    const conv = tensor(new Float32Array([1.7, -2.2]), undefined, { dtype: 'int32' });
    assert.equal(conv.dtype, 'int32');
    assert.deepEqual(Array.from(conv.toArray() as Int32Array), [1, -2]);
    assert.throws(() => tensor([1, 2, 3], [2, 2]), /do not fill/);
  }));

test('item, toArray, toNumbers, metadata', () =>
  tidy(() => {
    const x = t([1, 2, 3, 4, 5, 6], [2, 3]);
    assert.equal(x.rank, 2);
    assert.equal(x.numel, 6);
    assert.equal(x.size(-1), 3);
    assert.equal(x.describe(), 'float32[2, 3]');
    assert.equal(String(x), 'Tensor(float32[2, 3])');
    assert.ok(x.isFloatingPoint);
    assert.equal(x.sum().item(), 21);
    assert.equal(tensor([true]).item(), 1);
    assert.equal(ints([-7]).item(), -7);
    assert.deepEqual(x.transpose(0, 1).toNumbers(), [1, 4, 2, 5, 3, 6]); // non-contiguous view
    assert.throws(() => x.size(2), /2 dims/);
  }));

test('randn/rand/randint are reproducible under manualSeed; RNG state round trip', () =>
  tidy(() => {
    manualSeed(42);
    const a = randn([5]).toNumbers();
    const ra = rand([3]).toNumbers();
    manualSeed(42);
    assert.deepEqual(randn([5]).toNumbers(), a);
    assert.deepEqual(rand([3]).toNumbers(), ra);
    manualSeed(43);
    assert.notDeepEqual(randn([5]).toNumbers(), a);
    assert.ok(ra.every((v) => v >= 0 && v < 1));
    manualSeed(7);
    const ri = randint(2, 5, [100]);
    assert.equal(ri.dtype, 'int64');
    assert.ok(ri.toNumbers().every((v) => v >= 2 && v < 5));
    // moments of many samples
    const big = randn([20000], { dtype: 'float64' });
    assert.ok(Math.abs(big.mean().item()) < 0.05);
    assert.ok(Math.abs(big.square().mean().item() - 1) < 0.05);
    // state save / restore
    manualSeed(1);
    randn([3]);
    const state = getRngState();
    assert.equal(state.dtype, 'uint8');
    const next = randn([4]).toNumbers();
    randn([10]);
    setRngState(state);
    assert.deepEqual(randn([4]).toNumbers(), next);
    const r = randn([2, 3], { dtype: 'float64', requiresGrad: true });
    assert.equal(r.dtype, 'float64');
    assert.ok(r.requiresGrad);
  }));

test('elementwise arithmetic with broadcasting', () =>
  tidy(() => {
    const a = t([1, 2, 3, 4, 5, 6], [2, 3]);
    const b = t([10, 20, 30]);
    close(a.add(b), [11, 22, 33, 14, 25, 36]);
    close(a.add(b, 2), [21, 42, 63, 24, 45, 66]);
    close(a.sub(t([1, 2], [2, 1])), [0, 1, 2, 2, 3, 4]);
    close(a.mul(b), [10, 40, 90, 40, 100, 180]);
    close(a.div(t([2], [1])), [0.5, 1, 1.5, 2, 2.5, 3]);
    close(a.add(1), [2, 3, 4, 5, 6, 7]);
    close(a.sub(1, 2), [-1, 0, 1, 2, 3, 4]);
    close(a.mul(-2), [-2, -4, -6, -8, -10, -12]);
    close(a.div(4), [0.25, 0.5, 0.75, 1, 1.25, 1.5]);
    close(a.rsub(10), [9, 8, 7, 6, 5, 4]);
    close(a.pow(2), [1, 4, 9, 16, 25, 36]);
    close(t([2, 3]).pow(t([3, 2])), [8, 9]);
    assert.deepEqual(t([1, 2]).add(t([[3], [4]].flat(), [2, 1])).shape, [2, 2]);
    // integer arithmetic keeps integers; int / int gives float (true division)
    const i = ints([7, -3]);
    assert.equal(i.add(2).dtype, 'int64');
    assert.deepEqual(i.mul(3).toNumbers(), [21, -9]);
    assert.equal(i.div(2).dtype, 'float32');
    close(i.div(2), [3.5, -1.5]);
    assert.equal(i.add(0.5).dtype, 'float32');
    assert.equal(t([1]).add(tensor([1], undefined, { dtype: 'float64' })).dtype, 'float64');
  }));

test('unary math and activations', () =>
  tidy(() => {
    const x = t([-1, 0, 0.5, 2]);
    close(x.neg(), [1, 0, -0.5, -2]);
    close(x.abs(), [1, 0, 0.5, 2]);
    close(x.exp(), [Math.exp(-1), 1, Math.exp(0.5), Math.exp(2)]);
    close(t([1, Math.E, 0]).log(), [0, 1, -Infinity]);
    close(t([4, 9, 0.25]).sqrt(), [2, 3, 0.5]);
    close(t([4, 0.25]).rsqrt(), [0.5, 2]);
    close(x.square(), [1, 0, 0.25, 4]);
    close(x.sin(), [-1, 0, 0.5, 2].map(Math.sin));
    close(x.cos(), [-1, 0, 0.5, 2].map(Math.cos));
    close(x.tanh(), [-1, 0, 0.5, 2].map(Math.tanh));
    const sig = (v: number) => 1 / (1 + Math.exp(-v));
    close(x.sigmoid(), [-1, 0, 0.5, 2].map(sig));
    close(x.relu(), [0, 0, 0.5, 2]);
    close(
      x.silu(),
      [-1, 0, 0.5, 2].map((v) => v * sig(v)),
    );
    // gelu(1) = 0.5 * (1 + erf(1/sqrt 2)) = 0.8413447
    close(t([1, -1]).gelu(), [0.8413447460685429, -0.15865525393145707]);
    const gt = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    close(t([1, -1]).gelu('tanh'), [gt(1), gt(-1)]);
    close(x.clamp(-0.5, 1), [-0.5, 0, 0.5, 1]);
    close(x.clamp(0), [0, 0, 0.5, 2]);
    close(x.clamp(null, 0), [-1, 0, 0, 0]);
  }));

test('comparisons and logic', () =>
  tidy(() => {
    const x = t([1, 2, 3]);
    const y = t([3, 2, 1]);
    const bits = (b: Tensor) => Array.from(b.toArray() as Uint8Array);
    assert.equal(x.eq(y).dtype, 'bool');
    assert.deepEqual(bits(x.eq(y)), [0, 1, 0]);
    assert.deepEqual(bits(x.ne(2)), [1, 0, 1]);
    assert.deepEqual(bits(x.lt(y)), [1, 0, 0]);
    assert.deepEqual(bits(x.le(2)), [1, 1, 0]);
    assert.deepEqual(bits(x.gt(y)), [0, 0, 1]);
    assert.deepEqual(bits(x.ge(2)), [0, 1, 1]);
    assert.deepEqual(bits(x.gt(1).logicalNot()), [1, 0, 0]);
    assert.deepEqual(bits(x.gt(1).logicalAnd(x.lt(3))), [0, 1, 0]);
    assert.deepEqual(bits(x.lt(2).logicalOr(x.gt(2))), [1, 0, 1]);
    assert.equal(x.gt(0).all().item(), 1);
    assert.equal(x.gt(2).any().item(), 1);
    assert.equal(x.gt(5).any().item(), 0);
  }));

test('matmul, bmm, linear', () =>
  tidy(() => {
    const a = t([1, 2, 3, 4, 5, 6], [2, 3]);
    const b = t([1, 0, 0, 1, 1, 1], [3, 2]);
    close(a.matmul(b), [4, 5, 10, 11]);
    close(t([1, 2, 3]).matmul(b), [4, 5]);
    const bb = stack([a, a.mul(2)]);
    const r = bb.bmm(stack([b, b]));
    assert.deepEqual(r.shape, [2, 2, 2]);
    close(r, [4, 5, 10, 11, 8, 10, 20, 22]);
    close(bb.matmul(b), [4, 5, 10, 11, 8, 10, 20, 22]);
    // linear: x W^T + b
    const w = t([1, 0, -1, 2, 1, 0], [2, 3]);
    close(linear(a, w, t([0.5, -0.5])), [1 - 3 + 0.5, 2 + 2 - 0.5, 4 - 6 + 0.5, 8 + 5 - 0.5]);
    close(linear(a, w), [-2, 4, -2, 13]);
  }));

test('reductions', () =>
  tidy(() => {
    const x = t([1, 5, 3, 4, 2, 6], [2, 3]);
    close(x.sum(), [21]);
    close(x.sum(0), [5, 7, 9]);
    assert.deepEqual(x.sum(1, true).shape, [2, 1]);
    close(x.sum([0, 1]), [21]);
    close(x.mean(), [3.5]);
    close(x.mean(1), [3, 4]);
    close(x.max(), [6]);
    close(x.min(), [1]);
    const m = x.max(1);
    close(m.values, [5, 6]);
    assert.deepEqual(m.indices.toNumbers(), [1, 2]);
    close(x.amax(0), [4, 5, 6]);
    assert.deepEqual(x.argmax().toNumbers(), [5]);
    assert.deepEqual(x.argmax(0).toNumbers(), [1, 0, 1]);
    const tk = x.topk(2);
    close(tk.values, [5, 3, 6, 4]);
    assert.deepEqual(tk.indices.toNumbers(), [1, 2, 2, 0]);
    const s = x.sort(-1);
    close(s.values, [1, 3, 5, 2, 4, 6]);
    assert.deepEqual(s.indices.toNumbers(), [0, 2, 1, 1, 0, 2]);
    close(x.sort(0, true).values, [4, 5, 6, 1, 2, 3]);
    close(x.cumsum(1), [1, 6, 9, 4, 6, 12]);
    close(x.cumsum(0), [1, 5, 3, 5, 7, 9]);
    close(t([3, 4]).norm(), [5]);
    close(t([3, -4]).norm(1), [7]);
    close(t([3, 4, 6, 8], [2, 2]).norm(2, 1), [5, 10]);
    close(x.logsumexp(1), [Math.log(Math.exp(1) + Math.exp(5) + Math.exp(3)), Math.log(Math.exp(4) + Math.exp(2) + Math.exp(6))]);
    const sm = t([1, 2, 3]).softmax(0);
    const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
    close(sm, [Math.exp(1) / z, Math.exp(2) / z, Math.exp(3) / z]);
    close(t([1, 2, 3]).logSoftmax(0), [1 - Math.log(z), 2 - Math.log(z), 3 - Math.log(z)]);
    close(t([1, 2, 1, 2], [2, 2]).softmax(0), [0.5, 0.5, 0.5, 0.5]);
  }));

test('views, shapes and slicing', () =>
  tidy(() => {
    const x = arange(6).float().reshape(2, 3);
    assert.deepEqual(x.shape, [2, 3]);
    assert.deepEqual(x.reshape(-1, 2).shape, [3, 2]);
    assert.deepEqual(x.view(3, 2).shape, [3, 2]);
    close(x.transpose(0, 1), [0, 3, 1, 4, 2, 5]);
    close(x.T, [0, 3, 1, 4, 2, 5]);
    const y = arange(24).reshape(2, 3, 4);
    assert.deepEqual(y.permute(2, 0, 1).shape, [4, 2, 3]);
    assert.deepEqual(y.permute(2, 0, 1).contiguous().toNumbers().slice(0, 6), [0, 4, 8, 12, 16, 20]);
    assert.deepEqual(y.flatten().shape, [24]);
    assert.deepEqual(y.flatten(1).shape, [2, 12]);
    assert.deepEqual(x.unsqueeze(0).shape, [1, 2, 3]);
    assert.deepEqual(x.unsqueeze(-1).squeeze(-1).shape, [2, 3]);
    close(t([1, 2], [2, 1]).expand(2, 3), [1, 1, 1, 2, 2, 2]);
    close(t([1, 2], [1, 2]).expandAs(zeros([2, 2])), [1, 2, 1, 2]);
    close(t([1, 2]).repeat(2), [1, 2, 1, 2]);
    close(x.narrow(1, 1, 2), [1, 2, 4, 5]);
    close(x.slice(1, 1), [1, 2, 4, 5]);
    close(x.slice(1, 0, undefined, 2), [0, 2, 3, 5]);
    close(x.slice(1, -1), [2, 5]);
    close(x.slice(0, 0, 1), [0, 1, 2]);
    close(x.select(1, 2), [2, 5]);
    close(x.select(0, -1), [3, 4, 5]);
    const parts = arange(5).split(2);
    assert.deepEqual(
      parts.map((p) => p.toNumbers()),
      [[0, 1], [2, 3], [4]],
    );
    assert.deepEqual(
      arange(5)
        .split([1, 4])
        .map((p) => p.toNumbers()),
      [[0], [1, 2, 3, 4]],
    );
    assert.deepEqual(
      arange(6)
        .chunk(3)
        .map((p) => p.toNumbers()),
      [
        [0, 1],
        [2, 3],
        [4, 5],
      ],
    );
    close(ones([3, 3]).tril(), [1, 0, 0, 1, 1, 0, 1, 1, 1]);
    close(ones([3, 3]).triu(1), [0, 1, 1, 0, 0, 1, 0, 0, 0]);
    close(cat([x, t([9, 9, 9], [1, 3])], 0), [0, 1, 2, 3, 4, 5, 9, 9, 9]);
    close(cat([x, t([7, 8], [2, 1])], 1), [0, 1, 2, 7, 3, 4, 5, 8]);
    const st = stack([t([1, 2]), t([3, 4])], 1);
    assert.deepEqual(st.shape, [2, 2]);
    close(st, [1, 3, 2, 4]);
    // in-place on a view writes through
    const base = zeros([2, 2]);
    base.select(0, 1).fill_(5);
    close(base, [0, 0, 5, 5]);
  }));

test('indexing: indexSelect gather scatterAdd index maskedFill where embedding', () =>
  tidy(() => {
    const x = t([10, 11, 12, 20, 21, 22], [2, 3]);
    close(x.indexSelect(1, ints([2, 0])), [12, 10, 22, 20]);
    close(x.indexSelect(0, ints([1, 1])), [20, 21, 22, 20, 21, 22]);
    close(x.gather(1, ints([0, 0, 2, 1], [2, 2])), [10, 10, 22, 21]);
    close(zeros([3]).scatterAdd(0, ints([0, 2, 0, 1]), t([1, 2, 3, 4])), [4, 4, 2]);
    close(x.index([ints([1, 0])]), [20, 21, 22, 10, 11, 12]);
    close(x.index([ints([0, 1]), ints([2, 0])]), [12, 20]);
    close(x.index([null, ints([1])]), [11, 21]);
    const mask = tensor([true, false, true, false, false, true], [2, 3]);
    close(x.maskedFill(mask, 0), [0, 11, 0, 20, 21, 0]);
    close(x.maskedFill(tensor([false, true, false]), tensor(-1)), [10, -1, 12, 20, -1, 22]);
    close(where(mask, x, t([0])), [10, 0, 12, 0, 0, 22]);
    close(where(mask, 1, 2), [1, 2, 1, 2, 2, 1]);
    close(where(mask, 1, x), [1, 11, 1, 20, 21, 1]);
    close(where(mask, x, -5), [10, -5, 12, -5, -5, 22]);
    const y = zeros([2, 2]);
    y.maskedFill_(tensor([true, false, false, true], [2, 2]), 3);
    close(y, [3, 0, 0, 3]);
    const w = t([1, 2, 3, 4, 5, 6], [3, 2]);
    const e = embedding(w, ints([2, 0, 2], [1, 3]));
    assert.deepEqual(e.shape, [1, 3, 2]);
    close(e, [5, 6, 1, 2, 5, 6]);
  }));

test('crossEntropy values: reductions, ignoreIndex, label smoothing', () =>
  tidy(() => {
    const logits = t([2, 0, 0, 0, 3, 1], [2, 3]);
    const lse0 = Math.log(Math.exp(2) + 2);
    const lse1 = Math.log(1 + Math.exp(3) + Math.exp(1));
    const l0 = lse0 - 2; // target 0
    const l1 = lse1 - 1; // target 2
    const tg = ints([0, 2]);
    close(crossEntropy(logits, tg), [(l0 + l1) / 2]);
    close(crossEntropy(logits, tg, { reduction: 'sum' }), [l0 + l1]);
    close(crossEntropy(logits, tg, { reduction: 'none' }), [l0, l1]);
    close(crossEntropy(logits, ints([0, -100])), [l0]);
    close(crossEntropy(logits, ints([0, 2]), { ignoreIndex: 2 }), [l0]);
    close(crossEntropy(logits, ints([0, -100]), { reduction: 'none' }), [l0, 0]);
    // label smoothing s: (1 - s) * nll + s * mean_c(-log p_c)
    const s = 0.1;
    const meanNeg0 = (3 * lse0 - 2) / 3;
    const meanNeg1 = (3 * lse1 - 4) / 3;
    close(crossEntropy(logits, tg, { labelSmoothing: s }), [((1 - s) * l0 + s * meanNeg0 + (1 - s) * l1 + s * meanNeg1) / 2]);
  }));

test('groupedAttention with causalOffset: query blocks skip hidden keys, same output and gradients', () =>
  tidy(() => {
    manualSeed(11);
    // 300 queries (three blocks of 128 rows, the last one short) after 5 visible prefix keys;
    // 6 query heads over 2 kv heads; key 40 of row 1 is padding.
    const [b, h, kv, t, hd, pre] = [2, 6, 2, 300, 8, 5];
    const tk = pre + t;
    const allowed = arange(0, tk).unsqueeze(0).le(arange(pre, tk).unsqueeze(1)); // [T, Tk]
    const padding = ones([b, tk], { dtype: 'bool' }).clone();
    padding.narrow(0, 1, 1).narrow(1, 40, 1).fill_(0);
    const mask = where(allowed.unsqueeze(0).logicalAnd(padding.unsqueeze(1)), 0, -1e30)
      .to('float64')
      .reshape(b, 1, 1, t, tk);
    const inputs = () => [
      randn([b, h, t, hd], { dtype: 'float64' }),
      randn([b, kv, tk, hd], { dtype: 'float64' }),
      randn([b, kv, tk, hd], { dtype: 'float64' }),
    ];
    const [q0, k0, v0] = inputs();
    const weights = randn([b, t, h * hd], { dtype: 'float64' });
    const run = (offset?: number) => {
      const [q, k, v] = [q0, k0, v0].map((x) => x.detach().setRequiresGrad(true));
      const out = groupedAttention(q, k, v, mask, offset);
      out.mul(weights).sum().backward();
      return [out, q.grad!, k.grad!, v.grad!].map((x) => x.toNumbers());
    };
    const full = run();
    const blocked = run(pre);
    for (const [i, name] of ['output', 'dq', 'dk', 'dv'].entries()) {
      const worst = Math.max(...full[i].map((x, j) => Math.abs(x - blocked[i][j])));
      assert.ok(worst < 1e-10, `${name}: blocked differs by ${worst}`);
    }
    assert.throws(() => groupedAttention(q0, k0, v0, mask, tk), /causalOffset 305 does not fit 300 queries and 305 keys/);
  }));

test('layerNorm, rmsNorm, dropout', () =>
  tidy(() => {
    const x = t([1, 2, 3, 4], [1, 4]);
    // mean 2.5, var 1.25
    const sd = Math.sqrt(1.25 + 1e-5);
    close(layerNorm(x, [4]), [-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd]);
    close(layerNorm(x, [4], t([1, 1, 2, 2]), t([0, 1, 0, 1])), [-1.5 / sd, -0.5 / sd + 1, 1 / sd, 3 / sd + 1]);
    const rms = Math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-6);
    close(rmsNorm(x, t([1, 2, 1, 1]), 1e-6), [1 / rms, 4 / rms, 3 / rms, 4 / rms]);
    const xh = x.to('float16');
    const yh = rmsNorm(xh, ones([4], { dtype: 'float16' }), 1e-6);
    assert.equal(yh.dtype, 'float16');
    close(yh, [1 / rms, 2 / rms, 3 / rms, 4 / rms], 2e-3);
    assert.equal(rmsNorm(x.to('float64'), ones([4], { dtype: 'float64' }), 1e-6).dtype, 'float64');
    // dropout: identity with p = 0 or eval; in training zeros ~p and scales the rest by 1/(1-p)
    assert.equal(dropout(x, 0, true), x);
    assert.equal(dropout(x, 0.5, false), x);
    manualSeed(3);
    const d = dropout(ones([10000]), 0.25, true).toNumbers();
    const kept = d.filter((v) => v !== 0);
    assert.ok(kept.every((v) => Math.abs(v - 1 / 0.75) < 1e-6));
    assert.ok(Math.abs(kept.length / 10000 - 0.75) < 0.03);
  }));

test('scaledDotProductAttention matches softmax(q k^T / sqrt(d) + mask) v', () =>
  tidy(() => {
    manualSeed(5);
    const q = randn([2, 3, 4]);
    const k = randn([2, 5, 4]);
    const v = randn([2, 5, 3]);
    const ref = (mask?: Tensor) => {
      let s = q.matmul(k.transpose(-2, -1)).div(2);
      if (mask) s = s.maskedFill(mask.logicalNot(), -Infinity);
      return s.softmax(-1).matmul(v);
    };
    const near = (a: Tensor, b: Tensor) => close(a, b.toNumbers(), 1e-5);
    near(scaledDotProductAttention(q, k, v), ref());
    const mask = rand([3, 5]).gt(0.3).logicalOr(arange(5).eq(0).unsqueeze(0));
    near(scaledDotProductAttention(q, k, v, { attnMask: mask }), ref(mask));
    const add = where(mask, 0, -Infinity);
    near(scaledDotProductAttention(q, k, v, { attnMask: add }), ref(mask));
    const k3 = k.narrow(1, 0, 3);
    const v3 = v.narrow(1, 0, 3);
    const causal = ones([3, 3]).tril().gt(0);
    const refC = q.matmul(k3.transpose(-2, -1)).div(2).maskedFill(causal.logicalNot(), -Infinity).softmax(-1).matmul(v3);
    near(scaledDotProductAttention(q, k3, v3, { causal: true }), refC);
  }));

test('in-place ops, conversion and copies', () =>
  tidy(() => {
    const x = t([1, 2, 3]);
    x.add_(1).mul_(2);
    close(x, [4, 6, 8]);
    x.add_(t([1, 1, 1]), -2).mul_(t([1, 0, 1]));
    close(x, [2, 0, 6]);
    x.addcmul_(t([1, 2, 3]), t([2, 2, 2]), 0.5);
    close(x, [3, 2, 9]);
    x.addcdiv_(t([2, 2, 2]), t([1, 2, 4]), 2);
    close(x, [7, 4, 10]);
    x.lerp_(t([9, 4, 0]), 0.5);
    close(x, [8, 4, 5]);
    x.copy_(t([1, 1, 1]));
    close(x, [1, 1, 1]);
    x.fill_(2).zero_();
    close(x, [0, 0, 0]);
    manualSeed(9);
    const n = zeros([5000]).normal_(3, 2);
    assert.ok(Math.abs(n.mean().item() - 3) < 0.15);
    const u = zeros([5000]).uniform_(-1, 1).toNumbers();
    assert.ok(u.every((v) => v >= -1 && v < 1));
    const y = t([1.6, -1.6]);
    assert.deepEqual(y.long().toNumbers(), [1, -1]);
    assert.equal(y.to('float64').dtype, 'float64');
    assert.equal(y.to('int32').float().dtype, 'float32');
    const c = y.clone();
    c.add_(1);
    close(y, [1.6, -1.6]);
    assert.equal(y.detach().requiresGrad, false);
  }));

test('autograd basics: requiresGrad, isLeaf, noGrad, enableGrad, grad getter/setter', () =>
  tidy(() => {
    const x = t([1, 2]).setRequiresGrad();
    assert.ok(x.requiresGrad);
    assert.ok(x.isLeaf);
    const y = x.mul(x).sum();
    assert.ok(y.requiresGrad);
    assert.ok(!y.isLeaf);
    assert.equal(x.grad, null);
    y.backward();
    close(x.grad!, [2, 4]);
    x.zeroGrad();
    assert.equal(x.grad, null);
    x.grad = t([5, 5]);
    close(x.grad!, [5, 5]);
    assert.ok(isGradEnabled());
    noGrad(() => {
      assert.ok(!isGradEnabled());
      assert.ok(!x.mul(2).requiresGrad);
      enableGrad(() => assert.ok(x.mul(2).requiresGrad));
      assert.ok(!isGradEnabled());
    });
    assert.ok(isGradEnabled());
  }));

test('tidy frees everything not returned; returned tensors move to the parent scope', async () => {
  await collectGarbage();
  const before = memoryStats().liveHandles;
  const kept = tidy(() => {
    const inner = tidy(() => {
      const a = ones([3]);
      const b = a.add(1);
      return { b, list: [b.mul(2)], map: new Map([['c', b.mul(3)]]) };
    });
    assert.equal(inner.b.freed, false);
    return inner.list[0];
  });
  assert.equal(kept.freed, false);
  close(kept, [4, 4, 4]);
  kept.free();
  assert.equal(kept.freed, true);
  assert.equal(memoryStats().liveHandles, before);
  // an exception frees the scope's tensors too
  let leaked: Tensor | undefined;
  assert.throws(() =>
    tidy(() => {
      leaked = ones([2]);
      throw new Error('boom');
    }),
  );
  assert.equal(leaked!.freed, true);
  assert.equal(memoryStats().liveHandles, before);
  // keep() takes a tensor out of the scope
  const k = tidy(() => ones([2]).keep());
  assert.equal(k.freed, false);
  k.free();
  assert.equal(memoryStats().liveHandles, before);
});
