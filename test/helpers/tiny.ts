/**
 * Tiny random models for tests. tinyBase: the base of the compressor tests, dim 32, 2 layers,
 * 4 heads (2 kv heads), ffn 64, vocab 8192 with softpress's real tokenizer
 * (models/softpress-base/tokenizer.json), tied embeddings; seeded (same seed, same weights),
 * frozen, in eval mode. randomModel: any shape from Hugging Face config fields, for tests that
 * need their own vocabulary, depth or dtype.
 *
 * Initialisation. With the pretraining init (std 0.02 everywhere) every logit is within ~0.6 of
 * the others whatever the input (|logit| <= |normed h| |e| = sqrt(32) * 0.02 sqrt(32)), so no
 * soft context could move the decoder and a training test would show nothing. The tiny base
 * uses unit-variance embeddings (sharp logits through the tied head) and projections of std
 * gain / sqrt(fan-in) (gain 1 for v/o, 0.5 for q/k and the MLP), so attention carries what
 * earlier positions hold into later ones at about the scale of a token's own embedding.
 * A random decoder still cannot *reconstruct* a context from soft tokens (it never learned to
 * read anything); it can be steered by them, which is what the training checks measure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { manualSeed, noGrad, randn, tidy, type DType } from '../../src/tensor/index.js';
import { configFromHf, type LlamaConfig } from '../../src/models/config.js';
import { LlamaModel } from '../../src/models/llama.js';
import { BpeTokenizer } from '../../src/models/bpe.js';

export const TOKENIZER_PATH = path.resolve(process.cwd(), 'models/softpress-base/tokenizer.json');

export interface TinyOptions {
  seed?: number;
  dim?: number;
  layers?: number;
  /** Position window (default 256). */
  positions?: number;
  /** Std of the embedding table (default 1). */
  embedStd?: number;
  /** Projection std times sqrt(fan-in), per group (defaults q/k 0.5, v/o 1, MLP 0.5). */
  qkGain?: number;
  voGain?: number;
  mlpGain?: number;
}

let cachedTokenizer: BpeTokenizer | undefined;
export function tinyTokenizer(): BpeTokenizer {
  if (!cachedTokenizer) {
    if (!fs.existsSync(TOKENIZER_PATH)) throw new Error(`tokenizer not found at ${TOKENIZER_PATH} (run the tests from the repo root)`);
    cachedTokenizer = BpeTokenizer.fromFile(TOKENIZER_PATH);
  }
  return cachedTokenizer;
}

export function tinyConfig(opts: TinyOptions = {}): LlamaConfig {
  const tok = tinyTokenizer();
  const dim = opts.dim ?? 32;
  return configFromHf({
    model_type: 'llama',
    vocab_size: tok.vocabSize,
    hidden_size: dim,
    intermediate_size: 2 * dim,
    num_hidden_layers: opts.layers ?? 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: opts.positions ?? 256,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: true,
    bos_token_id: tok.bos,
    eos_token_id: tok.eos,
  });
}

/** The tiny base: {model (frozen, eval), tokenizer}. */
export function tinyBase(opts: TinyOptions = {}): { model: LlamaModel; tokenizer: BpeTokenizer } {
  const tokenizer = tinyTokenizer();
  manualSeed(opts.seed ?? 1234);
  const model = noGrad(() => new LlamaModel(tinyConfig(opts)));
  tidy(() =>
    noGrad(() => {
      for (const [name, p] of model.namedParameters()) {
        const shape = p.value.shape;
        if (name.endsWith('embed_tokens.weight')) {
          p.value.copy_(randn(shape).mul(opts.embedStd ?? 1));
        } else if (shape.length === 2) {
          const gain = /q_proj|k_proj/.test(name) ? (opts.qkGain ?? 0.5) : /mlp\./.test(name) ? (opts.mlpGain ?? 0.5) : (opts.voGain ?? 1);
          p.value.copy_(randn(shape).mul(gain / Math.sqrt(shape[1])));
        }
      }
    }),
  );
  model.invalidateFingerprint();
  model.freeze().eval();
  return { model, tokenizer };
}

/** Every base parameter's bytes, to prove training left the base untouched. */
export function snapshotBytes(model: LlamaModel): Map<string, Buffer> {
  return tidy(() => new Map(model.namedParameters().map(([n, p]) => [n, Buffer.from(p.value.detach().contiguous().toBytes())])));
}

/**
 * A small Llama from Hugging Face config fields (model_type llama) with its weights redrawn far
 * from the 0.02-std init, whose nearly constant logits would make comparisons vacuous:
 * embeddings N(0, 1), projections N(0, 1/in), norm weights 1 + N(0, 0.1²); biases stay as they
 * are. Seeded (construction and redraw), in `dtype` (default float32), in eval mode; frozen with
 * `freeze`.
 */
export function randomModel(fields: Record<string, unknown>, opts: { seed?: number; dtype?: DType; freeze?: boolean } = {}): LlamaModel {
  const seed = opts.seed ?? 1;
  manualSeed(seed);
  const m = noGrad(() => new LlamaModel(configFromHf({ model_type: 'llama', ...fields })));
  if ((opts.dtype ?? 'float32') !== 'float32') m.toDtype(opts.dtype!);
  manualSeed(seed);
  tidy(() =>
    noGrad(() => {
      for (const [name, p] of m.namedParameters()) {
        const { shape, dtype } = p.value;
        if (name.endsWith('.bias')) continue;
        if (name.endsWith('norm.weight')) p.value.copy_(randn(shape, { dtype }).mul(0.1).add(1));
        else if (name.includes('embed_tokens')) p.value.copy_(randn(shape, { dtype }));
        else p.value.copy_(randn(shape, { dtype }).mul(1 / Math.sqrt(shape[shape.length - 1]!)));
      }
    }),
  );
  m.invalidateFingerprint();
  if (opts.freeze) m.freeze();
  return m.eval();
}
