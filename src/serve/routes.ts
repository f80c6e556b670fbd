/**
 * The route table: every route is declared once with its JSON schemas, which Fastify validates
 * requests against and /openapi.json is generated from (openapi.ts).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isApiRoute } from './access.js';

export type Schema = Record<string, unknown>;

export interface RouteDef {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  summary: string;
  description?: string;
  tag: string;
  body?: Schema;
  params?: Schema;
  query?: Schema;
  /** Success status and schema (a JSON body), or an HTML / event-stream response. */
  status?: number;
  response?: Schema;
  contentType?: string;
  /** Also answers with text/event-stream when the body asks to stream. */
  streams?: boolean;
  errors: number[];
  handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}

/**
 * Registers the routes in a plugin (registered after the rate limiter, so that its onRoute hook
 * sees them); with a rate limit, the routes outside /v1 are exempt.
 */
export function registerRoutes(app: FastifyInstance, routes: readonly RouteDef[], rateLimited: boolean): void {
  void app.register(async (scope) => {
    for (const r of routes) {
      const schema: Schema = {};
      if (r.body) schema.body = r.body;
      if (r.params) schema.params = r.params;
      if (r.query) schema.querystring = r.query;
      if (r.response) schema.response = { [r.status ?? 200]: r.response };
      const config = rateLimited && !isApiRoute(r.url) ? { rateLimit: false as const } : {};
      scope.route({ method: r.method, url: r.url, schema, config, handler: r.handler });
    }
  });
}
