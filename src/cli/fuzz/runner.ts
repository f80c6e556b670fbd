/**
 * Runs a target's cases in long-lived worker processes (worker.ts). A lane sends its worker a
 * batch of case indices; the worker runs them one after another and answers each as it ends,
 * so the case in progress is always the first unanswered one of the batch. Each case is bounded:
 * a case that uses more than the limit of CPU time in its worker (or, as a backstop for a case
 * that blocks without computing, `wallFactor` times the limit of wall time) is a hang — the
 * worker is killed and replaced, and the rest of the batch goes to the new worker. A worker that
 * exits in the middle of a case is a crash of that case. Limits count the worker's CPU time
 * (from /proc) so that a worker starved by other processes on a busy machine is not taken for a
 * hang; without /proc they count wall time. Counts outcomes and the workers' peak memory; every
 * failure is reported with its index and the run seed, which replay it (`--replay NAME:INDEX`).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BatchMessage, PrepareMessage, ReadyMessage, ResultMessage } from './worker.js';

export interface TargetResult {
  name: string;
  cases: number;
  /** Rejected with a named error class naming the file (or a 4xx error body, for the server). */
  clean_errors: number;
  accepted: number;
  /** Worker deaths plus raw errors (TypeError & co., errors without context, 5xx). */
  crashes: number;
  hangs: number;
  /** Of the crashes: raw errors thrown (the process survived). */
  raw_errors: number;
  /** Of the crashes: workers that died. */
  died: number;
  /** Highest peak resident memory of a worker, MiB. */
  peak_mb: number;
  seconds: number;
  /** Worker processes started (one per lane, plus one after each hang or death). */
  workers_started: number;
  /** A few failing cases: "index: what happened (how to replay it)". */
  examples: string[];
}

export interface RunOptions {
  cases: number;
  seed: number;
  workers: number;
  /** Per-case limit of the worker's CPU time, ms. */
  timeoutMs: number;
  /** A case also hangs after wallFactor x timeoutMs of wall time (default 6). */
  wallFactor?: number;
  /** Cases per batch sent to a worker (default: up to 64, fewer for short runs so lanes share the work). */
  batch?: number;
  /** Limit for preparing a worker (building seeds, loading models). */
  prepareMs?: number;
  save?: string;
  /** A module whose `target` export is the Target to run under `name` (for tests of the runner). */
  module?: string;
  onProgress?: (done: number, r: TargetResult) => void;
}

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** CPU time (user + system, all threads) of a process so far in ms, or undefined where /proc is missing. */
export function processCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after the command: state(3) ... utime(14) stime(15), 1-based in proc(5)
    return ((Number(f[11]) + Number(f[12])) * 1000) / USER_HZ;
  } catch {
    return undefined;
  }
}

interface Worker {
  child: ChildProcess;
  /** The worker's CPU time when it last answered, ms. */
  cpuMs: number;
  stderr: () => string;
}

type BatchEnd = { kind: 'done' } | { kind: 'hang'; at: number; cpuMs?: number; wallMs: number } | { kind: 'died'; at: number; why: string };

export async function runTarget(name: string, o: RunOptions): Promise<TargetResult> {
  const r: TargetResult = {
    name,
    cases: 0,
    clean_errors: 0,
    accepted: 0,
    crashes: 0,
    hangs: 0,
    raw_errors: 0,
    died: 0,
    peak_mb: 0,
    seconds: 0,
    workers_started: 0,
    examples: [],
  };
  const t0 = performance.now();
  // the workers' temporary folders live in one folder of this run, removed at its end: a worker
  // killed for a hang cannot remove its own
  const runTmp = mkdtempSync(join(tmpdir(), 'softpress-fuzz-run-'));
  const lanes = Math.max(1, Math.min(o.workers, o.cases));
  const wallFactor = o.wallFactor ?? 6;
  const tick = Math.max(20, Math.min(250, o.timeoutMs / 10));
  let next = 0;
  const replay = (index: number) => `replay: softpress fuzz --replay ${name}:${index} --seed ${o.seed}`;
  const example = (s: string) => {
    if (r.examples.length < 8) r.examples.push(s);
  };

  /** The next batch of case indices for a lane. */
  const take = (): number[] => {
    const left = o.cases - next;
    const size = Math.max(1, Math.min(left, o.batch ?? Math.min(64, Math.ceil(left / (lanes * 4)))));
    const out = Array.from({ length: size }, (_, i) => next + i);
    next += size;
    return out;
  };

  const record = (m: ResultMessage) => {
    r.cases++;
    r.peak_mb = Math.max(r.peak_mb, m.peakMb);
    if (m.outcome === 'accepted') r.accepted++;
    else if (m.outcome === 'clean') r.clean_errors++;
    else {
      r.crashes++;
      r.raw_errors++;
      example(`#${m.index}: ${m.detail} (${replay(m.index)})`);
    }
    o.onProgress?.(r.cases, r);
  };

  const spawn = async (): Promise<Worker> => {
    r.workers_started++;
    // one libtorch thread per worker: the lanes are the parallelism, and the tensors are tiny
    const env = { ...process.env, SOFTPRESS_THREADS: process.env.SOFTPRESS_THREADS ?? '1', SOFTPRESS_FUZZ_TMP: runTmp };
    const c = fork(WORKER, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'advanced', env });
    let err = '';
    c.stderr?.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-2000);
    });
    const prepareMs = o.prepareMs ?? 120_000;
    const ready = await new Promise<ReadyMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        c.kill('SIGKILL');
        reject(new Error(`fuzz ${name}: a worker took more than ${prepareMs} ms to prepare`));
      }, prepareMs);
      c.once('message', (m: ReadyMessage) => {
        clearTimeout(timer);
        resolve(m);
      });
      c.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`fuzz ${name}: a worker died while preparing (${signal ?? code}): ${err.trim().split('\n').slice(-3).join(' | ')}`));
      });
      c.send({ kind: 'prepare', target: name, module: o.module } satisfies PrepareMessage);
    });
    c.removeAllListeners('exit');
    c.removeAllListeners('message');
    return { child: c, cpuMs: ready.cpuMs, stderr: () => err };
  };

  /** Sends a batch and follows it until its last answer, or until the case in progress hangs or its worker dies. */
  const runBatch = (w: Worker, indices: number[]): Promise<BatchEnd> =>
    new Promise<BatchEnd>((resolve) => {
      const c = w.child;
      let at = 0;
      let wallStart = performance.now();
      let cpuStart = w.cpuMs;
      const finish = (end: BatchEnd) => {
        clearInterval(watch);
        c.off('message', onMessage);
        c.off('exit', onExit);
        resolve(end);
      };
      const onMessage = (m: ResultMessage) => {
        if (m.kind !== 'result' || m.index !== indices[at]) return;
        record(m);
        w.cpuMs = cpuStart = m.cpuMs;
        wallStart = performance.now();
        if (++at === indices.length) finish({ kind: 'done' });
      };
      const onExit = (code: number | null, signal: string | null) => {
        const err = w.stderr().trim().split('\n').slice(-2).join(' | ');
        finish({ kind: 'died', at, why: `exit ${signal ?? code}${err ? `: ${err}` : ''}` });
      };
      const watch = setInterval(() => {
        const wallMs = performance.now() - wallStart;
        const cpu = c.pid === undefined ? undefined : processCpuMs(c.pid);
        const used = cpu === undefined ? wallMs : cpu - cpuStart;
        if (used > o.timeoutMs || wallMs > o.timeoutMs * wallFactor) finish({ kind: 'hang', at, cpuMs: cpu === undefined ? undefined : used, wallMs });
      }, tick);
      c.on('message', onMessage);
      c.on('exit', onExit);
      c.send({ kind: 'batch', target: name, seed: o.seed, indices, save: o.save } satisfies BatchMessage);
    });

  const lane = async (): Promise<void> => {
    let w: Worker | undefined;
    try {
      while (next < o.cases) {
        let pending = take();
        while (pending.length) {
          w ??= await spawn();
          const end = await runBatch(w, pending);
          if (end.kind === 'done') break;
          const index = pending[end.at];
          pending = pending.slice(end.at + 1);
          r.cases++;
          if (end.kind === 'hang') {
            r.hangs++;
            const used = end.cpuMs === undefined ? '' : `${Math.round(end.cpuMs)} ms of CPU, `;
            example(`#${index}: hang (${used}${Math.round(end.wallMs)} ms of wall time; limit ${o.timeoutMs} ms) (${replay(index)})`);
            w.child.kill('SIGKILL');
          } else {
            r.crashes++;
            r.died++;
            example(`#${index}: worker died (${end.why}) (${replay(index)})`);
          }
          w = undefined;
          o.onProgress?.(r.cases, r);
        }
      }
    } finally {
      if (w) {
        const c = w.child;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            c.kill('SIGKILL');
            resolve();
          }, 10_000);
          c.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          c.send({ kind: 'exit' });
        });
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: lanes }, lane));
  } finally {
    rmSync(runTmp, { recursive: true, force: true });
  }
  r.seconds = Math.round((performance.now() - t0) / 100) / 10;
  return r;
}
