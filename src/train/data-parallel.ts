/**
 * The trainer's data parallelism over a c10d process group (tensor/dist.ts): what the ranks
 * exchange so that W processes, each computing its shard of every micro-batch, take the same
 * optimiser steps as one process computing the whole micro-batch.
 *
 * - At the start, rank 0's trainable weights, optimiser moments, step and generator state go to
 *   every rank (rank 0 alone reads a checkpoint, so a resume works with any world size and on
 *   machines that do not hold the run folder).
 * - Per micro-batch, the ranks sum their counted tokens and token-weighted losses (one
 *   allreduce of two numbers): the loss of the whole micro-batch is the token-weighted mean of
 *   the shards', so each rank weights its shard's gradient by its share of the tokens.
 * - Per step, the gradients are averaged in buckets (flat buffers of at most bucketBytes, all
 *   started at once so Gloo pipelines them). Which parameters have a gradient is agreed first:
 *   one that has none on some rank gets zeros there, and one that has none anywhere stays
 *   without (the optimiser skips it, as it would in one process). A Ctrl-C on any rank rides
 *   with that agreement, so every rank stops after the same step.
 *
 * The gradients are averaged after the backward passes, not overlapped with them: measured on
 * this machine, the averaging costs a few milliseconds per step against seconds of compute
 * (README "Training on several machines"), so overlap would not pay here.
 */
import { DTYPE_SIZE, cat, getRngState, noGrad, setRngState, tensor, tidy, zerosLike, type ProcessGroup, type Tensor } from '../tensor/index.js';
import type { AdamW, Parameter } from '../nn/index.js';

/** Default bucket size of the gradient averaging (bytes of gradient per allreduce). */
export const BUCKET_BYTES = 8 << 20;

export interface StartState {
  step: number;
  elapsed: number;
}

/**
 * Makes every rank start where rank 0 does: its parameters, its optimiser state (moments and
 * step counts) and its generator state. `start` is rank 0's (ignored elsewhere); returns it on
 * every rank.
 */
export function syncStart(g: ProcessGroup, params: Parameter[], opt: AdamW, start: StartState): StartState {
  const lead = g.rank === 0;
  return tidy(() =>
    noGrad(() => {
      // Every rank must train the same parameters (the same flags, base and method everywhere).
      const own = [params.length, params.reduce((a, p) => a + p.value.numel, 0)];
      const hi = tensor(own, [2], { dtype: 'float64' });
      const lo = tensor(own, [2], { dtype: 'float64' });
      g.allreduce(hi, 'max');
      g.allreduce(lo, 'min');
      const [h0, h1] = Array.from(hi.toArray() as Float64Array);
      const [l0, l1] = Array.from(lo.toArray() as Float64Array);
      if (h0 !== l0 || h1 !== l1) {
        throw new Error(
          `rank ${g.rank} trains ${own[0]} tensors (${own[1]} values), others between ${l0} and ${h0} tensors (${l1} to ${h1} values): give every rank the same base, method and flags`,
        );
      }
      // Header: step, elapsed, optimiser step count, then each parameter's own step (-1: no state).
      const sd = lead ? opt.stateDict({ copy: false }) : undefined;
      const header = tensor(
        lead ? [start.step, start.elapsed, sd!.step, ...params.map((_, i) => sd!.state.get(i)?.step ?? -1)] : new Array(3 + params.length).fill(0),
        [3 + params.length],
        { dtype: 'float64' },
      );
      g.broadcast(header, 0);
      const h = Array.from(header.toArray() as Float64Array);
      const [step, elapsed, optStep] = h;
      const steps = h.slice(3);
      g.broadcast(
        params.map((p) => p.value.detach()),
        0,
      );
      if (!lead) {
        const state = new Map<number, { step: number; expAvg: Tensor; expAvgSq: Tensor }>();
        steps.forEach((s, i) => {
          if (s >= 0) state.set(i, { step: s, expAvg: zerosLike(params[i].value), expAvgSq: zerosLike(params[i].value) });
        });
        opt.loadStateDict({ step: optStep, state });
      }
      const live = opt.stateDict({ copy: false });
      const moments: Tensor[] = [];
      for (let i = 0; i < params.length; i++) {
        const st = live.state.get(i);
        if (st) moments.push(st.expAvg, st.expAvgSq);
      }
      if (moments.length) g.broadcast(moments, 0);
      const rng = getRngState();
      g.broadcast(rng, 0);
      if (!lead) setRngState(rng);
      return { step, elapsed };
    }),
  );
}

/** The whole micro-batch's token count and mean loss, from this rank's shard. */
export function microStats(g: ProcessGroup, tokens: number, loss: number): { tokens: number; loss: number } {
  return tidy(() => {
    const t = tensor([tokens, tokens > 0 ? loss * tokens : 0], [2], { dtype: 'float64' });
    g.allreduce(t, 'sum');
    const [total, weighted] = Array.from(t.toArray() as Float64Array);
    return { tokens: total, loss: total > 0 ? weighted / total : NaN };
  });
}

/**
 * Averages the trainable parameters' gradients over the ranks, in place; returns whether some
 * rank asked to stop (`stop` of any rank), the seconds spent waiting for the slowest rank to
 * reach the averaging (`wait`), and the seconds of the averaging itself (`seconds`).
 */
export function averageGradients(
  g: ProcessGroup,
  params: Parameter[],
  stop: boolean,
  bucketBytes = BUCKET_BYTES,
): { stop: boolean; wait: number; seconds: number } {
  const t0 = performance.now();
  let t1 = t0;
  const anyStop = tidy(() =>
    noGrad(() => {
      const has = tensor([stop ? 1 : 0, ...params.map((p) => (p.value.grad === null ? 0 : 1))], [params.length + 1], { dtype: 'float32' });
      g.allreduce(has, 'sum'); // returns when every rank is here
      t1 = performance.now();
      const flags = has.toArray() as Float32Array;
      const grads: Tensor[] = [];
      params.forEach((p, i) => {
        if (flags[i + 1] === 0) return;
        let gr = p.value.grad;
        if (gr === null) {
          p.value.grad = zerosLike(p.value);
          gr = p.value.grad!;
        }
        grads.push(gr);
      });
      // Buckets: consecutive gradients of one dtype, at most bucketBytes each (one at least).
      const buckets: Tensor[][] = [];
      let cur: Tensor[] = [];
      let bytes = 0;
      for (const gr of grads) {
        const b = gr.numel * DTYPE_SIZE[gr.dtype];
        if (cur.length && (bytes + b > bucketBytes || cur[0].dtype !== gr.dtype)) {
          buckets.push(cur);
          cur = [];
          bytes = 0;
        }
        cur.push(gr);
        bytes += b;
      }
      if (cur.length) buckets.push(cur);
      // A bucket of one is its gradient's flat view (a copy only if it is not contiguous).
      const flats = buckets.map((bk) => (bk.length === 1 ? bk[0].reshape(-1) : cat(bk.map((gr) => gr.reshape(-1)))));
      if (flats.length) g.allreduce(flats, 'avg');
      buckets.forEach((bk, k) => {
        if (bk.length === 1 && flats[k].sharesStorageWith(bk[0])) return; // averaged in place
        let off = 0;
        for (const gr of bk) {
          gr.copy_(flats[k].narrow(0, off, gr.numel).view(...gr.shape));
          off += gr.numel;
        }
      });
      return flags[0] > 0;
    }),
  );
  return { stop: anyStop, wait: (t1 - t0) / 1000, seconds: (performance.now() - t1) / 1000 };
}
