/**
 * softpress serve [--port 8080] [--host 127.0.0.1] [--store PATH] [--base DIR|FILE.gguf|NAME]
 *                 [--compressor DIR ...] [--store-mb N] [--cache-mb N] [--body-limit-mb N]
 *                 [--max-batch N] [--batch-window-ms N] [--max-queue N] [--method NAME] [--no-discover]
 *                 [--no-prefix-cache] [--log]
 *
 * Starts the HTTP server (src/serve/): the context API, OpenAI-compatible completions, the
 * OpenAPI document at /openapi.json and the playground at /. The base model is a folder, a GGUF
 * file or a model name of the cache (`--base smollm2-135m-instruct`; main pulls it first when
 * missing). Learned compressors saved in or beside the base model's folder (for a GGUF file, the
 * folder holding it; folders with compressor.json made for this base model) are loaded too,
 * besides any --compressor; the strategies full, none and truncate are always available.
 */
import { parseArgs } from 'node:util';
import { openService, type SoftpressService } from '../serve/service.js';
import { buildServer } from '../serve/server.js';

export const SERVE_USAGE =
  'usage: softpress serve [--port 8080] [--host 127.0.0.1] [--store PATH] [--base DIR|FILE.gguf|NAME] [--compressor DIR ...]\n' +
  '                       [--store-mb 1024] [--cache-mb 256] [--body-limit-mb 4] [--max-batch 16] [--batch-window-ms 3]\n' +
  '                       [--max-queue 256] [--method NAME (default for requests)] [--no-discover] [--no-prefix-cache] [--log]';

function num(name: string, v: string | undefined, dflt: number, opts: { int?: boolean; min?: number } = {}): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || (opts.int && !Number.isInteger(n)) || n < (opts.min ?? 0)) throw new Error(`--${name} must be ${opts.int ? 'an integer' : 'a number'} >= ${opts.min ?? 0}, got '${v}'\n${SERVE_USAGE}`);
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
      log: { type: 'boolean', default: false },
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
  const log = (line: string) => process.stderr.write(`softpress serve: ${line}\n`);
  const t0 = performance.now();
  const service: SoftpressService = openService({
    base: values.base ?? 'models/softpress-base',
    compressorDirs: values.compressor ?? [],
    discover: !values['no-discover'],
    defaultMethod: values.method,
    storePath: values.store ?? '.softpress/contexts.mdb',
    storeMaxBytes: num('store-mb', values['store-mb'], 1024, { min: 1 }) * 2 ** 20,
    cacheBytes: num('cache-mb', values['cache-mb'], 256, { min: 1 }) * 2 ** 20,
    prefixCache: !values['no-prefix-cache'],
    engine: {
      maxBatch: num('max-batch', values['max-batch'], 16, { int: true, min: 1 }),
      batchWindowMs: num('batch-window-ms', values['batch-window-ms'], 3),
      maxPendingRows: num('max-queue', values['max-queue'], 256, { int: true, min: 1 }),
    },
    log,
  });
  const app = buildServer(service, { bodyLimit: num('body-limit-mb', values['body-limit-mb'], 4, { min: 0.001 }) * 2 ** 20, logger: values.log });
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
  const methods = service.methods().map((m) => m.name);
  log(`base ${service.modelName} (fingerprint ${service.fingerprint}, window ${service.window}); methods ${methods.join(', ')} (default ${service.defaultMethod})`);
  log(`chat: ${service.tokenizer.chatTemplate ? "the model's chat template" : 'plain "User:" lines'}; questions: ${service.qaFormat.oneShot ? 'after a one-shot demonstration' : 'after BOS'}`);
  log(`store ${service.store.path}: ${service.store.count} contexts, ${(service.store.totalBytes / 2 ** 20).toFixed(1)} of ${(service.store.maxBytes / 2 ** 20).toFixed(0)} MiB`);
  log(`listening on ${address} (playground ${address}/, API ${address}/openapi.json) after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
