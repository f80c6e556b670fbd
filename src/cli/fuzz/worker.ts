/**
 * The fuzzer's worker process: prepares a target once, then runs the batches of cases the
 * parent sends (by index: each input is regenerated here from the run seed) one case at a time,
 * answering each case as soon as it ends with its outcome, the process's CPU time and its peak
 * resident memory. The worker does not wait for the parent between cases; the parent knows the
 * case in progress (the first of the batch not yet answered), kills a worker whose case runs
 * past the limit (a hang) and counts a worker that dies (a crash) against that case.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, caseSeed } from './mutate.js';
import { TARGETS, describeError, type Outcome, type Prepared, type Target } from './target.js';

export interface BatchMessage {
  kind: 'batch';
  target: string;
  seed: number;
  /** Case indices, run in this order. */
  indices: number[];
  /** Folder to write the input of a case that is not accepted or cleanly rejected. */
  save?: string;
}
export interface PrepareMessage {
  kind: 'prepare';
  target: string;
  /** A module whose `target` export is the Target (instead of the registry's; for the runner's tests). */
  module?: string;
}
export interface ReadyMessage {
  kind: 'ready';
  cpuMs: number;
}
export interface ResultMessage {
  kind: 'result';
  index: number;
  outcome: Outcome;
  detail?: string;
  peakMb: number;
  /** This process's CPU time (user + system, all threads) when the case ended, ms. */
  cpuMs: number;
}

/** Peak resident memory of this process in MiB (getrusage's ru_maxrss). */
export function peakMb(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

/** This process's CPU time so far, ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Runs case `index` of a prepared target in this process. */
export async function runCase(p: Prepared, target: string, seed: number, index: number): Promise<{ outcome: Outcome; detail?: string; input: unknown }> {
  let input: unknown;
  try {
    input = p.make(new Rng(caseSeed(seed, target, index)));
  } catch (e) {
    // the fuzzer's own bug, not the parser's: counted as a crash so that it gets fixed
    return { outcome: 'raw', detail: `making the input failed: ${describeError(e)}`, input: undefined };
  }
  try {
    const r = await p.run(input);
    return { outcome: r === 'clean' ? 'clean' : 'accepted', input };
  } catch (e) {
    return { outcome: p.clean(e) ? 'clean' : 'raw', detail: describeError(e), input };
  }
}

/** Lets the event loop write what process.send queued (the parent's view of the case in progress depends on it). */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

async function main(): Promise<void> {
  // inside the run's folder (SOFTPRESS_FUZZ_TMP), which the runner removes even when it kills us
  const tmp = mkdtempSync(join(process.env.SOFTPRESS_FUZZ_TMP ?? tmpdir(), 'softpress-fuzz-'));
  process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
  let prepared: { name: string; p: Prepared } | undefined;
  const queue: (BatchMessage | PrepareMessage)[] = [];
  let busy = false;
  const pump = async () => {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const m = queue.shift()!;
      if (!prepared || prepared.name !== m.target) {
        await prepared?.p.close?.();
        const module = m.kind === 'prepare' ? m.module : undefined;
        const target = module ? ((await import(module)) as { target: Target }).target : await TARGETS[m.target].load();
        prepared = { name: m.target, p: await target.prepare(tmp) };
      }
      if (m.kind === 'prepare') {
        process.send!({ kind: 'ready', cpuMs: cpuMs() } satisfies ReadyMessage);
        continue;
      }
      for (const index of m.indices) {
        const r = await runCase(prepared.p, m.target, m.seed, index);
        if (m.save && r.outcome === 'raw' && r.input !== undefined)
          writeFileSync(join(m.save, `${m.target}-${m.seed}-${index}.bin`), prepared.p.bytes(r.input));
        process.send!({ kind: 'result', index, outcome: r.outcome, detail: r.detail, peakMb: peakMb(), cpuMs: cpuMs() } satisfies ResultMessage);
        await flush();
      }
    }
    busy = false;
  };
  process.on('message', (m: BatchMessage | PrepareMessage | { kind: 'exit' }) => {
    if (m.kind === 'exit') {
      void (async () => {
        await prepared?.p.close?.();
        process.exit(0);
      })();
      return;
    }
    queue.push(m);
    void pump();
  });
}

if (process.send) void main();
