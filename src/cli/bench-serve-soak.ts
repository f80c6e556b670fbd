/**
 * softpress bench serve --soak [--requests 10000] [--clients 8] [--malformed 0.2] [--kills N]
 *                              [--base models/softpress-base] [--method truncate] [--store-mb 1024]
 *                              [--seed 1] [--json]
 *
 * The server under load and faults, on loopback only and bounded: `softpress serve` runs as a
 * child process on a fresh store; 8 clients send --requests requests back to back (creations,
 * questions, completions, chats, lookups, lists, deletions), a fifth of them malformed (broken
 * JSON, wrong types, 5 MB bodies, lone surrogates, NUL, traversal-like and unknown ids, wrong
 * Content-Type); at --kills random points the server is killed with SIGKILL in the middle of the
 * traffic and restarted on the same store. After each restart and at the end, every context whose
 * creation was acknowledged (201) and not deleted since must still be there.
 *
 * Reports the status counts (`conn_error` for requests cut by a kill), 5xx (must be 0),
 * acknowledged contexts lost (must be 0), p50/p99 latency of answered requests, and the server's
 * resident memory every 1,000 requests (VmRSS, with its anonymous and file-backed parts: LMDB's
 * memory map counts as file-backed). With --json the last line is
 * {"requests","status":{...},"five_xx","lost","p50_ms","p99_ms","rss_mb":[...]}.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { numberOpt } from './args.js';
import { percentile } from './bench-serve.js';
import { loadCorpus } from '../data/corpora.js';
import { HOSTILE_STRINGS, Rng, mutateJson, mutateText } from './fuzz/mutate.js';

const USAGE =
  'usage: softpress bench serve --soak [--requests 10000] [--clients 8] [--malformed 0.2] [--kills N] [--base DIR] [--method truncate] [--store-mb 1024] [--seed 1] [--json]';
const BIN = fileURLToPath(new URL('../../../bin/softpress.js', import.meta.url));
const STRATEGIES = new Set(['full', 'none', 'truncate']);

interface Memory {
  requests: number;
  rssMb: number;
  anonMb: number;
  fileMb: number;
  storeMb: number;
  contexts: number;
}

/** The resident memory of a process from /proc (MiB): total, anonymous, file-backed. */
function memoryOf(pid: number): { rss: number; anon: number; file: number } {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN) / 1024;
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem') };
  } catch {
    return { rss: NaN, anon: NaN, file: NaN };
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** The server as a child process on a fixed port and store, restartable. */
class ServerProcess {
  child?: ChildProcess;
  private log = '';
  /** Exits the soak did not cause. */
  unexpectedExits = 0;
  constructor(
    private readonly args: string[],
    readonly url: string,
  ) {}

  async start(): Promise<void> {
    const child = spawn(process.execPath, [BIN, 'serve', ...this.args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr!.on('data', (d: Buffer) => {
      this.log = (this.log + d.toString()).slice(-4000);
    });
    child.once('exit', () => {
      if (this.child === child) this.unexpectedExits++;
    });
    const t0 = Date.now();
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`the server exited while starting (${child.exitCode ?? child.signalCode}):\n${this.log}`);
      try {
        const r = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(2000) });
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() - t0 > 120_000) throw new Error(`the server did not answer /health within 120 s:\n${this.log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** kill -9 (or SIGTERM, then SIGKILL after 10 s), and wait for the process to be gone. */
  async end(signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(t);
  }
}

interface Request {
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  body?: string;
  contentType?: string;
  /** What to do with the answer: remember a created context, forget a deleted one. */
  kind: 'create' | 'delete' | 'other';
  id?: string;
}

export async function runSoak(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      soak: { type: 'boolean', default: true },
      requests: { type: 'string' },
      clients: { type: 'string' },
      malformed: { type: 'string' },
      kills: { type: 'string' },
      base: { type: 'string' },
      method: { type: 'string' },
      'store-mb': { type: 'string' },
      seed: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const total = numberOpt('requests', values.requests, { integer: true, min: 1 }) ?? 10_000;
  const clients = numberOpt('clients', values.clients, { integer: true, min: 1, max: 64 }) ?? 8;
  const malformedShare = numberOpt('malformed', values.malformed, { min: 0, max: 1 }) ?? 0.2;
  const killCount = numberOpt('kills', values.kills, { integer: true, min: 0 }) ?? Math.max(1, Math.round(total / 2000));
  const seed = numberOpt('seed', values.seed, { integer: true, min: 0 }) ?? 1;
  const storeMb = numberOpt('store-mb', values['store-mb'], { min: 1 }) ?? 1024;
  const base = values.base ?? 'models/softpress-base';
  const method = values.method ?? 'truncate';
  const say = (line: string) => process.stderr.write(`bench serve --soak: ${line}\n`);

  const tmp = mkdtempSync(join(tmpdir(), 'softpress-soak-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = [
    '--port',
    String(port),
    '--host',
    '127.0.0.1',
    '--store',
    join(tmp, 'store', 'contexts.mdb'),
    '--base',
    base,
    '--store-mb',
    String(storeMb),
    '--method',
    method,
  ];
  if (STRATEGIES.has(method)) args.push('--no-discover');
  const server = new ServerProcess(args, url);
  const rng = new Rng(seed);
  const docs = loadCorpus('sotu').map((d) => d.text);
  const questions = ['What did the president ask Congress to do?', 'Which year is mentioned?', 'Who is thanked?', 'What is the main topic?'];

  const status = new Map<string, number>();
  const latencies: number[] = [];
  const acked = new Set<string>();
  const memory: Memory[] = [];
  let sent = 0;
  let finished = 0;
  let lost = 0;
  const lostIds: string[] = [];
  const killAt = Array.from({ length: killCount }, () => Math.floor(total * (0.05 + 0.9 * rng.next()))).sort((a, b) => a - b);
  let down: Promise<void> | undefined;
  const t0 = performance.now();

  const text = () => {
    const d = rng.pick(docs);
    const words = d.split(/\s+/);
    const start = rng.int(Math.max(1, words.length - 400));
    return words.slice(start, start + 60 + rng.int(340)).join(' ');
  };
  const known = () => [...acked][rng.int(acked.size)];

  const valid = (): Request => {
    const r = rng.next();
    const id = acked.size ? known() : undefined;
    if (r < 0.3 || !id)
      return { method: 'POST', path: '/v1/contexts', body: JSON.stringify({ text: text(), method, ratio: rng.pick([2, 4, 8]) }), kind: 'create' };
    if (r < 0.6)
      return { method: 'POST', path: `/v1/contexts/${id}/ask`, body: JSON.stringify({ questions: [rng.pick(questions)], maxTokens: 8 }), kind: 'other' };
    if (r < 0.7)
      return {
        method: 'POST',
        path: '/v1/completions',
        body: JSON.stringify({ prompt: 'The nation', max_tokens: 8, context_id: id, temperature: 0 }),
        kind: 'other',
      };
    if (r < 0.75)
      return {
        method: 'POST',
        path: '/v1/chat/completions',
        body: JSON.stringify({ messages: [{ role: 'user', content: rng.pick(questions) }], max_tokens: 8, context_id: id }),
        kind: 'other',
      };
    if (r < 0.87) return { method: 'GET', path: `/v1/contexts/${id}`, kind: 'other' };
    if (r < 0.95) return { method: 'GET', path: '/v1/contexts?limit=20', kind: 'other' };
    acked.delete(id); // from now on its fate is unknown until the answer says
    return { method: 'DELETE', path: `/v1/contexts/${id}`, kind: 'delete', id };
  };

  const malformed = (): Request => {
    const id = acked.size ? known() : 'ctx_000000000000000000000000';
    switch (rng.int(9)) {
      case 0:
        return { method: 'POST', path: '/v1/contexts', body: mutateText(JSON.stringify({ text: text(), method }), rng), kind: 'create' };
      case 1:
        return {
          method: 'POST',
          path: `/v1/contexts/${id}/ask`,
          body: JSON.stringify(mutateJson({ questions: ['Who?'], maxTokens: 8 }, rng)) ?? 'null',
          kind: 'other',
        };
      case 2:
        return { method: 'POST', path: '/v1/contexts', body: JSON.stringify(mutateJson({ text: text(), method, ratio: 4 }, rng)) ?? 'null', kind: 'create' };
      case 3:
        return { method: 'POST', path: '/v1/contexts', body: JSON.stringify({ text: 'x'.repeat(5 * 2 ** 20) }), kind: 'create' };
      case 4:
        return {
          method: 'POST',
          path: '/v1/contexts',
          body: JSON.stringify({
            text: `a\u0000b \ud800 ${rng.pick(HOSTILE_STRINGS).slice(0, 2000)}`,
            method: rng.pick([method, '../../etc/passwd', '\u0000']),
          }),
          kind: 'create',
        };
      case 5:
        return {
          method: rng.pick(['GET', 'DELETE'] as const),
          path: `/v1/contexts/${rng.pick(['..%2F..%2Fetc%2Fpasswd', '%2e%2e', 'ctx_000000000000000000000000', '%00', 'a'.repeat(200), '%ED%A0%80'])}`,
          kind: 'other',
        };
      case 6:
        return {
          method: 'POST',
          path: '/v1/completions',
          body: JSON.stringify({ prompt: rng.pick([7, null, ['\ud800'], '']), max_tokens: rng.pick([-1, 1e9, 'x', 0.5]) }),
          kind: 'other',
        };
      case 7:
        return {
          method: 'POST',
          path: `/v1/contexts/${id}/ask`,
          body: JSON.stringify({ questions: ['Who?'] }),
          contentType: rng.pick(['text/plain', 'application/x-www-form-urlencoded']),
          kind: 'other',
        };
      default:
        return {
          method: 'POST',
          path: '/v1/chat/completions',
          body: JSON.stringify({
            messages: rng.pick([[], [{ role: 'wizard', content: 'x' }], 'hi', [{ role: 'user' }]]),
            context_id: rng.pick([id, 'nope', 7]),
          }),
          kind: 'other',
        };
    }
  };

  const count = (key: string) => status.set(key, (status.get(key) ?? 0) + 1);

  /** Every acknowledged context must be there (GET answers 200). */
  const verify = async (): Promise<void> => {
    for (const id of [...acked]) {
      const r = await fetch(`${url}/v1/contexts/${id}`, { signal: AbortSignal.timeout(30_000) });
      await r.arrayBuffer();
      if (r.status === 404) {
        lost++;
        lostIds.push(id);
        acked.delete(id);
      } else if (r.status !== 200) throw new Error(`checking context ${id}: HTTP ${r.status}`);
    }
  };

  const sample = async (n: number): Promise<void> => {
    const pid = server.child?.pid;
    const m = pid ? memoryOf(pid) : { rss: NaN, anon: NaN, file: NaN };
    let storeMb = NaN;
    let contexts = NaN;
    try {
      const h = (await (await fetch(`${url}/health`, { signal: AbortSignal.timeout(10_000) })).json()) as { store: { bytes: number; contexts: number } };
      storeMb = h.store.bytes / 2 ** 20;
      contexts = h.store.contexts;
    } catch {
      // restarting
    }
    memory.push({ requests: n, rssMb: m.rss, anonMb: m.anon, fileMb: m.file, storeMb, contexts });
    say(
      `${n} requests: server RSS ${m.rss.toFixed(0)} MiB (anonymous ${m.anon.toFixed(0)}, file-backed ${m.file.toFixed(0)}), store ${storeMb.toFixed(1)} MiB in ${contexts} contexts, ${((performance.now() - t0) / 1000).toFixed(0)} s`,
    );
  };

  const restart = async (): Promise<void> => {
    say(`kill -9 of the server after ${sent} requests (${acked.size} acknowledged contexts)`);
    await server.end('SIGKILL');
    await server.start();
    await verify();
    say(`restarted: ${acked.size} acknowledged contexts all answer (${lost} lost so far)`);
  };

  const client = async (): Promise<void> => {
    while (sent < total) {
      if (down) await down;
      if (killAt.length && sent >= killAt[0]) {
        killAt.shift();
        down = restart().finally(() => {
          down = undefined;
        });
        await down;
        continue;
      }
      sent++;
      const q = rng.next() < malformedShare ? malformed() : valid();
      const headers: Record<string, string> = {};
      if (q.body !== undefined) headers['content-type'] = q.contentType ?? 'application/json';
      const start = performance.now();
      let code: string;
      try {
        const res = await fetch(url + q.path, { method: q.method, headers, body: q.body, signal: AbortSignal.timeout(120_000) });
        const bodyText = await res.text();
        code = String(res.status);
        latencies.push(performance.now() - start);
        if (q.kind === 'create' && res.status === 201) {
          const j = JSON.parse(bodyText) as { id: string; evicted?: string[] };
          acked.add(j.id);
          for (const e of j.evicted ?? []) acked.delete(e);
        }
      } catch (e) {
        code = (e as Error).name === 'TimeoutError' ? 'timeout' : 'conn_error';
      }
      count(code);
      finished++;
      if (finished % 1000 === 0) await sample(finished);
    }
  };

  try {
    await server.start();
    say(
      `server on ${url} (base ${base}, method ${method}, store bound ${storeMb} MiB), ${clients} clients, ${total} requests, ${Math.round(malformedShare * 100)}% malformed, kills after ${killAt.join(', ') || 'none'}`,
    );
    await sample(0);
    await Promise.all(Array.from({ length: clients }, client));
    if (down) await down;
    if (finished % 1000 !== 0) await sample(finished);
    await verify();
  } finally {
    await server.end('SIGTERM');
    rmSync(tmp, { recursive: true, force: true });
  }

  const fiveXx = [...status].filter(([k]) => /^5\d\d$/.test(k)).reduce((s, [, v]) => s + v, 0);
  const p50 = Math.round(percentile(latencies, 50) * 10) / 10;
  const p99 = Math.round(percentile(latencies, 99) * 10) / 10;
  const out = process.stdout;
  out.write(
    `softpress bench serve --soak (${total} requests, ${clients} clients, ${Math.round(malformedShare * 100)}% malformed, ${killCount} kill -9 + restart, base ${base}, method ${method})\n`,
  );
  out.write(
    `  status      ${[...status]
      .sort()
      .map(([k, v]) => `${k}: ${v}`)
      .join(', ')}\n`,
  );
  out.write(`  5xx         ${fiveXx}\n`);
  out.write(`  lost        ${lost} of the acknowledged contexts${lostIds.length ? ` (${lostIds.slice(0, 5).join(', ')})` : ''}\n`);
  out.write(`  latency     p50 ${p50} ms, p99 ${p99} ms (answered requests)\n`);
  out.write(`  unexpected server exits: ${server.unexpectedExits}\n`);
  out.write('  requests  RSS MiB  anon MiB  file MiB  store MiB  contexts\n');
  for (const m of memory)
    out.write(
      `  ${String(m.requests).padStart(8)}  ${m.rssMb.toFixed(0).padStart(7)}  ${m.anonMb.toFixed(0).padStart(8)}  ${m.fileMb.toFixed(0).padStart(8)}  ${m.storeMb.toFixed(1).padStart(9)}  ${String(m.contexts).padStart(8)}\n`,
    );
  if (values.json) {
    out.write(
      JSON.stringify({
        requests: finished,
        status: Object.fromEntries([...status].sort()),
        five_xx: fiveXx,
        lost,
        p50_ms: p50,
        p99_ms: p99,
        rss_mb: memory.filter((m) => m.requests > 0).map((m) => Math.round(m.rssMb)),
      }) + '\n',
    );
  }
  if (fiveXx > 0 || lost > 0 || server.unexpectedExits > 0) process.exitCode = 1;
}
