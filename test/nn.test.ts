/** Modules, layers, AdamW, gradient clipping, schedules, state dicts, freezing, LoRA. */
import test from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, tensor, tidy, noGrad, manualSeed, randn, crossEntropy, linear, memoryStats } from '../src/tensor/index.js';
import {
  Module,
  Parameter,
  Linear,
  Embedding,
  RMSNorm,
  LayerNorm,
  AdamW,
  clipGradNorm,
  warmupCosine,
  warmupLinear,
  constant,
  linearCrossEntropy,
} from '../src/nn/index.js';
import { collectGarbage } from './helpers/gc.js';

function near(a: number, b: number, tol = 1e-9, what = ''): void {
  assert.ok(Math.abs(a - b) <= tol * (1 + Math.abs(b)), `${what} ${a} vs ${b}`);
}
function nearAll(a: Tensor | number[], b: number[], tol = 1e-9, what = ''): void {
  const xs = a instanceof Tensor ? a.toNumbers() : a;
  assert.equal(xs.length, b.length);
  xs.forEach((v, i) => near(v, b[i], tol, `${what}[${i}]`));
}

test('linearCrossEntropy equals crossEntropy over the full logits: value and gradients, in chunks, with ignored rows', () =>
  tidy(() => {
    manualSeed(5);
    const [n, dim, vocab] = [13, 6, 11];
    const h0 = randn([n, dim], { dtype: 'float64' });
    const w0 = randn([vocab, dim], { dtype: 'float64' });
    const b0 = randn([vocab], { dtype: 'float64' });
    const targets = tensor([3, 0, 10, -100, 7, 7, 1, 2, -100, 9, 4, 5, 6], [n], { dtype: 'int64' });
    for (const reduction of ['mean', 'sum'] as const) {
      const grads = (fn: (h: Tensor, w: Tensor, b: Tensor) => Tensor) => {
        const [h, w, b] = [h0, w0, b0].map((x) => x.detach().setRequiresGrad(true));
        const loss = fn(h, w, b);
        loss.mul(3).backward(); // a scaled loss, as accumulation does
        return [loss.item(), h.grad!.toNumbers(), w.grad!.toNumbers(), b.grad!.toNumbers()] as const;
      };
      const want = grads((h, w, b) => crossEntropy(linear(h, w, b), targets, { reduction }));
      // 25 logits per chunk: two rows at a time, so 7 chunks, the last one short.
      const got = grads((h, w, b) => linearCrossEntropy(h, w, targets, { bias: b, reduction, chunkElements: 25 }));
      near(got[0], want[0], 1e-12, `${reduction} loss`);
      for (const [i, name] of ['dh', 'dw', 'db'].entries()) nearAll(got[i + 1] as number[], want[i + 1] as number[], 1e-12, `${reduction} ${name}`);
    }
    // Without gradients: the value only.
    const v = noGrad(() => linearCrossEntropy(h0, w0, targets).item());
    near(v, crossEntropy(linear(h0, w0), targets).item(), 1e-12, 'no-grad loss');
    assert.throws(() => linearCrossEntropy(h0, w0, targets.narrow(0, 0, 5)), /targets \[5\] int64 must be \[13\]|targets .* must be \[13\]/);
  }));

class MLP extends Module {
  readonly l1: Linear;
  readonly l2: Linear;
  constructor(inDim: number, hidden: number, outDim: number) {
    super();
    this.l1 = this.module('l1', new Linear(inDim, hidden, { bias: true }));
    this.l2 = this.module('l2', new Linear(hidden, outDim, { bias: true }));
  }
  forward(x: Tensor): Tensor {
    return this.l2.forward(this.l1.forward(x).tanh());
  }
}

test('an MLP learns XOR with AdamW', () => {
  manualSeed(0);
  const model = new MLP(2, 16, 2);
  const opt = new AdamW(model.parameters(), { lr: 0.03, weightDecay: 0 });
  const x = tensor([0, 0, 0, 1, 1, 0, 1, 1], [4, 2]).keep();
  const y = tensor([0, 1, 1, 0], undefined, { dtype: 'int64' }).keep();
  let loss = Infinity;
  for (let i = 0; i < 300; i++) {
    loss = tidy(() => {
      const l = crossEntropy(model.forward(x), y);
      l.backward();
      opt.step();
      opt.zeroGrad();
      return l.item();
    });
  }
  assert.ok(loss < 0.01, `final loss ${loss}`);
  const pred = tidy(() => noGrad(() => model.forward(x).argmax(-1).toNumbers()));
  assert.deepEqual(pred, [0, 1, 1, 0]);
});

/** AdamW by hand on float64 numbers (the PyTorch algorithm). */
function adamwReference(
  p0: number[],
  gradOf: (p: number[]) => number[],
  steps: number,
  o: { lr: number; b1: number; b2: number; eps: number; wd: number },
): number[] {
  let p = [...p0];
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  for (let t = 1; t <= steps; t++) {
    const g = gradOf(p);
    p = p.map((x, i) => {
      x *= 1 - o.lr * o.wd;
      m[i] = o.b1 * m[i] + (1 - o.b1) * g[i];
      v[i] = o.b2 * v[i] + (1 - o.b2) * g[i] * g[i];
      const mHat = m[i] / (1 - o.b1 ** t);
      const vHat = v[i] / (1 - o.b2 ** t);
      return x - (o.lr * mHat) / (Math.sqrt(vHat) + o.eps);
    });
  }
  return p;
}

for (const foreach of [true, false]) {
  test(`AdamW matches a hand-computed update (2 steps, weight decay, foreach=${foreach})`, () => {
    const p = new Parameter(tensor(new Float64Array([1.0, -2.0])));
    const opts = { lr: 0.1, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1 };
    const opt = new AdamW([p], { lr: opts.lr, betas: [opts.b1, opts.b2], eps: opts.eps, weightDecay: opts.wd, foreach });
    assert.equal(opt.foreach, foreach);
    // loss = sum(p^3) / 3 -> grad p^2 (changes between steps)
    for (let s = 0; s < 2; s++) {
      tidy(() => p.value.pow(3).sum().div(3).backward());
      opt.step();
      opt.zeroGrad();
    }
    // Step 1 by hand: g = [1, 4]; m_hat = g, v_hat = g^2, so the update is lr * sign(g):
    // p1 = p0 * (1 - 0.01) - 0.1 * g / (|g| + 1e-8) = [0.89, -2.08] (up to 1e-9).
    const expected = adamwReference([1, -2], (x) => x.map((v) => v * v), 2, opts);
    const p1 = adamwReference([1, -2], (x) => x.map((v) => v * v), 1, opts);
    nearAll(p1, [0.99 - 0.1, -1.98 - 0.1], 1e-8, 'p1');
    nearAll(p.value, expected, 1e-12, 'p2');
    assert.equal(opt.stepCount, 2);
    const sd = opt.stateDict();
    assert.equal(sd.step, 2);
    assert.equal(sd.state.get(0)!.step, 2);
    sd.state.get(0)!.expAvg.free();
    sd.state.get(0)!.expAvgSq.free();
    opt.freeState();
    p.value.free();
  });
}

test('AdamW skips parameters without a gradient, and lr is settable', () =>
  tidy(() => {
    const a = new Parameter(tensor([1, 1]));
    const b = new Parameter(tensor([5, 5]));
    const opt = new AdamW([a, b], { lr: 0.5, weightDecay: 0.5 });
    a.value.sum().backward();
    opt.lr = 0.1;
    opt.step();
    nearAll(b.value, [5, 5], 0, 'untouched');
    // step 1: p * (1 - 0.05) - 0.1 * 1/(1 + 1e-8)
    nearAll(a.value, [0.95 - 0.1, 0.95 - 0.1], 1e-6, 'a');
    const sd = opt.stateDict({ copy: false });
    assert.deepEqual([...sd.state.keys()], [0]);
    opt.zeroGrad();
    assert.equal(a.value.grad, null);
    // b gets its first gradient now: its own bias correction starts at step 1
    b.value.sum().backward();
    opt.step();
    nearAll(b.value, [5 * 0.95 - 0.1, 5 * 0.95 - 0.1], 1e-6, 'b');
    assert.equal(opt.stateDict({ copy: false }).state.get(1)!.step, 1);
    opt.freeState();
  }));

test('AdamW foreach and per-parameter paths agree on a model', () => {
  const run = (foreach: boolean) => {
    manualSeed(11);
    const m = new MLP(3, 5, 2);
    const opt = new AdamW(m.parameters(), { lr: 0.01, foreach });
    manualSeed(12);
    const x = randn([8, 3]).keep();
    for (let i = 0; i < 5; i++) {
      tidy(() => {
        m.forward(x).square().mean().backward();
        opt.step();
        opt.zeroGrad();
      });
    }
    return m.parameters().flatMap((p) => p.value.toNumbers());
  };
  const a = run(true);
  const b = run(false);
  a.forEach((v, i) => near(v, b[i], 1e-6, `param element ${i}`));
});

test('AdamW state dict: exact resume', () => {
  manualSeed(21);
  const data = randn([16, 4]).keep();
  const target = randn([16, 2]).keep();
  const stepOnce = (m: MLP, opt: AdamW) =>
    tidy(() => {
      m.forward(data).sub(target).square().mean().backward();
      opt.step();
      opt.zeroGrad();
    });
  manualSeed(22);
  const a = new MLP(4, 8, 2);
  const optA = new AdamW(a.parameters(), { lr: 0.01 });
  for (let i = 0; i < 5; i++) stepOnce(a, optA);
  const modelState = new Map([...a.stateDict()].map(([k, v]) => [k, noGrad(() => v.clone())]));
  const optState = optA.stateDict();
  for (let i = 0; i < 5; i++) stepOnce(a, optA);

  manualSeed(99); // different init, overwritten by the load
  const b = new MLP(4, 8, 2);
  const optB = new AdamW(b.parameters(), { lr: 0.01 });
  b.loadStateDict(modelState);
  optB.loadStateDict(optState);
  assert.equal(optB.stepCount, 5);
  for (let i = 0; i < 5; i++) stepOnce(b, optB);
  const pa = a.parameters().flatMap((p) => p.value.toNumbers());
  const pb = b.parameters().flatMap((p) => p.value.toNumbers());
  assert.deepEqual(pb, pa);
  // mismatched state is refused and leaves the optimiser as it was
  const bad = { step: 1, state: new Map([[0, { step: 1, expAvg: randn([3]), expAvgSq: randn([3]) }]]) };
  assert.throws(() => optB.loadStateDict(bad), /shape/);
  const bad2 = { step: 1, state: new Map([[17, { step: 1, expAvg: randn([3]), expAvgSq: randn([3]) }]]) };
  assert.throws(() => optB.loadStateDict(bad2), /parameter 17/);
  assert.equal(optB.stepCount, 10);
});

test('clipGradNorm on a known gradient', () =>
  tidy(() => {
    const a = new Parameter(tensor([0, 0]));
    const b = new Parameter(tensor([0]));
    const c = new Parameter(tensor([0])); // no gradient
    a.value.grad = tensor([3, 4]);
    b.value.grad = tensor([12]);
    // global norm sqrt(9 + 16 + 144) = 13
    const n = clipGradNorm([a, b, c], 6.5);
    near(n, 13, 1e-6);
    const coef = 6.5 / (13 + 1e-6);
    nearAll(a.value.grad!, [3 * coef, 4 * coef], 1e-6);
    nearAll(b.value.grad!, [12 * coef], 1e-6);
    // below the limit: unchanged
    const n2 = clipGradNorm([a, b, c], 100);
    near(n2, 6.5, 1e-5);
    nearAll(b.value.grad!, [12 * coef], 1e-6);
    assert.equal(clipGradNorm([c], 1), 0);
  }));

test('schedules at key steps', () => {
  const cos = warmupCosine({ peakLr: 1e-3, warmupSteps: 10, totalSteps: 110, minLr: 1e-4 });
  near(cos(0), 1e-4);
  near(cos(4), 5e-4);
  near(cos(9), 1e-3);
  near(cos(10), 1e-3);
  near(cos(60), 1e-4 + 0.5 * 9e-4);
  near(cos(35), 1e-4 + 0.5 * 9e-4 * (1 + Math.cos(Math.PI / 4)));
  near(cos(110), 1e-4);
  near(cos(1000), 1e-4);
  for (let s = 10; s < 110; s++) assert.ok(cos(s + 1) <= cos(s));
  const lin = warmupLinear({ peakLr: 2, warmupSteps: 4, totalSteps: 14 });
  near(lin(0), 0.5);
  near(lin(3), 2);
  near(lin(4), 2);
  near(lin(9), 1);
  near(lin(14), 0);
  near(lin(20), 0);
  const noWarm = warmupCosine({ peakLr: 1, totalSteps: 10 });
  near(noWarm(0), 1);
  near(noWarm(5), 0.5);
  near(noWarm(10), 0);
  const c = constant({ lr: 0.3 });
  near(c(0), 0.3);
  near(c(12345), 0.3);
  const cw = constant({ lr: 0.3, warmupSteps: 3 });
  near(cw(0), 0.1);
  near(cw(2), 0.3);
  near(cw(3), 0.3);
  assert.throws(() => warmupCosine({ peakLr: 1, warmupSteps: 10, totalSteps: 5 }), /totalSteps/);
  assert.throws(() => cos(-1), /step/);
});

test('Module: named parameters, state dict round trip, strict errors', () =>
  tidy(() => {
    manualSeed(1);
    const a = new MLP(3, 4, 2);
    assert.deepEqual(
      a.namedParameters().map(([n]) => n),
      ['l1.weight', 'l1.bias', 'l2.weight', 'l2.bias'],
    );
    assert.equal(a.numParameters(), 3 * 4 + 4 + 4 * 2 + 2);
    assert.deepEqual(
      a.namedModules().map(([n]) => n),
      ['', 'l1', 'l2'],
    );
    manualSeed(2);
    const b = new MLP(3, 4, 2);
    const x = randn([5, 3]);
    const ya = a.forward(x).toNumbers();
    assert.notDeepEqual(b.forward(x).toNumbers(), ya);
    const res = b.loadStateDict(a.stateDict());
    assert.deepEqual(res, { missing: [], unexpected: [] });
    assert.deepEqual(b.forward(x).toNumbers(), ya);
    assert.ok(
      b.parameters().every((p) => p.trainable),
      'trainability survives the load',
    );
    // dtype conversion on load
    const half = new Map([...a.stateDict()].map(([k, v]) => [k, v.to('float64')]));
    b.loadStateDict(half);
    assert.equal(b.l1.weight.value.dtype, 'float32');
    // strict: missing / unexpected
    const missing = new Map(a.stateDict());
    missing.delete('l2.bias');
    assert.throws(() => b.loadStateDict(missing), /missing \[l2\.bias\]/);
    const extra = new Map(a.stateDict());
    extra.set('l3.weight', randn([1]));
    assert.throws(() => b.loadStateDict(extra), /unexpected \[l3\.weight\]/);
    const r = b.loadStateDict(extra, { strict: false });
    assert.deepEqual(r.unexpected, ['l3.weight']);
    const wrong = new Map(a.stateDict());
    wrong.set('l1.weight', randn([4, 4]));
    assert.throws(() => b.loadStateDict(wrong), /l1\.weight.*shape \[4, 4\] does not match \[4, 3\]/);
  }));

test('freeze / unfreeze stops and starts gradients', () =>
  tidy(() => {
    manualSeed(3);
    const m = new MLP(3, 4, 2);
    const x = randn([2, 3]);
    m.l1.freeze();
    assert.equal(m.trainableParameters().length, 2);
    assert.equal(m.numParameters(true), 4 * 2 + 2);
    m.forward(x).sum().backward();
    assert.equal(m.l1.weight.value.grad, null);
    assert.notEqual(m.l2.weight.value.grad, null);
    m.zeroGrad();
    assert.equal(m.l2.weight.value.grad, null);
    m.freeze();
    assert.equal(m.forward(x).requiresGrad, false);
    m.unfreeze();
    m.forward(x).sum().backward();
    assert.ok(m.parameters().every((p) => p.value.grad !== null));
    // training / eval flags propagate
    m.eval();
    assert.ok(m.namedModules().every(([, c]) => !c.training));
    m.train();
    assert.ok(m.l2.training);
    // frozen parameters are not updated by the optimiser of trainable ones
    m.zeroGrad();
    m.l1.freeze();
    const before = m.l1.weight.value.toNumbers();
    const opt = new AdamW(m.trainableParameters(), { lr: 0.1 });
    m.forward(x).sum().backward();
    opt.step();
    assert.deepEqual(m.l1.weight.value.toNumbers(), before);
    opt.freeState();
  }));

test('LoRA: output unchanged at init; with the base frozen only A and B get gradients', () =>
  tidy(() => {
    manualSeed(4);
    const lin = new Linear(6, 5, { bias: true });
    const x = randn([3, 6]);
    const y0 = lin.forward(x).toNumbers();
    lin.addLora({ rank: 2, alpha: 4 });
    assert.throws(() => lin.addLora({ rank: 2, alpha: 4 }), /already/);
    assert.deepEqual(lin.forward(x).toNumbers(), y0);
    assert.deepEqual(
      lin.namedParameters().map(([n, p]) => `${n}:${p.value.shape.join('x')}`),
      ['weight:5x6', 'bias:5', 'lora_A.weight:2x6', 'lora_B.weight:5x2'],
    );
    lin.weight.trainable = false;
    lin.bias!.trainable = false;
    lin.forward(x).square().sum().backward();
    assert.equal(lin.weight.value.grad, null);
    assert.equal(lin.bias!.value.grad, null);
    // B = 0 at init: A's gradient is zero on the first step, B's is not
    assert.notEqual(lin.loraB!.value.grad, null);
    assert.ok(lin.loraB!.value.grad!.abs().sum().item() > 0);
    assert.notEqual(lin.loraA!.value.grad, null);
    // after B moves, the output changes and A gets a nonzero gradient
    const opt = new AdamW(lin.trainableParameters(), { lr: 0.1 });
    assert.equal(opt.params.length, 2);
    opt.step();
    opt.zeroGrad();
    assert.notDeepEqual(lin.forward(x).toNumbers(), y0);
    nearAll(lin.forwardBase(x), y0, 0);
    lin.forward(x).square().sum().backward();
    assert.ok(lin.loraA!.value.grad!.abs().sum().item() > 0);
    // the delta is scale * B A x
    const delta = lin.loraDelta(x);
    const manual = x.matmul(lin.loraA!.value.T).matmul(lin.loraB!.value.T).mul(2);
    nearAll(delta, manual.toNumbers(), 1e-6);
    opt.freeState();
  }));

test('Embedding, RMSNorm, LayerNorm layers', () =>
  tidy(() => {
    manualSeed(5);
    const e = new Embedding(10, 4, { std: 0.02 });
    const ids = tensor([1, 9, 1], [1, 3], { dtype: 'int64' });
    const out = e.forward(ids);
    assert.deepEqual(out.shape, [1, 3, 4]);
    assert.deepEqual(out.select(1, 0).toNumbers(), out.select(1, 2).toNumbers());
    assert.ok(e.weight.value.abs().max().item() < 0.2);
    const n = new RMSNorm(4);
    const y = n.forward(tensor([2, 2, 2, 2], [1, 4]));
    nearAll(y, [1, 1, 1, 1], 1e-5);
    const ln = new LayerNorm(4);
    nearAll(ln.forward(tensor([1, 1, 3, 3], [1, 4])), [-1, -1, 1, 1], 1e-4);
    assert.equal(new LayerNorm(4, 1e-5, { bias: false }).parameters().length, 1);
    const l = new Linear(4, 3, { std: 0.5 });
    assert.equal(l.bias, undefined);
    assert.deepEqual(l.weight.value.shape, [3, 4]);
  }));

test('module toDtype converts parameters and keeps trainability; free() releases them', async () => {
  await collectGarbage();
  const live = memoryStats().liveHandles;
  const m = new MLP(2, 3, 1);
  m.l2.freeze();
  m.toDtype('float64');
  assert.ok(m.parameters().every((p) => p.value.dtype === 'float64'));
  assert.ok(m.l1.weight.trainable);
  assert.ok(!m.l2.weight.trainable);
  m.free();
  assert.ok(m.parameters().every((p) => p.value.freed));
  assert.equal(memoryStats().liveHandles, live);
});
