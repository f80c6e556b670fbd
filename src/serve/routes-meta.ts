/** The routes outside the API: the playground page, the OpenAPI document and /health. */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ServiceApi } from './service-api.js';
import type { RouteDef } from './routes.js';
import { openapiDocument } from './openapi.js';
import * as S from './schemas.js';

/** The playground page, read once (src/serve/playground.html, beside the sources). */
function playgroundHtml(): string {
  const candidates = [new URL('./playground.html', import.meta.url), new URL('../../../src/serve/playground.html', import.meta.url)];
  for (const u of candidates) {
    const p = fileURLToPath(u);
    if (existsSync(p)) return readFileSync(p, 'utf8');
  }
  return '<!doctype html><title>softpress</title><p>playground.html is missing from this installation.</p>';
}

/** `all` is the whole route table (the OpenAPI document describes every route). */
export function metaRoutes(service: ServiceApi, access: { keys: boolean; rateLimited: boolean }, all: () => readonly RouteDef[]): RouteDef[] {
  const html = playgroundHtml();
  return [
    {
      method: 'GET',
      url: '/',
      summary: 'The playground: compress a document, ask questions, compare with the full context.',
      tag: 'playground',
      contentType: 'text/html',
      errors: [],
      handler: async (_req, reply) => reply.type('text/html; charset=utf-8').send(html),
    },
    {
      method: 'GET',
      url: '/openapi.json',
      summary: 'This document.',
      tag: 'meta',
      response: { type: 'object', additionalProperties: true },
      errors: [],
      handler: async () => openapiDocument(all(), { modelName: service.modelName, fingerprint: service.fingerprint, window: service.window, ...access }),
    },
    {
      method: 'GET',
      url: '/health',
      summary: 'Liveness, queue, store and memory figures.',
      tag: 'meta',
      response: S.healthResponse,
      errors: [],
      handler: async () => ({ ...service.health(), auth: access.keys ? 'api-key' : 'none' }),
    },
  ];
}
