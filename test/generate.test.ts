/**
 * Generation on stories260K (a small random model when the fixtures are absent): batched
 * prompts with left padding, seeded sampling, top-k, stop tokens, maxTokens 0, soft prefixes
 * (prefixEmbeds with and without prefixMask) and memory KV prefixes.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Tensor, manualSeed, noGrad, randn, tensor, tidy } from '../src/tensor/index.js';
import { configFromHf } from '../src/models/config.js';
import { KVCache, LlamaModel, type LayerKv } from '../src/models/llama.js';
import { loadModel } from '../src/models/load.js';
import { generate, type GenerateOptions } from '../src/models/generate.js';

const FIXTURES = path.resolve(process.cwd(), '../shared/fixtures/stories260K');
const CHECKPOINT = path.join(FIXTURES, 'stories260K.bin');
const HAVE_FIXTURES = fs.existsSync(CHECKPOINT) && fs.existsSync(path.join(FIXTURES, 'greedy-tokens.json'));

/** A random model whose logits are far from uniform (used only without the fixtures). */
function randomModel(): LlamaModel {
  manualSeed(11);
  const m = noGrad(
    () =>
      new LlamaModel(
        configFromHf({
          model_type: 'llama',
          vocab_size: 64,
          hidden_size: 32,
          intermediate_size: 64,
          num_hidden_layers: 2,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          max_position_embeddings: 128,
          rms_norm_eps: 1e-5,
          tie_word_embeddings: false,
        }),
      ),
  );
  noGrad(() =>
    tidy(() => {
      for (const [name, p] of m.namedParameters()) {
        const { shape } = p.value;
        if (name.endsWith('norm.weight')) continue;
        // Untied, fairly sharp weights: greedy continuations wander instead of repeating one id.
        const fanIn = shape[shape.length - 1];
        const std = name.includes('embed_tokens') ? 1 : name.includes('lm_head') ? 3 / Math.sqrt(fanIn) : 2 / Math.sqrt(fanIn);
        p.value.copy_(randn(shape).mul(std));
      }
    }),
  );
  return m.freeze().eval();
}

let source: string;
let model: LlamaModel;
/** Three BOS-led prompts of different lengths. */
let prompts: number[][];
if (HAVE_FIXTURES) {
  source = 'stories260K';
  model = loadModel(CHECKPOINT).model;
  const runs = (JSON.parse(fs.readFileSync(path.join(FIXTURES, 'greedy-tokens.json'), 'utf8')) as { runs: { prompt_tokens: number[] }[] }).runs;
  prompts = [runs[0].prompt_tokens, runs[1].prompt_tokens, runs[3].prompt_tokens]; // 5, 9, 10 tokens
} else {
  source = 'a random model';
  console.log(`# stories260K fixtures not found at ${FIXTURES}; generation tests use a random model`);
  model = randomModel();
  prompts = [
    [1, 17, 33, 5, 40],
    [1, 9, 12, 50, 7, 22, 31, 8, 44],
    [1, 3, 60, 27, 14, 19, 55, 2, 36, 11],
  ];
}
const N = 24;

const gen = (ps: number[][], opts: Partial<GenerateOptions> = {}): number[][] => generate(model, ps, { maxTokens: N, ...opts }).tokens;
const greedyAlone = prompts.map((p) => gen([p])[0]);

test(`[${source}] batch of 3 left-padded prompts gives the same greedy tokens as each alone`, () => {
  assert.deepEqual(new Set(prompts.map((p) => p.length)).size, 3, 'prompt lengths differ');
  for (const g of greedyAlone) assert.equal(g.length, N);
  assert.deepEqual(gen(prompts), greedyAlone);
  // Another order, so each prompt sits in a different row with different padding.
  assert.deepEqual(gen([prompts[2], prompts[0], prompts[1]]), [greedyAlone[2], greedyAlone[0], greedyAlone[1]]);
  // The continuations really depend on the prompt (the comparison is not vacuous).
  assert.notDeepEqual(greedyAlone[0], greedyAlone[1]);
});

test(`[${source}] sampling: same seed reproducible, different seeds differ, topK=1 is greedy`, () => {
  const a = gen(prompts, { temperature: 1, seed: 1 });
  const b = gen(prompts, { temperature: 1, seed: 1 });
  const c = gen(prompts, { temperature: 1, seed: 2 });
  assert.deepEqual(a, b, 'same seed, same samples');
  assert.notDeepEqual(a, c, 'different seeds, different samples');
  assert.notDeepEqual(a, greedyAlone, 'temperature 1 is not greedy');
  for (const row of [...a, ...c]) {
    assert.equal(row.length, N);
    for (const id of row) assert.ok(Number.isInteger(id) && id >= 0 && id < model.config.vocabSize);
  }
  assert.deepEqual(gen(prompts, { temperature: 1, topK: 1, seed: 3 }), greedyAlone, 'topK=1');
  assert.deepEqual(gen(prompts, { temperature: 0.7, topK: 1, seed: 4 }), greedyAlone, 'topK=1 at another temperature');
});

test(`[${source}] stop tokens end a sequence early (stop id included); others continue`, () => {
  const g0 = greedyAlone[0];
  const g1 = greedyAlone[1];
  // A token prompt 0 produces greedily after a few steps, and prompt 1 never does.
  const k = g0.findIndex((id, i) => i >= 3 && g0.indexOf(id) === i && !g1.includes(id));
  assert.ok(k >= 0, `no usable stop token in ${g0.join(' ')}`);
  const stop = g0[k];
  assert.deepEqual(gen([prompts[0]], { stopTokens: [stop] })[0], g0.slice(0, k + 1));
  const batch = gen([prompts[0], prompts[1]], { stopTokens: [stop] });
  assert.deepEqual(batch[0], g0.slice(0, k + 1), 'stopped row');
  assert.deepEqual(batch[1], g1, 'the other row runs to maxTokens');
  // Streaming sees exactly the returned tokens, in order.
  const streamed: number[][] = [[], []];
  const r = generate(model, [prompts[0], prompts[1]], { maxTokens: N, stopTokens: [stop], onToken: (s, id) => streamed[s].push(id) });
  assert.deepEqual(streamed, r.tokens);
});

test(`[${source}] maxTokens 0 gives empty outputs; bad arguments are refused`, () => {
  let calls = 0;
  const r = generate(model, prompts, { maxTokens: 0, onToken: () => calls++ });
  assert.deepEqual(r.tokens, [[], [], []]);
  assert.equal(calls, 0);
  assert.deepEqual(gen([prompts[0]], { maxTokens: 1 }), [greedyAlone[0].slice(0, 1)]);
  assert.throws(() => generate(model, prompts, { maxTokens: -1 }), /maxTokens must be a non-negative integer/);
  assert.throws(() => generate(model, [[]], { maxTokens: 2 }), /empty prompt/);
});

test(`[${source}] soft prefix: prefixEmbeds = embed(ids) continues like those ids in the prompt`, () =>
  tidy(() => {
    const embed = (rows: number[][]): Tensor => noGrad(() => model.embed(tensor(rows.flat(), [rows.length, rows[0].length], { dtype: 'int64' })));
    // Single prompt: the first 3 ids become soft tokens.
    const p = prompts[0];
    const soft = gen([p.slice(3)], { prefixEmbeds: embed([p.slice(0, 3)]) });
    assert.deepEqual(soft, [greedyAlone[0]]);
    // The whole prompt as a prefix, no hard tokens at all.
    assert.deepEqual(gen([[]], { prefixEmbeds: embed([p]) }), [greedyAlone[0]]);
    // Batch: the first 4 ids of each prompt as soft tokens, rest of different lengths (padding
    // falls between the prefix and the prompt).
    const batchSoft = gen(
      prompts.map((q) => q.slice(4)),
      { prefixEmbeds: embed(prompts.map((q) => q.slice(0, 4))) },
    );
    assert.deepEqual(batchSoft, greedyAlone);
    assert.throws(() => gen([p.slice(3)], { prefixEmbeds: embed([p.slice(0, 3), p.slice(0, 3)]) }), /prefixEmbeds has batch 2, prompts 1/);
  }));

test(`[${source}] prefixMask hiding slots equals dropping them`, () =>
  tidy(() => {
    const embed = (rows: number[][]): Tensor => noGrad(() => model.embed(tensor(rows.flat(), [rows.length, rows[0].length], { dtype: 'int64' })));
    const p = prompts[0]; // [BOS, a, b, c, d]
    const junk = [p[1] === 7 ? 8 : 7, 30];
    // Prefix [BOS, junk0, a, junk1, b] with the junk hidden == prefix [BOS, a, b].
    const noisy = [p[0], junk[0], p[1], junk[1], p[2]];
    const mask = tensor([1, 0, 1, 0, 1], [1, 5], { dtype: 'bool' });
    const masked = gen([p.slice(3)], { prefixEmbeds: embed([noisy]), prefixMask: mask });
    assert.deepEqual(masked, [greedyAlone[0]]);
    // Unmasked, the junk changes the continuation (the mask is doing the work).
    assert.notDeepEqual(gen([p.slice(3)], { prefixEmbeds: embed([noisy]) }), [greedyAlone[0]]);
    // Batch: row 0 hides junk, row 1 hides nothing; each equals its own run.
    const q = prompts[1];
    const rows = gen([p.slice(3), q.slice(5)], {
      prefixEmbeds: embed([noisy, q.slice(0, 5)]),
      prefixMask: tensor([1, 0, 1, 0, 1, 1, 1, 1, 1, 1], [2, 5], { dtype: 'bool' }),
    });
    assert.deepEqual(rows, [greedyAlone[0], greedyAlone[1]]);
  }));

test(`[${source}] kvPrefix: memory keys/values of a prefix continue like the prefix ids`, () =>
  tidy(() => {
    const p = prompts[1];
    const cache = new KVCache(model.config.numLayers);
    try {
      noGrad(() => model.forward({ ids: tensor(p.slice(0, 4), [1, 4], { dtype: 'int64' }), cache, logits: 'none' }));
      const kvPrefix: LayerKv[] = cache.keys.map((k, i) => ({ k: k!, v: cache.values[i]! }));
      assert.deepEqual(gen([p.slice(4)], { kvPrefix }), [greedyAlone[1]]);
    } finally {
      cache.free();
    }
  }));
