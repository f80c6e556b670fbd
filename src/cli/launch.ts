/**
 * Data-parallel runs of a training subcommand (train, pretrain), like torchrun:
 *   --nproc N                            start N local worker processes of the same command
 *                                        (ranks 0..N-1 over loopback) and wait for them
 *   --rank R --world-size W --master A:P join a group that may span machines (rank 0 serves
 *                                        the rendezvous on port P of address A)
 *   --dist-timeout SECONDS               how long a rank waits for the others (default 1800)
 *
 * The launcher gives each worker SOFTPRESS_THREADS = cores / N unless the variable is set. When a
 * worker fails, the launcher stops the others and exits non-zero; Ctrl-C reaches every worker
 * once (they save a checkpoint on the same step and stop). A worker whose launcher is gone stops.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { DEFAULT_DIST_TIMEOUT_MS, ProcessGroup, parseMaster } from '../tensor/index.js';
import { numberOpt } from './args.js';

/** The flags, for parseArgs. */
export const DIST_OPTIONS = {
  nproc: { type: 'string' },
  rank: { type: 'string' },
  'world-size': { type: 'string' },
  master: { type: 'string' },
  'dist-timeout': { type: 'string' },
} as const;

export const DIST_USAGE = '[--nproc N | --rank R --world-size W --master ADDR:PORT] [--dist-timeout SECONDS]';

export type DistPlan =
  { kind: 'single' } | { kind: 'launch'; nproc: number } | { kind: 'join'; rank: number; worldSize: number; master: string; timeoutMs: number };

/** What the flags ask for: one process, a launcher of N local workers, or a rank of a group. */
export function distPlan(v: { nproc?: string; rank?: string; 'world-size'?: string; master?: string; 'dist-timeout'?: string }): DistPlan {
  const nproc = numberOpt('nproc', v.nproc, { integer: true, min: 1 });
  const joining = v.rank !== undefined || v['world-size'] !== undefined || v.master !== undefined;
  if (nproc !== undefined && joining) throw new Error('--nproc starts local workers itself: give it without --rank/--world-size/--master');
  const timeoutS = numberOpt('dist-timeout', v['dist-timeout'], { gt: 0 });
  if (joining) {
    if (v.rank === undefined || v['world-size'] === undefined || v.master === undefined)
      throw new Error('joining a group needs all of --rank R --world-size W --master ADDR:PORT');
    const worldSize = numberOpt('world-size', v['world-size'], { integer: true, min: 1 })!;
    const rank = numberOpt('rank', v.rank, { integer: true, min: 0, max: worldSize - 1 })!;
    parseMaster(v.master);
    return { kind: 'join', rank, worldSize, master: v.master, timeoutMs: timeoutS !== undefined ? timeoutS * 1000 : DEFAULT_DIST_TIMEOUT_MS };
  }
  if (nproc !== undefined && nproc > 1) return { kind: 'launch', nproc };
  return { kind: 'single' };
}

/** Joins the group a 'join' plan names (returns once every rank is there). */
export function joinGroup(plan: Extract<DistPlan, { kind: 'join' }>): ProcessGroup {
  const launcher = Number(process.env.SOFTPRESS_LAUNCHER_PID);
  if (launcher > 0) {
    // Workers of a launcher that died (kill -9) stop instead of training on as orphans.
    setInterval(() => {
      if (process.ppid !== launcher) {
        process.stderr.write(`rank ${plan.rank}: the launcher (pid ${launcher}) is gone; stopping\n`);
        process.exit(1);
      }
    }, 1000).unref();
  }
  return ProcessGroup.init({ rank: plan.rank, worldSize: plan.worldSize, master: plan.master, timeoutMs: plan.timeoutMs });
}

/**
 * Runs a training command as its flags plan it: launches the local workers (returns undefined:
 * they report), or runs `body` with the group it joins (closed after) or alone. Returns body's
 * result where it is to be reported (rank 0, or the single process), undefined elsewhere.
 */
export async function runPlanned<T>(
  command: string,
  argv: string[],
  plan: DistPlan,
  body: (dist?: ProcessGroup) => Promise<T>,
  opts: { quiet?: boolean } = {},
): Promise<T | undefined> {
  if (plan.kind === 'launch') {
    await launchWorkers(command, argv, plan.nproc, opts.quiet ? { log: () => {} } : {});
    return undefined;
  }
  const dist = plan.kind === 'join' ? joinGroup(plan) : undefined;
  try {
    const result = await body(dist);
    return dist && dist.rank !== 0 ? undefined : result;
  } finally {
    dist?.destroy();
  }
}

/** A free TCP port on loopback (for the rendezvous of local workers). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** argv without --nproc N / --nproc=N. */
function withoutNproc(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--nproc') i++;
    else if (!argv[i].startsWith('--nproc=')) out.push(argv[i]);
  }
  return out;
}

/**
 * Runs `softpress <command> argv` as nproc workers over loopback and waits for them. Resolves
 * when all succeeded; rejects (after stopping the others) when one fails.
 */
export async function launchWorkers(command: string, argv: string[], nproc: number, opts: { log?: (s: string) => void } = {}): Promise<void> {
  const log = opts.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const port = await freePort();
  const bin = fileURLToPath(new URL('../../../bin/softpress.js', import.meta.url));
  const threads = process.env.SOFTPRESS_THREADS ?? String(Math.max(1, Math.floor(availableParallelism() / nproc)));
  const rest = withoutNproc(argv);
  log(`launching ${nproc} workers (${threads} thread${threads === '1' ? '' : 's'} each), rendezvous on 127.0.0.1:${port}`);
  const children: ChildProcess[] = [];
  const forward = (sig: NodeJS.Signals) => () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill(sig);
  };
  const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((sig) => [sig, forward(sig)] as const);
  for (const [sig, h] of handlers) process.on(sig, h);
  try {
    await new Promise<void>((resolve, reject) => {
      let failure: string | undefined;
      let left = nproc;
      const stopOthers = () => {
        for (const c of children) {
          if (c.exitCode === null && c.signalCode === null) {
            c.kill('SIGTERM');
            setTimeout(() => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL'), 5000).unref();
          }
        }
      };
      for (let rank = 0; rank < nproc; rank++) {
        // Detached: a Ctrl-C at the terminal reaches the launcher alone, which passes it on once.
        const child = spawn(
          process.execPath,
          [...process.execArgv, bin, command, ...rest, '--rank', String(rank), '--world-size', String(nproc), '--master', `127.0.0.1:${port}`],
          {
            stdio: ['ignore', 'inherit', 'inherit'],
            detached: true,
            env: { ...process.env, SOFTPRESS_THREADS: threads, SOFTPRESS_LAUNCHER_PID: String(process.pid) },
          },
        );
        children.push(child);
        const ended = () => {
          if (--left > 0) return;
          if (failure) reject(new Error(failure));
          else resolve();
        };
        child.on('error', (e) => {
          failure ??= `rank ${rank} could not start: ${e.message}; the other ranks were stopped`;
          stopOthers();
          if (child.pid === undefined) ended(); // never started: no 'exit' follows
        });
        child.on('exit', (code, signal) => {
          if ((code !== 0 || signal !== null) && failure === undefined) {
            failure = `rank ${rank} ${signal ? `was killed by ${signal}` : `exited with code ${code}`}; the other ranks were stopped`;
            stopOthers();
          }
          ended();
        });
      }
    });
  } finally {
    for (const [sig, h] of handlers) process.off(sig, h);
  }
}
