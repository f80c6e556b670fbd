/**
 * A random base model folder with the project's tokenizer, for the server's tests and for
 * benchmarking the serving path before a trained base model exists. Not used by the server.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { manualSeed, noGrad, randn, tidy } from '../tensor/index.js';
import { configFromHf } from '../models/config.js';
import { LlamaModel } from '../models/llama.js';
import { saveModel } from '../models/load.js';

export interface RandomBaseOptions {
  /** tokenizer.json to copy (default models/softpress-base/tokenizer.json). */
  tokenizer?: string;
  seed?: number;
  hiddenSize?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  intermediateSize?: number;
  window?: number;
  /**
   * Large random weights (token embeddings of std 1, projections of std 2/sqrt(fan-in)) so that
   * greedy decoding has clear winners instead of near-ties: batched and one-by-one decoding
   * can then be compared token for token.
   */
  sharp?: boolean;
}

/** The base model's architecture (configs/base-pretrain.json) with random weights. */
export const BASE_SHAPE: Required<Omit<RandomBaseOptions, 'tokenizer' | 'seed' | 'sharp'>> = {
  hiddenSize: 256,
  layers: 6,
  heads: 8,
  kvHeads: 4,
  intermediateSize: 688,
  window: 1024,
};

/** Writes a random Llama model + tokenizer.json into dir (Hugging Face layout); returns dir. */
export function writeRandomBase(dir: string, o: RandomBaseOptions = {}): string {
  const tok = o.tokenizer ?? resolve('models/softpress-base/tokenizer.json');
  if (!existsSync(tok)) throw new Error(`tokenizer not found: ${tok}`);
  mkdirSync(dir, { recursive: true });
  copyFileSync(tok, join(dir, 'tokenizer.json'));
  manualSeed(o.seed ?? 7);
  const cfg = configFromHf({
    model_type: 'llama',
    vocab_size: 8192,
    hidden_size: o.hiddenSize ?? 32,
    num_hidden_layers: o.layers ?? 2,
    num_attention_heads: o.heads ?? 4,
    num_key_value_heads: o.kvHeads ?? 2,
    intermediate_size: o.intermediateSize ?? 64,
    max_position_embeddings: o.window ?? 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    bos_token_id: 0,
    eos_token_id: 1,
  });
  const model = noGrad(() => new LlamaModel(cfg));
  if (o.sharp) {
    noGrad(() =>
      tidy(() => {
        for (const [name, p] of model.namedParameters()) {
          if (name.endsWith('norm.weight')) continue;
          const shape = p.value.shape;
          const std = name.includes('embed_tokens') ? 1 : 2 / Math.sqrt(shape[shape.length - 1]);
          p.value.copy_(randn(shape).mul(std));
        }
      }),
    );
  }
  saveModel(model, dir);
  return dir;
}
