/**
 * softpress serve [--port 8080] [--host 127.0.0.1] [--store PATH] [--base DIR|FILE.gguf|NAME]
 *                 [--compressor DIR ...] [--store-mb N] [--cache-mb N] [--body-limit-mb N]
 *                 [--max-batch N] [--batch-window-ms N] [--max-queue N] [--method NAME] [--no-discover]
 *                 [--no-prefix-cache] [--no-compress-worker] [--no-service-thread] [--log]
 *                 [--api-key KEY ...] [--api-keys FILE] [--insecure-no-auth]
 *                 [--quota-contexts N] [--quota-mb N] [--rate-limit N]
 *
 * Starts the HTTP server (src/serve/): the context API, OpenAI-compatible completions, the
 * OpenAPI document at /openapi.json and the playground at /. The base model is a folder, a GGUF
 * file or a model name of the cache (`--base smollm2-135m-instruct`; main pulls it first when
 * missing). Learned compressors saved in or beside the base model's folder (for a GGUF file, the
 * folder holding it; folders with compressor.json made for this base model) are loaded too,
 * besides any --compressor; the strategies full, none and truncate are always available.
 * Compressions run in a worker thread with its own copy of the model, so the server keeps
 * answering while they run; --no-compress-worker runs them on the event loop instead (the
 * memory of one model less, but a long compression then stalls every other request). The
 * service itself (the model, the engine's decode steps, the store) runs in its own thread too
 * (src/serve/service-thread.ts), so HTTP, /health included, never waits for model work;
 * --no-service-thread runs it on the event loop that serves HTTP instead.
 *
 * Access: API keys from --api-key, --api-keys FILE and SOFTPRESS_API_KEYS protect every /v1
 * route (src/serve/auth.ts). Listening beyond loopback without a key is refused (before the
 * model loads) unless --insecure-no-auth. Per-owner quotas (stored contexts, MiB, requests per
 * minute) default to 1000 / 256 / 120 whenever keys are set or the server listens beyond
 * loopback, and to none on a keyless loopback server (as before keys existed); 0 turns one off.
 */
import { parseArgs } from 'node:util';
import { openService } from '../serve/service.js';
import { ServiceThread } from '../serve/service-thread.js';
import { buildServer, type Quotas } from '../serve/server.js';
import { checkExposure, collectKeys, isLoopback, type KeyRing } from '../serve/auth.js';

export const SERVE_USAGE =
  'usage: softpress serve [--port 8080] [--host 127.0.0.1] [--store PATH] [--base DIR|FILE.gguf|NAME] [--compressor DIR ...]\n' +
  '                       [--store-mb 1024] [--cache-mb 256] [--body-limit-mb 4] [--max-batch 16] [--batch-window-ms 3]\n' +
  '                       [--max-queue 256] [--method NAME (default for requests)] [--no-discover] [--no-prefix-cache]\n' +
  '                       [--no-compress-worker] [--no-service-thread] [--log]\n' +
  '                       [--api-key KEY ...] [--api-keys FILE] [--insecure-no-auth] (or SOFTPRESS_API_KEYS=KEY,KEY)\n' +
  '                       [--quota-contexts 1000] [--quota-mb 256] [--rate-limit 120 (requests/minute per key; 0: none)]';

/** Per-owner limits that apply when keys are set or the server listens beyond loopback. */
export const DEFAULT_QUOTAS = { contexts: 1000, mb: 256, requestsPerMinute: 120 } as const;

export interface Access {
  keys?: KeyRing;
  quotas: Quotas;
}

/**
 * Keys and quotas from the flags and the environment, and the refusal to listen beyond
 * loopback without a key. Runs before the model loads, so a mistake is reported at once.
 */
export function accessFromArgs(
  values: { 'api-key'?: string[]; 'api-keys'?: string; 'insecure-no-auth'?: boolean; 'quota-contexts'?: string; 'quota-mb'?: string; 'rate-limit'?: string },
  host: string,
  env: NodeJS.ProcessEnv = process.env,
): Access {
  const keys = collectKeys({ flags: values['api-key'], file: values['api-keys'], env: env.SOFTPRESS_API_KEYS });
  checkExposure(host, keys, values['insecure-no-auth'] ?? false);
  const guarded = !!keys || !isLoopback(host);
  const contexts = num('quota-contexts', values['quota-contexts'], guarded ? DEFAULT_QUOTAS.contexts : 0, { int: true });
  const mb = num('quota-mb', values['quota-mb'], guarded ? DEFAULT_QUOTAS.mb : 0);
  const requestsPerMinute = num('rate-limit', values['rate-limit'], guarded ? DEFAULT_QUOTAS.requestsPerMinute : 0, { int: true });
  return { keys, quotas: { contexts, bytes: Math.round(mb * 2 ** 20), requestsPerMinute } };
}

function describeQuotas(q: Quotas, keyed: boolean): string {
  const per = keyed ? 'per key' : 'for all clients together';
  const parts = [
    q.contexts ? `${q.contexts} contexts` : null,
    q.bytes ? `${(q.bytes / 2 ** 20).toFixed(0)} MiB stored` : null,
    q.requestsPerMinute ? `${q.requestsPerMinute} requests/minute` : null,
  ].filter(Boolean);
  return parts.length ? `${parts.join(', ')} ${per}` : 'none';
}

function num(name: string, v: string | undefined, dflt: number, opts: { int?: boolean; min?: number } = {}): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || (opts.int && !Number.isInteger(n)) || n < (opts.min ?? 0))
    throw new Error(`--${name} must be ${opts.int ? 'an integer' : 'a number'} >= ${opts.min ?? 0}, got '${v}'\n${SERVE_USAGE}`);
  return n;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      store: { type: 'string' },
      base: { type: 'string' },
      compressor: { type: 'string', multiple: true },
      'store-mb': { type: 'string' },
      'cache-mb': { type: 'string' },
      'body-limit-mb': { type: 'string' },
      'max-batch': { type: 'string' },
      'batch-window-ms': { type: 'string' },
      'max-queue': { type: 'string' },
      method: { type: 'string' },
      'no-discover': { type: 'boolean', default: false },
      'no-prefix-cache': { type: 'boolean', default: false },
      'no-compress-worker': { type: 'boolean', default: false },
      'no-service-thread': { type: 'boolean', default: false },
      log: { type: 'boolean', default: false },
      'api-key': { type: 'string', multiple: true },
      'api-keys': { type: 'string' },
      'insecure-no-auth': { type: 'boolean', default: false },
      'quota-contexts': { type: 'string' },
      'quota-mb': { type: 'string' },
      'rate-limit': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(SERVE_USAGE + '\n');
    return;
  }
  const port = num('port', values.port, 8080, { int: true });
  if (port > 65535) throw new Error(`--port must be at most 65535, got ${port}`);
  const host = values.host ?? '127.0.0.1';
  const access = accessFromArgs(values, host);
  const log = (line: string) => process.stderr.write(`softpress serve: ${line}\n`);
  const t0 = performance.now();
  const serviceOptions = {
    base: values.base ?? 'models/softpress-base',
    compressorDirs: values.compressor ?? [],
    discover: !values['no-discover'],
    defaultMethod: values.method,
    storePath: values.store ?? '.softpress/contexts.mdb',
    storeMaxBytes: num('store-mb', values['store-mb'], 1024, { min: 1 }) * 2 ** 20,
    cacheBytes: num('cache-mb', values['cache-mb'], 256, { min: 1 }) * 2 ** 20,
    prefixCache: !values['no-prefix-cache'],
    compressWorker: !values['no-compress-worker'],
    engine: {
      maxBatch: num('max-batch', values['max-batch'], 16, { int: true, min: 1 }),
      batchWindowMs: num('batch-window-ms', values['batch-window-ms'], 3),
      maxPendingRows: num('max-queue', values['max-queue'], 256, { int: true, min: 1 }),
    },
    log,
  };
  const threaded = !values['no-service-thread'];
  const service = threaded ? await ServiceThread.open(serviceOptions) : openService(serviceOptions);
  const app = buildServer(service, {
    bodyLimit: num('body-limit-mb', values['body-limit-mb'], 4, { min: 0.001 }) * 2 ** 20,
    logger: values.log,
    keys: access.keys,
    quotas: access.quotas,
  });
  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    log(`${signal}: closing`);
    // in-flight requests get 2 s to finish; then idle keep-alive sockets are not waited for
    const force = setTimeout(() => app.server.closeAllConnections(), 2000);
    force.unref();
    await app.close();
    await service.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  const address = await app.listen({ port, host });
  const methods = (await service.methods()).map((m) => m.name);
  log(
    `base ${service.modelName} (fingerprint ${service.fingerprint}, window ${service.window}); methods ${methods.join(', ')} (default ${service.defaultMethod})`,
  );
  log(
    `model work: ${threaded ? 'in the service thread' : 'on the event loop (--no-service-thread)'}; compressions ${service.compressWorker ? 'in a worker thread of their own' : 'as engine units (--no-compress-worker)'}`,
  );
  log(
    `chat: ${service.tokenizer.chatTemplate ? "the model's chat template" : 'plain "User:" lines'}; questions: ${service.qaFormat.oneShot ? 'after a one-shot demonstration' : 'after BOS'}`,
  );
  log(
    `store ${service.store.path}: ${service.store.count} contexts, ${(service.store.totalBytes / 2 ** 20).toFixed(1)} of ${(service.store.maxBytes / 2 ** 20).toFixed(0)} MiB`,
  );
  if (access.keys) log(`API keys: ${access.keys.size} (${access.keys.names.join(', ')}); every /v1 route needs Authorization: Bearer KEY`);
  else
    log(
      isLoopback(host)
        ? 'no API keys: open to every client of this machine'
        : `WARNING: no API keys (--insecure-no-auth): anyone who reaches ${host}:${port} can use the API and read contexts whose ids they learn`,
    );
  log(`quotas: ${describeQuotas(access.quotas, !!access.keys)}`);
  log(`listening on ${address} (playground ${address}/, API ${address}/openapi.json) after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
