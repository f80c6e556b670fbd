/**
 * The one training loop of softpress (pretraining and every compressor objective use it):
 * gradient accumulation, global-norm clipping, an LR schedule, AdamW, atomic checkpoints with
 * exact resume, validation at intervals, a progress bar, JSONL logs, a loss plot, and Ctrl-C
 * that saves and exits cleanly.
 *
 * Exact resume rests on two rules: a task's batches are a pure function of (step, micro), and
 * libtorch's generator state is saved with the weights and moments.
 *
 * A checkpoint is the folder outDir/checkpoint: params.safetensors and optimizer.safetensors,
 * each with a content checksum verified on load (the optimizer file's metadata also carries the
 * trainer state, step and RNG, under that checksum), and state.json. It is written to
 * checkpoint.tmp-<pid> and swapped in through checkpoint.old-<pid>; a process killed during
 * the swap leaves those folders behind, and the next run in outDir removes the ones of dead
 * processes (restoring checkpoint.old-<pid> first when the swap left no checkpoint).
 *
 * Data parallelism (options.dist, a c10d process group): each rank computes its shard of every
 * micro-batch, the gradients are averaged (data-parallel.ts), and rank 0 alone reads and writes
 * outDir (checkpoint, log, plot, progress, validation); it starts every rank from its state.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { fromBytes, getRngState, setRngState, tidy, type Tensor } from '../tensor/index.js';
import { AdamW, clipGradNorm, type Parameter, type Schedule } from '../nn/index.js';
import { readSafetensors, writeSafetensors, type RawTensor } from '../io/safetensors.js';
import { rawToTensor, tensorToRaw } from '../models/load.js';
import { writeLinePlot } from '../io/plot.js';
import { Progress } from './progress.js';
import { averageGradients, microStats, syncStart } from './data-parallel.js';
import type { Shard } from '../data/shard.js';
import type { ProcessGroup } from '../tensor/index.js';

export type { Shard } from '../data/shard.js';

export interface MicroBatchLoss {
  /** Mean loss over the micro-batch's counted tokens (a scalar tensor with a graph). */
  loss: Tensor;
  /** Tokens the loss counts (for weighting micro-batches and tokens/s). */
  tokens: number;
  /** Named parts of the loss (plain numbers), averaged over micro-batches and logged per step. */
  parts?: Record<string, number>;
}

/** What a training objective provides to the loop. */
export interface TrainTask {
  /** Named trainable parameters (checkpointed by name). */
  readonly params: [string, Parameter][];
  /**
   * The loss of micro-batch `micro` of optimiser step `step` (deterministic in both). With a
   * shard, of that shard's rows only (shardRange), as the mean over their counted tokens; a task
   * that leaves gradients in the parameters itself weights them by its share of the micro-batch's
   * tokens times shard.count (the trainer averages over the ranks).
   */
  microBatch(step: number, micro: number, shard?: Shard): MicroBatchLoss;
  /** microBatch honours its shard (needed to train on several ranks). */
  readonly sharded?: boolean;
  /** Validation figures (e.g. {loss, ppl, bpb}); run without gradients by the task. */
  validate?(): Record<string, number>;
}

export interface TrainerOptions {
  outDir: string;
  totalSteps: number;
  gradAccum?: number;
  clip?: number;
  schedule: Schedule;
  betas?: [number, number];
  weightDecay?: number;
  eps?: number;
  checkpointEvery?: number;
  evalEvery?: number;
  /** Continue from outDir/checkpoint when present. */
  resume?: boolean;
  /** Stop (with a checkpoint) after this many steps of this run, e.g. to test resume. */
  stopAfter?: number;
  /** Title of the loss plot. */
  title?: string;
  /**
   * Validation losses of reference strategies on the same validation set (e.g. the full context
   * and no context), drawn as flat lines on the loss plot so the curve reads against them.
   */
  references?: Record<string, number>;
  quiet?: boolean;
  /**
   * Train data-parallel over this process group: rank 0 starts every rank from its state and
   * alone touches outDir; the task must be `sharded`.
   */
  dist?: ProcessGroup;
}

export interface TrainSummary {
  steps: number;
  lastLoss: number;
  lastValid?: Record<string, number>;
  seconds: number;
  interrupted: boolean;
  /** The run had reached totalSteps before this call (a resume of a finished run): nothing was trained. */
  alreadyFinished?: boolean;
}

interface CheckpointState {
  step: number;
  rng: string;
  elapsed: number;
  version: 1;
}

const CKPT = 'checkpoint';
const STALE = /^checkpoint\.(tmp|old)-(\d+)$/;

/** Whether a process with this id exists (one we may not signal still exists). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temporary checkpoint folders (checkpoint.tmp-<pid>, checkpoint.old-<pid>) that
 * processes killed while saving left in outDir; folders of live processes (another run writing
 * here) are left alone. When a swap was cut between its two renames there is no checkpoint but
 * an old-<pid> folder, the last complete checkpoint: it is put back first. Returns the names
 * removed (and restored).
 */
export function cleanStaleCheckpoints(outDir: string): { removed: string[]; restored?: string } {
  if (!existsSync(outDir)) return { removed: [] };
  const stale = readdirSync(outDir)
    .map((name) => ({ name, m: STALE.exec(name) }))
    .filter((x): x is { name: string; m: RegExpExecArray } => x.m !== null)
    .map(({ name, m }) => ({ name, kind: m[1], pid: Number(m[2]) }))
    .filter((x) => x.pid === process.pid || !processAlive(x.pid));
  let restored: string | undefined;
  const final = join(outDir, CKPT);
  if (!existsSync(final)) {
    const old = stale.filter((x) => x.kind === 'old' && existsSync(join(outDir, x.name, 'state.json')));
    const stepOf = (name: string) => {
      try {
        return (JSON.parse(readFileSync(join(outDir, name, 'state.json'), 'utf8')) as CheckpointState).step;
      } catch {
        return -1;
      }
    };
    const best = old
      .map((x) => ({ ...x, step: stepOf(x.name) }))
      .filter((x) => x.step >= 0)
      .sort((a, b) => b.step - a.step)[0];
    if (best) {
      renameSync(join(outDir, best.name), final);
      restored = best.name;
    }
  }
  const removed: string[] = [];
  for (const x of stale) {
    if (x.name === restored) continue;
    rmSync(join(outDir, x.name), { recursive: true, force: true });
    removed.push(x.name);
  }
  return { removed, restored };
}

/** Writes outDir/checkpoint atomically: a temporary folder, then renames. */
function saveCheckpoint(outDir: string, task: TrainTask, opt: AdamW, step: number, elapsed: number): void {
  const tmp = join(outDir, `${CKPT}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  tidy(() => {
    const params = new Map<string, RawTensor>();
    for (const [name, p] of task.params) params.set(name, tensorToRaw(p.value.detach(), name));
    writeSafetensors(join(tmp, 'params.safetensors'), params, undefined, { checksum: true });
    const sd = opt.stateDict({ copy: false });
    const moments = new Map<string, RawTensor>();
    const steps: Record<string, number> = {};
    for (const [i, s] of sd.state) {
      const name = task.params[i][0];
      moments.set(`exp_avg.${name}`, tensorToRaw(s.expAvg, name));
      moments.set(`exp_avg_sq.${name}`, tensorToRaw(s.expAvgSq, name));
      steps[name] = s.step;
    }
    const rng = Buffer.from(getRngState().toBytes()).toString('base64');
    const state: CheckpointState = { step, rng, elapsed, version: 1 };
    writeSafetensors(
      join(tmp, 'optimizer.safetensors'),
      moments,
      { steps: JSON.stringify(steps), step: String(sd.step), trainer_state: JSON.stringify(state) },
      { checksum: true },
    );
    writeFileSync(join(tmp, 'state.json'), JSON.stringify(state));
  });
  const final = join(outDir, CKPT);
  const old = join(outDir, `${CKPT}.old-${process.pid}`);
  if (existsSync(final)) renameSync(final, old);
  renameSync(tmp, final);
  rmSync(old, { recursive: true, force: true });
}

/** Loads only the parameters of outDir/checkpoint into `params` (e.g. to export a stopped run). */
export function loadCheckpointParams(outDir: string, params: [string, Parameter][]): { step: number } {
  const dir = join(outDir, CKPT);
  if (!existsSync(join(dir, 'state.json'))) throw new Error(`${outDir}: no checkpoint to load`);
  const state = readState(dir);
  const tensors = readSafetensors(join(dir, 'params.safetensors')).tensors;
  for (const [name, p] of params) {
    const raw = tensors.get(name);
    if (!raw) throw new Error(`${dir}: checkpoint has no parameter '${name}'`);
    tidy(() => p.load(rawToTensor(raw, name), name));
  }
  return { step: state.step };
}

function readState(dir: string): CheckpointState {
  const path = join(dir, 'state.json');
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as CheckpointState;
  } catch (e) {
    throw new Error(`${path}: unreadable checkpoint state (${(e as Error).message})`);
  }
}

function loadCheckpoint(outDir: string, task: TrainTask, opt: AdamW): CheckpointState {
  const dir = join(outDir, CKPT);
  const { tensors: moments, metadata } = readSafetensors(join(dir, 'optimizer.safetensors'));
  // Checkpoints written since checksums carry the state under the optimizer file's checksum.
  const state = metadata.trainer_state !== undefined ? (JSON.parse(metadata.trainer_state) as CheckpointState) : readState(dir);
  const params = readSafetensors(join(dir, 'params.safetensors')).tensors;
  for (const [name, p] of task.params) {
    const raw = params.get(name);
    if (!raw) throw new Error(`${dir}: checkpoint has no parameter '${name}' (different model or method?)`);
    tidy(() => p.load(rawToTensor(raw, name), name));
  }
  const steps = JSON.parse(metadata.steps ?? '{}') as Record<string, number>;
  // loadStateDict copies the moments, so the loaded tensors can be freed with the scope.
  tidy(() => {
    const sdState = new Map<number, { step: number; expAvg: Tensor; expAvgSq: Tensor }>();
    task.params.forEach(([name], i) => {
      const m = moments.get(`exp_avg.${name}`);
      const v = moments.get(`exp_avg_sq.${name}`);
      if (m && v) sdState.set(i, { step: steps[name] ?? state.step, expAvg: rawToTensor(m, name), expAvgSq: rawToTensor(v, name) });
    });
    opt.loadStateDict({ step: Number(metadata.step ?? state.step), state: sdState });
  });
  const rngBytes = Buffer.from(state.rng, 'base64');
  tidy(() => setRngState(fromBytes(new Uint8Array(rngBytes), 'uint8', [rngBytes.length])));
  return state;
}

interface LogRow {
  step: number;
  [k: string]: number;
}

function readLog(path: string): LogRow[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as LogRow);
}

/** Runs (or resumes) training to totalSteps. */
export async function train(task: TrainTask, o: TrainerOptions): Promise<TrainSummary> {
  const lead = !o.dist || o.dist.rank === 0;
  const dist = o.dist && o.dist.worldSize > 1 ? o.dist : undefined;
  const shard: Shard | undefined = dist ? { index: dist.rank, count: dist.worldSize } : undefined;
  if (dist && !task.sharded) throw new Error('train: this task cannot split its batches between ranks (TrainTask.sharded)');
  if (!lead) o = { ...o, quiet: true };
  if (lead) mkdirSync(o.outDir, { recursive: true });
  const accum = o.gradAccum ?? 1;
  const params = task.params.map(([, p]) => p);
  if (params.length === 0) throw new Error('train: the task has no trainable parameters');
  const opt = new AdamW(params, { lr: o.schedule(0), betas: o.betas ?? [0.9, 0.95], weightDecay: o.weightDecay ?? 0.1, eps: o.eps ?? 1e-8 });
  const logPath = join(o.outDir, 'log.jsonl');
  let step = 0;
  let elapsedBefore = 0;
  let lastLoss = NaN;
  let lastValid: Record<string, number> | undefined;
  const stale = lead ? cleanStaleCheckpoints(o.outDir) : { removed: [] };
  if (!o.quiet && stale.restored) process.stderr.write(`restored ${CKPT} from ${stale.restored} (a save was cut short)\n`);
  if (!o.quiet && stale.removed.length)
    process.stderr.write(`removed ${stale.removed.length} temporary checkpoint folder(s) of stopped processes: ${stale.removed.join(', ')}\n`);
  // Only rank 0 reads the checkpoint (syncStart below hands it to the others) and writes the log.
  if (lead && o.resume && existsSync(join(o.outDir, CKPT, 'state.json'))) {
    const st = loadCheckpoint(o.outDir, task, opt);
    step = st.step;
    elapsedBefore = st.elapsed;
    // Drop log rows past the checkpoint: they will be produced again.
    const kept = readLog(logPath).filter((r) => r.step <= step);
    writeFileSync(logPath, kept.map((r) => JSON.stringify(r) + '\n').join(''));
    // The figures of the steps before the checkpoint, for a summary even when no step runs now.
    lastLoss = kept.filter((r) => r.loss !== undefined).pop()?.loss ?? NaN;
    const valid = kept.filter((r) => Object.keys(r).some((k) => k.startsWith('valid_'))).pop();
    if (valid)
      lastValid = Object.fromEntries(
        Object.entries(valid)
          .filter(([k]) => k.startsWith('valid_'))
          .map(([k, v]) => [k.slice('valid_'.length), v]),
      );
    if (!o.quiet) {
      process.stderr.write(
        step >= o.totalSteps ? `the run finished already (step ${step} of ${o.totalSteps}): nothing to train\n` : `resuming from step ${step}\n`,
      );
    }
  } else if (lead) {
    // A fresh start (also --resume before any checkpoint exists): rows of an earlier attempt
    // would repeat steps 1.. in the log and the plot.
    writeFileSync(logPath, '');
  }
  if (dist) ({ step, elapsed: elapsedBefore } = syncStart(dist, params, opt, { step, elapsed: elapsedBefore }));

  let interrupted = false;
  const onSigint = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    if (lead) process.stderr.write('\ninterrupt: saving a checkpoint, then stopping (Ctrl-C again to abort)\n');
  };
  process.on('SIGINT', onSigint);
  const progress = new Progress(o.totalSteps, { quiet: o.quiet, start: step });
  const t0 = performance.now();
  const alreadyFinished = step >= o.totalSteps;
  let ran = 0;
  try {
    while (step < o.totalSteps) {
      const lr = o.schedule(step);
      opt.lr = lr;
      const stepStart = performance.now();
      let tokens = 0;
      let lossSum = 0;
      const parts: Record<string, number> = {};
      let comm = { wait: 0, seconds: 0 };
      const micro = Array.from({ length: accum }, (_, m) => m);
      let gradNorm = 0;
      tidy(() => {
        for (const m of micro) {
          tidy(() => {
            const r = task.microBatch(step, m, shard);
            if (dist) {
              // The micro-batch's loss is the token-weighted mean of the shards' losses.
              const all = microStats(dist, r.tokens, r.tokens > 0 ? r.loss.item() : 0);
              if (r.tokens > 0) r.loss.mul((r.tokens * dist.worldSize) / (all.tokens * accum)).backward();
              lossSum += all.loss;
              tokens += all.tokens;
            } else {
              const loss = r.loss.div(accum);
              loss.backward();
              lossSum += r.loss.item();
              tokens += r.tokens;
            }
            // With several ranks, the parts are rank 0's shard's.
            for (const [k, v] of Object.entries(r.parts ?? {})) parts[k] = (parts[k] ?? 0) + v / accum;
          });
        }
        if (dist) {
          const avg = averageGradients(dist, params, interrupted);
          interrupted = avg.stop;
          comm = avg;
        }
        gradNorm = o.clip ? clipGradNorm(params, o.clip) : 0;
        opt.step();
        opt.zeroGrad();
      });
      step++;
      ran++;
      lastLoss = lossSum / accum;
      if (!Number.isFinite(lastLoss)) throw new Error(`train: loss is ${lastLoss} at step ${step}; stopping (lower the learning rate?)`);
      const secs = (performance.now() - stepStart) / 1000;
      const row: LogRow = {
        step,
        loss: lastLoss,
        ...parts,
        lr,
        tok_s: tokens / secs,
        grad_norm: gradNorm,
        ...(dist ? { comm_s: comm.seconds, wait_s: comm.wait } : {}),
        time: elapsedBefore + (performance.now() - t0) / 1000,
      };
      if (lead) appendFileSync(logPath, JSON.stringify(row) + '\n');
      progress.update(step, { loss: lastLoss, 'tok/s': tokens / secs, lr });
      const last = step === o.totalSteps;
      if (lead && task.validate && o.evalEvery && (step % o.evalEvery === 0 || last)) {
        lastValid = task.validate();
        appendFileSync(logPath, JSON.stringify({ step, ...Object.fromEntries(Object.entries(lastValid).map(([k, v]) => [`valid_${k}`, v])) }) + '\n');
        progress.note(
          `step ${step}: valid ${Object.entries(lastValid)
            .map(([k, v]) => `${k} ${v.toFixed(4)}`)
            .join(', ')}`,
        );
        // A long run's curve can be looked at while it trains.
        writeLossPlot(o.outDir, o.title ?? 'training loss', o.references);
      }
      const stopHere = interrupted || (o.stopAfter !== undefined && ran >= o.stopAfter);
      if (lead && (last || stopHere || (o.checkpointEvery && step % o.checkpointEvery === 0))) {
        saveCheckpoint(o.outDir, task, opt, step, elapsedBefore + (performance.now() - t0) / 1000);
      }
      if (stopHere) break;
      // Let signals and timers run between steps.
      await new Promise((r) => setImmediate(r));
    }
    // No rank leaves while another still waits in a collective (rank 0 saved meanwhile).
    dist?.barrier();
  } finally {
    process.off('SIGINT', onSigint);
    progress.done();
    opt.freeState();
  }
  if (lead) writeLossPlot(o.outDir, o.title ?? 'training loss', o.references);
  return { steps: step, lastLoss, lastValid, seconds: elapsedBefore + (performance.now() - t0) / 1000, interrupted, alreadyFinished };
}

/** loss.svg from log.jsonl: training loss (smoothed) and validation loss by step; references as flat lines. */
export function writeLossPlot(outDir: string, title: string, references: Record<string, number> = {}): void {
  const rows = readLog(join(outDir, 'log.jsonl'));
  const trainPts: [number, number][] = [];
  let ema = NaN;
  for (const r of rows) {
    if (r.loss === undefined) continue;
    ema = Number.isNaN(ema) ? r.loss : 0.9 * ema + 0.1 * r.loss;
    trainPts.push([r.step, ema]);
  }
  const validPts = rows.filter((r) => r.valid_loss !== undefined).map((r) => [r.step, r.valid_loss] as [number, number]);
  const series = [{ name: 'train (EMA 0.9)', points: trainPts }];
  if (validPts.length) series.push({ name: 'valid', points: validPts });
  const last = rows.length ? Math.max(...rows.map((r) => r.step)) : 1;
  for (const [name, value] of Object.entries(references)) {
    if (Number.isFinite(value))
      series.push({
        name: `valid, ${name}`,
        points: [
          [0, value],
          [last, value],
        ],
      });
  }
  writeLinePlot(join(outDir, 'loss.svg'), series, { title, xLabel: 'optimiser step', yLabel: 'cross-entropy (nats/token)' });
}
