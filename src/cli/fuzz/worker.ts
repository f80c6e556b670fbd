/**
 * The fuzzer's worker process: prepares a target once, then runs the cases the parent sends
 * (by index: the input is regenerated here from the run seed) one at a time, answering each
 * with its outcome and the process's peak resident memory. The parent kills a worker whose case
 * runs past the time limit (a hang) and counts a worker that dies (a crash).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, caseSeed } from './mutate.js';
import { TARGETS, describeError, type Outcome, type Prepared } from './target.js';

export interface CaseMessage {
  kind: 'case';
  target: string;
  seed: number;
  index: number;
  /** Folder to write the input of a case that is not accepted or cleanly rejected. */
  save?: string;
}
export interface PrepareMessage {
  kind: 'prepare';
  target: string;
}
export interface ResultMessage {
  kind: 'result';
  index: number;
  outcome: Outcome;
  detail?: string;
  peakMb: number;
  ms: number;
}

/** Peak resident memory of this process in MiB (VmHWM; the current RSS where /proc is missing). */
export function peakMb(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Math.round(Number(m[1]) / 1024);
  } catch {
    // not Linux
  }
  return Math.round(process.memoryUsage().rss / 2 ** 20);
}

/** Runs case `index` of a prepared target in this process. */
export async function runCase(p: Prepared, target: string, seed: number, index: number): Promise<{ outcome: Outcome; detail?: string; input: unknown }> {
  const input = p.make(new Rng(caseSeed(seed, target, index)));
  try {
    const r = await p.run(input);
    return { outcome: r === 'clean' ? 'clean' : 'accepted', input };
  } catch (e) {
    return { outcome: p.clean(e) ? 'clean' : 'raw', detail: describeError(e), input };
  }
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'softpress-fuzz-'));
  process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
  let prepared: { name: string; p: Prepared } | undefined;
  const queue: (CaseMessage | PrepareMessage)[] = [];
  let busy = false;
  const pump = async () => {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const m = queue.shift()!;
      if (!prepared || prepared.name !== m.target) {
        await prepared?.p.close?.();
        prepared = { name: m.target, p: await (await TARGETS[m.target].load()).prepare(tmp) };
      }
      if (m.kind === 'prepare') {
        process.send!({ kind: 'ready' });
        continue;
      }
      const t0 = performance.now();
      const r = await runCase(prepared.p, m.target, m.seed, m.index);
      if (m.save && r.outcome === 'raw') writeFileSync(join(m.save, `${m.target}-${m.seed}-${m.index}.bin`), prepared.p.bytes(r.input));
      const out: ResultMessage = { kind: 'result', index: m.index, outcome: r.outcome, detail: r.detail, peakMb: peakMb(), ms: performance.now() - t0 };
      process.send!(out);
    }
    busy = false;
  };
  process.on('message', (m: CaseMessage | PrepareMessage | { kind: 'exit' }) => {
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
