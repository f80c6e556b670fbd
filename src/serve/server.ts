/**
 * The HTTP server (Fastify): the softpress context API, OpenAI-compatible completions with a
 * soft context in front (`context_id`), the OpenAPI document and the playground page.
 *
 * buildServer wires the parts, each in its own module:
 * - http.ts: the Fastify instance, JSON-only bodies, validation messages and the one error shape;
 * - access.ts: API keys (auth.ts's KeyRing) and the per-owner rate limit on /v1;
 * - routes.ts: the route table and its registration; openapi.ts: /openapi.json from the same table;
 * - routes-meta.ts (playground, /openapi.json, /health), routes-contexts.ts (methods, contexts,
 *   ask), routes-openai.ts (models, completions and chats: openai.ts over completion.ts).
 *
 * The service behind the routes is a ServiceApi (service-api.ts): SoftpressService on this
 * thread, or ServiceThread (service-thread.ts), which runs it in a worker thread so that this
 * thread only serves HTTP.
 *
 * Contexts belong to their owner (the key's, or `anonymous` without keys): another owner's are
 * 404. Per-owner quotas: stored contexts and bytes (the service, counted in the store), and
 * requests per minute on /v1; both are 429.
 */
import type { FastifyInstance } from 'fastify';
import type { ServiceApi } from './service-api.js';
import type { KeyRing } from './auth.js';
import { createApp } from './http.js';
import { installAccess } from './access.js';
import { registerRoutes, type RouteDef } from './routes.js';
import { metaRoutes } from './routes-meta.js';
import { contextRoutes } from './routes-contexts.js';
import { openaiRoutes } from './routes-openai.js';

/** Per-owner limits; 0 or absent means none. */
export interface Quotas {
  /** Stored contexts per owner. */
  contexts?: number;
  /** Bytes of stored contexts per owner. */
  bytes?: number;
  /** Requests per minute per owner on the /v1 routes. */
  requestsPerMinute?: number;
  /** The rate limit's window in milliseconds (default 60,000: a minute; shorter in tests). */
  rateWindowMs?: number;
}

export interface ServerOptions {
  /** Largest accepted request body in bytes (default 4 MiB). */
  bodyLimit?: number;
  /** Fastify's request logging (default off). */
  logger?: boolean;
  /** Where the request log goes (default stdout). */
  logStream?: NodeJS.WritableStream;
  /** API keys: every /v1 route then needs `Authorization: Bearer KEY`. Without: open to all, one owner. */
  keys?: KeyRing;
  /** Per-owner quotas (default none). */
  quotas?: Quotas;
}

/** Builds the Fastify app over a service (not listening yet). */
export function buildServer(service: ServiceApi, opts: ServerOptions = {}): FastifyInstance {
  const q = opts.quotas ?? {};
  const perMinute = q.requestsPerMinute ?? 0;
  const app = createApp({ bodyLimit: opts.bodyLimit ?? 4 * 2 ** 20, logger: opts.logger, logStream: opts.logStream });
  installAccess(app, { keys: opts.keys, perWindow: perMinute, windowMs: q.rateWindowMs ?? 60_000, logger: opts.logger });
  const storageQuota = q.contexts || q.bytes ? { contexts: q.contexts, bytes: q.bytes } : undefined;
  const routes: RouteDef[] = [
    ...metaRoutes(service, { keys: !!opts.keys, rateLimited: perMinute > 0 }, () => routes),
    ...contextRoutes(service, storageQuota),
    ...openaiRoutes(service),
  ];
  registerRoutes(app, routes, perMinute > 0);
  return app;
}
