/** The OpenAPI 3.1 document of the route table (GET /openapi.json). */
import { isApiRoute } from './access.js';
import type { RouteDef, Schema } from './routes.js';
import * as S from './schemas.js';

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

/** What the document says about the server itself. */
export interface ServerFacts {
  modelName: string;
  fingerprint: string;
  window: number;
  /** API keys are required on /v1 (the bearer scheme and 401 are documented). */
  keys: boolean;
  /** /v1 is rate-limited (429 is documented). */
  rateLimited: boolean;
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

function operation(r: RouteDef, facts: ServerFacts): Schema {
  const status = String(r.status ?? 200);
  const api = isApiRoute(r.url);
  const errors = [...r.errors];
  if (api && facts.keys) errors.push(401);
  if (api && facts.rateLimited && !errors.includes(429)) errors.push(429);
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
  for (const code of errors) responses[String(code)] = { description: ERROR_DOC[code] ?? 'Error.', content: { 'application/json': { schema: S.errorSchema } } };
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
  if (api && facts.keys) op.security = [{ apiKey: [] }];
  return op;
}

/** The OpenAPI 3.1 document of the route table (with the bearer scheme when keys are set). */
export function openapiDocument(routes: readonly RouteDef[], facts: ServerFacts): Schema {
  const paths: Record<string, Record<string, Schema>> = {};
  for (const r of routes) (paths[openapiPath(r.url)] ??= {})[r.method.toLowerCase()] = operation(r, facts);
  const components: Schema = { schemas: { Error: S.errorSchema, Context: S.contextView } };
  if (facts.keys) {
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
        `Base model: ${facts.modelName} (fingerprint ${facts.fingerprint}, window ${facts.window} tokens).`,
    },
    servers: [{ url: '/' }],
    paths,
    components,
  };
}
