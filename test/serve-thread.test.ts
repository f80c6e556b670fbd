/**
 * The service in its own thread (src/serve/service-thread.ts): the same HTTP API answers the same
 * as a service on the event loop — contexts, asking, completions (streamed too), chats, errors —
 * /health answers from the thread's figures, a base that cannot load fails the start with its
 * reason, and calls after closing are 503.
 */
import test, { after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { openService } from '../src/serve/service.js';
import { ServiceThread } from '../src/serve/service-thread.js';
import { buildServer } from '../src/serve/server.js';
import { HttpError } from '../src/serve/errors.js';
import { writeRandomBase } from '../src/serve/testing.js';

const tmp = mkdtempSync(join(tmpdir(), 'softpress-serve-thread-'));
const baseDir = writeRandomBase(join(tmp, 'base'), { window: 256, sharp: true, seed: 7 });
after(() => rmSync(tmp, { recursive: true, force: true }));

const DOC =
  'The lighthouse keeper wrote in the log every evening. On the ninth of March the secret code of the blue box was 4817, ' +
  'and the keeper hid the box under the third stair. Ships passed in the fog, and the bell rang twice an hour. ';

type Json = Record<string, unknown>;

/** A response without what differs between two servers (ids, times, dates). */
function stable(body: string): unknown {
  return JSON.parse(body.replace(/ctx_[0-9a-f]{24}/g, 'ctx_ID'), (k, v: unknown) =>
    /^(id|context_id|created|createdAt|lastUsed|location)$/.test(k) || /(Ms|_ms)$/.test(k) || k === 'ms' || k === 'evicted' ? undefined : v,
  );
}

/** The text of an SSE completion stream. */
function streamed(body: string): string {
  let text = '';
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    for (const c of (JSON.parse(line.slice(6)) as { choices: { text?: string }[] }).choices) text += c.text ?? '';
  }
  return text;
}

describe('serve: the service thread', () => {
  test('answers the HTTP API as the service on the event loop does', async () => {
    const opts = (name: string) => ({ base: baseDir, discover: false, storePath: join(tmp, name, 'contexts.mdb'), storeMaxBytes: 64 * 2 ** 20 });
    const local = openService(opts('local'));
    const thread = await ServiceThread.open(opts('thread'));
    const apps = [buildServer(local), buildServer(thread)];
    const both = async (o: { method?: 'GET' | 'POST' | 'DELETE'; url: string; payload?: Json }, ids?: string[]) =>
      Promise.all(
        apps.map((app, i) => {
          const id = (x: string) => (ids ? x.replace('ID', ids[i]) : x);
          return app.inject({ method: o.method ?? 'GET', url: id(o.url), payload: o.payload && (JSON.parse(id(JSON.stringify(o.payload))) as Json) });
        }),
      );
    const same = async (o: { method?: 'GET' | 'POST' | 'DELETE'; url: string; payload?: Json }, status: number, ids?: string[]) => {
      const [a, b] = await both(o, ids);
      assert.equal(a.statusCode, status, a.body);
      assert.equal(b.statusCode, status, `${o.url}: ${b.body}`);
      assert.deepEqual(stable(b.body), stable(a.body), o.url);
      assert.equal(b.headers['content-type'], a.headers['content-type']);
      return [a, b];
    };
    try {
      assert.equal(thread.modelName, local.modelName);
      assert.equal(thread.fingerprint, local.fingerprint);
      await same({ url: '/openapi.json' }, 200);
      await same({ url: '/v1/methods' }, 200);
      await same({ url: '/v1/models' }, 200);
      await same({ url: '/v1/models/nope' }, 404);
      const made = await same({ method: 'POST', url: '/v1/contexts', payload: { text: DOC, method: 'truncate', ratio: 2 } }, 201);
      const ids = made.map((r) => (JSON.parse(r.body) as { id: string }).id);
      await same({ url: '/v1/contexts/ID' }, 200, ids);
      await same({ url: '/v1/contexts' }, 200);
      await same({ method: 'POST', url: '/v1/contexts/ID/ask', payload: { questions: ['What is the code?', 'Where is the box?'], maxTokens: 6 } }, 200, ids);
      const completion = { model: local.modelName, prompt: 'The keeper', max_tokens: 8, temperature: 0 };
      const [plain] = await same({ method: 'POST', url: '/v1/completions', payload: { ...completion, context_id: 'ID' } }, 200, ids);
      const [, s] = await both({ method: 'POST', url: '/v1/completions', payload: { ...completion, context_id: 'ID', stream: true } }, ids);
      assert.equal(s.statusCode, 200);
      assert.match(String(s.headers['content-type']), /text\/event-stream/);
      assert.equal(streamed(s.body), (JSON.parse(plain.body) as { choices: { text: string }[] }).choices[0].text, 'streamed = not streamed');
      await same(
        {
          method: 'POST',
          url: '/v1/chat/completions',
          payload: { model: local.modelName, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5, temperature: 0 },
        },
        200,
      );
      // errors: found in this thread (validation) and in the service thread (404, 400, 413), the same
      await same({ method: 'POST', url: '/v1/contexts/ID/ask', payload: { questions: 'x' } }, 400, ids);
      await same({ method: 'POST', url: '/v1/contexts/ctx_000000000000000000000000/ask', payload: { questions: ['q'] } }, 404);
      await same({ method: 'POST', url: '/v1/contexts', payload: { text: DOC, method: 'no-such' } }, 400);
      await same({ method: 'POST', url: '/v1/contexts', payload: { text: DOC.repeat(60), method: 'full' } }, 413);
      await same({ method: 'POST', url: '/v1/completions', payload: { ...completion, context_id: 'ctx_000000000000000000000000', stream: true } }, 404);
      await same({ method: 'POST', url: '/v1/completions', payload: { ...completion, max_tokens: 10_000 } }, 400);
      await same({ method: 'DELETE', url: '/v1/contexts/ID' }, 200, ids);
      await same({ url: '/v1/contexts/ID' }, 404, ids);

      await new Promise((resolve) => setTimeout(resolve, 500)); // the thread's figures after the work
      const health = JSON.parse((await apps[1].inject({ url: '/health' })).body) as Json & { engine: { rows: number }; serviceThread: Json };
      const localHealth = JSON.parse((await apps[0].inject({ url: '/health' })).body) as Json & { engine: { rows: number } };
      assert.equal(health.ok, true);
      assert.equal(health.model, localHealth.model);
      assert.equal(health.engine.rows, localHealth.engine.rows, 'the same generation rows ran in the thread');
      assert.equal(health.serviceThread.failed, null);
      assert.ok((health.serviceThread.statsAgeMs as number) < 500, `figures ${String(health.serviceThread.statsAgeMs)} ms old`);
    } finally {
      for (const app of apps) await app.close();
      await local.close();
      await thread.close();
    }
    await assert.rejects(thread.ask('ctx_x', { questions: ['q'] }), (e: unknown) => e instanceof HttpError && e.status === 503);
    assert.equal(thread.health().ok, false);
  });

  test('a service that cannot start fails the start with its reason', async () => {
    await assert.rejects(
      ServiceThread.open({ base: join(tmp, 'no-such-base'), discover: false, storePath: join(tmp, 'x', 'contexts.mdb'), storeMaxBytes: 2 ** 20 }),
      /no base model at/,
    );
  });
});
