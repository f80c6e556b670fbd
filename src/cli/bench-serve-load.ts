/**
 * softpress bench serve, part 3: light requests while the server compresses.
 *
 * One client posts compressions of a long text (2,048 tokens by default) back to back (each
 * stored context is deleted again); meanwhile GET /health and a one-question ask over a stored
 * soft context (its prefix keys/values already cached) are sent at fixed rates. The same light
 * requests are first measured with no compressions running, in the same run.
 *
 * The light requests are open-loop: request k is due at t0 + k * interval whether or not the
 * earlier ones have returned, and its latency runs from when it was due, not from when it was
 * sent. (The clients share the server's process: while the event loop is blocked no request is
 * sent at all, and measuring from the send would hide exactly the stalls this measures.)
 */
import { percentile } from './bench-serve.js';

interface Json {
  [k: string]: unknown;
}

export interface LightStats {
  requests: number;
  errors: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

export interface LoadRow {
  /** `idle`: no compressions; `compressing`: compressions back to back. */
  phase: 'idle' | 'compressing';
  seconds: number;
  compressions: number;
  /** Median server-side compression time (compressMs) and median wall time of a compression request. */
  compress_ms_p50: number | null;
  compress_wall_ms_p50: number | null;
  health: LightStats;
  ask: LightStats;
}

export interface LoadOptions {
  url: string;
  /** A stored context and a question about it (asked with maxTokens). */
  contextId: string;
  question: string;
  maxTokens: number;
  /** What the loading client compresses: POST /v1/contexts bodies. */
  compressBody: Json;
  seconds: number;
  healthEveryMs: number;
  askEveryMs: number;
}

const r1 = (x: number) => Math.round(x * 10) / 10;

function stats(lat: number[], errors: number): LightStats {
  return { requests: lat.length, errors, p50_ms: r1(percentile(lat, 50)), p99_ms: r1(percentile(lat, 99)), max_ms: r1(lat.length ? Math.max(...lat) : NaN) };
}

/** Fires `fire(due)` at t0 + k * every until `end` (catching up after a stall); settles when all fired requests have. */
async function openLoop(t0: number, end: number, every: number, fire: (due: number) => Promise<void>): Promise<void> {
  const fired: Promise<void>[] = [];
  let k = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      for (; t0 + k * every <= now && t0 + k * every < end; k++) fired.push(fire(t0 + k * every));
      if (t0 + k * every >= end) return resolve();
      setTimeout(tick, Math.max(0, t0 + k * every - performance.now()));
    };
    tick();
  });
  await Promise.all(fired);
}

/** One phase: the light requests for `seconds`, with or without compressions back to back. */
export async function lightRequests(o: LoadOptions, compressing: boolean): Promise<LoadRow> {
  const health: number[] = [];
  const ask: number[] = [];
  let healthErrors = 0;
  let askErrors = 0;
  const compressMs: number[] = [];
  const compressWall: number[] = [];
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  const get = async (due: number) => {
    try {
      const res = await fetch(`${o.url}/health`);
      await res.arrayBuffer();
      if (res.status === 200) health.push(performance.now() - due);
      else healthErrors++;
    } catch {
      healthErrors++;
    }
  };
  const asking = async (due: number) => {
    try {
      const res = await fetch(`${o.url}/v1/contexts/${o.contextId}/ask`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ questions: [o.question], maxTokens: o.maxTokens }),
      });
      await res.arrayBuffer();
      if (res.status === 200) ask.push(performance.now() - due);
      else askErrors++;
    } catch {
      askErrors++;
    }
  };
  const load = async () => {
    while (compressing && performance.now() < end) {
      const t = performance.now();
      const res = await fetch(`${o.url}/v1/contexts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(o.compressBody),
      });
      const json = (await res.json()) as Json;
      if (res.status !== 201)
        throw new Error(`compression under load: HTTP ${res.status}: ${(json.error as Json | undefined)?.message ?? JSON.stringify(json)}`);
      compressWall.push(performance.now() - t);
      compressMs.push(json.compressMs as number);
      await fetch(`${o.url}/v1/contexts/${json.id as string}`, { method: 'DELETE' }).then((r) => r.arrayBuffer());
    }
  };
  await Promise.all([openLoop(t0, end, o.healthEveryMs, get), openLoop(t0, end, o.askEveryMs, asking), load()]);
  return {
    phase: compressing ? 'compressing' : 'idle',
    seconds: r1((performance.now() - t0) / 1000),
    compressions: compressMs.length,
    compress_ms_p50: compressMs.length ? r1(percentile(compressMs, 50)) : null,
    compress_wall_ms_p50: compressWall.length ? r1(percentile(compressWall, 50)) : null,
    health: stats(health, healthErrors),
    ask: stats(ask, askErrors),
  };
}

export function formatLoadRows(rows: LoadRow[], what: string): string {
  let s = `  light requests ${what}\n  phase        compressions (p50 ms)   /health p50  p99    max      ask p50  p99    max     errors\n`;
  for (const r of rows) {
    const c = r.compressions ? `${r.compressions} (${r.compress_ms_p50})` : '-';
    s +=
      `  ${r.phase.padEnd(12)} ${c.padEnd(23)} ${String(r.health.p50_ms).padEnd(12)} ${String(r.health.p99_ms).padEnd(6)} ${String(r.health.max_ms).padEnd(8)} ` +
      `${String(r.ask.p50_ms).padEnd(8)} ${String(r.ask.p99_ms).padEnd(6)} ${String(r.ask.max_ms).padEnd(7)} ${r.health.errors + r.ask.errors}\n`;
  }
  return s;
}
