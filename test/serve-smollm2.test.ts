/**
 * The server on the real base model, SmolLM2-135M-Instruct (a GGUF in the model cache), started
 * once by its name: the model's own chat template through the official `openai` client (a
 * factual question answered; streaming gives the same text), asking a stored full context in the
 * model's QA format (the one-shot lead), no stray BOS before a prompt without a context, and the
 * model named by its name. Skipped, with the reason, when the model is not in the cache.
 */
import test, { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import type { FastifyInstance } from 'fastify';

import { cachedModelPath, modelDir, namedModel } from '../src/io/model-source.js';
import { generate } from '../src/models/generate.js';
import { findCompressorDirs, openService, type SoftpressService } from '../src/serve/service.js';
import { buildServer } from '../src/serve/server.js';

const NAME = 'smollm2-135m-instruct';
const path = cachedModelPath(namedModel(NAME)!);
const skip = path ? false : `${NAME} is not in the model cache (${modelDir(NAME)}): run 'node bin/softpress.js pull ${NAME}' (npm test's set-up does)`;

// The story of the brief ("Mary moved to the bathroom. John went to the hallway. Daniel went back
// to the kitchen. Sandra journeyed to the garden.") is answered "garden" for John, greedy: this
// 135M model (Q4_1) tends to name the last place. John in the middle of three is answered right.
const STORY = 'Daniel went back to the kitchen. John went to the hallway. Mary moved to the bathroom.';

// Response bodies are read field by field in the assertions.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

describe(`serve: ${NAME}`, { skip, timeout: 240_000 }, () => {
  let tmp: string;
  let service: SoftpressService;
  let app: FastifyInstance;
  let url: string;
  let client: OpenAI;
  const post = async (route: string, body: unknown): Promise<{ status: number; body: Json }> => {
    const r = await fetch(`${url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as Json };
  };

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'softpress-serve-smollm2-'));
    service = openService({ base: NAME, storePath: join(tmp, 'contexts.mdb'), storeMaxBytes: 256 * 2 ** 20, discover: true, defaultMethod: 'full' });
    app = buildServer(service);
    await app.listen({ port: 0, host: '127.0.0.1' });
    url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'not-needed', maxRetries: 0 });
  });
  after(async () => {
    app?.server.closeAllConnections(); // undici keeps a spare keep-alive socket open
    await app?.close();
    await service?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('named by its name; its chat template and QA format are reported', async () => {
    assert.equal(service.modelName, NAME);
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      [NAME],
    );
    const health = (await (await fetch(`${url}/health`)).json()) as Json;
    assert.equal(health.model, NAME);
    assert.equal(health.defaultMethod, 'full');
    assert.equal(health.chat, 'template');
    assert.equal(health.ask, 'one-shot demonstration');
    const doc = (await (await fetch(`${url}/openapi.json`)).json()) as Json;
    assert.match(doc.paths['/v1/chat/completions'].post.description, /has a chat template/);
    // compressor discovery looks in the GGUF's folder (the cache folder) and beside it
    assert.ok(Array.isArray(findCompressorDirs(path!)));
  });

  test('chat with the chat template (openai client): a factual answer, the same text when streamed', async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'What is the capital of France?' }];
    const chat = await client.chat.completions.create({ model: NAME, messages, max_tokens: 24, temperature: 0 });
    const content = chat.choices[0].message.content ?? '';
    assert.match(content, /Paris/, content);
    assert.equal(chat.choices[0].finish_reason, 'stop', 'ends at the end-of-turn token');
    assert.ok(!content.includes('<|im_end|>') && !content.includes('<|im_start|>'));
    const stream = await client.chat.completions.create({ model: NAME, messages, max_tokens: 24, temperature: 0, stream: true });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, content, 'streamed and whole replies are the same text');
    assert.equal(finish, 'stop');
  });

  test('asking a stored full context in the QA format (one-shot lead), twice (the prefix cached)', async () => {
    const ctx = await post('/v1/contexts', { text: STORY });
    assert.equal(ctx.status, 201, JSON.stringify(ctx.body));
    assert.equal(ctx.body.method, 'full');
    const first = await post(`/v1/contexts/${ctx.body.id}/ask`, { questions: ['Where is John?'], maxTokens: 8 });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.match(first.body.answers[0].answer, /hallway/i, JSON.stringify(first.body.answers));
    assert.ok(first.body.prefixMs > 0, 'the first question runs [lead][context]');
    const again = await post(`/v1/contexts/${ctx.body.id}/ask`, { questions: ['Where is John?'], maxTokens: 8 });
    assert.equal(again.body.prefixMs, 0, 'the second reuses its keys/values');
    assert.equal(again.body.answers[0].answer, first.body.answers[0].answer);
  });

  test('a completion without a context reads the prompt alone (SmolLM2 is trained without BOS)', async () => {
    const prompt = 'The capital of France is';
    const r = await post('/v1/completions', { model: NAME, prompt, max_tokens: 3, temperature: 0 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const ids = service.tokenizer.encode(prompt);
    assert.equal(r.body.usage.prompt_tokens, ids.length, 'no BOS in front');
    const ref = generate(service.model, [ids], { maxTokens: 3, stopTokens: service.qaFormat.stopIds }).tokens[0];
    assert.equal(r.body.choices[0].text, service.tokenizer.decode(ref));
    const empty = await post('/v1/completions', { model: NAME, prompt: '', max_tokens: 3 });
    assert.equal(empty.status, 400);
    assert.equal(empty.body.error.code, 'empty_prompt');
  });
});
