/**
 * The HTTP server on a small random base model (with the project's tokenizer): the context
 * lifecycle, batched decoding (token for token equal to generateWithContext), every class of
 * bad input (4xx with a clear message, the server keeps serving), the LMDB store (persistence
 * across restarts, LRU eviction, base-model fingerprint 409), the 429 queue bound, reads during
 * decoding, SSE streaming, the OpenAPI document, and the official `openai` client.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import type { FastifyInstance } from 'fastify';

import { generate } from '../src/models/generate.js';
import { memoryStats } from '../src/tensor/index.js';
import {
  compressorNames,
  contextPrefix,
  createCompressor,
  freeSoftContext,
  generateWithContext,
  loadCompressor,
  parseSoftContext,
  saveCompressor,
} from '../src/compress/index.js';
import { loadModel } from '../src/models/load.js';
import { BatchDecode, type DecodeRow } from '../src/serve/decoder.js';
import { openService, type OpenServiceOptions, type SoftpressService } from '../src/serve/service.js';
import { buildServer } from '../src/serve/server.js';
import { writeRandomBase } from '../src/serve/testing.js';
import * as S from '../src/serve/schemas.js';
import { TextStream, encodeYielding } from '../src/serve/text.js';
import { loadCorpus } from '../src/data/corpora.js';
import { collectGarbage } from './helpers/gc.js';
import { waitFor } from './helpers/wait.js';

const tmp = mkdtempSync(join(tmpdir(), 'softpress-serve-'));
const baseDir = writeRandomBase(join(tmp, 'base'), { window: 256, sharp: true, seed: 7 });
const otherBaseDir = writeRandomBase(join(tmp, 'other-base'), { window: 256, sharp: true, seed: 8 });

const DOC =
  'The lighthouse keeper wrote in the log every evening. On the ninth of March the secret code of the blue box was 4817, ' +
  'and the keeper hid the box under the third stair. Ships passed in the fog, and the bell rang twice an hour. ';

function open(name: string, o: Partial<OpenServiceOptions> = {}): SoftpressService {
  return openService({ base: baseDir, storePath: join(tmp, name, 'contexts.mdb'), storeMaxBytes: 64 * 2 ** 20, discover: false, ...o });
}

// Response bodies are read field by field in the assertions.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

async function call(
  app: FastifyInstance,
  method: 'GET' | 'POST' | 'DELETE',
  url: string,
  payload?: unknown,
  headers?: Record<string, string>,
): Promise<{ status: number; body: Json; headers: Record<string, unknown>; raw: string }> {
  const r = await app.inject({ method, url, payload: payload as string | object | undefined, headers });
  let body: Json = {};
  try {
    body = JSON.parse(r.body) as Json;
  } catch {
    // not JSON (html, sse)
  }
  return { status: r.statusCode, body, headers: r.headers, raw: r.body };
}

/** Asserts an error response: status, code, a non-empty message that mentions `mention`. */
function assertError(r: { status: number; body: Json }, status: number, code: string, mention?: RegExp): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error?.code, code, JSON.stringify(r.body));
  assert.ok(typeof r.body.error.message === 'string' && r.body.error.message.length > 10);
  if (mention) assert.match(r.body.error.message, mention);
}

after(() => rmSync(tmp, { recursive: true, force: true }));

describe('serve: contexts and answers', () => {
  let service: SoftpressService;
  let app: FastifyInstance;
  before(() => {
    service = open('main');
    app = buildServer(service, { bodyLimit: 64 * 1024 });
  });
  after(async () => {
    await app.close();
    await service.close();
  });

  test('compress, read, list, ask, delete', async () => {
    const created = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 4 });
    assert.equal(created.status, 201, created.raw);
    const c = created.body;
    assert.match(c.id, /^ctx_[0-9a-f]{24}$/);
    assert.equal(created.headers.location, `/v1/contexts/${c.id}`);
    assert.equal(c.method, 'truncate');
    assert.ok(c.sourceTokens > 40);
    assert.equal(c.softTokens, Math.ceil(c.sourceTokens / 4));
    assert.ok(Math.abs(c.ratio - c.sourceTokens / c.softTokens) < 0.01);
    assert.ok(c.compressMs >= 0);

    const got = await call(app, 'GET', `/v1/contexts/${c.id}`);
    assert.equal(got.status, 200);
    assert.equal(got.body.softTokens, c.softTokens);
    assert.equal(got.body.baseFingerprint, service.fingerprint);

    const list = await call(app, 'GET', '/v1/contexts?limit=10');
    assert.equal(list.status, 200);
    assert.ok(list.body.data.some((x: Json) => x.id === c.id));

    const asked = await call(app, 'POST', `/v1/contexts/${c.id}/ask`, { questions: ['What is the secret code?', 'Where is the box?'], maxTokens: 6 });
    assert.equal(asked.status, 200, asked.raw);
    assert.equal(asked.body.answers.length, 2);
    for (const a of asked.body.answers) {
      assert.equal(typeof a.answer, 'string');
      assert.ok(!a.answer.includes('\n'));
      assert.ok(a.ms > 0 && a.tokens >= 1 && a.tokens <= 6);
    }
    assert.equal(asked.body.batchSize, 2, 'the two questions share forwards');
    for (const k of ['loadMs', 'queueMs', 'prefillMs', 'decodeMs', 'totalMs']) assert.equal(typeof asked.body[k], 'number', k);

    const methods = await call(app, 'GET', '/v1/methods');
    assert.deepEqual(methods.body.methods.map((m: Json) => m.name).sort(), ['full', 'none', 'truncate']);
    assert.equal(methods.body.default, 'truncate');

    const del = await call(app, 'DELETE', `/v1/contexts/${c.id}`);
    assert.deepEqual([del.status, del.body], [200, { id: c.id, deleted: true }]);
    assertError(await call(app, 'GET', `/v1/contexts/${c.id}`), 404, 'context_not_found');
    assertError(await call(app, 'DELETE', `/v1/contexts/${c.id}`), 404, 'context_not_found');
  });

  test('the none and full strategies, and a fixed budget', async () => {
    const none = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'none' });
    assert.equal(none.status, 201);
    assert.equal(none.body.softTokens, 0);
    assert.equal(none.body.ratio, null);
    const full = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'full' });
    assert.equal(full.status, 201);
    assert.equal(full.body.softTokens, full.body.sourceTokens);
    const fixed = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', budget: 5 });
    assert.equal(fixed.status, 201);
    assert.equal(fixed.body.softTokens, 5);
    const asked = await call(app, 'POST', `/v1/contexts/${none.body.id}/ask`, { questions: ['Who wrote the log?'] });
    assert.equal(asked.status, 200);
  });

  test('concurrent requests share forwards and decode exactly as generateWithContext does', async () => {
    // contexts of different lengths, plus a plain prompt without a context
    const ids: string[] = [];
    for (const ratio of [2, 3, 5]) {
      const r = await call(app, 'POST', '/v1/contexts', { text: DOC + DOC.slice(0, 40 * ratio), method: 'truncate', ratio });
      assert.equal(r.status, 201);
      ids.push(r.body.id);
    }
    const prompts = ['The keeper', 'In the fog the ship', 'Code:'];
    const reqs: { prompt: string; context_id?: string }[] = [...ids.map((id, i) => ({ prompt: prompts[i], context_id: id })), { prompt: 'Once upon a time' }];
    const responses = await Promise.all(
      reqs.map((r) => call(app, 'POST', '/v1/completions', { model: service.modelName, max_tokens: 8, temperature: 0, ...r })),
    );
    for (const r of responses) assert.equal(r.status, 200, r.raw);
    assert.ok(Math.max(...responses.map((r) => r.body.softpress.batch_size)) >= 3, `batch sizes ${responses.map((r) => r.body.softpress.batch_size)}`);
    // reference: each request alone through the library's generation
    const tok = service.tokenizer;
    for (const [i, r] of reqs.entries()) {
      const promptIds = tok.encode(r.prompt);
      let tokens: number[];
      if (r.context_id) {
        const ctx = parseSoftContext(service.store.getBytes(r.context_id)!, service.model);
        tokens = generateWithContext(service.model, ctx, [promptIds], tok.bos, { maxTokens: 8, stopTokens: [tok.eos] }).tokens[0];
        freeSoftContext(ctx);
      } else {
        tokens = generate(service.model, [[tok.bos, ...promptIds]], { maxTokens: 8, stopTokens: [tok.eos] }).tokens[0];
      }
      assert.equal(responses[i].body.choices[0].text, tok.decode(tokens), `request ${i}`);
      assert.equal(responses[i].body.usage.completion_tokens, tokens.length);
    }
  });

  test('without the prefix cache the answers are the same', async () => {
    const plain = open('no-prefix-cache', { prefixCache: false });
    const plainApp = buildServer(plain);
    const withCache: string[] = [];
    const withoutCache: string[] = [];
    try {
      for (const a of [app, plainApp]) {
        const ctx = (await call(a, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 3 })).body.id as string;
        const first = await call(a, 'POST', `/v1/contexts/${ctx}/ask`, { questions: ['What is the code?', 'Where?'], maxTokens: 6 });
        const again = await call(a, 'POST', `/v1/contexts/${ctx}/ask`, { questions: ['What is the code?', 'Where?'], maxTokens: 6 });
        assert.deepEqual(
          again.body.answers.map((x: Json) => x.answer),
          first.body.answers.map((x: Json) => x.answer),
        );
        if (a === app) {
          assert.ok(first.body.prefixMs > 0, 'the first ask runs the prefix');
          assert.equal(again.body.prefixMs, 0, 'the second reuses it');
        } else assert.equal(first.body.prefixMs, 0);
        (a === app ? withCache : withoutCache).push(...first.body.answers.map((x: Json) => x.answer as string));
      }
      assert.deepEqual(withoutCache, withCache);
    } finally {
      await plainApp.close();
      await plain.close();
    }
  });

  test('reads are answered while a long generation decodes', async () => {
    const ctx = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 8 });
    let generationDone = false;
    const long = call(app, 'POST', '/v1/completions', {
      model: service.modelName,
      prompt: 'The',
      max_tokens: 200,
      temperature: 0,
      context_id: ctx.body.id,
    }).then((r) => {
      generationDone = true;
      return r;
    });
    // Wait until the batch is decoding: a fixed sleep was too short on a loaded machine (the
    // request was still queued) and could be too long on a fast one.
    await waitFor(async () => generationDone || (await call(app, 'GET', '/health')).body.engine.activeBatches === 1, 'the generation to start decoding');
    assert.equal(generationDone, false, 'the generation finished before it was seen decoding');
    const t0 = performance.now();
    const read = await call(app, 'GET', `/v1/contexts/${ctx.body.id}`);
    const health = await call(app, 'GET', '/health');
    const readMs = performance.now() - t0;
    assert.equal(read.status, 200);
    assert.equal(health.body.engine.activeBatches, 1, 'the generation was still running');
    assert.equal(generationDone, false, `the reads (${readMs.toFixed(1)} ms) waited for the generation`);
    const r = await long;
    assert.equal(r.status, 200);
    assert.ok(r.body.usage.completion_tokens > 10);
  });

  test('chat completions and SSE streaming in the OpenAI chunk format', async () => {
    const ctx = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 4 });
    const chat = await call(app, 'POST', '/v1/chat/completions', {
      model: service.modelName,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'What is hidden?' },
      ],
      max_tokens: 6,
      temperature: 0,
      context_id: ctx.body.id,
    });
    assert.equal(chat.status, 200, chat.raw);
    assert.equal(chat.body.object, 'chat.completion');
    assert.equal(chat.body.choices[0].message.role, 'assistant');
    assert.equal(typeof chat.body.choices[0].message.content, 'string');
    assert.equal(chat.body.softpress.context_id, ctx.body.id);

    for (const [url, body, object] of [
      ['/v1/completions', { prompt: 'The keeper', max_tokens: 6 }, 'text_completion'],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6 }, 'chat.completion.chunk'],
    ] as const) {
      const r = await app.inject({
        method: 'POST',
        url,
        payload: { model: service.modelName, temperature: 0, stream: true, context_id: ctx.body.id, stream_options: { include_usage: true }, ...body },
      });
      assert.equal(r.statusCode, 200);
      assert.match(String(r.headers['content-type']), /^text\/event-stream/);
      const events = r.body.split('\n\n').filter(Boolean);
      assert.ok(
        events.every((e) => e.startsWith('data: ')),
        r.body,
      );
      assert.equal(events[events.length - 1], 'data: [DONE]');
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)) as Json);
      assert.ok(chunks.every((c) => c.object === object && typeof c.id === 'string' && c.id === chunks[0].id));
      const withChoices = chunks.filter((c) => c.choices.length);
      assert.ok(['stop', 'length'].includes(withChoices[withChoices.length - 1].choices[0].finish_reason));
      assert.ok(chunks[chunks.length - 1].usage.completion_tokens >= 1, 'usage chunk last');
      // the streamed text equals the non-streamed one
      const streamed = withChoices.map((c) => c.choices[0].text ?? c.choices[0].delta?.content ?? '').join('');
      const whole = await call(app, 'POST', url, { model: service.modelName, temperature: 0, context_id: ctx.body.id, ...body });
      const expect = whole.body.choices[0].text ?? whole.body.choices[0].message.content;
      assert.equal(streamed.trim(), expect.trim());
    }
  });

  test('malformed and mistyped requests get 400 with the field named', async () => {
    const id = (await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate' })).body.id as string;
    const bad = await app.inject({ method: 'POST', url: '/v1/contexts', payload: '{"text": "abc",', headers: { 'content-type': 'application/json' } });
    assert.equal(bad.statusCode, 400);
    assert.equal(JSON.parse(bad.body).error.code, 'invalid_json');
    const empty = await app.inject({ method: 'POST', url: '/v1/contexts', payload: '', headers: { 'content-type': 'application/json' } });
    assert.equal(empty.statusCode, 400);
    const cases: [string, string, unknown, string, RegExp][] = [
      ['POST', '/v1/contexts', {}, 'invalid_request', /required field 'text'/],
      ['POST', '/v1/contexts', { text: 42 }, 'invalid_request', /text must be string/],
      ['POST', '/v1/contexts', { text: '' }, 'invalid_request', /text/],
      ['POST', '/v1/contexts', { text: DOC, ratio: '4' }, 'invalid_request', /ratio must be number/],
      ['POST', '/v1/contexts', { text: DOC, ratio: 0.5 }, 'invalid_request', /ratio must be >= 1/],
      ['POST', '/v1/contexts', { text: DOC, ratio: -3 }, 'invalid_request', /ratio/],
      ['POST', '/v1/contexts', { text: DOC, budget: 2.5 }, 'invalid_request', /budget must be integer/],
      ['POST', '/v1/contexts', { text: DOC, ratio: 4, budget: 8 }, 'bad_budget', /not both/],
      ['POST', '/v1/contexts', { text: DOC, method: 'gzip' }, 'unknown_method', /offers full, none, truncate/],
      ['POST', '/v1/contexts', { text: DOC, rattio: 4 }, 'invalid_request', /unknown field 'rattio'/],
      ['POST', '/v1/contexts', [DOC], 'invalid_request', /body must be object/],
      ['POST', `/v1/contexts/${id}/ask`, { questions: [] }, 'invalid_request', /questions must NOT have fewer than 1 items/],
      ['POST', `/v1/contexts/${id}/ask`, { questions: 'why?' }, 'invalid_request', /questions must be array/],
      ['POST', `/v1/contexts/${id}/ask`, { questions: ['why?'], maxTokens: 0 }, 'invalid_request', /maxTokens must be >= 1/],
      ['POST', `/v1/contexts/${id}/ask`, { questions: ['why?'], temperature: 'hot' }, 'invalid_request', /temperature must be number/],
      ['POST', `/v1/contexts/${id}/ask`, { questions: ['why?'], maxTokens: 250 }, 'context_length_exceeded', /maximum context length is 256/],
      ['GET', '/v1/contexts/bad%20id!', undefined, 'invalid_request', /id must match/],
      ['GET', '/v1/contexts?limit=ten', undefined, 'invalid_request', /limit/],
      ['POST', '/v1/completions', { prompt: 'x' }, 'invalid_request', /required field 'model'/],
      ['POST', '/v1/completions', { model: service.modelName, prompt: 7 }, 'invalid_request', /prompt has the wrong type/],
      ['POST', '/v1/completions', { model: service.modelName, prompt: 'x', n: 2 }, 'invalid_request', /n must be <= 1/],
      ['POST', '/v1/completions', { model: service.modelName, prompt: 'x', max_tokens: 'many' }, 'invalid_request', /max_tokens must be integer,null/],
      ['POST', '/v1/completions', { model: service.modelName, prompt: 'x', max_tokens: 300 }, 'context_length_exceeded', /maximum context length/],
      ['POST', '/v1/completions', { model: service.modelName, prompt: 'x', logprobs: 2 }, 'unsupported_parameter', /logprobs/],
      [
        'POST',
        '/v1/chat/completions',
        { model: service.modelName, messages: [{ role: 'robot', content: 'hi' }] },
        'invalid_request',
        /role must be equal to one of the allowed values/,
      ],
      [
        'POST',
        '/v1/chat/completions',
        { model: service.modelName, messages: [{ role: 'user', content: [{ type: 'image_url' }] }] },
        'unsupported_content',
        /only text parts/,
      ],
    ];
    for (const [method, url, payload, code, mention] of cases) {
      const r = await call(app, method as 'GET' | 'POST', url, payload);
      assertError(r, 400, code, mention);
    }
    const textPlain = await call(app, 'POST', '/v1/contexts', 'hello', { 'content-type': 'text/plain' });
    assertError(textPlain, 415, 'unsupported_media_type', /application\/json/);
    assertError(await call(app, 'GET', '/v2/nothing'), 404, 'route_not_found');
    assertError(await call(app, 'POST', '/v1/completions', { model: 'gpt-4', prompt: 'x' }), 404, 'model_not_found', /serves/);
  });

  test('oversized bodies and contexts get 413; unknown ids 404; the server keeps serving', async () => {
    const huge = await call(app, 'POST', '/v1/contexts', { text: 'word '.repeat(20000) });
    assertError(huge, 413, 'body_too_large', /65536 bytes/);
    const long = DOC.repeat(8); // ~500 tokens > the 256-token window
    assertError(await call(app, 'POST', '/v1/contexts', { text: long, method: 'full' }), 413, 'context_too_long', /window is 256/);
    assertError(await call(app, 'POST', '/v1/contexts', { text: long, method: 'truncate', ratio: 1.5 }), 413, 'context_too_long', /higher ratio/);
    assertError(await call(app, 'POST', '/v1/contexts', { text: long, method: 'truncate', budget: 250 }), 413, 'context_too_long');
    const fits = await call(app, 'POST', '/v1/contexts', { text: long, method: 'truncate', ratio: 8 });
    assert.equal(fits.status, 201, 'a compressor that makes it fit is fine');
    assert.ok(fits.body.sourceTokens > 256);
    const unknown = 'ctx_000000000000000000000000';
    assertError(await call(app, 'GET', `/v1/contexts/${unknown}`), 404, 'context_not_found', /ctx_0/);
    assertError(await call(app, 'DELETE', `/v1/contexts/${unknown}`), 404, 'context_not_found');
    assertError(await call(app, 'POST', `/v1/contexts/${unknown}/ask`, { questions: ['q?'] }), 404, 'context_not_found');
    assertError(await call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: 'x', context_id: unknown }), 404, 'context_not_found');
    const ok = await call(app, 'POST', `/v1/contexts/${fits.body.id}/ask`, { questions: ['Still there?'], maxTokens: 4 });
    assert.equal(ok.status, 200);
    assert.equal((await call(app, 'GET', '/health')).body.ok, true);
  });

  test('the OpenAPI document covers every route with its schemas', async () => {
    const r = await call(app, 'GET', '/openapi.json');
    assert.equal(r.status, 200);
    const doc = r.body;
    assert.equal(doc.openapi, '3.1.0');
    const ops = Object.entries(doc.paths as Record<string, Record<string, Json>>).flatMap(([p, ms]) => Object.keys(ms).map((m) => `${m.toUpperCase()} ${p}`));
    for (const want of [
      'GET /',
      'POST /v1/contexts',
      'GET /v1/contexts',
      'GET /v1/contexts/{id}',
      'DELETE /v1/contexts/{id}',
      'POST /v1/contexts/{id}/ask',
      'POST /v1/completions',
      'POST /v1/chat/completions',
      'GET /v1/models',
      'GET /v1/models/{model}',
      'GET /v1/methods',
      'GET /health',
      'GET /openapi.json',
    ]) {
      assert.ok(ops.includes(want), `${want} missing from ${ops.join(', ')}`);
    }
    const create = doc.paths['/v1/contexts'].post;
    assert.deepEqual(create.requestBody.content['application/json'].schema, S.createContextBody);
    assert.ok(create.responses['201'] && create.responses['413'] && create.responses['400']);
    assert.deepEqual(doc.paths['/v1/contexts/{id}/ask'].post.parameters[0].name, 'id');
    assert.ok(doc.paths['/v1/completions'].post.responses['200'].content['text/event-stream']);
    const page = await app.inject({ method: 'GET', url: '/' });
    assert.equal(page.statusCode, 200);
    assert.match(String(page.headers['content-type']), /text\/html/);
    assert.match(page.body, /<title>softpress playground<\/title>/);
  });
});

describe('serve: text', () => {
  test('tokenizing in pieces (yielding between them) gives the ids of tokenizing at once', async () => {
    const service = open('text');
    try {
      const tok = service.tokenizer;
      const text = loadCorpus('moby-dick')
        .slice(0, 6)
        .map((d) => d.text)
        .join('\n\n  \t');
      assert.ok(text.length > 30000);
      assert.deepEqual(await encodeYielding(tok, text, 1500), tok.encode(text));
      assert.deepEqual(await encodeYielding(tok, 'x'.repeat(5000), 1000), tok.encode('x'.repeat(5000)));
      const stream = new TextStream(tok, ['\nUser:']);
      const ids = tok.encode(' Yes, the box.\nUser: again');
      let out = '';
      for (const id of ids) {
        const { delta, stopped } = stream.push(id);
        out += delta;
        if (stopped) break;
      }
      out += stream.finish();
      assert.equal(out, ' Yes, the box.');
    } finally {
      await service.close();
    }
  });
});

describe('serve: the batch decoder', () => {
  test('chunked prefill, per-row limits, compaction and cancellation match one-by-one generation', async () => {
    const service = open('decoder');
    try {
      const { model, tokenizer: tok } = service;
      const truncate = createCompressor('truncate', model);
      const texts = [DOC, DOC.slice(0, 90), DOC + DOC.slice(0, 120), 'A short one.'];
      const ctxs = texts.map((t, i) => truncate.compress([tok.encode(t)], { ratio: 1 + i }));
      const prompts = ['The keeper', 'Ships', 'In March the code', 'Why'].map((p) => tok.encode(p));
      const maxTokens = [9, 3, 14, 12];
      const reference = ctxs.map((ctx, i) => generateWithContext(model, ctx, [prompts[i]], tok.bos, { maxTokens: maxTokens[i] }).tokens[0]);
      const results: (number[] | string)[] = new Array(4);
      const rows: DecodeRow[] = ctxs.map((ctx, i) => {
        const { embeds } = contextPrefix(model, ctx, tok.bos);
        return {
          prefix: embeds.reshape(embeds.size(1), model.dim).keep(),
          prompt: prompts[i],
          maxTokens: maxTokens[i],
          temperature: 0,
          seed: 0,
          stopTokens: new Set<number>(),
          onToken: i === 3 ? () => void (rows[3].cancelled = results[1] !== undefined) : undefined,
          onDone: (r) => (results[i] = r.finishReason === 'cancelled' ? 'cancelled' : r.tokens),
          onError: (e) => (results[i] = e.message),
        };
      });
      // 4 rows x 16 positions per prefill unit: the prefill runs in several chunks
      const batch = new BatchDecode(model, rows, { prefillChunkTokens: 64 });
      let units = 0;
      while (batch.tick()) units++;
      assert.ok(batch.forwards > 14 + 2, `prefill ran in chunks (${batch.forwards} forwards)`);
      assert.deepEqual(results[0], reference[0]);
      assert.deepEqual(results[1], reference[1], 'the row that finished first');
      assert.deepEqual(results[2], reference[2], 'the longest row, after compaction');
      assert.equal(results[3], 'cancelled');
      for (const r of rows) r.prefix!.free();
      for (const c of ctxs) freeSoftContext(c);
      assert.ok(units > 0);
    } finally {
      await service.close();
    }
  });
});

describe('serve: continuous batching', () => {
  test('a batch merged into a running one decodes exactly as each row alone', async () => {
    const service = open('merge');
    try {
      const { model, tokenizer: tok } = service;
      const truncate = createCompressor('truncate', model);
      // the late rows are both shorter and longer than the running batch's cache
      const texts = [DOC.slice(0, 120), DOC.slice(0, 60), DOC + DOC.slice(0, 150), 'Short.'];
      const ctxs = texts.map((t) => truncate.compress([tok.encode(t)], { ratio: 1 }));
      const prompts = ['The keeper', 'Ships', 'In March the code', 'Why'].map((p) => tok.encode(p));
      const maxTokens = [12, 7, 10, 9];
      const reference = ctxs.map((ctx, i) => generateWithContext(model, ctx, [prompts[i]], tok.bos, { maxTokens: maxTokens[i] }).tokens[0]);
      const results: number[][] = [];
      const sizes: number[] = [];
      const rows: DecodeRow[] = ctxs.map((ctx, i) => {
        const { embeds } = contextPrefix(model, ctx, tok.bos);
        return {
          prefix: embeds.reshape(embeds.size(1), model.dim).keep(),
          prompt: prompts[i],
          maxTokens: maxTokens[i],
          temperature: 0,
          seed: 0,
          stopTokens: new Set<number>(),
          onDone: (r) => {
            results[i] = r.tokens;
            sizes[i] = r.batchSize;
          },
          onError: (e) => assert.fail(e),
        };
      });
      const running = new BatchDecode(model, rows.slice(0, 2));
      for (let i = 0; i < 4; i++) running.tick(); // prefill + 3 tokens
      const late = new BatchDecode(model, rows.slice(2), { prefillChunkTokens: 64 });
      while (!late.decoding) late.tick();
      assert.ok(running.canAbsorb(late));
      running.absorb(late);
      assert.ok(late.done);
      assert.equal(running.liveRows, 4);
      while (running.tick());
      for (let i = 0; i < 4; i++) assert.deepEqual(results[i], reference[i], `row ${i}`);
      assert.deepEqual(sizes, [4, 4, 4, 4]);
      for (const r of rows) r.prefix!.free();
      for (const c of ctxs) freeSoftContext(c);
    } finally {
      await service.close();
    }
  });

  test('staggered requests join the running decode', async () => {
    const service = open('stagger', { engine: { batchWindowMs: 0 } });
    const app = buildServer(service);
    try {
      const id = (await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 2 })).body.id as string;
      const reqs: Promise<{ status: number; body: Json }>[] = [];
      for (let i = 0; i < 4; i++) {
        reqs.push(call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: `Entry ${i}:`, max_tokens: 120, temperature: 0, context_id: id }));
        // the next arrives once this one is in a batch, while the earlier ones decode (a fixed
        // sleep depends on the machine's speed and load)
        await waitFor(() => service.engine.stats().rows > i, `request ${i} to enter a batch`);
      }
      const rs = await Promise.all(reqs);
      for (const r of rs) assert.equal(r.status, 200);
      const stats = service.engine.stats();
      assert.ok(stats.merges >= 1, `merges ${stats.merges}`);
      assert.ok(Math.max(...rs.map((r) => r.body.softpress.batch_size)) >= 3, `batch sizes ${rs.map((r) => r.body.softpress.batch_size)}`);
    } finally {
      await app.close();
      await service.close();
    }
  });
});

describe('serve: learned compressors', () => {
  test('every registered learned method serves from its folder, batched as generateWithContext decodes', async () => {
    const methods = compressorNames({ learnedOnly: true });
    if (methods.length === 0) return;
    const probe = loadModel(baseDir).model;
    const dirs = methods.map((m) => {
      const dir = join(tmp, 'compressors', m);
      saveCompressor(createCompressor(m, probe, {}), dir);
      return dir;
    });
    const service = open('learned', { compressorDirs: dirs });
    const app = buildServer(service);
    try {
      const tok = service.tokenizer;
      assert.deepEqual(
        service
          .methods()
          .filter((m) => m.learned)
          .map((m) => m.name)
          .sort(),
        [...methods].sort(),
      );
      for (const method of methods) {
        const made = await Promise.all([0, 1].map(() => call(app, 'POST', '/v1/contexts', { text: DOC, method, ratio: 4 })));
        for (const m of made) assert.equal(m.status, 201, `${method}: ${m.raw}`);
        const prompts = ['The keeper', 'Code:'];
        const rs = await Promise.all(
          made.map((m, i) =>
            call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: prompts[i], max_tokens: 5, temperature: 0, context_id: m.body.id }),
          ),
        );
        for (const r of rs) assert.equal(r.status, 200, `${method}: ${r.raw}`);
        assert.equal(Math.max(...rs.map((r) => r.body.softpress.batch_size)), 2, `${method} rows share a batch`);
        const lora = loadCompressor(dirs[methods.indexOf(method)], service.model).decoderLora; // the adapters the server decodes with
        for (const [i, m] of made.entries()) {
          const ctx = parseSoftContext(service.store.getBytes(m.body.id)!, service.model);
          const ref = generateWithContext(service.model, ctx, [tok.encode(prompts[i])], tok.bos, { maxTokens: 5, stopTokens: [tok.eos], lora }).tokens[0];
          freeSoftContext(ctx);
          assert.equal(rs[i].body.choices[0].text, tok.decode(ref), `${method}, request ${i}`);
        }
      }
    } finally {
      await app.close();
      await service.close();
    }
  });
});

describe('serve: the store', () => {
  test('contexts survive a restart; another base model gets 409 and is not served', async () => {
    let service = open('persist');
    let app = buildServer(service);
    const made = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 2 });
    assert.equal(made.status, 201);
    const id = made.body.id as string;
    const before = await call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: ['What is the code?'], maxTokens: 5 });
    await app.close();
    await service.close();

    service = open('persist');
    app = buildServer(service);
    const got = await call(app, 'GET', `/v1/contexts/${id}`);
    assert.equal(got.status, 200);
    assert.equal(got.body.softTokens, made.body.softTokens);
    const again = await call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: ['What is the code?'], maxTokens: 5 });
    assert.equal(again.status, 200);
    assert.ok(again.body.loadMs > 0, 'loaded from the store');
    assert.equal(again.body.answers[0].answer, before.body.answers[0].answer);
    await app.close();
    await service.close();

    service = open('persist', { base: otherBaseDir });
    app = buildServer(service);
    assert.notEqual(service.fingerprint, made.body.baseFingerprint);
    assertError(await call(app, 'GET', `/v1/contexts/${id}`), 409, 'base_model_mismatch', /made for base model .* but this server runs/);
    assertError(await call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: ['q?'] }), 409, 'base_model_mismatch');
    assertError(await call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: 'x', context_id: id }), 409, 'base_model_mismatch');
    assert.equal((await call(app, 'GET', '/v1/contexts')).body.data.length, 0, 'not listed');
    assert.equal((await call(app, 'DELETE', `/v1/contexts/${id}`)).status, 200, 'but it can be deleted');
    await app.close();
    await service.close();
  });

  test('a size bound with least-recently-used eviction', async () => {
    const probe = open('probe');
    const size = (await probe.createContext({ text: DOC, method: 'truncate', ratio: 4 })).bytes;
    await probe.close();
    const service = open('lru', { storeMaxBytes: Math.floor(size * 2.5) });
    const app = buildServer(service);
    const make = async () => (await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 4 })).body;
    const a = await make();
    await new Promise((r) => setTimeout(r, 5));
    const b = await make();
    await new Promise((r) => setTimeout(r, 5));
    assert.equal((await call(app, 'POST', `/v1/contexts/${a.id}/ask`, { questions: ['q?'], maxTokens: 2 })).status, 200); // a is now the most recent
    await service.store.flush();
    await new Promise((r) => setTimeout(r, 5));
    const c = await make();
    assert.deepEqual(c.evicted, [b.id]);
    assert.equal((await call(app, 'GET', `/v1/contexts/${a.id}`)).status, 200);
    assertError(await call(app, 'GET', `/v1/contexts/${b.id}`), 404, 'context_not_found', /evicted/);
    assert.ok(service.store.totalBytes <= service.store.maxBytes);
    const tooBig = await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'full' });
    assertError(tooBig, 413, 'context_too_large_for_store', /--store-mb/);
    await app.close();
    await service.close();
  });
});

describe('serve: memory', () => {
  test('closing a service frees its model, compressors, contexts and caches', async () => {
    await collectGarbage();
    const start = memoryStats().liveHandles;
    const service = open('close');
    const app = buildServer(service);
    const id = (await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio: 2 })).body.id as string;
    assert.equal((await call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: ['What is the code?'], maxTokens: 3 })).status, 200);
    assert.equal((await call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: 'The', max_tokens: 3 })).status, 200);
    assert.ok(memoryStats().liveHandles > start + service.model.parameters().length, 'the model and caches are alive while serving');
    await app.close();
    await service.close();
    await collectGarbage();
    assert.equal(memoryStats().liveHandles, start);
  });

  test('requests, streams, deletions and cancellations leave no native tensors behind', async () => {
    const service = open('leaks');
    const app = buildServer(service);
    try {
      const round = async () => {
        const ids: string[] = [];
        for (const ratio of [2, 4]) ids.push((await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate', ratio })).body.id as string);
        await Promise.all(
          ids.flatMap((id) => [0, 1, 2].map((i) => call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: [`q ${i}`, 'why?'], maxTokens: 2 + i }))),
        );
        await Promise.all(
          ids.map((id, i) => call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: 'x', max_tokens: 3, context_id: id, stream: i === 0 })),
        );
        await call(app, 'POST', '/v1/completions', { model: service.modelName, prompt: '', max_tokens: 2 });
        await call(app, 'POST', '/v1/contexts', { text: DOC.repeat(8), method: 'full' }); // refused
        for (const id of ids) await call(app, 'DELETE', `/v1/contexts/${id}`);
      };
      await round(); // the plain BOS prefix cache and the model's own tables are made here
      await collectGarbage();
      // Not collected again at the end: a tensor left to the garbage collector counts as a leak.
      const before = memoryStats().liveHandles;
      for (let i = 0; i < 3; i++) await round();
      assert.equal(memoryStats().liveHandles, before);
    } finally {
      await app.close();
      await service.close();
    }
  });
});

describe('serve: load', () => {
  test('a full queue answers 429 with Retry-After, then serving resumes', async () => {
    const service = open('queue', { engine: { maxPendingRows: 2, batchWindowMs: 30 } });
    const app = buildServer(service);
    const id = (await call(app, 'POST', '/v1/contexts', { text: DOC, method: 'truncate' })).body.id as string;
    const rs = await Promise.all(Array.from({ length: 6 }, () => call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: ['q?'], maxTokens: 2 })));
    const statuses = rs.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 429, 429, 429, 429]);
    const limited = rs.find((r) => r.status === 429)!;
    assertError(limited, 429, 'queue_full', /queue is full/);
    assert.equal(limited.headers['retry-after'], '1');
    assert.equal((await call(app, 'POST', `/v1/contexts/${id}/ask`, { questions: ['q?'], maxTokens: 2 })).status, 200);
    await app.close();
    await service.close();
  });

  test('the official openai client: completions, chat, streaming, errors (real HTTP)', async () => {
    const service = open('openai');
    const app = buildServer(service);
    await app.listen({ port: 0, host: '127.0.0.1' });
    const port = (app.server.address() as { port: number }).port;
    try {
      const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'not-needed', maxRetries: 0 });
      const models = await client.models.list();
      assert.deepEqual(
        models.data.map((m) => m.id),
        [service.modelName],
      );
      const ctx = (await (
        await fetch(`http://127.0.0.1:${port}/v1/contexts`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ text: DOC, method: 'truncate', ratio: 4 }),
        })
      ).json()) as Json;

      const completion = await client.completions.create({
        model: service.modelName,
        prompt: 'The keeper',
        max_tokens: 5,
        temperature: 0,
        context_id: ctx.id,
      } as OpenAI.CompletionCreateParamsNonStreaming);
      assert.equal(completion.object, 'text_completion');
      assert.equal(typeof completion.choices[0].text, 'string');
      assert.ok(completion.usage!.completion_tokens >= 1);

      const chat = await client.chat.completions.create({
        model: service.modelName,
        messages: [{ role: 'user', content: 'Where is the box?' }],
        max_tokens: 5,
        temperature: 0,
        context_id: ctx.id,
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      assert.equal(chat.choices[0].message.role, 'assistant');
      assert.equal(typeof chat.choices[0].message.content, 'string');

      const stream = await client.chat.completions.create({
        model: service.modelName,
        messages: [{ role: 'user', content: 'Where is the box?' }],
        max_tokens: 5,
        temperature: 0,
        stream: true,
        context_id: ctx.id,
      } as OpenAI.ChatCompletionCreateParamsStreaming);
      let text = '';
      let finish: string | null = null;
      let chunks = 0;
      for await (const chunk of stream) {
        chunks++;
        text += chunk.choices[0]?.delta?.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      assert.ok(chunks >= 2);
      assert.ok(finish === 'stop' || finish === 'length');
      assert.equal(text.trim(), chat.choices[0].message.content);

      const cstream = await client.completions.create({
        model: service.modelName,
        prompt: 'The keeper',
        max_tokens: 5,
        temperature: 0,
        stream: true,
        context_id: ctx.id,
      } as OpenAI.CompletionCreateParamsStreaming);
      let ctext = '';
      for await (const chunk of cstream) ctext += chunk.choices[0]?.text ?? '';
      assert.equal(ctext, completion.choices[0].text);

      await assert.rejects(
        client.completions.create({ model: service.modelName, prompt: 'x', context_id: 'ctx_missing' } as OpenAI.CompletionCreateParamsNonStreaming),
        (e: unknown) => e instanceof OpenAI.NotFoundError && /no context with id 'ctx_missing'/.test(e.message),
      );
      await assert.rejects(
        client.completions.create({ model: service.modelName, prompt: 'x', max_tokens: 5000 }),
        (e: unknown) => e instanceof OpenAI.BadRequestError,
      );

      // a client that goes away mid-stream cancels its row
      const abort = new AbortController();
      const decodedBefore = service.engine.stats().decodeRows;
      const res = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: service.modelName, prompt: 'x', max_tokens: 200, stream: true }),
        signal: abort.signal,
      });
      const reader = res.body!.getReader();
      await reader.read();
      abort.abort();
      await waitFor(() => {
        const h = service.health() as { engine: { activeBatches: number; pendingRows: number } };
        return h.engine.activeBatches + h.engine.pendingRows === 0;
      }, 'the cancelled row to be dropped');
      const decoded = service.engine.stats().decodeRows - decodedBefore;
      assert.ok(decoded < 150, `the row decoded ${decoded} of its 200 tokens: not cancelled`);
    } finally {
      app.server.closeAllConnections(); // undici keeps a spare keep-alive socket open for seconds
      await app.close();
      await service.close();
    }
  });
});
