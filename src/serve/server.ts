/**
 * The HTTP server (Fastify): the softpress context API, OpenAI-compatible completions with a
 * soft context in front (`context_id`), the OpenAPI document and the playground page.
 *
 * Every route is declared once in a table with its JSON schemas; Fastify validates requests
 * against them (no type coercion, unknown fields refused on softpress's own bodies) and
 * /openapi.json is generated from the same table. Every error has the OpenAI shape
 * {error: {message, type, code, param}} and a 4xx/5xx status; none of them stops the server.
 *
 * Access (src/serve/auth.ts): with API keys, an onRequest hook requires `Authorization: Bearer
 * KEY` on every /v1 route (401 otherwise; /health, /openapi.json and the playground page stay
 * open) and marks the request with the key's owner id; without keys every request is the owner
 * `anonymous`, as before keys existed. Contexts belong to their owner: another owner's are 404.
 * Per-owner quotas: stored contexts and bytes (the service, counted in the store), and requests
 * per minute on /v1 (@fastify/rate-limit, keyed by owner); both are 429.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import type { SoftpressService } from './service.js';
import { HttpError, errorBody } from './errors.js';
import { CHAT, TEXT, completionHandler } from './openai.js';
import { ANONYMOUS, type KeyRing } from './auth.js';
import * as S from './schemas.js';

type Schema = Record<string, unknown>;

declare module 'fastify' {
  interface FastifyRequest {
    /** Who sends the request: the API key's owner id, or `anonymous` on a server without keys. */
    owner: string;
  }
}

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

interface RouteDef {
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

const ERROR_DOC: Record<number, string> = {
  400: 'Malformed JSON, wrong types, bad ratios or budgets, prompts longer than the window.',
  401: "No API key, or not one of this server's (missing_api_key, invalid_api_key): send Authorization: Bearer KEY.",
  404: 'Unknown context id or model.',
  409: 'The context was made for another base model (or by a method this server has not loaded).',
  413: 'Request body over the limit, or a context too long for the model window at this ratio.',
  415: 'Content-Type is not application/json.',
  429:
    'The generation or compression queue is full (queue_full), or the key used its requests of this minute (rate_limit_exceeded): retry after the Retry-After seconds. ' +
    "Creating a context beyond the key's storage quota is insufficient_quota: delete contexts first (no Retry-After; waiting does not help).",
  500: 'Internal error (the server keeps running).',
  503: 'The server is shutting down.',
};

/** Whether a request is for the API (/v1...), which keys protect. */
function isApiRequest(req: FastifyRequest): boolean {
  const path = req.url.split('?')[0];
  return path === '/v1' || path.startsWith('/v1/') || (req.routeOptions.url ?? '').startsWith('/v1/');
}

const isApiRoute = (url: string) => url.startsWith('/v1/');

/** The playground page, read once (src/serve/playground.html, beside the sources). */
function playgroundHtml(): string {
  const candidates = [new URL('./playground.html', import.meta.url), new URL('../../../src/serve/playground.html', import.meta.url)];
  for (const u of candidates) {
    const p = fileURLToPath(u);
    if (existsSync(p)) return readFileSync(p, 'utf8');
  }
  return '<!doctype html><title>softpress</title><p>playground.html is missing from this installation.</p>';
}

function openapiPath(url: string): string {
  return url.replace(/:([A-Za-z_]+)/g, '{$1}');
}

function parameters(def: RouteDef): Schema[] {
  const out: Schema[] = [];
  for (const [where, schema] of [
    ['path', def.params],
    ['query', def.query],
  ] as const) {
    if (!schema) continue;
    const props = (schema.properties ?? {}) as Record<string, Schema>;
    const required = new Set((schema.required as string[] | undefined) ?? []);
    for (const [name, s] of Object.entries(props)) {
      const { description, ...rest } = s;
      out.push({ name, in: where, required: where === 'path' || required.has(name), description, schema: rest });
    }
  }
  return out;
}

/** The OpenAPI 3.1 document of the route table (with the bearer scheme when keys are set). */
function openapiDocument(routes: RouteDef[], service: SoftpressService, access: { keys: boolean; rateLimited: boolean }): Schema {
  const paths: Record<string, Record<string, Schema>> = {};
  for (const r of routes) {
    const p = (paths[openapiPath(r.url)] ??= {});
    const status = String(r.status ?? 200);
    const api = isApiRoute(r.url);
    const errors = [...r.errors];
    if (api && access.keys) errors.push(401);
    if (api && access.rateLimited && !errors.includes(429)) errors.push(429);
    errors.sort((a, b) => a - b);
    const success: Schema = { description: r.summary };
    if (r.response) {
      success.content = { 'application/json': { schema: r.response } };
      if (r.streams)
        (success.content as Schema)['text/event-stream'] = {
          schema: { type: 'string', description: 'With "stream": true: "data: {chunk JSON}" events, then "data: [DONE]".' },
        };
    } else if (r.contentType) success.content = { [r.contentType]: { schema: { type: 'string' } } };
    const responses: Schema = { [status]: success };
    for (const code of errors)
      responses[String(code)] = { description: ERROR_DOC[code] ?? 'Error.', content: { 'application/json': { schema: S.errorSchema } } };
    const op: Schema = {
      operationId: `${r.method.toLowerCase()}${openapiPath(r.url).replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
      summary: r.summary,
      tags: [r.tag],
      responses,
    };
    if (r.description) op.description = r.description;
    const params = parameters(r);
    if (params.length) op.parameters = params;
    if (r.body) op.requestBody = { required: true, content: { 'application/json': { schema: r.body } } };
    if (api && access.keys) op.security = [{ apiKey: [] }];
    p[r.method.toLowerCase()] = op;
  }
  const components: Schema = { schemas: { Error: S.errorSchema, Context: S.contextView } };
  if (access.keys) {
    components.securitySchemes = {
      apiKey: {
        type: 'http',
        scheme: 'bearer',
        description:
          "One of the server's API keys (--api-key, --api-keys, SOFTPRESS_API_KEYS), as Authorization: Bearer KEY. Contexts belong to the key that created them.",
      },
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'softpress',
      version: '0.1.0',
      description:
        'Soft context compression as a service: compress a document once into a few soft tokens, store it, and ask questions or run ' +
        'OpenAI-compatible completions with it in front of the prompt (extension field context_id). ' +
        `Base model: ${service.modelName} (fingerprint ${service.fingerprint}, window ${service.window} tokens).`,
    },
    servers: [{ url: '/' }],
    paths,
    components,
  };
}

/** Builds the Fastify app over a service (not listening yet). */
export function buildServer(service: SoftpressService, opts: ServerOptions = {}): FastifyInstance {
  const bodyLimit = opts.bodyLimit ?? 4 * 2 ** 20;
  const keys = opts.keys;
  const quotas = opts.quotas ?? {};
  const storageQuota = quotas.contexts || quotas.bytes ? { contexts: quotas.contexts, bytes: quotas.bytes } : undefined;
  const perMinute = quotas.requestsPerMinute ?? 0;
  const window = quotas.rateWindowMs ?? 60_000;
  const app = Fastify({
    bodyLimit,
    // the default request serializer logs no headers; the redaction keeps it so if that changes
    logger: opts.logger
      ? { level: 'info', redact: ['req.headers.authorization', 'req.headers["x-api-key"]'], ...(opts.logStream ? { stream: opts.logStream } : {}) }
      : false,
    // a path that is not valid percent-encoded UTF-8 is refused before routing: in the same error shape as the rest
    frameworkErrors: (err, _req, res) => {
      const reply = res as unknown as FastifyReply;
      const status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
      void reply
        .status(status)
        .type('application/json')
        .send(
          errorBody(
            status,
            err.code === 'FST_ERR_BAD_URL' ? 'bad_url' : (err.code ?? 'bad_request').toLowerCase(),
            `the request URL is not valid: ${err.message}`,
          ),
        );
    },
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false, verbose: true } },
    schemaErrorFormatter: (errors, dataVar) => {
      // oneOf reports its branches' errors first; the oneOf itself says more
      const e = errors.find((x) => x.keyword === 'oneOf') ?? errors[0];
      const where = `${dataVar}${e.instancePath.replace(/\//g, '.')}`;
      const params = e.params as Record<string, unknown>;
      let message: string;
      if (e.keyword === 'additionalProperties') message = `${where} has an unknown field '${String(params.additionalProperty)}'`;
      else if (e.keyword === 'required') message = `${where} is missing the required field '${String(params.missingProperty)}'`;
      else if (e.keyword === 'oneOf') {
        const branchSchemas = (e as unknown as { schema?: unknown }).schema;
        const branches = Array.isArray(branchSchemas)
          ? (branchSchemas as Schema[]).map((b) =>
              b.type === 'array'
                ? `an array of ${String((b.items as Schema | undefined)?.type ?? 'item')}s`
                : `${b.type === 'object' || b.type === 'array' ? 'an' : 'a'} ${String(b.type)}`,
            )
          : [];
        message = `${where} has the wrong type${branches.length ? ` (must be ${branches.join(' or ')})` : ''}`;
      } else message = `${where} ${e.message ?? 'is invalid'}`;
      const err = new Error(message) as Error & { param?: string };
      err.param =
        e.keyword === 'additionalProperties'
          ? String(params.additionalProperty)
          : e.keyword === 'required'
            ? String(params.missingProperty)
            : e.instancePath.split('/').filter(Boolean).join('.') || undefined;
      return err;
    },
  });
  const html = playgroundHtml();
  // JSON only: a text/plain body is refused with 415 instead of failing validation as a string
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string; validation?: unknown }, req, reply) => {
    let status = 500;
    let code = 'internal_error';
    let message = err.message;
    let param: string | undefined;
    if (err instanceof HttpError) {
      status = err.status;
      code = err.code;
      param = err.param;
      for (const [k, v] of Object.entries(err.headers)) void reply.header(k, v);
    } else if (err.validation) {
      status = 400;
      code = 'invalid_request';
      message = `invalid request: ${err.message}`;
      param = (err as { param?: string }).param;
    } else if (err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError) {
      status = 400;
      code = 'invalid_json';
      message = `the request body is not valid JSON (${err.message})`;
    } else if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
      status = 400;
      code = 'empty_body';
      message = 'the request body is empty; send a JSON object';
    } else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      status = 413;
      code = 'body_too_large';
      message = `the request body is larger than this server's limit of ${bodyLimit} bytes`;
    } else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      status = 415;
      code = 'unsupported_media_type';
      message = `unsupported Content-Type '${req.headers['content-type'] ?? ''}'; send application/json`;
    } else if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      status = err.statusCode;
      code = (err.code ?? 'bad_request').toLowerCase();
    }
    if (status >= 500) req.log.error(err);
    void reply
      .status(status)
      .type('application/json')
      .send(errorBody(status, code, message, param));
  });

  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send(errorBody(404, 'route_not_found', `no route ${req.method} ${req.url.split('?')[0]} (see GET /openapi.json)`));
  });

  // who is asking: the key's owner id, checked before anything else runs (rate limit, body parsing)
  app.decorateRequest('owner', ANONYMOUS);
  if (keys) {
    app.addHook('onRequest', async (req, reply) => {
      if (!isApiRequest(req)) return;
      const who = keys.identify(req.headers.authorization);
      if (!who.ok) throw new HttpError(401, who.code, who.message, undefined, { 'www-authenticate': 'Bearer realm="softpress"' });
      req.owner = who.owner;
      // the request log names the key (never the key itself)
      if (opts.logger) req.log = reply.log = req.log.child({ key: who.name });
    });
  }
  if (perMinute > 0) {
    // one counter per owner across all /v1 routes (per-route settings would count each route apart)
    void app.register(rateLimit, {
      global: true,
      max: perMinute,
      timeWindow: window,
      hook: 'onRequest',
      keyGenerator: (req) => req.owner,
      errorResponseBuilder: (_req, ctx) => {
        const seconds = Math.max(1, Math.ceil(ctx.ttl / 1000));
        const per = window === 60_000 ? 'minute' : `${window / 1000} s`;
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

  const routes: RouteDef[] = [
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
      handler: async () => openapiDocument(routes, service, { keys: !!keys, rateLimited: perMinute > 0 }),
    },
    {
      method: 'GET',
      url: '/health',
      summary: 'Liveness, queue, store and memory figures.',
      tag: 'meta',
      response: S.healthResponse,
      errors: [],
      handler: async () => ({ ...service.health(), auth: keys ? 'api-key' : 'none' }),
    },
    {
      method: 'GET',
      url: '/v1/methods',
      summary: 'Compression methods this server offers.',
      tag: 'contexts',
      response: S.methodsResponse,
      errors: [],
      handler: async () => ({ default: service.defaultMethod, defaultRatio: service.defaultRatio, window: service.window, methods: service.methods() }),
    },
    {
      method: 'POST',
      url: '/v1/contexts',
      summary: 'Compress a document and store the soft context.',
      description: 'Tokenizes the text, compresses it with the method at the ratio (or budget), stores the .softctx durably and returns its id.',
      tag: 'contexts',
      body: S.createContextBody,
      status: 201,
      response: S.createContextResponse,
      errors: [400, 413, 415, 429, 500],
      handler: async (req, reply) => {
        const r = await service.createContext(req.body as { text: string; method?: string; ratio?: number; budget?: number }, {
          owner: req.owner,
          quota: storageQuota,
        });
        void reply.status(201).header('location', `/v1/contexts/${r.id}`);
        return r;
      },
    },
    {
      method: 'GET',
      url: '/v1/contexts',
      summary: 'Stored contexts of this base model, most recently used first.',
      tag: 'contexts',
      query: S.listContextsQuery,
      response: S.listContextsResponse,
      errors: [400],
      handler: async (req) => {
        const q = req.query as { limit?: string };
        const limit = q.limit === undefined ? 100 : Number(q.limit);
        if (limit < 1 || limit > 1000) throw new HttpError(400, 'bad_limit', `limit must be between 1 and 1000, got ${q.limit}`, 'limit');
        return { object: 'list', data: service.listContexts(limit, req.owner) };
      },
    },
    {
      method: 'GET',
      url: '/v1/contexts/:id',
      summary: "A stored context's metadata.",
      tag: 'contexts',
      params: S.idParams,
      response: S.contextView,
      errors: [400, 404, 409],
      handler: async (req) => service.getContext((req.params as { id: string }).id, req.owner),
    },
    {
      method: 'DELETE',
      url: '/v1/contexts/:id',
      summary: 'Delete a stored context.',
      tag: 'contexts',
      params: S.idParams,
      response: S.deleteContextResponse,
      errors: [400, 404],
      handler: async (req) => {
        const { id } = req.params as { id: string };
        service.deleteContext(id, req.owner);
        return { id, deleted: true };
      },
    },
    {
      method: 'POST',
      url: '/v1/contexts/:id/ask',
      summary: 'Answer questions about a stored context.',
      description:
        'Each question is read in the base model\'s QA format: [lead][soft context]"\\nQuestion: ...\\nAnswer:", where the lead is BOS for a base model and a one-shot ' +
        `demonstration (a story, a question, a one-word answer) for an instruct model (this server: ${service.qaFormat.oneShot ? 'the demonstration' : 'BOS'}). ` +
        'The answer is the first line generated. Simultaneous questions (of this and other requests) share decoder forwards.',
      tag: 'contexts',
      params: S.idParams,
      body: S.askBody,
      response: S.askResponse,
      errors: [400, 404, 409, 415, 429, 500],
      handler: async (req) =>
        service.ask((req.params as { id: string }).id, req.body as { questions: string[]; maxTokens?: number; temperature?: number; seed?: number }, req.owner),
    },
    {
      method: 'GET',
      url: '/v1/models',
      summary: 'Models (OpenAI-compatible).',
      tag: 'openai',
      response: S.modelsResponse,
      errors: [],
      handler: async () => ({
        object: 'list',
        data: [{ id: service.modelName, object: 'model', created: Math.floor(service.startedAt / 1000), owned_by: 'softpress' }],
      }),
    },
    {
      method: 'GET',
      url: '/v1/models/:model',
      summary: 'One model (OpenAI-compatible).',
      tag: 'openai',
      params: { type: 'object', required: ['model'], properties: { model: { type: 'string', description: 'Model id.' } } },
      response: S.modelResponse,
      errors: [404],
      handler: async (req) => {
        service.checkModel((req.params as { model: string }).model);
        return { id: service.modelName, object: 'model', created: Math.floor(service.startedAt / 1000), owned_by: 'softpress' };
      },
    },
    {
      method: 'POST',
      url: '/v1/completions',
      summary: 'Text completions (OpenAI-compatible), optionally after a stored soft context (context_id).',
      description:
        "The prompt is read as it is: after the stored context's prefix ([lead][soft context], as asking reads it) with context_id; without one, after BOS only when the " +
        'tokenizer starts sequences with it (a model trained without BOS, like SmolLM2, reads the prompt alone). The completion ends at EOS or an end-of-turn token, or a stop string.',
      tag: 'openai',
      body: S.completionsBody,
      response: S.completionsResponse,
      streams: true,
      errors: [400, 404, 409, 413, 415, 429, 500],
      handler: completionHandler(service, TEXT),
    },
    {
      method: 'POST',
      url: '/v1/chat/completions',
      summary: 'Chat completions (OpenAI-compatible), optionally after a stored soft context (context_id).',
      description:
        "Messages are rendered with the base model's own chat template (its Jinja chat_template) and the reply ends at the template's end-of-turn token; " +
        'a model without a template gets plain text lines ("System: ...", "User: ...", "Assistant: ...") ending with "Assistant:", and the reply ends at a new "User:" or "System:" line. ' +
        `The request's stop strings end it too. This server's base model ${service.tokenizer.chatTemplate ? 'has a chat template' : 'has none (plain lines)'}. ` +
        'With context_id, the rendered chat follows the stored context, read as for asking ([lead][soft context]).',
      tag: 'openai',
      body: S.chatBody,
      response: S.chatResponse,
      streams: true,
      errors: [400, 404, 409, 413, 415, 429, 500],
      handler: completionHandler(service, CHAT),
    },
  ];

  // in a plugin registered after the rate limiter, so that its onRoute hook sees the routes
  void app.register(async (scope) => {
    for (const r of routes) {
      const schema: Schema = {};
      if (r.body) schema.body = r.body;
      if (r.params) schema.params = r.params;
      if (r.query) schema.querystring = r.query;
      if (r.response) schema.response = { [r.status ?? 200]: r.response };
      const config = perMinute > 0 && !isApiRoute(r.url) ? { rateLimit: false as const } : {};
      scope.route({ method: r.method, url: r.url, schema, config, handler: r.handler });
    }
  });
  return app;
}
