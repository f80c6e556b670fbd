/**
 * Where the time goes: libtorch's operator profiler around a function, summarised as self
 * time per operator (time inside an op minus time in the ops it called), forward and backward.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from './native.js';

export interface OpTime {
  name: string;
  calls: number;
  /** Self time in milliseconds. */
  selfMs: number;
}

interface TraceEvent {
  name: string;
  ph: string;
  ts: number;
  dur?: number;
  tid: number | string;
}

/** Runs fn under the profiler; returns its result and self time per op, largest first. */
export function profile<T>(fn: () => T): { result: T; ops: OpTime[]; totalMs: number } {
  const dir = mkdtempSync(join(tmpdir(), 'softpress-profile-'));
  const path = join(dir, 'trace.json');
  native.profilerStart(path);
  let result: T;
  try {
    result = fn();
  } finally {
    native.profilerStop();
  }
  const ops = summarise(JSON.parse(readFileSync(path, 'utf8')) as TraceEvent[] | { traceEvents: TraceEvent[] });
  rmSync(dir, { recursive: true, force: true });
  return { result, ops, totalMs: ops.reduce((a, o) => a + o.selfMs, 0) };
}

function summarise(trace: TraceEvent[] | { traceEvents: TraceEvent[] }): OpTime[] {
  const events = (Array.isArray(trace) ? trace : trace.traceEvents).filter((e) => e.ph === 'X' && e.dur !== undefined);
  const byThread = new Map<string, TraceEvent[]>();
  for (const e of events) {
    const k = String(e.tid);
    const list = byThread.get(k) ?? [];
    list.push(e);
    byThread.set(k, list);
  }
  const totals = new Map<string, OpTime>();
  for (const list of byThread.values()) {
    // Sort by start, longer first, then subtract each event from its innermost enclosing one.
    list.sort((a, b) => a.ts - b.ts || b.dur! - a.dur!);
    const self = list.map((e) => e.dur!);
    const stack: number[] = [];
    list.forEach((e, i) => {
      while (stack.length && list[stack[stack.length - 1]].ts + list[stack[stack.length - 1]].dur! <= e.ts) stack.pop();
      if (stack.length) self[stack[stack.length - 1]] -= e.dur!;
      stack.push(i);
    });
    list.forEach((e, i) => {
      const t = totals.get(e.name) ?? { name: e.name, calls: 0, selfMs: 0 };
      t.calls++;
      t.selfMs += Math.max(0, self[i]) / 1000;
      totals.set(e.name, t);
    });
  }
  return [...totals.values()].sort((a, b) => b.selfMs - a.selfMs);
}
