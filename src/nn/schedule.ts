/**
 * Learning-rate schedules: pure functions of the (0-based) optimiser step, so that a resumed run
 * gets the same rate from the step count alone.
 *
 * Warmup is linear and reaches the peak at step warmupSteps - 1: lr(s) = peakLr * (s + 1) /
 * warmupSteps for s < warmupSteps (no step is wasted at lr 0). The decay then runs from step
 * warmupSteps (peakLr) to step totalSteps (minLr) and stays at minLr afterwards.
 */

/** The learning rate for a 0-based step. */
export type Schedule = (step: number) => number;

export interface DecayScheduleOptions {
  peakLr: number;
  warmupSteps?: number;
  totalSteps: number;
  /** The rate at and after totalSteps (default 0). */
  minLr?: number;
}

function checkOptions(name: string, o: DecayScheduleOptions): { peak: number; warmup: number; total: number; min: number } {
  const warmup = o.warmupSteps ?? 0;
  const min = o.minLr ?? 0;
  if (!Number.isFinite(o.peakLr) || o.peakLr < 0) throw new Error(`${name}: peakLr must be >= 0, got ${o.peakLr}`);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error(`${name}: warmupSteps must be an integer >= 0, got ${warmup}`);
  if (!Number.isInteger(o.totalSteps) || o.totalSteps < warmup)
    throw new Error(`${name}: totalSteps (${o.totalSteps}) must be an integer >= warmupSteps (${warmup})`);
  if (!Number.isFinite(min) || min < 0) throw new Error(`${name}: minLr must be >= 0, got ${min}`);
  return { peak: o.peakLr, warmup, total: o.totalSteps, min };
}

function checkStep(step: number): void {
  if (!Number.isFinite(step) || step < 0) throw new Error(`schedule: step must be >= 0, got ${step}`);
}

/** Linear warmup to peakLr, then half a cosine down to minLr at totalSteps. */
export function warmupCosine(opts: DecayScheduleOptions): Schedule {
  const { peak, warmup, total, min } = checkOptions('warmupCosine', opts);
  return (step) => {
    checkStep(step);
    if (step < warmup) return (peak * (step + 1)) / warmup;
    if (step >= total) return min;
    const progress = (step - warmup) / (total - warmup);
    return min + 0.5 * (peak - min) * (1 + Math.cos(Math.PI * progress));
  };
}

/** Linear warmup to peakLr, then a straight line down to minLr at totalSteps. */
export function warmupLinear(opts: DecayScheduleOptions): Schedule {
  const { peak, warmup, total, min } = checkOptions('warmupLinear', opts);
  return (step) => {
    checkStep(step);
    if (step < warmup) return (peak * (step + 1)) / warmup;
    if (step >= total) return min;
    const progress = (step - warmup) / (total - warmup);
    return peak + (min - peak) * progress;
  };
}

/** A constant rate, after an optional linear warmup. */
export function constant(opts: { lr: number; warmupSteps?: number }): Schedule {
  const warmup = opts.warmupSteps ?? 0;
  if (!Number.isFinite(opts.lr) || opts.lr < 0) throw new Error(`constant: lr must be >= 0, got ${opts.lr}`);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error(`constant: warmupSteps must be an integer >= 0, got ${warmup}`);
  return (step) => {
    checkStep(step);
    return step < warmup ? (opts.lr * (step + 1)) / warmup : opts.lr;
  };
}
