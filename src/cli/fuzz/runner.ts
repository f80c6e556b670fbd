/**
 * Runs a target's cases in worker processes (worker.ts), each case under a time limit: a case
 * that does not answer in time is a hang (its worker is killed and replaced), a worker that
 * exits in the middle of a case is a crash. Counts outcomes and the workers' peak memory.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { CaseMessage, ResultMessage } from './worker.js';

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
  /** A few failing cases: "index: what happened". */
  examples: string[];
}

export interface RunOptions {
  cases: number;
  seed: number;
  workers: number;
  /** Per-case limit; default the target's. */
  timeoutMs: number;
  /** Limit for preparing a worker (building seeds, loading models). */
  prepareMs?: number;
  save?: string;
  onProgress?: (done: number, r: TargetResult) => void;
}

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));

export async function runTarget(name: string, o: RunOptions): Promise<TargetResult> {
  const r: TargetResult = { name, cases: 0, clean_errors: 0, accepted: 0, crashes: 0, hangs: 0, raw_errors: 0, died: 0, peak_mb: 0, seconds: 0, examples: [] };
  const t0 = performance.now();
  let next = 0;
  const example = (s: string) => {
    if (r.examples.length < 8) r.examples.push(s);
  };

  const lane = async (): Promise<void> => {
    let child: ChildProcess | undefined;
    const spawn = async (): Promise<ChildProcess> => {
      const c = fork(WORKER, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'advanced' });
      let err = '';
      c.stderr?.on('data', (d: Buffer) => {
        err = (err + d.toString()).slice(-2000);
      });
      (c as ChildProcess & { lastStderr: () => string }).lastStderr = () => err;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`fuzz ${name}: a worker took more than ${o.prepareMs ?? 120_000} ms to prepare`)),
          o.prepareMs ?? 120_000,
        );
        c.once('message', () => {
          clearTimeout(timer);
          resolve();
        });
        c.once('exit', (code, signal) => {
          clearTimeout(timer);
          reject(new Error(`fuzz ${name}: a worker died while preparing (${signal ?? code}): ${err.trim().split('\n').slice(-3).join(' | ')}`));
        });
        c.send({ kind: 'prepare', target: name });
      });
      c.removeAllListeners('exit');
      return c;
    };
    try {
      while (next < o.cases) {
        const index = next++;
        child ??= await spawn();
        const c = child;
        const outcome = await new Promise<ResultMessage | 'hang' | { died: string }>((resolve) => {
          const timer = setTimeout(() => resolve('hang'), o.timeoutMs);
          const onMessage = (m: ResultMessage) => {
            if (m.kind !== 'result' || m.index !== index) return;
            done();
            resolve(m);
          };
          const onExit = (code: number | null, signal: string | null) => {
            done();
            const err = (c as ChildProcess & { lastStderr: () => string }).lastStderr().trim().split('\n').slice(-2).join(' | ');
            resolve({ died: `exit ${signal ?? code}${err ? `: ${err}` : ''}` });
          };
          const done = () => {
            clearTimeout(timer);
            c.off('message', onMessage);
            c.off('exit', onExit);
          };
          c.on('message', onMessage);
          c.on('exit', onExit);
          c.send({ kind: 'case', target: name, seed: o.seed, index, save: o.save } satisfies CaseMessage);
        });
        r.cases++;
        if (outcome === 'hang') {
          r.hangs++;
          example(`#${index}: hang (no answer in ${o.timeoutMs} ms)`);
          c.kill('SIGKILL');
          child = undefined;
        } else if ('died' in outcome) {
          r.crashes++;
          r.died++;
          example(`#${index}: worker died (${outcome.died})`);
          child = undefined;
        } else {
          r.peak_mb = Math.max(r.peak_mb, outcome.peakMb);
          if (outcome.outcome === 'accepted') r.accepted++;
          else if (outcome.outcome === 'clean') r.clean_errors++;
          else {
            r.crashes++;
            r.raw_errors++;
            example(`#${index}: ${outcome.detail}`);
          }
        }
        o.onProgress?.(r.cases, r);
      }
    } finally {
      if (child) {
        const c = child;
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
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.workers, o.cases)) }, lane));
  r.seconds = Math.round((performance.now() - t0) / 100) / 10;
  return r;
}
