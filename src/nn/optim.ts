/**
 * Optimisers and gradient clipping. AdamW follows torch.optim.AdamW (decoupled weight decay,
 * bias-corrected moments, per-parameter step counts; equal up to rounding). Updates run under
 * noGrad inside a tidy scope, through libtorch's `_foreach_*` in-place operators when present
 * (one call over all parameters instead of one per parameter), else per-parameter in-place
 * operators.
 */
import { Tensor, callInPlace, callOp, noGrad, opSchema, stack, tidy, zerosLike } from '../tensor/index.js';
import type { Parameter } from './module.js';

const hasOpCache = new Map<string, boolean>();
/** Whether libtorch has an operator (looked up once). */
function hasOp(op: string): boolean {
  let v = hasOpCache.get(op);
  if (v === undefined) {
    try {
      opSchema(op);
      v = true;
    } catch {
      v = false;
    }
    hasOpCache.set(op, v);
  }
  return v;
}

const FOREACH_OPS = [
  '_foreach_mul_.Scalar',
  '_foreach_add_.List',
  '_foreach_addcmul_.Scalar',
  '_foreach_sqrt',
  '_foreach_add_.Scalar',
  '_foreach_addcdiv_.Scalar',
];

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  /** Decoupled weight decay: p -= lr * weightDecay * p before the Adam update. */
  weightDecay?: number;
  /** Use the `_foreach_*` operators (default: when libtorch has them). */
  foreach?: boolean;
}

/** One parameter's optimiser state. */
export interface AdamWParamState {
  /** Updates applied to this parameter (its bias correction uses this). */
  step: number;
  expAvg: Tensor;
  expAvgSq: Tensor;
}

/** Everything needed to resume exactly: the step count and the moments by parameter index. */
export interface AdamWStateDict {
  step: number;
  state: Map<number, AdamWParamState>;
}

export class AdamW {
  readonly params: Parameter[];
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  readonly foreach: boolean;
  /** step() calls so far. */
  stepCount = 0;
  private readonly state = new Map<number, AdamWParamState>();

  constructor(params: Parameter[], opts: AdamWOptions = {}) {
    this.params = [...params];
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    const [b1, b2] = this.betas;
    if (!(this.lr >= 0)) throw new Error(`AdamW: invalid learning rate ${this.lr}`);
    if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) throw new Error(`AdamW: invalid betas [${b1}, ${b2}]`);
    if (!(this.eps >= 0)) throw new Error(`AdamW: invalid eps ${this.eps}`);
    if (!(this.weightDecay >= 0)) throw new Error(`AdamW: invalid weight decay ${this.weightDecay}`);
    this.foreach = opts.foreach ?? FOREACH_OPS.every(hasOp);
    if (this.foreach && !FOREACH_OPS.every(hasOp)) throw new Error('AdamW: this libtorch has no _foreach_* operators');
  }

  /** One update of every parameter that has a gradient (parameters without one are skipped). */
  step(): void {
    this.stepCount++;
    const [b1, b2] = this.betas;
    const { lr, eps, weightDecay } = this;
    tidy(() =>
      noGrad(() => {
        // Parameters grouped by their own step count (equal unless some skipped earlier steps).
        const groups = new Map<number, { ps: Tensor[]; gs: Tensor[]; ms: Tensor[]; vs: Tensor[] }>();
        this.params.forEach((p, i) => {
          const g = p.value.grad;
          if (g === null) return;
          let st = this.state.get(i);
          if (!st) {
            st = { step: 0, expAvg: zerosLike(p.value).keep(), expAvgSq: zerosLike(p.value).keep() };
            this.state.set(i, st);
          }
          st.step++;
          let grp = groups.get(st.step);
          if (!grp) groups.set(st.step, (grp = { ps: [], gs: [], ms: [], vs: [] }));
          grp.ps.push(p.value);
          grp.gs.push(g);
          grp.ms.push(st.expAvg);
          grp.vs.push(st.expAvgSq);
        });
        for (const [t, { ps, gs, ms, vs }] of groups) {
          const bc1 = 1 - b1 ** t;
          const bc2Sqrt = Math.sqrt(1 - b2 ** t);
          // p -= lr/bc1 * m / (sqrt(v)/bc2Sqrt + eps), written with the bias correction of v
          // folded into the scalars: p -= (lr*bc2Sqrt/bc1) * m / (sqrt(v) + eps*bc2Sqrt). Same
          // value up to rounding, one pass over the moments fewer.
          const stepSize = (lr * bc2Sqrt) / bc1;
          const epsHat = eps * bc2Sqrt;
          if (this.foreach) {
            if (weightDecay !== 0) callInPlace('_foreach_mul_.Scalar', [ps, 1 - lr * weightDecay]);
            callInPlace('_foreach_mul_.Scalar', [ms, b1]);
            callInPlace('_foreach_add_.List', [ms, gs, 1 - b1]);
            callInPlace('_foreach_mul_.Scalar', [vs, b2]);
            callInPlace('_foreach_addcmul_.Scalar', [vs, gs, gs, 1 - b2]);
            const denom = callOp('_foreach_sqrt', [vs]) as Tensor[];
            callInPlace('_foreach_add_.Scalar', [denom, epsHat]);
            callInPlace('_foreach_addcdiv_.Scalar', [ps, ms, denom, -stepSize]);
          } else {
            for (let k = 0; k < ps.length; k++) {
              const p = ps[k];
              const g = gs[k];
              if (weightDecay !== 0) p.mul_(1 - lr * weightDecay);
              ms[k].lerp_(g, 1 - b1);
              vs[k].mul_(b2).addcmul_(g, g, 1 - b2);
              const denom = vs[k].sqrt().add_(epsHat);
              p.addcdiv_(ms[k], denom, -stepSize);
            }
          }
        }
      }),
    );
  }

  /** Clears every parameter's gradient (set to none, as PyTorch's default). */
  zeroGrad(): void {
    for (const p of this.params) p.value.zeroGrad();
  }

  /**
   * The state for exact resume. With copy (the default) the moments are fresh copies owned by
   * the caller (tracked by the current scope, if any); without, the live tensors (do not free).
   */
  stateDict(opts: { copy?: boolean } = {}): AdamWStateDict {
    const copy = opts.copy ?? true;
    const state = new Map<number, AdamWParamState>();
    for (const [i, st] of this.state) {
      state.set(i, {
        step: st.step,
        expAvg: copy ? noGrad(() => st.expAvg.clone()) : st.expAvg,
        expAvgSq: copy ? noGrad(() => st.expAvgSq.clone()) : st.expAvgSq,
      });
    }
    return { step: this.stepCount, state };
  }

  /**
   * Restores a state from stateDict() (the moments are copied; the given tensors stay the
   * caller's). Hyperparameters (lr, betas, ...) are this optimiser's own, not restored.
   */
  loadStateDict(sd: AdamWStateDict): void {
    const fresh = new Map<number, AdamWParamState>();
    try {
      for (const [i, st] of sd.state) {
        const p = this.params[i];
        if (!Number.isInteger(i) || p === undefined)
          throw new Error(`AdamW.loadStateDict: state for parameter ${i}, but the optimiser has ${this.params.length} parameters`);
        if (!Number.isInteger(st.step) || st.step < 0) throw new Error(`AdamW.loadStateDict: parameter ${i}: bad step ${st.step}`);
        const want = p.value.shape;
        for (const [name, t] of [
          ['expAvg', st.expAvg],
          ['expAvgSq', st.expAvgSq],
        ] as const) {
          const got = t.shape;
          if (got.length !== want.length || got.some((d, k) => d !== want[k])) {
            throw new Error(`AdamW.loadStateDict: parameter ${i}: ${name} has shape [${got.join(', ')}], the parameter [${want.join(', ')}]`);
          }
        }
        const copyOf = (t: Tensor) => noGrad(() => (t.dtype === p.value.dtype ? t.clone() : t.to(p.value.dtype))).keep();
        const expAvg = copyOf(st.expAvg);
        fresh.set(i, { step: st.step, expAvg, expAvgSq: copyOf(st.expAvgSq) });
      }
    } catch (e) {
      for (const st of fresh.values()) {
        st.expAvg.free();
        st.expAvgSq.free();
      }
      throw e;
    }
    this.freeState();
    for (const [i, st] of fresh) this.state.set(i, st);
    this.stepCount = sd.step;
  }

  /** Frees the moments (the optimiser starts afresh on its next step). */
  freeState(): void {
    for (const st of this.state.values()) {
      st.expAvg.free();
      st.expAvgSq.free();
    }
    this.state.clear();
  }
}

/**
 * Scales all gradients in place so that their global L2 norm is at most maxNorm (as
 * torch.nn.utils.clip_grad_norm_, coefficient maxNorm / (norm + 1e-6)). Returns the norm
 * before clipping (0 when no parameter has a gradient).
 */
export function clipGradNorm(params: Parameter[], maxNorm: number): number {
  return tidy(() =>
    noGrad(() => {
      const gs: Tensor[] = [];
      for (const p of params) {
        const g = p.value.grad;
        if (g !== null) gs.push(g);
      }
      if (gs.length === 0) return 0;
      const norms = hasOp('_foreach_norm.Scalar') ? (callOp('_foreach_norm.Scalar', [gs, 2]) as Tensor[]) : gs.map((g) => g.norm());
      const total = stack(norms.map((n) => n.to('float64')))
        .norm()
        .item();
      const coef = maxNorm / (total + 1e-6);
      if (coef < 1) {
        if (hasOp('_foreach_mul_.Scalar')) callInPlace('_foreach_mul_.Scalar', [gs, coef]);
        else for (const g of gs) g.mul_(coef);
      }
      return total;
    }),
  );
}
