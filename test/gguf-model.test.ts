// Decoders from GGUF: the q/k row permutation, the tokenizer from GGUF metadata, and (when the
// real SmolLM2 file is in the cache) conversion to a Hugging Face folder that loads back to the
// same logits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { unpermuteQk, hfTensorName } from '../src/models/gguf.js';
import { readGguf, parseGguf } from '../src/io/gguf.js';
import { ggufTokenizer } from '../src/io/gguf-tokenizer.js';
import { HfTokenizer } from '../src/models/hf-tokenizer.js';
import { loadModel } from '../src/models/load.js';
import { namedModel, cachedModelPath } from '../src/io/model-source.js';
import { noGrad, tensor, tidy } from '../src/tensor/index.js';
import { run as convert } from '../src/cli/convert.js';

/** llama.cpp's converter: within each head, rows (j * headDim/2 + i) move to (2i + j). */
function permuteLikeLlamaCpp(data: Float32Array, rows: number, heads: number): Float32Array {
  const cols = data.length / rows;
  const hd = rows / heads;
  const out = new Float32Array(data.length);
  // numpy: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < hd / 2; i++)
      for (let j = 0; j < 2; j++) {
        const src = (h * hd + j * (hd / 2) + i) * cols;
        const dst = (h * hd + 2 * i + j) * cols;
        out.set(data.subarray(src, src + cols), dst);
      }
  return out;
}

test("unpermuteQk undoes llama.cpp's q/k row permutation (weights and biases, GQA head counts)", () => {
  for (const [heads, hd, cols] of [
    [3, 8, 5],
    [1, 4, 1],
    [2, 64, 3],
  ] as const) {
    const rows = heads * hd;
    const w = Float32Array.from({ length: rows * cols }, (_, i) => i);
    const permuted = permuteLikeLlamaCpp(w, rows, heads);
    assert.notDeepEqual(permuted, w);
    assert.deepEqual(unpermuteQk(permuted, rows, heads), w);
  }
  // Row 1 of GGUF head 0 (i = 0, j = 1) is Hugging Face row hd/2.
  const hd = 8;
  const gguf = Float32Array.from({ length: hd }, (_, r) => r);
  assert.equal(unpermuteQk(gguf, hd, 1)[hd / 2], 1);
  assert.throws(() => unpermuteQk(new Float32Array(6), 6, 4), /do not split/);
});

test('GGUF tensor names map to Hugging Face names', () => {
  assert.equal(hfTensorName('token_embd.weight'), 'model.embed_tokens.weight');
  assert.equal(hfTensorName('blk.12.attn_q.weight'), 'model.layers.12.self_attn.q_proj.weight');
  assert.equal(hfTensorName('blk.0.ffn_down.weight'), 'model.layers.0.mlp.down_proj.weight');
  assert.equal(hfTensorName('output.weight'), 'lm_head.weight');
  assert.equal(hfTensorName('blk.0.attn_q_norm.weight'), undefined);
});

test('a GGUF file without a vocabulary is refused by name', () => {
  // tiny.gguf (test/fixtures/gguf) has metadata of every type but no tokenizer.
  const file = parseGguf(new Uint8Array(fs.readFileSync('test/fixtures/gguf/tiny.gguf')), 'tiny.gguf');
  assert.throws(() => ggufTokenizer(file), /tokenizer\.ggml\.model/);
});

const SMOL = namedModel('smollm2-135m-instruct')!;
const SMOL_PATH = cachedModelPath(SMOL);
const NO_SMOL = SMOL_PATH ? false : 'SmolLM2 is not in the cache (npm test pulls it: softpress pull smollm2-135m-instruct)';

test('SmolLM2 tokenizer from GGUF: specials, ChatML, round trip, no BOS by default', { skip: NO_SMOL }, () => {
  const files = ggufTokenizer(readGguf(SMOL_PATH!));
  const tok = new HfTokenizer(files.tokenizer, files.config, { bos: files.bos, eos: files.eos });
  assert.equal(tok.vocabSize, 49152);
  assert.equal(tok.special.get('<|im_start|>'), 1);
  assert.equal(tok.special.get('<|im_end|>'), 2);
  assert.equal(tok.eos, 2);
  assert.equal(tok.addsBos, false);
  assert.deepEqual(tok.encode('Hi', { bos: true }), tok.encode('Hi'));
  assert.match(tok.chatTemplate ?? '', /<\|im_start\|>/);
  const text = 'Ünïcödé 東京 🙂, digits 12345 3.14159\n\tdef f(x):\n        return x  \n\n\n';
  assert.equal(tok.decode(tok.encode(text)), text);
  // Digits are split one by one (SmolLM2's pre-tokenizer).
  assert.equal(tok.encode('12345').length, 5);
  assert.deepEqual(tok.encode('<|im_start|>user\n'), [1, ...tok.encode('user\n')]);
});

test('convert: a GGUF becomes a Hugging Face folder that loads back to the same logits', { skip: NO_SMOL, timeout: 180_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-convert-'));
  try {
    const out32 = path.join(dir, 'f32');
    const out16 = path.join(dir, 'f16');
    const log = process.stdout.write;
    process.stdout.write = () => true;
    try {
      await convert(['--in', 'smollm2-135m-instruct', '--out', out32, '--dtype', 'float32']);
      await convert(['--in', 'smollm2-135m-instruct', '--out', out16]);
    } finally {
      process.stdout.write = log;
    }
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) assert.ok(fs.existsSync(path.join(out16, f)), f);
    const cfg = JSON.parse(fs.readFileSync(path.join(out16, 'config.json'), 'utf8'));
    assert.equal(cfg.torch_dtype, 'float16');
    assert.equal(cfg.num_hidden_layers, 30);
    assert.equal(cfg.tie_word_embeddings, true);
    const ref = loadModel('smollm2-135m-instruct');
    const ids = ref.tokenizer!.encode('The quick brown fox jumps over the lazy dog.');
    const logits = (p: string) => {
      const m = loadModel(p);
      assert.deepEqual(m.tokenizer!.encode('The quick brown fox jumps over the lazy dog.'), ids);
      const v = tidy(() =>
        noGrad(
          () =>
            m.model
              .forward({ ids: tensor(ids, [1, ids.length], { dtype: 'int64' }) })
              .logits!.to('float32')
              .toArray() as Float32Array,
        ),
      );
      m.model.free();
      return v;
    };
    const want = tidy(() => noGrad(() => ref.model.forward({ ids: tensor(ids, [1, ids.length], { dtype: 'int64' }) }).logits!.toArray() as Float32Array));
    ref.model.free();
    const got32 = logits(out32);
    assert.deepEqual(got32, want, 'float32 folder: identical logits');
    const got16 = logits(out16);
    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got16[i] - want[i]));
    // Weights rounded to fp16 (11 significant bits), read back into a float32 model: measured
    // max |Δlogit| 0.038 here over 11 positions x 49,152 logits; a broken file moves them by
    // whole units.
    assert.ok(maxDiff < 0.25, `float16 folder: max |Δlogit| ${maxDiff}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
