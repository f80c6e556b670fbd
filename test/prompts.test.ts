/**
 * Task prompts (src/compress/prompts.ts) on tokenizers without softpress's special tokens:
 * autoencoding (the training objective) and reconstruction (the evaluation task) run for every
 * learned method
 *   - on softpress's tokenizer with its task tokens removed (<|restate|>, <|mem|>, ...: only
 *     BOS, EOS and PAD left), always;
 *   - on SmolLM2's tokenizer (read from its GGUF, as test/gguf-model.test.ts does), when the
 *     model is in the cache: the restate prompt in its chat template, QA training in the
 *     evaluation's one-shot format, no BOS before the encoders' input (its tokenizer adds none).
 * Both over small random decoders of the tokenizer's vocabulary: what is checked is that every
 * piece runs and is wired the same way in training and evaluation, not quality.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';

import { manualSeed, noGrad, randn, tidy } from '../src/tensor/index.js';
import { configFromHf } from '../src/models/config.js';
import { LlamaModel } from '../src/models/llama.js';
import { BpeTokenizer } from '../src/models/bpe.js';
import { HfTokenizer } from '../src/models/hf-tokenizer.js';
import { qaPromptFormat } from '../src/models/chat.js';
import type { Tokenizer } from '../src/models/tokenizer.js';
import { readGguf } from '../src/io/gguf.js';
import { ggufTokenizer } from '../src/io/gguf-tokenizer.js';
import { cachedModelPath, namedModel } from '../src/io/model-source.js';
import { RESTATE_INSTRUCTION, compressorNames, createCompressor, restateFormat, type Compressor } from '../src/compress/index.js';
import { ObjectiveSampler, batchLoss } from '../src/train/objectives.js';
import { tokenizeStream } from '../src/data/lm.js';
import { loadMobyDick } from '../src/data/corpora.js';
import { makeReconstructTask } from '../src/eval/tasks.js';
import { runEvaluation } from '../src/eval/harness.js';
import { TOKENIZER_PATH } from './helpers/tiny.js';

const OURS = ['<|restate|>', '<|question|>', '<|answer|>', '<|mem|>', '<|sep|>'];

/**
 * softpress's tokenizer without its task tokens: only <|bos|>, <|eos|>, <|pad|> stay special; the
 * other ids (<|restate|>, <|mem|>, ...) become plain added words that no text contains.
 */
function strippedTokenizer(): BpeTokenizer {
  const json = JSON.parse(fs.readFileSync(TOKENIZER_PATH, 'utf8')) as {
    added_tokens: { id: number; content: string; special?: boolean }[];
    model: { vocab: Record<string, number> };
  };
  const keep = new Set(['<|bos|>', '<|eos|>', '<|pad|>']);
  for (const t of json.added_tokens) {
    if (keep.has(t.content)) continue;
    delete json.model.vocab[t.content];
    t.content = `\u2983unused${t.id}\u2984`;
    t.special = false;
    json.model.vocab[t.content] = t.id;
  }
  return BpeTokenizer.fromJSON(json);
}

/** A small random decoder (dim 32, 2 layers) over a tokenizer's vocabulary. */
function randomBase(tok: Tokenizer): LlamaModel {
  manualSeed(11);
  const m = noGrad(
    () =>
      new LlamaModel(
        configFromHf({
          model_type: 'llama',
          vocab_size: tok.vocabSize,
          hidden_size: 32,
          intermediate_size: 64,
          num_hidden_layers: 2,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          max_position_embeddings: 512,
          rms_norm_eps: 1e-5,
          tie_word_embeddings: true,
          bos_token_id: tok.bos,
          eos_token_id: tok.eos,
        }),
      ),
  );
  tidy(() => noGrad(() => m.model.embedTokens.weight.value.copy_(randn(m.model.embedTokens.weight.value.shape))));
  m.invalidateFingerprint();
  return m.freeze().eval();
}

/** Small options per method so that the checks stay fast. */
const SMALL: Record<string, Record<string, unknown>> = {
  gmsa: { loraRank: 4 },
  icae: { loraRank: 4, maxSlots: 32 },
  ccf: { rank: 4, segmentLen: 16 },
};

/** Autoencoding batches and the reconstruct task through every learned method. */
function runAll(tok: Tokenizer, what: string): void {
  const base = randomBase(tok);
  const stream = tokenizeStream(
    loadMobyDick()
      .slice(1, 3)
      .map((d) => d.text.slice(0, 3000)),
    tok,
  );
  const sampler = new ObjectiveSampler(
    { stages: { ae: 1 }, ratios: [4], contextLen: 16, continuationLen: 0, batchSize: 2, seed: 1 },
    { tokenizer: tok, stream },
  );
  const restate = restateFormat(tok);
  const docs = loadMobyDick().slice(3, 6);
  const task = makeReconstructTask(docs, tok, { n: 1, lengths: [16], slack: 2 });
  assert.deepEqual(task.examples[0]!.tail, restate.prompt);
  assert.deepEqual(task.lead, restate.lead);
  const methods: { label: string; compressor: Compressor; ratios: (number | null)[] }[] = [];
  for (const method of compressorNames({ learnedOnly: true })) {
    const c = createCompressor(method, base, SMALL[method] ?? {}, { tokenizer: tok });
    c.setTraining(false);
    const batch = sampler.batch(0, 0);
    assert.deepEqual(batch.lead, restate.lead);
    assert.deepEqual(batch.tails[0]!.slice(0, restate.prompt.length), restate.prompt);
    assert.equal(batch.tails[0]!.at(-1), restate.end);
    const loss = noGrad(() => tidy(() => batchLoss(c, batch, tok).loss.item()));
    assert.ok(Number.isFinite(loss) && loss > 0, `${what} ${method}: autoencoding loss ${loss}`);
    methods.push({ label: method, compressor: c, ratios: [4] });
  }
  methods.push({ label: 'full', compressor: createCompressor('full', base), ratios: [null] });
  const run = runEvaluation({ model: base, tokenizer: tok, methods, tasks: [task], batchSize: 2 });
  assert.deepEqual(run.errors, [], `${what}: reconstruct errors`);
  for (const m of methods) {
    assert.ok(
      run.rows.some((r) => r.method === m.label && r.task === 'reconstruct' && r.metric === 'bleu4'),
      `${what}: ${m.label} has a reconstruct score`,
    );
    assert.ok(
      run.predictions.some((p) => p.method === m.label),
      `${what}: ${m.label} restated something`,
    );
  }
}

test("a tokenizer without softpress's task tokens: the restate prompt is text; autoencoding and reconstruction run for every method", () => {
  const tok = strippedTokenizer();
  for (const s of OURS) assert.equal(tok.special.get(s), undefined, `${s} is gone`);
  const f = restateFormat(tok);
  assert.equal(f.chat, false);
  assert.deepEqual(f.lead, [tok.bos]);
  assert.equal(tok.decode(f.prompt), `\n${RESTATE_INSTRUCTION}\n`);
  assert.equal(f.end, tok.eos);
  // And on softpress's own tokenizer the prompt is the same text (no <|restate|>).
  const ours = BpeTokenizer.fromFile(TOKENIZER_PATH);
  const o = restateFormat(ours);
  assert.ok(!o.prompt.includes(ours.special.get('<|restate|>')!));
  assert.equal(ours.decode(o.prompt), `\n${RESTATE_INSTRUCTION}\n`);
  runAll(tok, 'stripped tokenizer');
});

const SMOL = namedModel('smollm2-135m-instruct')!;
const SMOL_PATH = cachedModelPath(SMOL);
const NO_SMOL = SMOL_PATH ? false : 'SmolLM2 is not in the cache (npm test pulls it: softpress pull smollm2-135m-instruct)';

test(
  "SmolLM2's tokenizer: restate in its chat template, QA trained in the evaluation's format, no BOS before the encoders; autoencoding and reconstruction run",
  { skip: NO_SMOL, timeout: 300_000 },
  () => {
    const files = ggufTokenizer(readGguf(SMOL_PATH!));
    const tok = new HfTokenizer(files.tokenizer, files.config, { bos: files.bos, eos: files.eos });
    for (const s of ['<|restate|>', '<|mem|>']) assert.equal(tok.special.get(s), undefined);
    const f = restateFormat(tok);
    assert.equal(f.chat, true);
    assert.match(tok.decode(f.lead, { keepSpecial: true }), /^<\|im_start\|>system\n[\s\S]*<\|im_end\|>\n<\|im_start\|>user\n$/);
    assert.equal(tok.decode(f.prompt, { keepSpecial: true }), `\n${RESTATE_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n`);
    assert.equal(f.end, tok.special.get('<|im_end|>'));
    // QA training reads the evaluation's format: the one-shot lead and "\nQuestion: q\nAnswer:".
    const qa = qaPromptFormat(tok);
    const stream = tokenizeStream(['x'], tok);
    const sampler = new ObjectiveSampler(
      { stages: { qa: 1 }, ratios: [4], contextLen: 16, continuationLen: 0, batchSize: 1, seed: 1 },
      {
        tokenizer: tok,
        stream,
        qa: [{ kind: 'needle', id: 'q', context: 'The box is blue.', question: 'What colour is the box?', answer: 'blue', docIds: [] }],
      },
    );
    const b = sampler.batch(0, 0);
    assert.deepEqual(b.lead, qa.lead);
    assert.deepEqual(b.tails[0], [...qa.tail('What colour is the box?'), ...tok.encode(' blue'), tok.eos]);
    assert.equal(b.lossFrom[0], qa.tail('What colour is the box?').length);
    // Its tokenizer starts sequences without BOS (<|im_start|> is its BOS id): so do the encoders.
    const base = randomBase(tok);
    for (const m of ['gmsa', 'icae', 'meanpool', 'comprexit']) assert.equal(createCompressor(m, base, SMALL[m] ?? {}, { tokenizer: tok }).config.bos, false, m);
    runAll(tok, 'SmolLM2 tokenizer');
  },
);
