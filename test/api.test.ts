/**
 * The library API (src/api.ts) on the tiny test base saved as a Hugging Face folder:
 * open → compress → save → load → ask / stream → close, answers equal to the decoder path the
 * evaluation uses (generateWithContext), typed errors, and no tensors left behind by a stream
 * that is abandoned half way or by close().
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { memoryStats, noGrad, tidy } from '../src/tensor/index.js';
import { saveModel } from '../src/models/load.js';
import { qaPromptFormat } from '../src/models/chat.js';
import { createCompressor, generateWithContext, saveCompressor } from '../src/compress/index.js';
import { ClosedError, LoadError, OptionsError, SoftContext, Softpress, SoftpressError } from '../src/index.js';
import { answerStopIds } from '../src/api.js';
import { TOKENIZER_PATH, tinyBase } from './helpers/tiny.js';
import { collectGarbage } from './helpers/gc.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-api-'));
const baseDir = path.join(root, 'base');
const otherBaseDir = path.join(root, 'other-base');
const meanpoolDir = path.join(root, 'meanpool');
const TEXT = 'The secret code of the blue box is 4817. Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little.';
const QUESTIONS = ['What is the secret code?', 'Who is speaking?', 'What colour is the box?'];

test.before(() => {
  const tiny = tinyBase();
  saveModel(tiny.model, baseDir);
  fs.copyFileSync(TOKENIZER_PATH, path.join(baseDir, 'tokenizer.json'));
  // A compressor folder as `softpress train` leaves it (untrained weights: the path, not the quality, is tested).
  const c = createCompressor('meanpool', tiny.model);
  saveCompressor(c, meanpoolDir, { training: { ratios: [4] } });
  const other = tinyBase({ seed: 7 });
  saveModel(other.model, otherBaseDir);
  fs.copyFileSync(TOKENIZER_PATH, path.join(otherBaseDir, 'tokenizer.json'));
});
test.after(() => fs.rmSync(root, { recursive: true, force: true }));

/** What the evaluation's decoder path answers for the same context and questions. */
function referenceAnswers(sp: Softpress, ctx: SoftContext, questions: string[], maxTokens: number): number[][] {
  const model = sp.model;
  const tok = sp.tokenizer;
  const format = qaPromptFormat(tok);
  const stopTokens = [...new Set([...answerStopIds(tok), ...format.stopIds])];
  return questions.map((q) =>
    tidy(() => noGrad(() => generateWithContext(model, ctx.raw, [format.tail(q)], format.lead, { maxTokens, temperature: 0, stopTokens }).tokens[0])),
  );
}

test('open → compress → save → load → ask, answers equal to the evaluation decoder', async () => {
  const sp = await Softpress.open({ base: baseDir, method: 'truncate' });
  try {
    assert.equal(sp.method, 'truncate');
    const ctx = await sp.compress(TEXT, { ratio: 2 });
    const n = sp.countTokens(TEXT);
    assert.equal(ctx.sourceTokens, n);
    assert.equal(ctx.softTokens, Math.ceil(n / 2));
    const file = path.join(root, 'doc.softctx');
    await ctx.save(file);
    const loaded = await SoftContext.load(file, sp);
    assert.equal(loaded.softTokens, ctx.softTokens);
    assert.deepEqual(loaded.meta.budget, { ratio: 2 });

    const fresh = await sp.askDetailed(ctx, QUESTIONS, { maxTokens: 6 });
    const stored = await sp.ask(loaded, QUESTIONS, { maxTokens: 6 });
    assert.deepEqual(
      stored,
      fresh.answers.map((a) => a.answer),
      'a stored context answers as the fresh one',
    );
    const reference = referenceAnswers(sp, ctx, QUESTIONS, 6);
    fresh.answers.forEach((a, i) => {
      assert.equal(a.question, QUESTIONS[i]);
      assert.equal(a.tokens, reference[i].length, `question ${i}: as many tokens as the evaluation decoder`);
      assert.equal(a.answer, sp.tokenizer.decode(reference[i]).split('\n')[0].trim(), `question ${i}`);
    });
    assert.equal(await sp.ask(ctx, QUESTIONS[1], { maxTokens: 6 }), fresh.answers[1].answer, 'one question gives the same answer as in a batch');
    ctx.free();
    loaded.free();
    assert.throws(() => ctx.softTokens, ClosedError);
  } finally {
    sp.close();
  }
  await assert.rejects(sp.compress(TEXT, { ratio: 2 }), ClosedError);
});

test('a trained compressor folder: its default ratio, its method checked on stored contexts', async () => {
  using sp = await Softpress.open({ base: baseDir, compressor: meanpoolDir });
  assert.equal(sp.method, 'meanpool');
  assert.deepEqual(sp.defaultBudget, { ratio: 4 });
  using ctx = await sp.compress(TEXT); // the ratio it was trained at
  assert.equal(ctx.softTokens, Math.ceil(sp.countTokens(TEXT) / 4));
  using budgeted = await sp.compress(TEXT, { budget: 5 });
  assert.equal(budgeted.softTokens, 5);
  const file = path.join(root, 'meanpool.softctx');
  await ctx.save(file);

  using truncate = await Softpress.open({ base: baseDir, method: 'truncate' });
  using stored = await SoftContext.load(file);
  await assert.rejects(truncate.ask(stored, 'Who?'), (e: unknown) => e instanceof LoadError && /made by 'meanpool'/.test((e as Error).message));
  await assert.rejects(
    Softpress.open({ base: otherBaseDir, compressor: meanpoolDir }),
    /trained for base model/,
    'a compressor for another base model is refused',
  );
  using other = await Softpress.open({ base: otherBaseDir, method: 'truncate' });
  await assert.rejects(SoftContext.load(file, other), LoadError, 'a context made for another base model is refused');
});

test('stream: the pieces are the reply the decoder gives, and an abandoned stream frees its cache', async () => {
  using sp = await Softpress.open({ base: baseDir, method: 'full' });
  using ctx = await sp.compress(TEXT);
  const prompt = 'Say something about the box.';
  const pieces: string[] = [];
  for await (const piece of sp.stream(ctx, prompt, { maxTokens: 12 })) pieces.push(piece);
  const tok = sp.tokenizer;
  const format = qaPromptFormat(tok);
  const ref = tidy(() =>
    noGrad(
      () =>
        generateWithContext(sp.model, ctx.raw, [tok.encode(`\n${prompt}\n`)], format.lead, { maxTokens: 12, temperature: 0, stopTokens: format.stopIds })
          .tokens[0],
    ),
  );
  assert.equal(pieces.join(''), tok.decode(ref.filter((id) => !format.stopIds.includes(id))));

  await collectGarbage();
  const before = memoryStats().liveHandles;
  for await (const piece of sp.stream(ctx, prompt, { maxTokens: 12 })) {
    assert.equal(typeof piece, 'string');
    break;
  }
  await collectGarbage();
  assert.equal(memoryStats().liveHandles, before, 'breaking out of a stream frees its batch');
});

test('close() frees the model and compressor', async () => {
  await collectGarbage();
  const before = memoryStats().liveHandles;
  const sp = await Softpress.open({ base: baseDir, compressor: meanpoolDir });
  assert.ok(memoryStats().liveHandles > before);
  const ctx = await sp.compress(TEXT, { ratio: 2 });
  await sp.ask(ctx, QUESTIONS, { maxTokens: 4 });
  ctx.free();
  sp.close();
  await collectGarbage();
  assert.equal(memoryStats().liveHandles, before);
});

test('typed errors for bad options and files', async () => {
  await assert.rejects(Softpress.open({ base: path.join(root, 'missing') }), LoadError);
  await assert.rejects(Softpress.open({ base: baseDir }), OptionsError, 'neither a compressor nor a method');
  await assert.rejects(Softpress.open({ base: baseDir, method: 'truncate', compressor: meanpoolDir }), OptionsError);
  await assert.rejects(Softpress.open({ base: baseDir, compressor: path.join(root, 'nope') }), LoadError);
  await assert.rejects(Softpress.open({ base: baseDir, method: 'meanpool' as never }), /learned method/);
  await assert.rejects(SoftContext.load(path.join(root, 'nope.softctx')), LoadError);
  const junk = path.join(root, 'junk.softctx');
  fs.writeFileSync(junk, 'not a safetensors file');
  await assert.rejects(SoftContext.load(junk), LoadError);

  using sp = await Softpress.open({ base: baseDir, method: 'truncate' });
  await assert.rejects(sp.compress('   ', { ratio: 2 }), OptionsError);
  await assert.rejects(sp.compress(TEXT), /give \{ ratio \} or \{ budget \}/);
  await assert.rejects(sp.compress(TEXT, { ratio: 0.5 }), OptionsError);
  await assert.rejects(sp.compress(TEXT, { ratio: 2, budget: 3 }), OptionsError);
  await assert.rejects(sp.compress(TEXT, { budget: 1.5 }), OptionsError);
  using ctx = await sp.compress(TEXT, { ratio: 2 });
  await assert.rejects(sp.ask(ctx, []), OptionsError);
  await assert.rejects(sp.ask(ctx, ['']), OptionsError);
  await assert.rejects(sp.ask(ctx, 'Who?', { maxTokens: 0 }), OptionsError);
  await assert.rejects(async () => {
    for await (const _ of sp.stream(ctx, '')) void _;
  }, OptionsError);
  for (const E of [OptionsError, LoadError, ClosedError]) assert.ok(new E('x') instanceof SoftpressError);
});
