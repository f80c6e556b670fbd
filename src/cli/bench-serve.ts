/**
 * softpress bench serve [--json] [--base DIR | --random-base] [--method M] [--clients 1,8]
 *                       [--seconds 5] [--max-tokens 16] [--lengths 512,1024,2048] [--ratios 4,8]
 *                       [--reps 3] [--compressor DIR ...] [--fresh METHOD]
 *                       [--load-only] [--load-seconds 10] [--load-tokens 2048] [--load-method M]
 *                       [--no-compress-worker] [--no-service-thread]
 *
 * Benchmarks the serving path over real HTTP (the server runs in this process on an ephemeral
 * port with a fresh temporary store; the clients are fetch calls in the same process):
 *  1. throughput: N concurrent clients, each asking one question per request (ask endpoint)
 *     against contexts already compressed and cached (512-token needle passages at ratio 4),
 *     back to back for --seconds: requests/s, p50/p99 latency, rows per decode forward;
 *  2. answer latency with the soft context vs the full context, measured in the same run, for
 *     needle passages of each length and each ratio, one client, sequential requests, medians:
 *     `first` = the first question on a newly compressed context (it runs the context prefix
 *     through the decoder: what every question would cost without the server's prefix cache),
 *     `warm` = later questions (the prefix's keys/values are cached; only the question and the
 *     answer run), and the prefix cache's bytes per context. The full context is the `full`
 *     strategy when it fits the base window; otherwise (1,024 or 2,048 tokens with a 1,024-token
 *     window, which must also hold BOS, the question and the answer) it is the longest tail that
 *     fits (`truncate` with a token budget), reported as full_mode "truncated" with full_tokens.
 *  3. light requests under compression load (bench-serve-load.ts): /health every 20 ms and a
 *     one-question ask over a stored soft context every 250 ms (or every 4 times a warm ask's
 *     latency, whichever is longer, so asks alone stay below capacity), open-loop, first with nothing
 *     else running, then while one client compresses --load-tokens-token texts back to back
 *     at the largest --ratios (with --load-method, default the method under test): p50/p99/max of each.
 *     --load-only runs this part alone.
 * --fresh METHOD adds an untrained compressor of that method (random initial weights) for bases
 * that have no trained one (e.g. smollm2-135m-instruct): its costs are real, its answers noise.
 * The server runs compressions in its worker thread, as `softpress serve` does, unless
 * --no-compress-worker (then one engine unit each on the service's thread); and the service (the
 * model, the engine, the store) in its own thread, as `softpress serve` does (service-thread.ts),
 * unless --no-service-thread (then on the event loop that serves HTTP, with the clients).
 * With --json the last stdout line is one JSON object.
 *
 * softpress bench serve --soak ...: the server under load and kill -9 (bench-serve-soak.ts).
 */
import { parseArgs } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getNumThreads } from '../tensor/index.js';
import { openService } from '../serve/service.js';
import { ServiceThread } from '../serve/service-thread.js';
import type { ServiceApi } from '../serve/service-api.js';
import type { EngineOptions, EngineStats } from '../serve/engine.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { buildServer } from '../serve/server.js';
import { BASE_SHAPE, writeRandomBase } from '../serve/testing.js';
import { loadCorpus } from '../data/corpora.js';
import { splitDocuments } from '../data/splits.js';
import { makeNeedleExamples, type QAExample } from '../data/qa.js';
import { qaPrompt } from '../serve/text.js';
import { loadModel } from '../models/load.js';
import { resolveModelRef } from '../io/model-source.js';
import { createCompressor, freeCompressor, saveCompressor } from '../compress/index.js';

const USAGE =
  'usage: softpress bench serve [--json] [--base DIR | --random-base] [--method M] [--clients 1,8] [--seconds 5]\n' +
  '                             [--max-tokens 16] [--lengths 512,1024,2048] [--ratios 4,8] [--reps 3] [--compressor DIR ...] [--fresh METHOD]\n' +
  '                             [--load-only] [--load-seconds 10] [--load-tokens 2048] [--load-method M] [--no-compress-worker]\n' +
  '                             [--no-service-thread]';

function list(name: string, v: string | undefined, dflt: number[]): number[] {
  if (v === undefined) return dflt;
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isFinite(x) || x <= 0))
    throw new Error(`--${name} must be a comma-separated list of positive numbers, got '${v}'\n${USAGE}`);
  return xs;
}

function positive(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got '${v}'\n${USAGE}`);
  return n;
}

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

const r1 = (x: number) => Math.round(x * 10) / 10;

interface Json {
  [k: string]: unknown;
}

class Client {
  constructor(readonly url: string) {}
  async post(path: string, body: unknown): Promise<{ status: number; json: Json; ms: number }> {
    const t0 = performance.now();
    const res = await fetch(this.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const json = (await res.json()) as Json;
    return { status: res.status, json, ms: performance.now() - t0 };
  }
  async del(path: string): Promise<void> {
    await fetch(this.url + path, { method: 'DELETE' }).then((r) => r.arrayBuffer());
  }
  async ok(path: string, body: unknown): Promise<{ json: Json; ms: number }> {
    const r = await this.post(path, body);
    if (r.status >= 300) throw new Error(`${path}: HTTP ${r.status}: ${(r.json.error as Json | undefined)?.message ?? JSON.stringify(r.json)}`);
    return r;
  }
}

export interface ThroughputRow {
  clients: number;
  requests: number;
  errors: number;
  seconds: number;
  rps: number;
  p50_ms: number;
  p99_ms: number;
  /** Rows per decoder forward in the decode steps (how much requests share forwards). */
  mean_decode_rows: number;
  tokens_per_answer: number;
}

/** The service under test, on this thread or in its own, and what the bench needs to know of it. */
interface Served {
  api: ServiceApi;
  tokenizer: Tokenizer;
  /** Bytes of one position's keys/values over all layers. */
  kvBytesPerToken: number;
  engineOptions: Required<EngineOptions>;
  compressWorker: boolean;
  prefixCache: boolean;
  engineStats(): Promise<EngineStats>;
}

async function throughput(
  client: Client,
  served: Served,
  ids: string[],
  questions: string[],
  clients: number,
  seconds: number,
  maxTokens: number,
): Promise<ThroughputRow> {
  const before = await served.engineStats();
  const latencies: number[] = [];
  let errors = 0;
  let tokens = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let k = 0; performance.now() < end; k++) {
        const i = (c + k) % ids.length;
        const r = await client.post(`/v1/contexts/${ids[i]}/ask`, { questions: [questions[i]], maxTokens });
        if (r.status !== 200) {
          errors++;
          continue;
        }
        latencies.push(r.ms);
        tokens += (r.json.answers as { tokens: number }[])[0].tokens;
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const after = await served.engineStats();
  const steps = after.decodeForwards - before.decodeForwards;
  return {
    clients,
    requests: latencies.length,
    errors,
    seconds: r1(elapsed),
    rps: r1(latencies.length / elapsed),
    p50_ms: r1(percentile(latencies, 50)),
    p99_ms: r1(percentile(latencies, 99)),
    mean_decode_rows: steps ? r1((after.decodeRows - before.decodeRows) / steps) : 0,
    tokens_per_answer: latencies.length ? r1(tokens / latencies.length) : 0,
  };
}

export interface LatencyRow {
  context_tokens: number;
  ratio: number;
  method: string;
  soft_tokens: number;
  /** Median compression time (server-side). */
  compress_ms: number;
  /** Median end-to-end latency of the first question on a new context (computes its prefix keys/values). */
  soft_first_ms: number;
  /** Median end-to-end latency of later questions (prefix keys/values cached). */
  soft_warm_ms: number;
  /** Bytes of the cached prefix keys/values ([BOS] + soft tokens, all layers). */
  soft_kv_bytes: number;
  full_mode: 'full' | 'truncated';
  full_tokens: number;
  full_first_ms: number;
  full_warm_ms: number;
  full_kv_bytes: number;
  /** full_first_ms / soft_first_ms */
  first_speedup: number;
  /** full_warm_ms / soft_warm_ms */
  warm_speedup: number;
  soft_answer_tokens: number;
  full_answer_tokens: number;
}

interface Measured {
  tokens: number;
  compressMs: number;
  firstMs: number;
  warmMs: number;
  answerTokens: number;
}

/**
 * `reps` times: compress the text (a new context) and ask the question once — the first answer
 * pays for the context's prefix keys/values; then `reps` more questions on the last context,
 * with the prefix cached. Medians; all requests sequential (no batching with each other).
 */
async function measure(client: Client, text: string, question: string, make: Json, reps: number, maxTokens: number): Promise<Measured> {
  const first: number[] = [];
  const compress: number[] = [];
  const warm: number[] = [];
  let tokens = 0;
  let answerTokens = 0;
  let id = '';
  for (let i = 0; i < reps; i++) {
    if (id) await client.del(`/v1/contexts/${id}`);
    const c = await client.ok('/v1/contexts', { text, ...make });
    id = c.json.id as string;
    tokens = c.json.softTokens as number;
    compress.push(c.json.compressMs as number);
    const r = await client.ok(`/v1/contexts/${id}/ask`, { questions: [question], maxTokens });
    first.push(r.ms);
  }
  for (let i = 0; i < reps; i++) {
    const r = await client.ok(`/v1/contexts/${id}/ask`, { questions: [question], maxTokens });
    warm.push(r.ms);
    answerTokens += (r.json.answers as { tokens: number }[])[0].tokens;
  }
  return {
    tokens,
    compressMs: r1(percentile(compress, 50)),
    firstMs: r1(percentile(first, 50)),
    warmMs: r1(percentile(warm, 50)),
    answerTokens: r1(answerTokens / reps),
  };
}

/** Saves an untrained compressor of `method` over the base model into dir (for --fresh). */
function freshCompressor(base: string, method: string, dir: string): string {
  const { model } = loadModel(resolveModelRef(base));
  try {
    const c = createCompressor(method, model);
    saveCompressor(c, dir);
    freeCompressor(c);
  } finally {
    model.free();
  }
  return dir;
}

type ServiceOptions = Parameters<typeof openService>[0];

function inProcess(o: ServiceOptions): Served {
  const service = openService(o);
  const cfg = service.model.config;
  return {
    api: service,
    tokenizer: service.tokenizer,
    kvBytesPerToken: cfg.numLayers * 2 * cfg.numKvHeads * cfg.headDim * (service.model.dtype === 'float32' ? 4 : 2),
    engineOptions: service.engine.opts,
    compressWorker: service.compressWorker,
    prefixCache: service.prefixCache,
    engineStats: async () => service.engine.stats(),
  };
}

/** The service in its thread; the bench reads the tokenizer and the model's shape from its own (freed) copy. */
async function inThread(o: ServiceOptions): Promise<Served> {
  const thread = await ServiceThread.open(o);
  const probe = loadModel(o.base);
  const cfg = probe.model.config;
  const kvBytesPerToken = cfg.numLayers * 2 * cfg.numKvHeads * cfg.headDim * (probe.model.dtype === 'float32' ? 4 : 2);
  probe.model.free();
  if (!probe.tokenizer) throw new Error(`${o.base}: no tokenizer`);
  return {
    api: thread,
    tokenizer: probe.tokenizer,
    kvBytesPerToken,
    engineOptions: thread.engineOptions,
    compressWorker: thread.compressWorker,
    prefixCache: thread.prefixCache,
    // the figures the thread sends every healthEveryMs: wait for ones taken after now
    engineStats: async () => {
      await new Promise((resolve) => setTimeout(resolve, 2 * thread.healthEveryMs));
      return thread.health().engine as EngineStats;
    },
  };
}

export async function run(argv: string[]): Promise<void> {
  if (argv.includes('--soak')) return (await import('./bench-serve-soak.js')).runSoak(argv);
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean', default: false },
      base: { type: 'string' },
      'random-base': { type: 'boolean', default: false },
      method: { type: 'string' },
      compressor: { type: 'string', multiple: true },
      clients: { type: 'string' },
      seconds: { type: 'string' },
      'max-tokens': { type: 'string' },
      lengths: { type: 'string' },
      ratios: { type: 'string' },
      reps: { type: 'string' },
      fresh: { type: 'string' },
      'load-only': { type: 'boolean', default: false },
      'load-seconds': { type: 'string' },
      'load-tokens': { type: 'string' },
      'load-method': { type: 'string' },
      'no-compress-worker': { type: 'boolean', default: false },
      'no-service-thread': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const clientsList = list('clients', values.clients, [1, 8]).map(Math.round);
  const seconds = positive('seconds', values.seconds, 5);
  const maxTokens = Math.round(positive('max-tokens', values['max-tokens'], 16));
  const lengths = list('lengths', values.lengths, [512, 1024, 2048]).map(Math.round);
  const ratios = list('ratios', values.ratios, [4, 8]);
  const reps = Math.round(positive('reps', values.reps, 3));
  const loadSeconds = positive('load-seconds', values['load-seconds'], 10);
  const loadTokens = Math.round(positive('load-tokens', values['load-tokens'], 2048));
  const say = (line: string) => process.stderr.write(`bench serve: ${line}\n`);

  const tmp = mkdtempSync(join(tmpdir(), 'softpress-bench-serve-'));
  let base = values.base ?? 'models/softpress-base';
  if (values['random-base']) {
    if (values.base) throw new Error('give --base or --random-base, not both');
    base = writeRandomBase(join(tmp, 'random-base'), { ...BASE_SHAPE, seed: 1 });
    say(
      `random weights in the base architecture (${BASE_SHAPE.layers} layers, dim ${BASE_SHAPE.hiddenSize}, window ${BASE_SHAPE.window}): timings only, answers are noise`,
    );
  }
  const compressorDirs = [...(values.compressor ?? [])];
  if (values.fresh) compressorDirs.push(freshCompressor(base, values.fresh, join(tmp, `fresh-${values.fresh}`)));
  const serviceOptions = {
    base,
    compressorDirs,
    compressWorker: !values['no-compress-worker'],
    storePath: join(tmp, 'store', 'contexts.mdb'),
    storeMaxBytes: 2 ** 30,
    log: say,
  };
  const served = values['no-service-thread'] ? inProcess(serviceOptions) : await inThread(serviceOptions);
  const service = served.api;
  const app = buildServer(service);
  try {
    await app.listen({ port: 0, host: '127.0.0.1' });
    const client = new Client(`http://127.0.0.1:${(app.server.address() as { port: number }).port}`);
    const method = values.method ?? service.defaultMethod;
    const methods = await service.methods();
    if (!methods.some((m) => m.name === method)) throw new Error(`method '${method}' is not available (have ${methods.map((m) => m.name).join(', ')})`);
    const learned = methods.find((m) => m.name === method)!.learned;
    const tok = served.tokenizer;
    const docs = splitDocuments(loadCorpus('sotu'), { seed: 0 }).test;
    const count = (t: string) => tok.encode(t).length;
    const needles = (tokens: number, n: number, seed: string): QAExample[] =>
      makeNeedleExamples(docs, { count: n, tokens, countTokens: count, seed, depth: 0.5 });
    say(
      `base ${service.modelName} (${service.fingerprint}), window ${service.window}, method ${method}${learned ? '' : ' (a strategy: no learned compressor loaded)'}, ${getNumThreads()} threads`,
    );

    const loadOnly = values['load-only'];
    // 1. throughput on cached contexts
    const tp: ThroughputRow[] = [];
    const tpDocs = needles(512, 4, 'bench-serve-throughput');
    const ids: string[] = [];
    for (const ex of tpDocs) ids.push((await client.ok('/v1/contexts', { text: ex.context, method, ratio: 4 })).json.id as string);
    const questions = tpDocs.map((ex) => ex.question);
    for (const [i, id] of ids.entries()) await client.ok(`/v1/contexts/${id}/ask`, { questions: [questions[i]], maxTokens }); // warm
    for (const n of loadOnly ? [] : clientsList) {
      const row = await throughput(client, served, ids, questions, n, seconds, maxTokens);
      tp.push(row);
      say(
        `throughput ${n} clients: ${row.rps} req/s, p50 ${row.p50_ms} ms, p99 ${row.p99_ms} ms, ${row.mean_decode_rows} rows per decode step, ${row.errors} errors`,
      );
    }

    // 2. soft vs full answer latency
    const kvBytesPer = served.kvBytesPerToken;
    const lat: LatencyRow[] = [];
    for (const L of loadOnly ? [] : lengths) {
      const ex = needles(L, 1, `bench-serve-latency-${L}`)[0];
      const promptTokens = tok.encode(qaPrompt(ex.question)).length;
      const room = service.window - 1 - promptTokens - maxTokens;
      const probe = await client.post('/v1/contexts', { text: ex.context, method: 'full' });
      const fits = probe.status === 201 && (probe.json.softTokens as number) <= room;
      const fullMake: Json = fits ? { method: 'full' } : { method: 'truncate', budget: room };
      const full = await measure(client, ex.context, ex.question, fullMake, reps, maxTokens);
      for (const ratio of ratios) {
        const made = await client.post('/v1/contexts', { text: ex.context, method, ratio });
        if (made.status !== 201) {
          say(`${L} tokens at ratio ${ratio}: ${(made.json.error as Json | undefined)?.message ?? made.status} (skipped)`);
          continue;
        }
        const soft = await measure(client, ex.context, ex.question, { method, ratio }, reps, maxTokens);
        const row: LatencyRow = {
          context_tokens: made.json.sourceTokens as number,
          ratio,
          method,
          soft_tokens: soft.tokens,
          compress_ms: soft.compressMs,
          soft_first_ms: soft.firstMs,
          soft_warm_ms: soft.warmMs,
          soft_kv_bytes: (1 + soft.tokens) * kvBytesPer,
          full_mode: fits ? 'full' : 'truncated',
          full_tokens: full.tokens,
          full_first_ms: full.firstMs,
          full_warm_ms: full.warmMs,
          full_kv_bytes: (1 + full.tokens) * kvBytesPer,
          first_speedup: Math.round((full.firstMs / soft.firstMs) * 100) / 100,
          warm_speedup: Math.round((full.warmMs / soft.warmMs) * 100) / 100,
          soft_answer_tokens: soft.answerTokens,
          full_answer_tokens: full.answerTokens,
        };
        lat.push(row);
        say(
          `${row.context_tokens} tokens, ratio ${ratio}: first answer soft (${row.soft_tokens}) ${row.soft_first_ms} ms vs ${row.full_mode} (${row.full_tokens}) ${row.full_first_ms} ms; warm ${row.soft_warm_ms} vs ${row.full_warm_ms} ms`,
        );
      }
    }

    // 3. light requests while compressions run back to back
    const { lightRequests, formatLoadRows } = await import('./bench-serve-load.js');
    const loadMethod = values['load-method'] ?? method;
    const loadText = needles(loadTokens, 1, 'bench-serve-load')[0].context;
    // the ask stays light: one every 250 ms, or every 4 idle asks' time on a slower model
    const warm: number[] = [];
    for (let i = 0; i < 3; i++) warm.push((await client.ok(`/v1/contexts/${ids[0]}/ask`, { questions: [questions[0]], maxTokens })).ms);
    const askEveryMs = Math.max(250, Math.ceil(4 * percentile(warm, 50)));
    const loadOpts = {
      url: client.url,
      contextId: ids[0],
      question: questions[0],
      maxTokens,
      compressBody: { text: loadText, method: loadMethod, ratio: Math.max(...ratios) },
      seconds: loadSeconds,
      healthEveryMs: 20,
      askEveryMs,
    };
    const loadRows = [];
    for (const compressing of [false, true]) {
      const row = await lightRequests(loadOpts, compressing);
      loadRows.push(row);
      say(
        `${row.phase}: ${row.compressions} compressions (p50 ${row.compress_ms_p50} ms); /health p50 ${row.health.p50_ms} p99 ${row.health.p99_ms} max ${row.health.max_ms} ms; ask p50 ${row.ask.p50_ms} p99 ${row.ask.p99_ms} ms`,
      );
    }
    const rssMb = Math.round(process.memoryUsage().rss / 2 ** 20); // the process after the load: with the worker, two copies of the model
    const loadWhat = `(process RSS ${rssMb} MiB; /health every 20 ms, an ask every ${askEveryMs} ms; ${loadTokens}-token compressions by ${loadMethod}; ${served.compressWorker ? 'compressions in a worker thread' : 'compressions as engine units'}; ${values['no-service-thread'] ? 'the service on the event loop' : 'the service in its own thread'})`;

    const out = process.stdout;
    out.write(
      `softpress bench serve (${getNumThreads()} threads, base ${service.modelName}, window ${service.window}, method ${method}, ${maxTokens} answer tokens at most)\n`,
    );
    out.write('  clients  req/s    p50 ms   p99 ms   rows/decode step\n');
    for (const r of tp)
      out.write(
        `  ${String(r.clients).padEnd(8)} ${String(r.rps).padEnd(8)} ${String(r.p50_ms).padEnd(8)} ${String(r.p99_ms).padEnd(8)} ${r.mean_decode_rows}\n`,
      );
    out.write('  context  ratio  soft tok  first ms  warm ms   full (tokens)       first ms  warm ms   first speed-up  KV MB soft/full\n');
    for (const r of lat) {
      out.write(
        `  ${String(r.context_tokens).padEnd(8)} ${String(r.ratio).padEnd(6)} ${String(r.soft_tokens).padEnd(9)} ${String(r.soft_first_ms).padEnd(9)} ${String(r.soft_warm_ms).padEnd(9)} ` +
          `${`${r.full_mode} (${r.full_tokens})`.padEnd(19)} ${String(r.full_first_ms).padEnd(9)} ${String(r.full_warm_ms).padEnd(9)} ${`${r.first_speedup}x`.padEnd(15)} ` +
          `${(r.soft_kv_bytes / 2 ** 20).toFixed(2)}/${(r.full_kv_bytes / 2 ** 20).toFixed(2)}\n`,
      );
    }
    out.write(formatLoadRows(loadRows, loadWhat));
    if (values.json) {
      const result = {
        bench: 'serve',
        base: values['random-base'] ? 'random (base architecture)' : service.modelName,
        base_fingerprint: service.fingerprint,
        window: service.window,
        method,
        learned,
        threads: getNumThreads(),
        max_tokens: maxTokens,
        prefix_cache: served.prefixCache,
        service_thread: !values['no-service-thread'],
        engine: served.engineOptions,
        throughput: tp,
        under_load: {
          tokens: loadTokens,
          method: loadMethod,
          ask_every_ms: askEveryMs,
          compress_worker: served.compressWorker,
          rss_mb: rssMb,
          rows: loadRows,
        },
        latency: lat,
      };
      out.write(JSON.stringify(result) + '\n');
    }
  } finally {
    app.server.closeAllConnections();
    await app.close();
    await service.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}
