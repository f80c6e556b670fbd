/**
 * Bad calls throw a TensorError naming the operator and the shapes involved, and the process
 * (and libtorch) keep working afterwards.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, TensorError, tensor, randn, ones, zeros, cat, crossEntropy, tidy, memoryStats, fromBytes, type DType } from '../src/tensor/index.js';
import { collectGarbage } from './helpers/gc.js';

/** Asserts fn throws a TensorError whose message matches every pattern. */
function throwsTensorError(fn: () => unknown, ...patterns: RegExp[]): TensorError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof TensorError, `expected a TensorError, got ${caught === undefined ? 'no error' : String(caught)}`);
  assert.equal(caught.name, 'TensorError');
  for (const p of patterns) assert.match(caught.message, p);
  return caught;
}

test('matmul shape mismatch', () =>
  tidy(() => {
    throwsTensorError(() => randn([2, 3]).matmul(randn([4, 5])), /matmul/, /float32\[2, 3\]/, /float32\[4, 5\]/);
    throwsTensorError(() => randn([2, 3, 4]).bmm(randn([2, 5, 4])), /bmm/, /float32\[2, 3, 4\]/, /float32\[2, 5, 4\]/);
  }));

test('cat of mismatched shapes', () =>
  tidy(() => {
    throwsTensorError(() => cat([randn([2, 3]), randn([2, 4])], 0), /aten::cat/, /float32\[2, 3\]/, /float32\[2, 4\]/);
  }));

test('bad index in indexSelect and gather', () =>
  tidy(() => {
    const idx = tensor([0, 7], undefined, { dtype: 'int64' });
    throwsTensorError(() => randn([3, 2]).indexSelect(0, idx), /index_select/, /out of range/, /float32\[3, 2\]/, /int64\[2\]/);
    throwsTensorError(() => randn([3, 2]).gather(1, tensor([5, 0, 0, 0, 0, 0], [3, 2], { dtype: 'int64' })), /gather/, /float32\[3, 2\]/);
    throwsTensorError(() => randn([3, 2]).indexSelect(0, tensor([0.5])), /index_select/, /float32\[1\]/);
  }));

test('use after free', () => {
  const a = randn([2, 3]);
  const b = randn([3]);
  a.free();
  assert.ok(a.freed);
  throwsTensorError(() => a.add(b), /aten::add/, /already freed/, /float32\[3\]/);
  throwsTensorError(() => b.add(a), /aten::add/, /already freed/);
  throwsTensorError(() => a.shape, /already freed/);
  throwsTensorError(() => a.item(), /item/, /already freed/);
  assert.equal(a.describe(), 'Tensor<freed>');
  a.free(); // freeing twice is harmless
  // a tensor used outside the scope that freed it
  const escaped = tidy(() => {
    const inner = ones([2]);
    return { value: inner.sum().item(), inner };
  }).inner;
  assert.ok(!escaped.freed, 'a returned tensor survives its scope');
  let leaked: Tensor | undefined;
  tidy(() => {
    leaked = ones([4]);
  });
  throwsTensorError(() => leaked!.mul(2), /aten::mul/, /already freed/);
  b.free();
  escaped.free();
});

test('item() of a multi-element tensor', () =>
  tidy(() => {
    throwsTensorError(() => randn([2, 3]).item(), /item/, /6 elements/, /float32\[2, 3\]/);
    throwsTensorError(() => zeros([0]).item(), /item/, /0 elements/);
  }));

test('crossEntropy with the wrong target dtype or shape', () =>
  tidy(() => {
    const logits = randn([4, 3]);
    throwsTensorError(
      () => crossEntropy(logits, tensor([0, 1, 2, 1], undefined, { dtype: 'int32' })),
      /cross_entropy/,
      /Long/,
      /float32\[4, 3\]/,
      /int32\[4\]/,
    );
    throwsTensorError(() => crossEntropy(logits, tensor([0, 1, 2, 1])), /cross_entropy/, /float32\[4, 3\]/, /float32\[4\]/);
    throwsTensorError(() => crossEntropy(logits, tensor([0, 1], undefined, { dtype: 'int64' })), /cross_entropy/, /float32\[4, 3\]/, /int64\[2\]/);
  }));

test('backward on a tensor that does not require grad', () =>
  tidy(() => {
    const e = throwsTensorError(() => randn([3]).sum().backward(), /backward/, /does not require grad/, /float32\[\]/);
    assert.doesNotMatch(e.message, /backward: backward/);
    throwsTensorError(() => randn([3], { requiresGrad: true }).mul(2).backward(), /backward/, /float32\[3\]/);
    // twice through the same graph without retainGraph
    const x = randn([3], { requiresGrad: true });
    const y = x.exp().sum();
    y.backward();
    throwsTensorError(() => y.backward(), /backward/, /second time/);
  }));

test('other argument errors name the operator', () =>
  tidy(() => {
    throwsTensorError(() => randn([2, 3]).reshape(4, 2), /reshape|view/, /float32\[2, 3\]/);
    throwsTensorError(() => randn([2, 3]).add(randn([4])), /aten::add/, /float32\[2, 3\]/, /float32\[4\]/);
    throwsTensorError(() => randn([2]).transpose(0, 3), /transpose/, /float32\[2\]/);
    throwsTensorError(() => randn([2]).narrow(0, 1, 5), /narrow/);
    throwsTensorError(() => tensor([1, 2, 3], [2, 2]), /tensor/, /3 values/);
    throwsTensorError(() => randn([2, 2]).size(5), /size\(5\)/, /float32\[2, 2\]/);
  }));

test('an unknown dtype names the operation, the dtype and the known dtypes', () =>
  tidy(() => {
    const known = /known: uint8, int8, .*float32.*bfloat16/;
    throwsTensorError(() => randn([2]).to('float8' as DType), /^to: unknown dtype 'float8'/, known);
    throwsTensorError(() => fromBytes(new Uint8Array(4), 'float8' as DType, [1]), /^fromBytes: unknown dtype 'float8'/, known);
    throwsTensorError(() => fromBytes(new Uint8Array(4), undefined as unknown as DType, [1]), /^fromBytes: unknown dtype undefined/);
    throwsTensorError(() => zeros([2], { dtype: 'int4' as DType }), /^zeros: unknown dtype 'int4'/);
    throwsTensorError(() => tensor([1, 2], [2], { dtype: 'complex64' as DType }), /^tensor: unknown dtype 'complex64'/);
    throwsTensorError(() => fromBytes(new Uint8Array(3), 'float32', [1]), /fromBytes/, /3 bytes/);
  }));

test('the process and libtorch keep working after errors, without leaking handles', async () => {
  await collectGarbage();
  const before = memoryStats().liveHandles;
  for (let i = 0; i < 50; i++) {
    tidy(() => {
      try {
        randn([2, 3]).matmul(randn([4, 5]));
      } catch {
        /* expected */
      }
    });
  }
  assert.equal(memoryStats().liveHandles, before);
  const v = tidy(() =>
    ones([2, 2])
      .matmul(ones([2, 2]))
      .sum()
      .item(),
  );
  assert.equal(v, 8);
});
