/** Tolerance checks between tensors, compared in float64. */
import assert from 'node:assert/strict';
import { tidy, type Tensor } from '../../src/tensor/index.js';

/** Largest absolute elementwise difference (shapes must match; 0 for empty tensors). */
export function maxDiff(a: Tensor, b: Tensor): number {
  assert.deepEqual(a.shape, b.shape, `shapes differ: ${a.describe()} vs ${b.describe()}`);
  return tidy(() => (a.numel === 0 ? 0 : a.to('float64').sub(b.to('float64')).abs().max().item()));
}

/** a and b agree within tol everywhere. */
export function assertClose(a: Tensor, b: Tensor, tol: number, what: string): void {
  const d = maxDiff(a, b);
  assert.ok(d <= tol, `${what}: max abs diff ${d} > ${tol}`);
}

/** Guards against vacuous comparisons: a and b really differ, by at least `atLeast` somewhere. */
export function assertDiffer(a: Tensor, b: Tensor, atLeast: number, what: string): void {
  const d = maxDiff(a, b);
  assert.ok(d >= atLeast, `${what}: max abs diff ${d} < ${atLeast} (expected a real change)`);
}
