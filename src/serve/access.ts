/**
 * Who may call the API and how often (the keys themselves are auth.ts's KeyRing).
 *
 * With API keys, an onRequest hook requires `Authorization: Bearer KEY` on every /v1 route (401
 * otherwise; /health, /openapi.json and the playground page stay open) and marks the request
 * with the key's owner id; without keys every request is the owner `anonymous`. Requests per
 * minute on /v1 are limited per owner (@fastify/rate-limit, 429 with Retry-After).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import { HttpError } from './errors.js';
import { ANONYMOUS, type KeyRing } from './auth.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who sends the request: the API key's owner id, or `anonymous` on a server without keys. */
    owner: string;
  }
}

export interface AccessOptions {
  keys?: KeyRing;
  /** Requests per window per owner on the /v1 routes (0: no limit). */
  perWindow: number;
  /** The rate limit's window in milliseconds. */
  windowMs: number;
  /** Request logging is on: the log then names the key (never the key itself). */
  logger?: boolean;
}

/** Whether a route belongs to the API (/v1/...), which keys protect and the rate limit counts. */
export const isApiRoute = (url: string) => url.startsWith('/v1/');

/** Whether a request is for the API (/v1...), also when it matches no route. */
function isApiRequest(req: FastifyRequest): boolean {
  const path = req.url.split('?')[0];
  return path === '/v1' || path.startsWith('/v1/') || isApiRoute(req.routeOptions.url ?? '');
}

/**
 * Installs the owner, the key check and the rate limit, in that order, before anything else
 * runs (body parsing, validation). Register the routes afterwards, so the rate limiter sees them.
 */
export function installAccess(app: FastifyInstance, o: AccessOptions): void {
  const { keys } = o;
  app.decorateRequest('owner', ANONYMOUS);
  if (keys) {
    app.addHook('onRequest', async (req, reply) => {
      if (!isApiRequest(req)) return;
      const who = keys.identify(req.headers.authorization);
      if (!who.ok) throw new HttpError(401, who.code, who.message, undefined, { 'www-authenticate': 'Bearer realm="softpress"' });
      req.owner = who.owner;
      if (o.logger) req.log = reply.log = req.log.child({ key: who.name });
    });
  }
  if (o.perWindow > 0) {
    // one counter per owner across all /v1 routes (per-route settings would count each route apart)
    void app.register(rateLimit, {
      global: true,
      max: o.perWindow,
      timeWindow: o.windowMs,
      hook: 'onRequest',
      keyGenerator: (req) => req.owner,
      errorResponseBuilder: (_req, ctx) => {
        const seconds = Math.max(1, Math.ceil(ctx.ttl / 1000));
        const per = o.windowMs === 60_000 ? 'minute' : `${o.windowMs / 1000} s`;
        return new HttpError(
          429,
          'rate_limit_exceeded',
          `Rate limit reached: ${ctx.max} requests per ${per} ${keys ? 'per API key' : 'on this server'}. Retry in ${seconds} s.`,
          undefined,
          { 'retry-after': String(seconds) },
        );
      },
    });
  }
}
