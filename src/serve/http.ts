/**
 * The Fastify instance and its error shape: every error, whether thrown by a route, found by
 * schema validation, by the body parser or before routing, answers in the OpenAI shape
 * {error: {message, type, code, param}} with a 4xx/5xx status, and none of them stops the server.
 * Validation coerces nothing and refuses unknown fields on softpress's own bodies.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify';
import { HttpError, errorBody } from './errors.js';

type Schema = Record<string, unknown>;

export interface AppOptions {
  /** Largest accepted request body in bytes. */
  bodyLimit: number;
  /** Fastify's request logging. */
  logger?: boolean;
  /** Where the request log goes (default stdout). */
  logStream?: NodeJS.WritableStream;
}

/** Turns an ajv validation error into one readable message naming the field (err.param). */
const schemaErrorFormatter: NonNullable<FastifyServerOptions['schemaErrorFormatter']> = (errors, dataVar) => {
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
};

/** Status, code, message and param of any error a request can end with. */
function describeError(
  err: Error & { statusCode?: number; code?: string; validation?: unknown },
  contentType: string | undefined,
  bodyLimit: number,
): { status: number; code: string; message: string; param?: string; headers?: Record<string, string> } {
  if (err instanceof HttpError) return { status: err.status, code: err.code, message: err.message, param: err.param, headers: err.headers };
  if (err.validation) return { status: 400, code: 'invalid_request', message: `invalid request: ${err.message}`, param: (err as { param?: string }).param };
  if (err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError)
    return { status: 400, code: 'invalid_json', message: `the request body is not valid JSON (${err.message})` };
  if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return { status: 400, code: 'empty_body', message: 'the request body is empty; send a JSON object' };
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
    return { status: 413, code: 'body_too_large', message: `the request body is larger than this server's limit of ${bodyLimit} bytes` };
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
    return { status: 415, code: 'unsupported_media_type', message: `unsupported Content-Type '${contentType ?? ''}'; send application/json` };
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500)
    return { status: err.statusCode, code: (err.code ?? 'bad_request').toLowerCase(), message: err.message };
  return { status: 500, code: 'internal_error', message: err.message };
}

/** A Fastify instance that takes JSON bodies only and answers every error in the OpenAI shape. */
export function createApp(o: AppOptions): FastifyInstance {
  const app = Fastify({
    bodyLimit: o.bodyLimit,
    // the default request serializer logs no headers; the redaction keeps it so if that changes
    logger: o.logger
      ? { level: 'info', redact: ['req.headers.authorization', 'req.headers["x-api-key"]'], ...(o.logStream ? { stream: o.logStream } : {}) }
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
    schemaErrorFormatter,
  });
  // JSON only: a text/plain body is refused with 415 instead of failing validation as a string
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string; validation?: unknown }, req, reply) => {
    const d = describeError(err, req.headers['content-type'], o.bodyLimit);
    for (const [k, v] of Object.entries(d.headers ?? {})) void reply.header(k, v);
    if (d.status >= 500) req.log.error(err);
    void reply
      .status(d.status)
      .type('application/json')
      .send(errorBody(d.status, d.code, d.message, d.param));
  });

  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send(errorBody(404, 'route_not_found', `no route ${req.method} ${req.url.split('?')[0]} (see GET /openapi.json)`));
  });
  return app;
}
