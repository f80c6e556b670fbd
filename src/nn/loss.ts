/**
 * Cross-entropy straight from hidden states, without the full logits. The language-model head
 * of a real model is wide (SmolLM2: 49,152 words), so logits [N, vocab] and the tensors autograd
 * keeps for their softmax cost ~3 x 4·N·vocab bytes (600 MB for 1,024 rows). Here rows go in
 * chunks; a chunk's logits live only while its loss and its gradients are taken, and what is kept
 * for backward is the gradient itself, [N, dim].
 */
import { Tensor, isGradEnabled, linear, noGrad, tidy, zeros, zerosLike } from '../tensor/index.js';

export interface LinearCrossEntropyOptions {
  bias?: Tensor;
  reduction?: 'mean' | 'sum';
  /** Rows with this target count nothing (default -100, as crossEntropy). */
  ignoreIndex?: number;
  /** Logits elements per chunk (default 2^24: 64 MB in float32). */
  chunkElements?: number;
}

/**
 * crossEntropy(hidden W^T + bias, targets) for hidden [N, dim], weight [vocab, dim], targets [N]
 * (int64), as a scalar: the mean over counted rows (NaN when none counts, like crossEntropy) or
 * the sum. Gradients for hidden, weight and bias, where they require them, are taken in the same
 * pass and handed to autograd through a surrogate term whose value is exactly zero, so
 * `loss.backward()` (scaled or summed with other terms) delivers them. Not twice-differentiable.
 */
export function linearCrossEntropy(hidden: Tensor, weight: Tensor, targets: Tensor, opts: LinearCrossEntropyOptions = {}): Tensor {
  const { bias, reduction = 'mean', ignoreIndex = -100, chunkElements = 1 << 24 } = opts;
  if (hidden.rank !== 2 || weight.rank !== 2 || hidden.size(1) !== weight.size(1))
    throw new Error(`linearCrossEntropy: hidden ${hidden.describe()} must be [N, dim] and weight ${weight.describe()} [vocab, dim]`);
  const n = hidden.size(0);
  const vocab = weight.size(0);
  if (targets.rank !== 1 || targets.size(0) !== n) throw new Error(`linearCrossEntropy: targets ${targets.describe()} must be [${n}]`);
  if (targets.dtype !== 'int64') throw new Error(`linearCrossEntropy: targets must be int64, got ${targets.dtype}`);
  const track = isGradEnabled();
  const wantHidden = track && hidden.requiresGrad;
  const wantWeight = track && weight.requiresGrad;
  const wantBias = track && !!bias?.requiresGrad;
  const rows = Math.max(1, Math.floor(chunkElements / vocab));

  const parts = noGrad(() => {
    const h = hidden.detach();
    const w = weight.detach();
    const b = bias?.detach();
    const counted = targets.ne(ignoreIndex);
    const count = counted.sum().item();
    // Rows' weights in the reduction: 1 (sum) or 1/count (mean), 0 where ignored.
    const rowScale = counted
      .to(h.dtype)
      .mul(reduction === 'mean' ? 1 / count : 1)
      .unsqueeze(1); // [N, 1]
    const safeTargets = targets.maskedFill(counted.logicalNot(), 0);
    const gradHidden = wantHidden ? zerosLike(h) : undefined;
    const gradWeight = wantWeight ? zerosLike(w) : undefined;
    const gradBias = wantBias ? zeros([vocab], { dtype: h.dtype }) : undefined;
    const nll = zeros([n, 1], { dtype: h.dtype }); // per row, filled chunk by chunk
    for (let start = 0; start < n; start += rows) {
      const len = Math.min(rows, n - start);
      tidy(() => {
        const hc = h.narrow(0, start, len);
        const tc = safeTargets.narrow(0, start, len);
        const sc = rowScale.narrow(0, start, len); // [len, 1]
        const logProbs = linear(hc, w, b).logSoftmax(-1); // [len, vocab]
        nll.narrow(0, start, len).copy_(logProbs.gather(1, tc.unsqueeze(1)).neg());
        if (!wantHidden && !wantWeight && !wantBias) return;
        // d loss / d logits = rowScale * (softmax - onehot(target)).
        const probs = logProbs.exp();
        if (gradHidden) gradHidden.narrow(0, start, len).copy_(probs.matmul(w).sub(w.indexSelect(0, tc)).mul(sc));
        if (gradWeight) {
          const scaled = hc.mul(sc);
          gradWeight.add_(probs.transpose(0, 1).matmul(scaled)).indexAdd_(0, tc, scaled, -1);
        }
        if (gradBias) gradBias.add_(probs.mul(sc).sum(0)).indexAdd_(0, tc, sc.squeeze(1), -1);
      });
    }
    // Summed in float64: a mean over many rows keeps its last digits.
    const value = nll.to('float64').mul(rowScale.to('float64')).sum().to(h.dtype);
    return { value, gradHidden, gradWeight, gradBias };
  });
  let loss = parts.value;
  // value + (s - s) with s = Σ x·grad: exactly the loss, and d/dx = grad.
  for (const [x, g] of [
    [hidden, parts.gradHidden],
    [weight, parts.gradWeight],
    [bias, parts.gradBias],
  ] as const) {
    if (!x || !g) continue;
    const s = x.mul(g).sum();
    loss = loss.add(s.sub(s.detach()));
  }
  return loss;
}
