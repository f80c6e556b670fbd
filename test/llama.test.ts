/**
 * The decoder: parity with llama2.c's run.c on stories260K (logits, greedy ids, printed text),
 * through the .bin checkpoint, a Hugging Face folder and a sharded folder; and every forward
 * option on small random models (inputs embeds, hidden states, bottom layers, padding, explicit
 * positions and masks, memory KV prefixes, KV cache, RoPE layouts, biases, Llama 3 RoPE
 * scaling, GQA, LoRA, errors).
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Tensor, cat, manualSeed, noGrad, ones, randn, tensor, tidy, zeros, arange, type DType } from '../src/tensor/index.js';
import { configFromHf, ropeInvFreq } from '../src/models/config.js';
import { KVCache, LlamaModel, type LayerKv } from '../src/models/llama.js';
import { loadModel, saveModel } from '../src/models/load.js';
import { generate } from '../src/models/generate.js';
import { Llama2cTokenizer } from '../src/io/llama2c.js';
import { readSafetensors, writeSafetensors, type RawTensor } from '../src/io/safetensors.js';
import { assertClose, assertDiffer } from './helpers/close.js';
import { randomModel } from './helpers/tiny.js';

// ---- fixtures --------------------------------------------------------------------------------

const FIXTURES = path.resolve(process.cwd(), '../shared/fixtures/stories260K');
const HAVE_FIXTURES = ['stories260K.bin', 'tok512.bin', 'greedy-tokens.json', 'logits-once-upon.json'].every((f) => fs.existsSync(path.join(FIXTURES, f)));
const NO_FIXTURES = `stories260K fixtures not found at ${FIXTURES} (run the tests from the repo root)`;
const fixtureTest = { skip: HAVE_FIXTURES ? false : NO_FIXTURES };

interface GreedyRun {
  file: string;
  prompt: string;
  steps: number;
  prompt_tokens: number[];
  ids: number[];
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-llama-'));
}

// ---- helpers ---------------------------------------------------------------------------------

const ids = (rows: number[][]): Tensor => tensor(rows.flat(), [rows.length, rows[0].length], { dtype: 'int64' });

const BASE = {
  model_type: 'llama',
  vocab_size: 53,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 3,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
};

/** A small random model in eval mode (float64 unless asked otherwise, for tight tolerances). */
function tiny(over: Record<string, unknown> = {}, opts: { dtype?: DType; seed?: number } = {}): LlamaModel {
  return randomModel({ ...BASE, ...over }, { seed: opts.seed, dtype: opts.dtype ?? 'float64' });
}

/** Deterministic pseudo-random token ids in [lo, vocab). */
function tokens(n: number, seed: number, vocab = BASE.vocab_size, lo = 1): number[] {
  const out: number[] = [];
  let s = seed * 7919 + 13;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    out.push(lo + (s % (vocab - lo)));
  }
  return out;
}

/** Runs a test body in a scope with autograd off. */
const scoped = (fn: () => void) => () => tidy(() => noGrad(fn));

// ---- A. parity with llama2.c ------------------------------------------------------------------

/**
 * Checks a loaded stories260K model against run.c: logits of the "Once upon a time" prompt,
 * then greedy ids and the exact printed text of the four reference runs.
 */
function checkStoriesParity(model: LlamaModel, tok: unknown, label: string): void {
  assert.ok(tok instanceof Llama2cTokenizer, `${label}: expected a Llama2cTokenizer, got ${String(tok)}`);
  const ref = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'logits-once-upon.json'), 'utf8')) as { prompt: string; tokens: number[]; logits: number[][] };
  assert.deepEqual(tok.encode(ref.prompt, { bos: true }), ref.tokens, `${label}: encode`);
  tidy(() =>
    noGrad(() => {
      const { logits } = model.forward({ ids: ids([ref.tokens]) });
      assert.deepEqual(logits!.shape, [1, ref.tokens.length, 512]);
      const got = logits!.toArray() as Float32Array;
      let worst = 0;
      let where = '';
      for (let p = 0; p < ref.tokens.length; p++) {
        assert.equal(ref.logits[p].length, 512);
        for (let v = 0; v < 512; v++) {
          const d = Math.abs(got[p * 512 + v] - ref.logits[p][v]);
          if (d > worst) {
            worst = d;
            where = `position ${p}, id ${v}: ${got[p * 512 + v]} vs ${ref.logits[p][v]}`;
          }
        }
      }
      assert.ok(worst <= 1e-4, `${label}: logits differ from run.c by ${worst} at ${where}`);
    }),
  );

  const runs = (JSON.parse(fs.readFileSync(path.join(FIXTURES, 'greedy-tokens.json'), 'utf8')) as { runs: GreedyRun[] }).runs;
  assert.equal(runs.length, 4);
  for (const run of runs) {
    assert.deepEqual(tok.encode(run.prompt, { bos: true }), run.prompt_tokens, `${label}: encode ${JSON.stringify(run.prompt)}`);
    // run.c -n 64: 64 forward steps from BOS, each yielding the token after it, so ids has
    // 1 + 64 entries unless BOS (1) was sampled (run.c then stops without printing it).
    const want = run.steps + 1 - run.prompt_tokens.length;
    assert.ok(run.ids.length <= run.steps + 1);
    const { tokens: out } = generate(model, [run.prompt_tokens], { maxTokens: want, stopTokens: [1] });
    const gen = out[0].at(-1) === 1 ? out[0].slice(0, -1) : out[0];
    assert.deepEqual([...run.prompt_tokens, ...gen], run.ids, `${label}: greedy ids for ${JSON.stringify(run.prompt)}`);
    // The printed text: decode(prev, id) for every token after BOS, then run.c's final "\n".
    const pieces: Uint8Array[] = [];
    for (let i = 1; i < run.ids.length; i++) pieces.push(tok.decodePiece(run.ids[i - 1], run.ids[i]));
    pieces.push(Buffer.from('\n'));
    const text = Buffer.concat(pieces);
    const expected = fs.readFileSync(path.join(FIXTURES, run.file));
    assert.equal(text.toString('utf8'), expected.toString('utf8'), `${label}: text of ${run.file}`);
    assert.ok(text.equals(expected), `${label}: bytes of ${run.file}`);
  }
}

test('stories260K .bin: logits, greedy ids and text match llama2.c run.c', fixtureTest, () => {
  const { model, tokenizer } = loadModel(path.join(FIXTURES, 'stories260K.bin'));
  const c = model.config;
  assert.deepEqual(
    [c.hiddenSize, c.intermediateSize, c.numLayers, c.numHeads, c.numKvHeads, c.vocabSize, c.ropeInterleaved, c.tieEmbeddings],
    [64, 172, 5, 8, 4, 512, true, true],
  );
  assert.equal(model.lmHead, undefined, 'the classifier is the shared embedding table');
  checkStoriesParity(model, tokenizer, '.bin');
});

test('stories260K as a Hugging Face folder (saveModel, single and sharded): same parity', fixtureTest, () => {
  const dir = tmpDir();
  try {
    const { model } = loadModel(path.join(FIXTURES, 'stories260K.bin'));
    const hf = path.join(dir, 'hf');
    saveModel(model, hf);
    fs.copyFileSync(path.join(FIXTURES, 'tok512.bin'), path.join(hf, 'tokenizer.bin'));
    const cfg = JSON.parse(fs.readFileSync(path.join(hf, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfg.rope_interleaved, true, 'the interleaved RoPE layout must survive the conversion');
    assert.equal(cfg.tie_word_embeddings, true);

    const single = loadModel(hf);
    assert.equal(single.model.config.ropeInterleaved, true);
    checkStoriesParity(single.model, single.tokenizer, 'HF folder');

    // Sharded: two safetensors files and an index, written by hand.
    const { tensors } = readSafetensors(path.join(hf, 'model.safetensors'));
    const names = [...tensors.keys()].sort();
    assert.ok(!names.includes('lm_head.weight'), 'tied head is not stored');
    const shardNames = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
    const shards = [new Map<string, RawTensor>(), new Map<string, RawTensor>()];
    const weightMap: Record<string, string> = {};
    names.forEach((n, i) => {
      const s = i < names.length / 2 ? 0 : 1;
      shards[s].set(n, tensors.get(n)!);
      weightMap[n] = shardNames[s];
    });
    assert.ok(shards[0].size > 0 && shards[1].size > 0);
    const sharded = path.join(dir, 'sharded');
    fs.mkdirSync(sharded);
    shards.forEach((m, s) => writeSafetensors(path.join(sharded, shardNames[s]), m));
    const totalSize = [...tensors.values()].reduce((a, t) => a + t.data.length, 0);
    fs.writeFileSync(path.join(sharded, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }));
    fs.copyFileSync(path.join(hf, 'config.json'), path.join(sharded, 'config.json'));
    fs.copyFileSync(path.join(FIXTURES, 'tok512.bin'), path.join(sharded, 'tokenizer.bin'));
    assert.ok(!fs.existsSync(path.join(sharded, 'model.safetensors')));
    const fromShards = loadModel(sharded);
    checkStoriesParity(fromShards.model, fromShards.tokenizer, 'sharded HF folder');

    // An index that names a tensor its shard lacks is refused clearly.
    const bad = path.join(dir, 'bad');
    fs.cpSync(sharded, bad, { recursive: true });
    fs.writeFileSync(path.join(bad, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { ...weightMap, 'model.extra.weight': shardNames[0] } }));
    assert.throws(() => loadModel(bad), /model\.extra\.weight.*missing from its shard/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- B. forward options on small random models -------------------------------------------------

test(
  'inputsEmbeds = embed(ids) gives the same logits as ids',
  scoped(() => {
    const m = tiny();
    const x = ids([tokens(7, 1), tokens(7, 2)]);
    const a = m.forward({ ids: x }).logits!;
    const b = m.forward({ inputsEmbeds: m.embed(x) }).logits!;
    assert.deepEqual(a.shape, [2, 7, BASE.vocab_size]);
    assert.equal(a.dtype, 'float64');
    assertClose(a, b, 0, 'ids vs inputsEmbeds');
    assertDiffer(a.select(1, 0), a.select(1, 6), 1e-2, 'logits at different positions');
  }),
);

test(
  'outputHiddenStates and numLayers (bottom of the model)',
  scoped(() => {
    const m = tiny();
    const L = BASE.num_hidden_layers;
    const x = ids([tokens(6, 3)]);
    const full = m.forward({ ids: x, outputHiddenStates: true });
    const hs = full.hiddenStates!;
    assert.equal(hs.length, L + 1);
    assertClose(hs[0], m.embed(x), 0, 'hiddenStates[0] is the embedding output');
    assertClose(hs[L], full.hidden, 0, 'last hidden state is `hidden` (after the final norm)');
    assertClose(m.head(full.hidden), full.logits!, 1e-12, 'logits = head(hidden)');
    for (const n of [1, 2]) {
      const part = m.forward({ ids: x, numLayers: n, outputHiddenStates: true });
      assert.equal(part.hiddenStates!.length, n + 1);
      for (let i = 0; i < n; i++) assertClose(part.hiddenStates![i], hs[i], 0, `numLayers ${n}: hiddenStates[${i}]`);
      // hs[n] (n < L) is block n's raw output in the full run.
      assertClose(part.hidden, m.model.norm.forward(hs[n]), 1e-12, `numLayers ${n}: hidden = norm(block ${n} output)`);
      assertDiffer(part.hidden, full.hidden, 1e-3, `numLayers ${n} vs all layers`);
    }
  }),
);

test(
  'padding: left and right padded batches equal each prompt alone at real positions',
  scoped(() => {
    const m = tiny();
    const a = tokens(7, 4);
    const b = tokens(4, 5);
    const aloneA = m.forward({ ids: ids([a]) }).logits!.squeeze(0);
    const aloneB = m.forward({ ids: ids([b]) }).logits!.squeeze(0);
    const pad = (n: number) => new Array<number>(n).fill(0);
    const mask = (rows: number[][]) => tensor(rows.flat(), [rows.length, rows[0].length], { dtype: 'bool' });

    // Left padding: B's tokens in columns 3..6.
    const left = m.forward({
      ids: ids([a, [...pad(3), ...b]]),
      paddingMask: mask([
        [1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1],
      ]),
    }).logits!;
    assertClose(left.select(0, 0), aloneA, 1e-10, 'left padding, full row');
    assertClose(left.select(0, 1).narrow(0, 3, 4), aloneB, 1e-10, 'left padding, padded row');

    // Right padding: B's tokens in columns 0..3.
    const right = m.forward({
      ids: ids([a, [...b, ...pad(3)]]),
      paddingMask: mask([
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0, 0],
      ]),
    }).logits!;
    assertClose(right.select(0, 0), aloneA, 1e-10, 'right padding, full row');
    assertClose(right.select(0, 1).narrow(0, 0, 4), aloneB, 1e-10, 'right padding, padded row');

    // Without the mask the padded row is wrong (the test can fail).
    const unmasked = m.forward({ ids: ids([a, [...pad(3), ...b]]) }).logits!;
    assertDiffer(unmasked.select(0, 1).narrow(0, 3, 4), aloneB, 1e-3, 'left padding without a mask');
  }),
);

test(
  'explicit positionIds and a causal attnMask equal the defaults; block-diagonal mask isolates sequences',
  scoped(() => {
    const m = tiny();
    const a = tokens(5, 6);
    const b = tokens(4, 7);
    const x = ids([a, tokens(5, 8)]);
    const base = m.forward({ ids: x }).logits!;
    assertClose(m.forward({ ids: x, positionIds: arange(0, 5) }).logits!, base, 1e-12, 'positionIds [T]');
    assertClose(m.forward({ ids: x, positionIds: arange(0, 5).unsqueeze(0).expand(2, 5).contiguous() }).logits!, base, 1e-12, 'positionIds [B, T]');
    // RoPE is relative: a uniform shift changes nothing but table rounding; stretched positions do.
    assertClose(m.forward({ ids: x, positionIds: arange(3, 8) }).logits!, base, 1e-5, 'uniformly shifted positions');
    assertDiffer(m.forward({ ids: x, positionIds: arange(0, 10, 2) }).logits!, base, 1e-3, 'stretched positions');
    const causal = ones([5, 5], { dtype: 'bool' }).tril();
    assertClose(m.forward({ ids: x, attnMask: causal }).logits!, base, 1e-12, 'attnMask = tril');
    assertClose(m.forward({ ids: x, attnMask: causal.unsqueeze(0).expand(2, 5, 5).contiguous() }).logits!, base, 1e-12, 'attnMask [B, T, T]');
    assertDiffer(m.forward({ ids: x, attnMask: ones([5, 5], { dtype: 'bool' }) }).logits!, base, 1e-4, 'bidirectional mask');

    // [A; B] with a block-diagonal causal mask and positions restarting at 0 for B.
    const la = a.length;
    const lb = b.length;
    const n = la + lb;
    const allow: number[] = [];
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) allow.push(j <= i && i < la === j < la ? 1 : 0);
    const blockMask = tensor(allow, [n, n], { dtype: 'bool' });
    const pos = tensor([...Array.from({ length: la }, (_, i) => i), ...Array.from({ length: lb }, (_, i) => i)], [n], { dtype: 'int64' });
    const both = m.forward({ ids: ids([[...a, ...b]]), attnMask: blockMask, positionIds: pos }).logits!.squeeze(0);
    assertClose(both.narrow(0, la, lb), m.forward({ ids: ids([b]) }).logits!.squeeze(0), 1e-10, 'B under a block-diagonal mask');
    assertClose(both.narrow(0, 0, la), m.forward({ ids: ids([a]) }).logits!.squeeze(0), 1e-10, 'A under a block-diagonal mask');
  }),
);

test(
  'kvPrefix from a KV cache equals attending to the prefix tokens; prefixKv equals the layer',
  scoped(() => {
    const m = tiny();
    const L = BASE.num_hidden_layers;
    const a = [tokens(6, 9), tokens(6, 10)];
    const b = [tokens(4, 11), tokens(4, 12)];
    const whole = m.forward({ ids: ids([0, 1].map((r) => [...a[r], ...b[r]])) }).logits!;

    const cache = new KVCache(L);
    try {
      const first = m.forward({ ids: ids(a), cache, outputAttnInputs: true });
      assert.equal(cache.length, 6);
      const kvPrefix: LayerKv[] = cache.keys.map((k, i) => ({ k: k!, v: cache.values[i]! }));
      assert.deepEqual(kvPrefix[0].k.shape, [2, BASE.num_key_value_heads, 6, 8]);
      const withPrefix = m.forward({ ids: ids(b), kvPrefix }).logits!;
      assertClose(withPrefix, whole.narrow(1, 6, 4), 1e-10, 'B after a kvPrefix of A');
      assertDiffer(withPrefix, m.forward({ ids: ids(b) }).logits!, 1e-4, 'B with vs without the prefix');

      // prefixKv(layer, normed inputs, start) reproduces the layer's own keys/values.
      assert.equal(first.attnInputs!.length, L);
      for (let i = 0; i < L; i++) {
        const kv = m.prefixKv(i, first.attnInputs![i], 0);
        assertClose(kv.k, cache.keys[i]!, 1e-12, `prefixKv layer ${i} k`);
        assertClose(kv.v, cache.values[i]!, 1e-12, `prefixKv layer ${i} v`);
      }
      const second = m.forward({ ids: ids(b), cache, outputAttnInputs: true });
      for (let i = 0; i < L; i++) {
        const kv = m.prefixKv(i, second.attnInputs![i], 6);
        assertClose(kv.k, cache.keys[i]!.narrow(2, 6, 4), 1e-12, `prefixKv layer ${i} k at start 6`);
        assertClose(kv.v, cache.values[i]!.narrow(2, 6, 4), 1e-12, `prefixKv layer ${i} v at start 6`);
      }
      // A prefix built by prefixKv from normed inputs works as a memory KV.
      const built = first.attnInputs!.map((h, i) => m.prefixKv(i, h, 0));
      assertClose(m.forward({ ids: ids(b), kvPrefix: built }).logits!, whole.narrow(1, 6, 4), 1e-10, 'B after prefixKv-built prefix');
    } finally {
      cache.free();
    }
  }),
);

test(
  'KV cache: prefix then one token at a time equals the full forward',
  scoped(() => {
    const m = tiny();
    const seq = [tokens(9, 13), tokens(9, 14)];
    const full = m.forward({ ids: ids(seq) }).logits!;
    const cache = new KVCache(BASE.num_hidden_layers);
    try {
      const parts = [m.forward({ ids: ids(seq.map((s) => s.slice(0, 4))), cache }).logits!];
      for (let p = 4; p < 9; p++) {
        parts.push(m.forward({ ids: ids(seq.map((s) => [s[p]])), cache }).logits!);
        assert.equal(cache.length, p + 1);
      }
      assertClose(cat(parts, 1), full, 1e-10, 'incremental vs full');
      const last = m.forward({ ids: ids(seq.map((s) => [s[0]])), logits: 'last' }).logits!;
      assert.deepEqual(last.shape, [2, 1, BASE.vocab_size]);
    } finally {
      cache.free();
    }
  }),
);

test(
  'RoPE layouts: rotate_half model equals interleaved model with q/k rows permuted per head',
  scoped(() => {
    const hf = tiny();
    const il = tiny({ rope_interleaved: true }, { seed: 99 });
    assert.equal(hf.config.ropeInterleaved, false);
    assert.equal(il.config.ropeInterleaved, true);
    const hd = hf.config.headDim;
    // HF row j pairs with row j + hd/2; interleaved rows 2j, 2j+1 pair. So the interleaved row 2j
    // is HF row j and row 2j+1 is HF row j + hd/2 (the inverse of NOTES.md's [0,2,4,..,1,3,5,..]).
    const inHead = Array.from({ length: hd }, (_, r) => (r % 2 === 0 ? r / 2 : (r - 1) / 2 + hd / 2));
    const rows = (heads: number) =>
      tensor(
        Array.from({ length: heads * hd }, (_, i) => Math.floor(i / hd) * hd + inHead[i % hd]),
        undefined,
        { dtype: 'int64' },
      );
    const state = new Map<string, Tensor>();
    for (const [name, t] of hf.stateDict()) {
      if (name.endsWith('q_proj.weight')) state.set(name, t.indexSelect(0, rows(hf.config.numHeads)));
      else if (name.endsWith('k_proj.weight')) state.set(name, t.indexSelect(0, rows(hf.config.numKvHeads)));
      else state.set(name, t);
    }
    const x = ids([tokens(8, 15)]);
    const ref = hf.forward({ ids: x }).logits!;
    il.loadStateDict(hf.stateDict());
    assertDiffer(il.forward({ ids: x }).logits!, ref, 1e-3, 'interleaved RoPE on unpermuted weights');
    il.loadStateDict(state);
    assertClose(il.forward({ ids: x }).logits!, ref, 1e-10, 'interleaved with permuted q/k rows');
  }),
);

test('Qwen2-style q/k/v biases: present, saved and loaded by name, and they change the output', () => {
  const dir = tmpDir();
  try {
    tidy(() =>
      noGrad(() => {
        const q = tiny({ model_type: 'qwen2' }, { dtype: 'float32', seed: 5 });
        assert.equal(q.config.attentionBias, true);
        const names = q.namedParameters().map(([n]) => n);
        for (const p of ['q_proj', 'k_proj', 'v_proj']) assert.ok(names.includes(`model.layers.0.self_attn.${p}.bias`), `${p}.bias exists`);
        assert.ok(!names.includes('model.layers.0.self_attn.o_proj.bias'), 'o_proj has no bias');
        const plain = tiny({}, { dtype: 'float32', seed: 5 });
        const x = ids([tokens(6, 16)]);
        // Zero biases: same as a bias-free llama with the same weights.
        plain.loadStateDict(new Map([...q.stateDict()].filter(([n]) => !n.endsWith('.bias'))));
        const noBias = plain.forward({ ids: x }).logits!;
        assertClose(q.forward({ ids: x }).logits!, noBias, 1e-6, 'zero biases');
        manualSeed(6);
        for (const [n, p] of q.namedParameters()) if (n.endsWith('.bias')) p.value.copy_(randn(p.value.shape).mul(0.5));
        const withBias = q.forward({ ids: x }).logits!;
        assertDiffer(withBias, noBias, 1e-3, 'nonzero biases');
        saveModel(q, dir);
        const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
        assert.equal(cfg.model_type, 'qwen2');
        const stored = readSafetensors(path.join(dir, 'model.safetensors')).tensors;
        assert.ok(stored.has('model.layers.2.self_attn.v_proj.bias'));
        const loaded = loadModel(dir).model;
        assert.equal(loaded.config.attentionBias, true);
        assertClose(loaded.forward({ ids: x }).logits!, withBias, 0, 'reloaded qwen2 model');
      }),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test(
  'Llama 3 rope scaling: inverse frequencies match a hand computation',
  scoped(() => {
    const cfg = configFromHf({
      ...BASE,
      hidden_size: 64,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      rope_theta: 10000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
    });
    assert.equal(cfg.headDim, 16);
    const got = ropeInvFreq(cfg);
    assert.equal(got.length, 8);
    // Hugging Face's _compute_llama3_parameters, written out: wavelengths below 64/4 = 16 keep
    // their frequency, above 64/1 = 64 are divided by 8, in between are blended.
    const regimes = new Set<string>();
    for (let j = 0; j < 8; j++) {
      const base = Math.pow(10000, -(2 * j) / 16);
      const wavelen = (2 * Math.PI) / base;
      let want: number;
      if (wavelen < 16) {
        want = base;
        regimes.add('high');
      } else if (wavelen > 64) {
        want = base / 8;
        regimes.add('low');
      } else {
        const smooth = (64 / wavelen - 1) / (4 - 1);
        want = (1 - smooth) * (base / 8) + smooth * base;
        regimes.add('mid');
      }
      assert.ok(Math.abs(got[j] - want) <= 1e-12 * want, `inv_freq[${j}]: ${got[j]} vs ${want}`);
    }
    assert.equal(regimes.size, 3, 'the config exercises all three regimes');
    // Spot values: j=0 unchanged, j=1 blended, j=7 divided by the factor.
    assert.ok(Math.abs(got[0] - 1) < 1e-15);
    assert.ok(Math.abs(got[1] - 0.2443845994) < 1e-9, `inv_freq[1] = ${got[1]}`);
    assert.ok(Math.abs(got[7] - Math.pow(10000, -14 / 16) / 8) < 1e-15);
    // And the model's tables use them.
    manualSeed(0);
    const m = noGrad(() => new LlamaModel(cfg));
    const { cos, sin } = m.ropeTables(20);
    const c = cos.toArray() as Float32Array;
    const s = sin.toArray() as Float32Array;
    for (const p of [0, 5, 19]) {
      for (let j = 0; j < 8; j++) {
        assert.ok(Math.abs(c[p * 8 + j] - Math.cos(p * got[j])) < 1e-6);
        assert.ok(Math.abs(s[p * 8 + j] - Math.sin(p * got[j])) < 1e-6);
      }
    }
  }),
);

test(
  'GQA equals full multi-head attention with repeated kv heads (head i uses kv head i / rep)',
  scoped(() => {
    const gqa = tiny({ num_attention_heads: 4, num_key_value_heads: 2 });
    const mha = tiny({ num_attention_heads: 4, num_key_value_heads: 4 }, { seed: 77 });
    const hd = gqa.config.headDim;
    const rep = 2;
    const rowsFor = (kvOf: (head: number) => number) =>
      tensor(
        Array.from({ length: 4 * hd }, (_, i) => kvOf(Math.floor(i / hd)) * hd + (i % hd)),
        undefined,
        { dtype: 'int64' },
      );
    const expanded = (kvOf: (head: number) => number) =>
      new Map([...gqa.stateDict()].map(([n, t]) => [n, n.endsWith('k_proj.weight') || n.endsWith('v_proj.weight') ? t.indexSelect(0, rowsFor(kvOf)) : t]));
    const x = ids([tokens(7, 17), tokens(7, 18)]);
    const ref = gqa.forward({ ids: x }).logits!;
    mha.loadStateDict(expanded((h) => Math.floor(h / rep)));
    assertClose(mha.forward({ ids: x }).logits!, ref, 1e-10, 'GQA vs repeated kv heads');
    mha.loadStateDict(expanded((h) => h % 2));
    assertDiffer(mha.forward({ ids: x }).logits!, ref, 1e-4, 'the other grouping (i % kvHeads)');
  }),
);

test('LoRA: no change at init, changes when B is nonzero, only adapters get gradients when frozen', () =>
  tidy(() => {
    const m = tiny();
    const x = ids([tokens(6, 19)]);
    const before = noGrad(() => m.forward({ ids: x }).logits!);
    const nBase = m.parameters().length;
    const added = m.addLora({ rank: 4, alpha: 8 }, ['q', 'v']);
    assert.equal(added.length, 2 * BASE.num_hidden_layers);
    assert.equal(m.parameters().length, nBase + 2 * added.length);
    const names = m.namedParameters().map(([n]) => n);
    assert.ok(names.includes('model.layers.1.self_attn.q_proj.lora_A.weight'));
    assert.ok(names.includes('model.layers.1.self_attn.v_proj.lora_B.weight'));
    assert.ok(!names.some((n) => n.includes('k_proj.lora')));
    assertClose(
      noGrad(() => m.forward({ ids: x }).logits!),
      before,
      // B = 0 adds exactly zero, but with adapters the projections may be summed in another
      // order (libtorch 2.x: 2.4e-15 in float64), so "unchanged" means to rounding.
      1e-12,
      'LoRA at init',
    );
    manualSeed(20);
    noGrad(() => {
      for (const l of added) l.loraB!.value.copy_(randn(l.loraB!.value.shape, { dtype: l.loraB!.value.dtype }).mul(0.3));
    });
    assertDiffer(
      noGrad(() => m.forward({ ids: x }).logits!),
      before,
      1e-3,
      'LoRA with nonzero B',
    );

    // Frozen base + adapters: gradients reach only lora params.
    const f = tiny({}, { seed: 3 });
    f.freeze();
    const fl = f.addLora({ rank: 4, alpha: 8 }, ['q', 'v']);
    noGrad(() => {
      for (const l of fl) l.loraB!.value.copy_(randn(l.loraB!.value.shape, { dtype: l.loraB!.value.dtype }).mul(0.3));
    });
    const trainable = f
      .namedParameters()
      .filter(([, p]) => p.trainable)
      .map(([n]) => n);
    assert.equal(trainable.length, 4 * BASE.num_hidden_layers);
    assert.ok(
      trainable.every((n) => n.includes('.lora_')),
      `trainable: ${trainable.join(', ')}`,
    );
    const loss = f.forward({ ids: x }).logits!.square().mean();
    loss.backward();
    for (const [n, p] of f.namedParameters()) {
      const g = p.value.grad;
      if (n.includes('.lora_')) {
        assert.ok(g !== null, `${n} has a gradient`);
        assert.ok(g.abs().max().item() > 0, `${n} gradient is nonzero`);
      } else assert.equal(g, null, `${n} must not get a gradient`);
    }
    f.zeroGrad();
  }));

test(
  'forward errors: ids/inputsEmbeds, embed dim, paddingMask and attnMask shapes, numLayers',
  scoped(() => {
    const m = tiny();
    const x = ids([tokens(5, 21)]);
    assert.throws(() => m.forward({}), /exactly one of ids or inputsEmbeds/);
    assert.throws(() => m.forward({ ids: x, inputsEmbeds: m.embed(x) }), /exactly one of ids or inputsEmbeds/);
    assert.throws(() => m.forward({ inputsEmbeds: zeros([1, 5, 31], { dtype: 'float64' }) }), /inputsEmbeds must be \[batch, seq, 32\]/);
    assert.throws(() => m.forward({ inputsEmbeds: zeros([5, 32], { dtype: 'float64' }) }), /inputsEmbeds must be \[batch, seq, 32\]/);
    assert.throws(() => m.forward({ ids: tensor([1, 2, 3], [3], { dtype: 'int64' }) }), /ids must be \[batch, seq\]/);
    const pmErr = /paddingMask .*must be \[1, 5\]/;
    assert.throws(() => m.forward({ ids: x, paddingMask: ones([1, 6], { dtype: 'bool' }) }), pmErr);
    assert.throws(() => m.forward({ ids: x, paddingMask: ones([1, 4], { dtype: 'bool' }) }), pmErr);
    assert.throws(() => m.forward({ ids: x, paddingMask: ones([2, 5], { dtype: 'bool' }) }), pmErr);
    assert.throws(() => m.forward({ ids: x, paddingMask: ones([5], { dtype: 'bool' }) }), pmErr);
    assert.throws(() => m.forward({ ids: x, attnMask: ones([5, 4], { dtype: 'bool' }) }), /attnMask .*must be \[5, 5\]/);
    assert.throws(() => m.forward({ ids: x, numLayers: 0 }), /numLayers 0 outside 1\.\.3/);
    assert.throws(() => m.forward({ ids: x, numLayers: 4 }), /numLayers 4 outside 1\.\.3/);
  }),
);

test('forward returns the attention probabilities of every layer: causal rows that sum to one', () => {
  tidy(() => {
    manualSeed(3);
    const model = new LlamaModel(
      configFromHf({
        model_type: 'llama',
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        intermediate_size: 64,
        vocab_size: 50,
        max_position_embeddings: 64,
      }),
    );
    const ids = tensor([1, 5, 7, 9, 11, 2, 4, 6], [2, 4]).to('int64');
    const { attentions } = model.forward({ ids, outputAttentions: true });
    assert.equal(attentions!.length, 2);
    assert.deepEqual(attentions![1].shape, [2, 4, 4, 4]);
    const p = attentions![1].toNumbers();
    for (let row = 0; row < 2 * 4 * 4; row++) {
      const i = row % 4;
      const r = p.slice(row * 4, row * 4 + 4);
      assert.ok(Math.abs(r.reduce((a, b) => a + b, 0) - 1) < 1e-5);
      for (let j = i + 1; j < 4; j++) assert.equal(r[j], 0, 'no weight on future keys');
    }
    assert.equal(model.forward({ ids }).attentions, undefined);
  });
});

test('long causal inputs (attention in query blocks that skip hidden keys) give the logits of the step-by-step path: with a prefix, a cache and padding', () => {
  tidy(() => {
    // 300 tokens: three query blocks of 128 rows. The step-by-step path (outputAttentions) scores every key.
    const model = tiny({ max_position_embeddings: 512 });
    const a = tokens(300, 1);
    const b = tokens(300, 2);
    const input = ids([a, b]);
    const blocked = model.forward({ ids: input }).logits!;
    const full = model.forward({ ids: input, outputAttentions: true }).logits!;
    assertClose(blocked, full, 1e-10, 'plain');
    // After 20 prefix keys and 10 cached tokens, with the first 5 tokens of row 1 padding.
    const prefix: LayerKv[] = Array.from({ length: BASE.num_hidden_layers }, () => ({
      k: randn([2, BASE.num_key_value_heads, 20, 8], { dtype: 'float64' }),
      v: randn([2, BASE.num_key_value_heads, 20, 8], { dtype: 'float64' }),
    }));
    const padding = tensor([...new Array(310).fill(1), ...new Array(5).fill(0), ...new Array(305).fill(1)], [2, 310], { dtype: 'bool' });
    const run = (outputAttentions: boolean) => {
      const cache = new KVCache(BASE.num_hidden_layers);
      model.forward({ ids: input.narrow(1, 0, 10), kvPrefix: prefix, cache, paddingMask: padding.narrow(1, 0, 10) });
      return model.forward({ ids: cat([input.narrow(1, 10, 290), input.narrow(1, 0, 10)], 1), kvPrefix: prefix, cache, paddingMask: padding, outputAttentions })
        .logits!;
    };
    assertClose(run(false), run(true), 1e-10, 'prefix, cache and padding');
  });
});
