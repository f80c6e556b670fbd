/**
 * Who may use the server (src/serve/auth.ts and its wiring): API keys from flags, a file and the
 * environment (with clear errors that never show a key), Bearer authentication on /v1 (401
 * otherwise; /health open), the refusal to listen beyond loopback without a key, per-key
 * ownership of contexts (another key gets 404 for reading, asking, completing and deleting),
 * per-key quotas (stored contexts and bytes, counted in the store across restarts; requests per
 * window) with 429 and recovery, the OpenAPI bearer scheme, the official openai client with
 * apiKey, and that keys reach neither the logs, nor error bodies, nor the store file.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import OpenAI from 'openai';
import type { FastifyInstance } from 'fastify';

import { openService, type SoftpressService } from '../src/serve/service.js';
import { buildServer, type ServerOptions } from '../src/serve/server.js';
import { ANONYMOUS, KeyRing, checkExposure, collectKeys, isLoopback, ownerOf, parseKeysEnv, parseKeysFile } from '../src/serve/auth.js';
import { accessFromArgs, run as runServe } from '../src/cli/serve.js';
import { writeRandomBase } from '../src/serve/testing.js';

const tmp = mkdtempSync(join(tmpdir(), 'softpress-auth-'));
const baseDir = writeRandomBase(join(tmp, 'base'), { window: 256, seed: 7 });
const storePath = join(tmp, 'store', 'contexts.mdb');

const DOC =
  'The lighthouse keeper wrote in the log every evening. On the ninth of March the secret code of the blue box was 4817, ' +
  'and the keeper hid the box under the third stair. Ships passed in the fog, and the bell rang twice an hour. ';

const KEYS = {
  alice: 'sk-alice-4f1c9a7e2b8d6053',
  bob: 'sk-bob-90d1e7c35a2f4b68',
  carol: 'sk-carol-7e2a1d9c4b6f8035',
  dave: 'sk-dave-1b7e4c9a2d5f8036',
  erin: 'sk-erin-c3a8e1f7b2d94605',
} as const;
type Who = keyof typeof KEYS;
const ring = new KeyRing(Object.entries(KEYS).map(([name, key]) => ({ key, name, origin: name })));
const WRONG_KEY = 'sk-wrong-0000aaaa1111bbbb';

// Response bodies are read field by field in the assertions.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

function openStore(): SoftpressService {
  return openService({ base: baseDir, storePath, storeMaxBytes: 64 * 2 ** 20, discover: false });
}

async function call(
  app: FastifyInstance,
  method: 'GET' | 'POST' | 'DELETE',
  url: string,
  who?: Who | null,
  payload?: unknown,
  headers: Record<string, string> = {},
) {
  const h = { ...headers };
  if (who) h.authorization = `Bearer ${KEYS[who]}`;
  const r = await app.inject({ method, url, payload: payload as object | undefined, headers: h });
  let body: Json = {};
  try {
    body = JSON.parse(r.body) as Json;
  } catch {
    // html
  }
  return { status: r.statusCode, body, headers: r.headers, raw: r.body };
}

function assertError(r: { status: number; body: Json }, status: number, code: string, type?: string): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error?.code, code, JSON.stringify(r.body));
  assert.ok(typeof r.body.error.message === 'string' && r.body.error.message.length > 10);
  assert.ok('param' in r.body.error);
  if (type) assert.equal(r.body.error.type, type);
}

const create = (app: FastifyInstance, who: Who | null, text = DOC) => call(app, 'POST', '/v1/contexts', who, { text, method: 'truncate', ratio: 4 });

/** Log lines written by the server (pino JSON). */
class LogSink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

let service: SoftpressService;
const apps: FastifyInstance[] = [];
function app(opts: ServerOptions = {}): FastifyInstance {
  const a = buildServer(service, { keys: ring, ...opts });
  apps.push(a);
  return a;
}

before(() => {
  service = openStore();
});
after(async () => {
  for (const a of apps) await a.close();
  await service.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('serve auth: keys', () => {
  test('keys files: names, comments, clear errors that never show the key', () => {
    const file = join(tmp, 'keys.txt');
    writeFileSync(file, `# team keys\n\n${KEYS.alice}  Alice Smith\r\n${KEYS.bob}\n   # indented comment\n`);
    const keys = parseKeysFile(file);
    assert.deepEqual(
      keys.map((k) => [k.key, k.name]),
      [
        [KEYS.alice, 'Alice Smith'],
        [KEYS.bob, 'keys.txt:4'],
      ],
    );
    const bad = (text: string, re: RegExp, secret?: string) => {
      writeFileSync(file, text);
      assert.throws(
        () => parseKeysFile(file),
        (e: Error) => {
          assert.match(e.message, re);
          if (secret) assert.ok(!e.message.includes(secret), `the message shows the key: ${e.message}`);
          return true;
        },
      );
    };
    bad('', /has no keys/);
    bad('# only a comment\n', /has no keys/);
    bad(`${KEYS.alice}\nshortkey123 bob\n`, /keys\.txt line 2: a key must have at least 16 characters \(this one has 11\)/, 'shortkey123');
    bad(`alice ${KEYS.alice}\n`, /line 1: a key must have at least 16 characters.*KEY \[NAME\]/);
    writeFileSync(file, `${KEYS.alice} a\n${KEYS.alice} b\n`);
    assert.throws(
      () => collectKeys({ file }),
      (e: Error) => /keys\.txt line 2 is the same key as .*keys\.txt line 1; give each key once/.test(e.message) && !e.message.includes(KEYS.alice),
    );
    assert.throws(() => parseKeysFile(join(tmp, 'missing.txt')), /--api-keys: no file at .*missing\.txt/);
    assert.throws(() => parseKeysFile(tmp), /is a folder/);

    assert.deepEqual(
      parseKeysEnv(`${KEYS.alice}, ${KEYS.bob}\n`).map((k) => [k.key, k.name]),
      [
        [KEYS.alice, 'SOFTPRESS_API_KEYS #1'],
        [KEYS.bob, 'SOFTPRESS_API_KEYS #2'],
      ],
    );
    assert.throws(
      () => parseKeysEnv('tooshort'),
      (e: Error) => /SOFTPRESS_API_KEYS #1: a key must have at least 16/.test(e.message) && !e.message.includes('tooshort'),
    );
    assert.throws(() => collectKeys({ flags: [KEYS.alice], env: KEYS.alice }), /SOFTPRESS_API_KEYS #1 is the same key as --api-key #1/);
    assert.throws(() => collectKeys({ env: ' , ' }), /SOFTPRESS_API_KEYS has no keys/);
    assert.equal(collectKeys({}), undefined);
    assert.equal(collectKeys({ env: '' }), undefined);
    const both = collectKeys({ flags: [KEYS.alice], env: KEYS.bob })!;
    assert.deepEqual(both.names, ['--api-key #1', 'SOFTPRESS_API_KEYS #1']);
  });

  test('identify: Bearer only, constant-time hash comparison, owner = short hash of the key', () => {
    assert.match(ownerOf(KEYS.alice), /^[0-9a-f]{16}$/);
    assert.notEqual(ownerOf(KEYS.alice), ownerOf(KEYS.bob));
    const ok = ring.identify(`Bearer ${KEYS.bob}`);
    assert.deepEqual(ok, { ok: true, owner: ownerOf(KEYS.bob), name: 'bob' });
    assert.deepEqual(ring.identify(`bearer   ${KEYS.bob} `), ok, 'the scheme is case-insensitive');
    for (const [header, code] of [
      [undefined, 'missing_api_key'],
      ['', 'missing_api_key'],
      [`Basic ${KEYS.bob}`, 'invalid_api_key'],
      [KEYS.bob, 'invalid_api_key'],
      [`Bearer ${WRONG_KEY}`, 'invalid_api_key'],
      [`Bearer ${KEYS.bob}x`, 'invalid_api_key'],
      [`Bearer ${KEYS.bob} ${KEYS.alice}`, 'invalid_api_key'],
    ] as const) {
      const r = ring.identify(header);
      assert.equal(r.ok, false, String(header));
      if (!r.ok) {
        assert.equal(r.code, code, String(header));
        for (const k of [...Object.values(KEYS), WRONG_KEY]) assert.ok(!r.message.includes(k));
      }
    }
  });

  test('listening beyond loopback needs a key or --insecure-no-auth; quota defaults', async () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) assert.ok(isLoopback(h), h);
    for (const h of ['0.0.0.0', '::', '192.168.1.10', '10.0.0.1', 'example.com', '::ffff:10.0.0.1', 'fe80::1']) assert.ok(!isLoopback(h), h);
    assert.throws(
      () => checkExposure('0.0.0.0', undefined, false),
      /refusing to listen on 0\.0\.0\.0 without an API key.*--api-key KEY.*--api-keys FILE.*SOFTPRESS_API_KEYS.*--insecure-no-auth/s,
    );
    checkExposure('0.0.0.0', ring, false);
    checkExposure('0.0.0.0', undefined, true);
    checkExposure('127.0.0.1', undefined, false);

    // the CLI refuses before it loads any model
    const t0 = performance.now();
    await assert.rejects(runServe(['--host', '0.0.0.0', '--base', join(tmp, 'no-such-model')]), /refusing to listen on 0\.0\.0\.0 without an API key/);
    assert.ok(performance.now() - t0 < 2000);
    await assert.rejects(runServe(['--api-keys', join(tmp, 'missing.txt')]), /--api-keys: no file at/);

    // loopback without keys: no limits, as before keys existed
    assert.deepEqual(accessFromArgs({}, '127.0.0.1', {}), { keys: undefined, quotas: { contexts: 0, bytes: 0, requestsPerMinute: 0 } });
    const keyed = accessFromArgs({ 'api-key': [KEYS.alice] }, '0.0.0.0', { SOFTPRESS_API_KEYS: KEYS.bob });
    assert.equal(keyed.keys?.size, 2);
    assert.deepEqual(keyed.quotas, { contexts: 1000, bytes: 256 * 2 ** 20, requestsPerMinute: 120 });
    assert.deepEqual(accessFromArgs({ 'insecure-no-auth': true }, '0.0.0.0', {}).quotas, { contexts: 1000, bytes: 256 * 2 ** 20, requestsPerMinute: 120 });
    assert.deepEqual(accessFromArgs({ 'api-key': [KEYS.alice], 'quota-contexts': '5', 'quota-mb': '0', 'rate-limit': '0' }, '127.0.0.1', {}).quotas, {
      contexts: 5,
      bytes: 0,
      requestsPerMinute: 0,
    });
    assert.throws(() => accessFromArgs({ 'api-key': [KEYS.alice], 'rate-limit': '-1' }, '127.0.0.1', {}), /--rate-limit must be an integer >= 0/);
    assert.throws(
      () => accessFromArgs({}, '0.0.0.0', { SOFTPRESS_API_KEYS: 'short' }),
      (e: Error) => /SOFTPRESS_API_KEYS #1/.test(e.message) && !e.message.includes('short,'),
    );
  });
});

describe('serve auth: HTTP', () => {
  test('every /v1 route needs the key (401, OpenAI shape); /health, /openapi.json and the playground stay open', async () => {
    const a = app();
    const missing = await call(a, 'GET', '/v1/models', null);
    assertError(missing, 401, 'missing_api_key', 'invalid_request_error');
    assert.match(missing.body.error.message, /Authorization: Bearer KEY/);
    assert.equal(missing.headers['www-authenticate'], 'Bearer realm="softpress"');
    const wrong = await call(a, 'GET', '/v1/models', null, undefined, { authorization: `Bearer ${WRONG_KEY}` });
    assertError(wrong, 401, 'invalid_api_key');
    assert.ok(!wrong.raw.includes(WRONG_KEY));
    assertError(await call(a, 'GET', '/v1/models', null, undefined, { authorization: `Basic ${KEYS.alice}` }), 401, 'invalid_api_key');
    // before validation and routing: a bad body or an unknown route is still 401
    assertError(await call(a, 'POST', '/v1/contexts', null, { nope: 1 }), 401, 'missing_api_key');
    assertError(await call(a, 'GET', '/v1/nothing-here', null), 401, 'missing_api_key');
    assertError(await call(a, 'GET', '/v1/nothing-here', 'alice'), 404, 'route_not_found');

    const models = await call(a, 'GET', '/v1/models', 'alice');
    assert.equal(models.status, 200);
    assert.equal(models.body.data[0].id, service.modelName);
    const health = await call(a, 'GET', '/health', null);
    assert.equal(health.status, 200);
    assert.equal(health.body.auth, 'api-key');
    assert.equal((await call(a, 'GET', '/', null)).status, 200);

    const doc = (await call(a, 'GET', '/openapi.json', null)).body;
    assert.deepEqual(doc.components.securitySchemes.apiKey, { ...doc.components.securitySchemes.apiKey, type: 'http', scheme: 'bearer' });
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
      for (const op of Object.values(ops)) {
        if (path.startsWith('/v1/')) {
          assert.deepEqual(op.security, [{ apiKey: [] }], path);
          assert.ok(op.responses['401'], `${path} documents 401`);
        } else assert.equal(op.security, undefined, path);
      }
    }
    // without keys: no scheme, no security
    const open = buildServer(service);
    apps.push(open);
    const plain = (await call(open, 'GET', '/openapi.json', null)).body;
    assert.equal(plain.components.securitySchemes, undefined);
    assert.equal(plain.paths['/v1/contexts'].post.security, undefined);
    assert.equal((await call(open, 'GET', '/health', null)).body.auth, 'none');
  });

  test('a context belongs to its key: another key (or none) cannot read, list, ask, complete with or delete it', async () => {
    const a = app();
    const made = await create(a, 'alice');
    assert.equal(made.status, 201, made.raw);
    const id = made.body.id as string;
    assert.equal((await call(a, 'GET', `/v1/contexts/${id}`, 'alice')).status, 200);
    assert.ok((await call(a, 'GET', '/v1/contexts', 'alice')).body.data.some((c: Json) => c.id === id));

    assertError(await call(a, 'GET', `/v1/contexts/${id}`, 'bob'), 404, 'context_not_found');
    assertError(await call(a, 'POST', `/v1/contexts/${id}/ask`, 'bob', { questions: ['What is the code?'], maxTokens: 3 }), 404, 'context_not_found');
    assertError(
      await call(a, 'POST', '/v1/completions', 'bob', { model: service.modelName, prompt: 'The', max_tokens: 2, context_id: id }),
      404,
      'context_not_found',
    );
    assertError(
      await call(a, 'POST', '/v1/chat/completions', 'bob', {
        model: service.modelName,
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 2,
        context_id: id,
      }),
      404,
      'context_not_found',
    );
    assertError(
      await call(a, 'POST', '/v1/completions', 'bob', { model: service.modelName, prompt: 'The', max_tokens: 2, context_id: id, stream: true }),
      404,
      'context_not_found',
    );
    assertError(await call(a, 'DELETE', `/v1/contexts/${id}`, 'bob'), 404, 'context_not_found');
    assert.ok(!(await call(a, 'GET', '/v1/contexts', 'bob')).body.data.some((c: Json) => c.id === id));
    assertError(await call(a, 'GET', `/v1/contexts/${id}`, null), 401, 'missing_api_key');

    // the same server without keys is the anonymous owner: not alice
    const open = buildServer(service);
    apps.push(open);
    assertError(await call(open, 'GET', `/v1/contexts/${id}`, null), 404, 'context_not_found');
    assert.ok(!(await call(open, 'GET', '/v1/contexts', null)).body.data.some((c: Json) => c.id === id));

    // still alice's, and it works for her (loaded in memory now: the owner is checked there too)
    const asked = await call(a, 'POST', `/v1/contexts/${id}/ask`, 'alice', { questions: ['What is the code?'], maxTokens: 3 });
    assert.equal(asked.status, 200, asked.raw);
    assertError(await call(a, 'POST', `/v1/contexts/${id}/ask`, 'bob', { questions: ['What is the code?'], maxTokens: 3 }), 404, 'context_not_found');
    const done = await call(a, 'POST', '/v1/completions', 'alice', { model: service.modelName, prompt: 'The', max_tokens: 2, context_id: id });
    assert.equal(done.status, 200, done.raw);
    assert.equal(service.store.getMeta(id)?.owner, ownerOf(KEYS.alice));
    assert.deepEqual((await call(a, 'DELETE', `/v1/contexts/${id}`, 'alice')).body, { id, deleted: true });
    assertError(await call(a, 'GET', `/v1/contexts/${id}`, 'alice'), 404, 'context_not_found');
  });

  test('contexts stored before keys (no owner) are visible only without keys', async () => {
    const open = buildServer(service);
    apps.push(open);
    const made = await create(open, null);
    assert.equal(made.status, 201);
    const id = made.body.id as string;
    // rewrite the record as an old one, without an owner
    const meta = { ...service.store.getMeta(id)! };
    delete meta.owner;
    const bytes = service.store.getBytes(id)!;
    service.store.put(meta, bytes);
    assert.equal(service.store.getMeta(id)!.owner, undefined);
    assert.equal((await call(open, 'GET', `/v1/contexts/${id}`, null)).status, 200);
    const a = app();
    assertError(await call(a, 'GET', `/v1/contexts/${id}`, 'alice'), 404, 'context_not_found');
    assertError(await call(a, 'DELETE', `/v1/contexts/${id}`, 'alice'), 404, 'context_not_found');
    assert.equal((await call(open, 'DELETE', `/v1/contexts/${id}`, null)).status, 200);
  });

  test("the official openai client with apiKey: works with the right key, 401 with a wrong one, 404 on another key's context", async () => {
    const a = app();
    await a.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(a.server.address() as { port: number }).port}/v1`;
    try {
      const alice = new OpenAI({ baseURL: base, apiKey: KEYS.alice, maxRetries: 0 });
      const models = await alice.models.list();
      assert.deepEqual(
        models.data.map((m) => m.id),
        [service.modelName],
      );
      const ctx = (await (
        await fetch(`${base}/contexts`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${KEYS.alice}` },
          body: JSON.stringify({ text: DOC, method: 'truncate', ratio: 4 }),
        })
      ).json()) as Json;
      assert.match(ctx.id, /^ctx_/);
      const chat = await alice.chat.completions.create({
        model: service.modelName,
        messages: [{ role: 'user', content: 'Where is the box?' }],
        max_tokens: 3,
        temperature: 0,
        context_id: ctx.id,
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      assert.equal(chat.choices[0].message.role, 'assistant');
      const stream = await alice.completions.create({
        model: service.modelName,
        prompt: 'The keeper',
        max_tokens: 3,
        temperature: 0,
        stream: true,
        context_id: ctx.id,
      } as OpenAI.CompletionCreateParamsStreaming);
      let chunks = 0;
      for await (const _ of stream) chunks++;
      assert.ok(chunks >= 1);

      const wrong = new OpenAI({ baseURL: base, apiKey: WRONG_KEY, maxRetries: 0 });
      await assert.rejects(
        wrong.models.list(),
        (e: unknown) => e instanceof OpenAI.AuthenticationError && e.status === 401 && (e.error as Json)?.code === 'invalid_api_key',
      );
      const bob = new OpenAI({ baseURL: base, apiKey: KEYS.bob, maxRetries: 0 });
      await assert.rejects(
        bob.completions.create({ model: service.modelName, prompt: 'x', max_tokens: 2, context_id: ctx.id } as OpenAI.CompletionCreateParamsNonStreaming),
        (e: unknown) => e instanceof OpenAI.NotFoundError && /no context with id/.test(e.message),
      );
      const noKey = await fetch(`${base}/models`);
      assert.equal(noKey.status, 401);
    } finally {
      a.server.closeAllConnections();
    }
  });

  test('quota of stored contexts: 429 insufficient_quota, per key, recovers after a delete, counted in the store across restarts', async () => {
    const a = app({ quotas: { contexts: 2 } });
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await create(a, 'carol');
      assert.equal(r.status, 201, r.raw);
      ids.push(r.body.id);
    }
    const over = await create(a, 'carol');
    assertError(over, 429, 'insufficient_quota', 'insufficient_quota');
    assert.match(over.body.error.message, /you store 2 contexts; your quota is 2\. Delete some/);
    assert.equal(over.headers['x-should-retry'], 'false');
    assert.equal(over.headers['retry-after'], undefined, 'waiting does not help');
    assert.equal((await create(a, 'bob')).status, 201, 'another key has its own quota');
    assert.deepEqual(service.store.usage(ownerOf(KEYS.carol)).contexts, 2);

    // concurrent creates cannot overshoot (the ones being compressed count, the store checks again)
    assert.equal((await call(a, 'DELETE', `/v1/contexts/${ids.pop()}`, 'carol')).status, 200);
    const racing = await Promise.all([create(a, 'carol'), create(a, 'carol'), create(a, 'carol')]);
    assert.deepEqual(racing.map((r) => r.status).sort(), [201, 429, 429]);
    ids.push(racing.find((r) => r.status === 201)!.body.id);
    assert.equal(service.store.usage(ownerOf(KEYS.carol)).contexts, 2);

    // a restart: the quota counts what is in the store
    for (const x of apps.splice(0)) await x.close();
    await service.close();
    service = openStore();
    assert.deepEqual(service.store.usage(ownerOf(KEYS.carol)).contexts, 2);
    const b = app({ quotas: { contexts: 2 } });
    assertError(await create(b, 'carol'), 429, 'insufficient_quota');
    assert.equal((await call(b, 'DELETE', `/v1/contexts/${ids[0]}`, 'carol')).status, 200);
    assert.equal((await create(b, 'carol')).status, 201, 'recovers after a delete');
  });

  test('quota of stored bytes: 429 before compressing when full, and when the new context would not fit', async () => {
    const probe = app();
    const one = await create(probe, 'dave');
    assert.equal(one.status, 201);
    const size = one.body.bytes as number;
    assert.equal((await call(probe, 'DELETE', `/v1/contexts/${one.body.id}`, 'dave')).status, 200);

    const a = app({ quotas: { bytes: Math.floor(size * 1.5) } });
    const first = await create(a, 'dave');
    assert.equal(first.status, 201);
    const second = await create(a, 'dave');
    assertError(second, 429, 'insufficient_quota');
    assert.match(second.body.error.message, /quota of \d+/);
    assert.equal(service.store.usage(ownerOf(KEYS.dave)).bytes, size);
    assert.equal((await call(a, 'DELETE', `/v1/contexts/${first.body.id}`, 'dave')).status, 200);
    assert.equal(service.store.usage(ownerOf(KEYS.dave)).bytes, 0);
    assert.equal((await create(a, 'dave')).status, 201, 'recovers after a delete');
  });

  test('rate limit per key: 429 rate_limit_exceeded with Retry-After, other keys and /health unaffected, recovers after the window', async () => {
    const a = app({ quotas: { requestsPerMinute: 3, rateWindowMs: 1000 } });
    for (let i = 0; i < 3; i++) {
      const r = await call(a, 'GET', '/v1/models', 'erin');
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-ratelimit-limit'], '3');
      assert.equal(r.headers['x-ratelimit-remaining'], String(2 - i));
    }
    const limited = await call(a, 'GET', '/v1/contexts', 'erin');
    assertError(limited, 429, 'rate_limit_exceeded', 'rate_limit_error');
    assert.match(limited.body.error.message, /3 requests per 1 s per API key/);
    const retry = Number(limited.headers['retry-after']);
    assert.equal(retry, 1, `retry-after ${limited.headers['retry-after']}`);
    assert.equal((await call(a, 'GET', '/v1/models', 'bob')).status, 200, 'another key has its own budget');
    assert.equal((await call(a, 'GET', '/health', null)).status, 200, '/health is not limited');
    assertError(await call(a, 'GET', '/v1/models', null), 401, 'missing_api_key');
    await new Promise((r) => setTimeout(r, retry * 1000 + 50));
    assert.equal((await call(a, 'GET', '/v1/models', 'erin')).status, 200, 'recovers after the window');

    const doc = (await call(a, 'GET', '/openapi.json', null)).body;
    assert.ok(doc.paths['/v1/models'].get.responses['429'], 'rate-limited routes document 429');
  });

  test('keys reach neither the logs, nor error bodies, nor the store file (which holds the owner hash)', async () => {
    const sink = new LogSink();
    const a = app({ logger: true, logStream: sink });
    const made = await create(a, 'alice');
    assert.equal(made.status, 201);
    const bodies = [made.raw];
    bodies.push((await call(a, 'GET', '/v1/models', null, undefined, { authorization: `Bearer ${WRONG_KEY}` })).raw);
    bodies.push((await call(a, 'GET', `/v1/contexts/${made.body.id}`, 'bob')).raw);
    bodies.push((await call(a, 'POST', '/v1/contexts', 'alice', { text: 1 })).raw);
    await service.store.flush();
    assert.match(sink.text, /"key":"alice"/, 'the request log names the key');
    assert.match(sink.text, /"statusCode":401/);
    const file = readFileSync(storePath);
    assert.ok(file.includes(Buffer.from(ownerOf(KEYS.alice))), 'the store records the owner hash');
    for (const key of [...Object.values(KEYS), WRONG_KEY]) {
      assert.ok(!sink.text.includes(key), 'a key in the log');
      for (const b of bodies) assert.ok(!b.includes(key), 'a key in a response');
      assert.ok(!file.includes(Buffer.from(key)), 'a key in the store');
    }
    assert.equal(service.store.getMeta(made.body.id)?.owner, ownerOf(KEYS.alice));
    assert.notEqual(ownerOf(KEYS.alice), ANONYMOUS);
  });
});
