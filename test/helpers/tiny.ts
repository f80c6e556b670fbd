/**
 * A tiny random base model for compressor tests: dim 32, 2 layers, 4 heads (2 kv heads), ffn
 * 64, vocab 8192, with softpress's real tokenizer (models/softpress-base/tokenizer.json).
 * Seeded, frozen, in eval mode.
 *
 * Initialisation: std 0.02 everywhere (the pretraining default) gives near-uniform logits that
 * no context can sharpen (|logit| <= |h| |e| ~ 0.6), so nothing could learn to reconstruct a
 * context through it. The tiny base therefore uses unit-scale embeddings (sharp logits through
 * the tied head) and projections scaled so that attention moves about as much into a position
 * as its own embedding carries: the context, soft or not, really changes the predictions.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { manualSeed, noGrad, randn, tidy } from '../../src/tensor/index.js';
import { configFromHf } from '../../src/models/config.js';
import { LlamaModel } from '../../src/models/llama.js';
import { BpeTokenizer } from '../../src/models/bpe.js';

export const TOKENIZER_PATH = path.resolve(process.cwd(), 'models/softpress-base/tokenizer.json');

export interface TinyOptions {
  seed?: number;
  dim?: number;
  layers?: number;
  /** Std of the embedding table (default 1). */
  embedStd?: number;
  /** Std of every projection, times 1/sqrt(fan-in) (default 1). */
  projGain?: number;
}

let cachedTokenizer: BpeTokenizer | undefined;
export function tinyTokenizer(): BpeTokenizer {
  if (!cachedTokenizer) {
    if (!fs.existsSync(TOKENIZER_PATH)) throw new Error(`tokenizer not found at ${TOKENIZER_PATH} (run the tests from the repo root)`);
    cachedTokenizer = BpeTokenizer.fromFile(TOKENIZER_PATH);
  }
  return cachedTokenizer;
}

export function tinyConfig(opts: TinyOptions = {}) {
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
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: true,
    bos_token_id: tok.bos,
    eos_token_id: tok.eos,
  });
}

/** The tiny base: {model (frozen, eval), tokenizer}. Same seed, same weights. */
export function tinyBase(opts: TinyOptions = {}): { model: LlamaModel; tokenizer: BpeTokenizer } {
  const tokenizer = tinyTokenizer();
  manualSeed(opts.seed ?? 1234);
  const model = noGrad(() => new LlamaModel(tinyConfig(opts)));
  const embedStd = opts.embedStd ?? 1;
  const gain = opts.projGain ?? 1;
  tidy(() =>
    noGrad(() => {
      for (const [name, p] of model.namedParameters()) {
        const shape = p.value.shape;
        if (name.endsWith('embed_tokens.weight')) p.value.copy_(randn(shape).mul(embedStd));
        else if (shape.length === 2) p.value.copy_(randn(shape).mul(gain / Math.sqrt(shape[1])));
      }
    }),
  );
  model.freeze().eval();
  return { model, tokenizer };
}
