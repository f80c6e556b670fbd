/**
 * Every differentiable operator checked against central finite differences in float64: the
 * analytic gradient of sum(out * W) (W fixed random weights) against (f(x+eps) - f(x-eps)) / 2eps
 * for each input element.
 */
import { mulberry32 } from '../src/models/generate.js';
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  Tensor,
  tensor,
  tidy,
  noGrad,
  grad,
  cat,
  stack,
  where,
  matmul,
  bmm,
  embedding,
  linear,
  crossEntropy,
  layerNorm,
  rmsNorm,
  scaledDotProductAttention,
  dropout,
  ones,
} from '../src/tensor/index.js';

// ---- the helper ------------------------------------------------------------------------------

/** mulberry32: a small seeded generator, so inputs do not depend on libtorch's RNG. */
const rng = mulberry32;

interface Input {
  shape: number[];
  data: Float64Array;
}

let seedCounter = 1;
/**
 * A random float64 input. Values uniform in [lo, hi]; with awayFrom, values closer than 0.05 to
 * any of those points are pushed away (for kinks: abs, relu, clamp).
 */
function inp(shape: number[], opts: { lo?: number; hi?: number; sign?: boolean; awayFrom?: number[] } = {}): Input {
  const r = rng(seedCounter++ * 7919);
  const lo = opts.lo ?? -1;
  const hi = opts.hi ?? 1;
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let v = lo + (hi - lo) * r();
    if (opts.sign && r() < 0.5) v = -v;
    for (const k of opts.awayFrom ?? []) if (Math.abs(v - k) < 0.05) v = k + (v >= k ? 0.05 : -0.05);
    data[i] = v;
  }
  return { shape, data };
}

const EPS = 1e-6;
const ATOL = 1e-5;
const RTOL = 1e-5;

type Fn = (...xs: Tensor[]) => Tensor | (Tensor | null)[];

function outputsOf(v: Tensor | (Tensor | null)[]): Tensor[] {
  return (Array.isArray(v) ? v : [v]).filter((t): t is Tensor => t !== null && t.dtype === 'float64');
}

/** Asserts analytic == numeric gradients of fn at the given inputs. */
function gradcheck(fn: Fn, inputs: Input[], opts: { atol?: number; rtol?: number } = {}): void {
  const atol = opts.atol ?? ATOL;
  const rtol = opts.rtol ?? RTOL;
  tidy(() => {
    const xs = inputs.map((x) => tensor(x.data, x.shape, { requiresGrad: true }));
    const outs = outputsOf(fn(...xs));
    assert.ok(outs.length > 0, 'fn returned no float64 output');
    const r = rng(12345);
    const weights = outs.map((o) =>
      tensor(
        Float64Array.from({ length: o.numel }, () => 2 * r() - 1),
        o.shape,
      ),
    );
    const objective = (os: Tensor[]) => os.map((o, k) => o.mul(weights[k]).sum()).reduce((a, b) => a.add(b));
    objective(outs).backward();
    const analytic = xs.map((x) => {
      const g = x.grad;
      return g === null ? new Float64Array(x.numel) : (g.toArray() as Float64Array);
    });
    const f = (k: number, j: number, delta: number): number =>
      tidy(() =>
        noGrad(() => {
          const ys = inputs.map((x, i) => {
            const d = x.data.slice();
            if (i === k) d[j] += delta;
            return tensor(d, x.shape);
          });
          return objective(outputsOf(fn(...ys))).item();
        }),
      );
    inputs.forEach((x, k) => {
      for (let j = 0; j < x.data.length; j++) {
        const numeric = (f(k, j, EPS) - f(k, j, -EPS)) / (2 * EPS);
        const a = analytic[k][j];
        assert.ok(
          Math.abs(a - numeric) <= atol + rtol * Math.abs(numeric),
          `input ${k} [${x.shape.join(', ')}] element ${j}: analytic ${a} vs numeric ${numeric}`,
        );
      }
    });
  });
}

/** An int64 tensor (constant, not differentiated). */
const ints = (data: number[], shape?: number[]) => tensor(data, shape, { dtype: 'int64' });
const bools = (data: boolean[], shape?: number[]) => tensor(data, shape, { dtype: 'bool' });

// ---- the helper itself catches a wrong gradient --------------------------------------------------

test('gradcheck helper detects a wrong analytic gradient', () => {
  // detach() cuts the graph: the analytic gradient of x * detach(x) is x, the numeric 2x.
  assert.throws(() => gradcheck((x) => x.mul(x.detach()), [inp([3], { lo: 0.5, hi: 1 })]), /analytic/);
});

// ---- elementwise arithmetic with broadcasting ----------------------------------------------------

test('add / sub with broadcasting and alpha', () => {
  gradcheck((a, b) => a.add(b), [inp([2, 3]), inp([3])]);
  gradcheck((a, b) => a.add(b, 2.5), [inp([2, 1, 3]), inp([4, 1])]);
  gradcheck((a) => a.add(1.5), [inp([2, 2])]);
  gradcheck((a, b) => a.sub(b), [inp([2, 3]), inp([2, 1])]);
  gradcheck((a, b) => a.sub(b, 0.5), [inp([3]), inp([2, 1, 3])]);
  gradcheck((a) => a.sub(2).rsub(3), [inp([4])]);
});

test('mul / div with broadcasting and scalars', () => {
  gradcheck((a, b) => a.mul(b), [inp([2, 3]), inp([2, 1])]);
  gradcheck((a, b) => a.mul(b), [inp([4, 1, 2]), inp([3, 1])]);
  gradcheck((a) => a.mul(-1.7), [inp([3])]);
  gradcheck((a, b) => a.div(b), [inp([2, 3]), inp([3], { lo: 0.5, hi: 2, sign: true })]);
  gradcheck((a) => a.div(0.3), [inp([3])]);
});

test('matmul (2-D, batched with broadcasting, vector) and bmm', () => {
  gradcheck((a, b) => a.matmul(b), [inp([3, 4]), inp([4, 2])]);
  gradcheck((a, b) => matmul(a, b), [inp([2, 3, 4]), inp([4, 2])]);
  gradcheck((a, b) => a.matmul(b), [inp([2, 1, 2, 3]), inp([3, 3, 2])]);
  gradcheck((a, b) => a.matmul(b), [inp([4]), inp([4, 3])]);
  gradcheck((a, b) => bmm(a, b), [inp([2, 3, 4]), inp([2, 4, 2])]);
});

test('unary math: exp log sqrt rsqrt pow square neg abs sin cos', () => {
  gradcheck((a) => a.exp(), [inp([2, 3])]);
  gradcheck((a) => a.log(), [inp([2, 3], { lo: 0.3, hi: 2 })]);
  gradcheck((a) => a.sqrt(), [inp([5], { lo: 0.3, hi: 2 })]);
  gradcheck((a) => a.rsqrt(), [inp([5], { lo: 0.3, hi: 2 })]);
  gradcheck((a) => a.pow(3), [inp([5])]);
  gradcheck((a) => a.pow(0.5), [inp([5], { lo: 0.3, hi: 2 })]);
  gradcheck((a, b) => a.pow(b), [inp([2, 3], { lo: 0.3, hi: 2 }), inp([3])]);
  gradcheck((a) => a.square(), [inp([4])]);
  gradcheck((a) => a.neg(), [inp([4])]);
  gradcheck((a) => a.abs(), [inp([6], { awayFrom: [0] })]);
  gradcheck((a) => a.sin(), [inp([4], { lo: -3, hi: 3 })]);
  gradcheck((a) => a.cos(), [inp([4], { lo: -3, hi: 3 })]);
});

test('activations: tanh sigmoid relu silu gelu (exact and tanh)', () => {
  gradcheck((a) => a.tanh(), [inp([2, 3], { lo: -2, hi: 2 })]);
  gradcheck((a) => a.sigmoid(), [inp([2, 3], { lo: -3, hi: 3 })]);
  gradcheck((a) => a.relu(), [inp([6], { awayFrom: [0] })]);
  gradcheck((a) => a.silu(), [inp([2, 3], { lo: -3, hi: 3 })]);
  gradcheck((a) => a.gelu(), [inp([2, 3], { lo: -3, hi: 3 })]);
  gradcheck((a) => a.gelu('tanh'), [inp([2, 3], { lo: -3, hi: 3 })]);
});

test('softmax, logSoftmax, logsumexp', () => {
  gradcheck((a) => a.softmax(-1), [inp([2, 4], { lo: -2, hi: 2 })]);
  gradcheck((a) => a.softmax(0), [inp([3, 2], { lo: -2, hi: 2 })]);
  gradcheck((a) => a.logSoftmax(-1), [inp([2, 4], { lo: -2, hi: 2 })]);
  gradcheck((a) => a.logSoftmax(1), [inp([2, 3, 2], { lo: -2, hi: 2 })]);
  gradcheck((a) => a.logsumexp(-1), [inp([2, 4], { lo: -2, hi: 2 })]);
  gradcheck((a) => a.logsumexp([0, 2], true), [inp([2, 3, 2], { lo: -2, hi: 2 })]);
});

test('reductions: sum, mean, max, min, amax, topk, sort, norm, cumsum', () => {
  gradcheck((a) => a.sum(), [inp([2, 3])]);
  gradcheck((a) => a.sum(1), [inp([2, 3])]);
  gradcheck((a) => a.sum([0, 2], true), [inp([2, 3, 2])]);
  gradcheck((a) => a.mean(), [inp([2, 3])]);
  gradcheck((a) => a.mean(-1, true), [inp([2, 3])]);
  gradcheck((a) => a.max(), [inp([2, 3])]);
  gradcheck((a) => a.max(1).values, [inp([3, 4])]);
  gradcheck((a) => a.max(0, true).values, [inp([3, 4])]);
  gradcheck((a) => a.min(), [inp([2, 3])]);
  gradcheck((a) => a.amax(-1), [inp([3, 4])]);
  gradcheck((a) => a.amax([0, 1], true), [inp([2, 2, 3])]);
  gradcheck((a) => a.topk(2).values, [inp([2, 5])]);
  gradcheck((a) => a.sort(-1, true).values, [inp([2, 4])]);
  gradcheck((a) => a.norm(), [inp([2, 3])]);
  gradcheck((a) => a.norm(2, -1, true), [inp([3, 4])]);
  gradcheck((a) => a.norm(1, 0), [inp([3, 2], { awayFrom: [0] })]);
  gradcheck((a) => a.cumsum(0), [inp([3, 2])]);
  gradcheck((a) => a.cumsum(-1), [inp([2, 4])]);
});

test('clamp', () => {
  gradcheck((a) => a.clamp(-0.5, 0.5), [inp([8], { awayFrom: [-0.5, 0.5] })]);
  gradcheck((a) => a.clamp(0.1), [inp([8], { awayFrom: [0.1] })]);
  gradcheck((a) => a.clamp(null, -0.2), [inp([8], { awayFrom: [-0.2] })]);
});

test('shape ops: reshape view flatten transpose T permute unsqueeze squeeze expand repeat', () => {
  gradcheck((a) => a.reshape(3, 2).mul(a.reshape(3, 2)), [inp([2, 3])]);
  gradcheck((a) => a.reshape(-1), [inp([2, 3])]);
  gradcheck((a) => a.view(6, 1), [inp([2, 3])]);
  gradcheck((a) => a.flatten(1), [inp([2, 3, 2])]);
  gradcheck((a, b) => a.transpose(0, 1).matmul(b), [inp([3, 2]), inp([3, 2])]);
  gradcheck((a) => a.T.contiguous(), [inp([2, 3, 4])]);
  gradcheck((a) => a.permute(2, 0, 1), [inp([2, 3, 4])]);
  gradcheck((a) => a.unsqueeze(1), [inp([2, 3])]);
  gradcheck((a) => a.squeeze(1), [inp([2, 1, 3])]);
  gradcheck((a) => a.expand(2, 3, 4), [inp([3, 1])]);
  gradcheck((a, b) => a.expandAs(b).mul(b), [inp([1, 3]), inp([2, 3])]);
  gradcheck((a) => a.repeat(2, 3), [inp([2, 2])]);
  gradcheck((a) => a.clone().tril(), [inp([3, 3])]);
  gradcheck((a) => a.triu(1), [inp([3, 4])]);
});

test('slicing: narrow slice select split chunk', () => {
  gradcheck((a) => a.narrow(1, 1, 2), [inp([2, 4])]);
  gradcheck((a) => a.slice(0, 1), [inp([4, 2])]);
  gradcheck((a) => a.slice(1, 0, undefined, 2), [inp([2, 5])]);
  gradcheck((a) => a.slice(-1, -3, -1), [inp([2, 5])]);
  gradcheck((a) => a.select(0, 1), [inp([3, 2])]);
  gradcheck((a) => a.split(2, 1), [inp([2, 5])]);
  gradcheck((a) => a.split([1, 3], 0), [inp([4, 2])]);
  gradcheck((a) => a.chunk(2, -1), [inp([2, 4])]);
});

test('indexing: indexSelect gather scatterAdd index maskedFill where', () => {
  const idx = ints([2, 0, 2]);
  gradcheck((a) => a.indexSelect(0, idx), [inp([3, 2])]);
  gradcheck((a) => a.indexSelect(1, idx), [inp([2, 3])]);
  const g = ints([0, 2, 1, 1, 0, 0], [2, 3]);
  gradcheck((a) => a.gather(1, g), [inp([2, 3])]);
  const s = ints([0, 1, 0, 1, 1, 1], [3, 2]);
  gradcheck((self, src) => self.scatterAdd(0, s, src), [inp([2, 2]), inp([3, 2])]);
  gradcheck((a) => a.index([ints([1, 0, 1]), null]), [inp([2, 3])]);
  gradcheck((a) => a.index([ints([1, 0]), ints([2, 2])]), [inp([2, 3])]);
  const mask = bools([true, false, false, true, false, true], [2, 3]);
  gradcheck((a) => a.maskedFill(mask, -2), [inp([2, 3])]);
  gradcheck((a, v) => a.maskedFill(bools([false, true, true], [3]), v), [inp([2, 3]), inp([])]);
  gradcheck((a, b) => where(mask, a, b), [inp([2, 3]), inp([3])]);
  gradcheck((a) => where(mask, a, 0.5), [inp([2, 3])]);
  gradcheck((b) => where(mask, -1.5, b), [inp([2, 3])]);
});

test('cat and stack', () => {
  gradcheck((a, b) => cat([a, b], 0), [inp([2, 3]), inp([1, 3])]);
  gradcheck((a, b, c) => cat([a, b, c], -1), [inp([2, 1]), inp([2, 3]), inp([2, 2])]);
  gradcheck((a, b) => stack([a, b], 0), [inp([2, 3]), inp([2, 3])]);
  gradcheck((a, b) => stack([a, b], 2), [inp([2, 3]), inp([2, 3])]);
});

// ---- neural-network functions -------------------------------------------------------------------

test('embedding (repeated ids) and linear', () => {
  const ids = ints([1, 3, 1, 0, 3, 3], [2, 3]);
  gradcheck((w) => embedding(w, ids), [inp([4, 2])]);
  gradcheck((x, w, b) => linear(x, w, b), [inp([2, 3]), inp([4, 3]), inp([4])]);
  gradcheck((x, w) => linear(x, w), [inp([2, 2, 3]), inp([2, 3])]);
});

test('crossEntropy: each reduction, ignoreIndex, label smoothing, K-dim', () => {
  const t = ints([2, 0, -100, 1]);
  gradcheck((x) => crossEntropy(x, t), [inp([4, 3], { lo: -2, hi: 2 })]);
  gradcheck((x) => crossEntropy(x, t, { reduction: 'sum' }), [inp([4, 3], { lo: -2, hi: 2 })]);
  gradcheck((x) => crossEntropy(x, t, { reduction: 'none' }), [inp([4, 3], { lo: -2, hi: 2 })]);
  const t2 = ints([2, 1, 0, 1]);
  gradcheck((x) => crossEntropy(x, t2, { ignoreIndex: 1 }), [inp([4, 3], { lo: -2, hi: 2 })]);
  gradcheck((x) => crossEntropy(x, t2, { labelSmoothing: 0.1 }), [inp([4, 3], { lo: -2, hi: 2 })]);
  gradcheck((x) => crossEntropy(x, ints([0, 2, 1, 1], [2, 2]), { reduction: 'mean' }), [inp([2, 3, 2], { lo: -2, hi: 2 })]);
});

test('layerNorm and rmsNorm', () => {
  gradcheck((x, w, b) => layerNorm(x, [4], w, b), [inp([2, 4]), inp([4]), inp([4])]);
  gradcheck((x) => layerNorm(x, [2, 3]), [inp([2, 2, 3])]);
  gradcheck((x, w) => rmsNorm(x, w, 1e-5), [inp([2, 4]), inp([4])]);
  gradcheck((x, w) => rmsNorm(x, w, 1e-5), [inp([2, 2, 3]), inp([3])]);
});

test('scaledDotProductAttention: plain, causal, bool mask, additive mask', () => {
  const shp = [1, 2, 3, 2];
  const kv = [1, 2, 4, 2];
  gradcheck((q, k, v) => scaledDotProductAttention(q, k, v), [inp(shp), inp(kv), inp(kv)]);
  gradcheck((q, k, v) => scaledDotProductAttention(q, k, v, { causal: true }), [inp([2, 3, 2]), inp([2, 3, 2]), inp([2, 3, 2])]);
  const mask = bools([true, true, false, false, true, false, true, true, true, true, true, false], [3, 4]);
  gradcheck((q, k, v) => scaledDotProductAttention(q, k, v, { attnMask: mask }), [inp(shp), inp(kv), inp(kv)]);
  gradcheck((q, k, v, m) => scaledDotProductAttention(q, k, v, { attnMask: m }), [inp(shp), inp(kv), inp(kv), inp([3, 4])]);
});

test('dropout with p = 0 or in eval is the identity (gradient 1)', () => {
  gradcheck((x) => dropout(x, 0, true).mul(2), [inp([3])]);
  gradcheck((x) => dropout(x, 0.5, false).mul(2), [inp([3])]);
});

test('grad() agrees with backward(), and composite expressions check out', () => {
  gradcheck((x, w) => linear(x, w).silu().softmax(-1).log().mean(), [inp([2, 3]), inp([4, 3])]);
  tidy(() => {
    const x = tensor(new Float64Array([0.3, -1.2, 0.7]), [3], { requiresGrad: true });
    const y = x.mul(x).sin().sum();
    const [g] = grad([y], [x], { retainGraph: true });
    y.backward();
    assert.deepEqual(g!.toNumbers(), x.grad!.toNumbers());
    const expected = [0.3, -1.2, 0.7].map((v) => 2 * v * Math.cos(v * v));
    (g!.toArray() as Float64Array).forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-12));
  });
});

test('gradients accumulate over two backward passes', () => {
  tidy(() => {
    const x = tensor(new Float64Array([1, 2]), [2], { requiresGrad: true });
    x.mul(3).sum().backward();
    x.mul(ones([2], { dtype: 'float64' }))
      .sum()
      .backward();
    assert.deepEqual(x.grad!.toNumbers(), [4, 4]);
  });
});
