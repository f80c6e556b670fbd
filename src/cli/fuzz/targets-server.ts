/**
 * Fuzz target for the server's JSON bodies: a server over a tiny random base model (the shipped
 * tokenizer) in the worker process, requests injected without a network (Fastify's inject).
 * Each case is a valid request of one route (create a context, ask, completions, chat, get,
 * delete, list) damaged at the JSON level (wrong types, hostile strings and numbers, unknown or
 * missing fields, deep nesting), at the text level (truncated or broken JSON), or in its
 * envelope (Content-Type, a 5 MB body, traversal-like ids). A 2xx answer is accepted, a 4xx
 * with an OpenAI-shaped error naming what is wrong is a clean rejection, and anything else (a
 * 5xx, a malformed error, an exception) counts as a crash.
 */
import { join } from 'node:path';
import { HOSTILE_STRINGS, Rng, mutateJson, mutateText } from './mutate.js';
import type { Prepared, Target } from './target.js';

interface Req {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  payload?: string;
  contentType?: string;
}

/** encodeURIComponent, with lone surrogates sent as the (invalid UTF-8) bytes ED A0 80. */
function encodePath(s: string): string {
  return [...s].map((ch) => (/[\ud800-\udfff]/.test(ch) ? '%ED%A0%80' : encodeURIComponent(ch))).join('');
}

const TEXT = 'The harbour master counted twelve ships at anchor on the morning of the storm. The captain ordered the boats lowered at dawn.';

export const serverJson: Target = {
  name: 'server-json',
  about: "the server's JSON bodies",
  timeoutMs: 30_000,
  async prepare(tmp): Promise<Prepared> {
    const { writeRandomBase } = await import('../../serve/testing.js');
    const { openService } = await import('../../serve/service.js');
    const { buildServer } = await import('../../serve/server.js');
    const base = writeRandomBase(join(tmp, 'base'), { seed: 3 });
    const service = openService({ base, storePath: join(tmp, 'store', 'contexts.mdb'), storeMaxBytes: 64 * 2 ** 20, discover: false });
    const app = buildServer(service, { bodyLimit: 4 * 2 ** 20 });
    await app.ready();
    const made = await app.inject({ method: 'POST', url: '/v1/contexts', payload: { text: TEXT, method: 'truncate', ratio: 2 } });
    const id = (made.json() as { id: string }).id;
    const templates: (() => { method: Req['method']; url: string; body?: unknown })[] = [
      () => ({ method: 'POST', url: '/v1/contexts', body: { text: TEXT, method: 'truncate', ratio: 4 } }),
      () => ({ method: 'POST', url: `/v1/contexts/${id}/ask`, body: { questions: ['How many ships?'], maxTokens: 4 } }),
      () => ({ method: 'POST', url: '/v1/completions', body: { model: service.modelName, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 } }),
      () => ({ method: 'POST', url: '/v1/completions', body: { prompt: ['a', 'b'], max_tokens: 3, context_id: id, stream: false } }),
      () => ({
        method: 'POST',
        url: '/v1/chat/completions',
        body: {
          messages: [
            { role: 'system', content: 'Be brief.' },
            { role: 'user', content: 'Hi' },
          ],
          max_tokens: 4,
          context_id: id,
        },
      }),
      () => ({ method: 'GET', url: `/v1/contexts/${id}` }),
      () => ({ method: 'GET', url: '/v1/contexts?limit=5' }),
    ];
    return {
      make: (rng: Rng): Req => {
        const t = rng.pick(templates)();
        const r = rng.next();
        if (t.body === undefined) {
          // damaged ids and queries
          const bad = rng.pick([...HOSTILE_STRINGS.slice(0, 12), 'ctx_' + '0'.repeat(24), id.slice(0, -1), id + 'x']);
          const url = t.url.includes('?')
            ? `/v1/contexts?limit=${encodePath(rng.pick(['0', '-1', '1e9', 'x', '', '5.5', '1000']))}`
            : `/v1/contexts/${encodePath(bad)}`;
          return { method: rng.chance(0.3) && !url.includes('?') ? 'DELETE' : 'GET', url };
        }
        const json = JSON.stringify(t.body);
        if (r < 0.6) {
          let doc: unknown = t.body;
          for (let k = 1 + rng.int(3); k > 0; k--) doc = mutateJson(doc, rng);
          return { method: t.method, url: t.url, payload: JSON.stringify(doc) ?? 'null', contentType: 'application/json' };
        }
        if (r < 0.8) return { method: t.method, url: t.url, payload: mutateText(json, rng), contentType: 'application/json' };
        if (r < 0.9)
          return {
            method: t.method,
            url: t.url,
            payload: json,
            contentType: rng.pick(['text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=utf-16', '']),
          };
        if (r < 0.95)
          return {
            method: t.method,
            url: t.url,
            payload: JSON.stringify({ ...(t.body as object), text: 'x'.repeat(5 * 2 ** 20) }),
            contentType: 'application/json',
          };
        return { method: t.method, url: t.url, payload: json, contentType: 'application/json' };
      },
      run: async (input) => {
        const q = input as Req;
        const headers: Record<string, string> = {};
        if (q.contentType) headers['content-type'] = q.contentType;
        const res = await app.inject({ method: q.method, url: q.url, payload: q.payload, headers });
        if (res.statusCode >= 200 && res.statusCode < 300) return 'accepted';
        if (res.statusCode >= 500) throw new ServerFault(`HTTP ${res.statusCode}: ${res.body.slice(0, 300)}`);
        let body: { error?: { message?: unknown; code?: unknown } };
        try {
          body = JSON.parse(res.body) as typeof body;
        } catch {
          throw new ServerFault(`HTTP ${res.statusCode} with a body that is not JSON: ${res.body.slice(0, 200)}`);
        }
        if (typeof body.error?.message !== 'string' || body.error.message === '' || typeof body.error.code !== 'string') {
          throw new ServerFault(`HTTP ${res.statusCode} without an OpenAI-shaped error: ${res.body.slice(0, 200)}`);
        }
        return 'clean';
      },
      // run() itself classifies answers; an exception is never a clean rejection
      clean: () => false,
      bytes: (input) => new TextEncoder().encode(JSON.stringify(input)),
      close: async () => {
        await app.close();
        await service.close();
      },
    };
  },
};

/** A server answer that is not a clean rejection (5xx, or an error not in the OpenAI shape). */
class ServerFault extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServerFault';
  }
}
