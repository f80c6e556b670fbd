/** Errors meant for the client: an HTTP status, a stable code, and the request field at fault. */
import { QueueFullError, ShutdownError } from './engine.js';

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly param?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** QueueFullError / ShutdownError as HTTP errors (429 / 503). */
export function asHttpError(e: unknown): unknown {
  if (e instanceof QueueFullError) return new HttpError(429, 'queue_full', e.message, undefined, { 'retry-after': String(e.retryAfterSeconds) });
  if (e instanceof ShutdownError) return new HttpError(503, 'shutting_down', e.message);
  return e;
}

/**
 * A storage quota is not a rate: waiting does not help, deleting does. So no Retry-After, and
 * `x-should-retry: false` tells the OpenAI clients not to retry.
 */
export function quotaError(message: string): HttpError {
  return new HttpError(429, 'insufficient_quota', message, undefined, { 'x-should-retry': 'false' });
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

const ERROR_TYPE: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'invalid_request_error',
  404: 'not_found_error',
  409: 'conflict_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
};

/** Every error response's body, in the OpenAI shape {error: {message, type, code, param}}. */
export function errorBody(status: number, code: string, message: string, param?: string): Record<string, unknown> {
  const type = code === 'insufficient_quota' ? 'insufficient_quota' : (ERROR_TYPE[status] ?? (status >= 500 ? 'server_error' : 'invalid_request_error'));
  return { error: { message, type, code, param: param ?? null } };
}
