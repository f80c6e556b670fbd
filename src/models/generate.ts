/**
 * Generation: greedy or sampled (temperature, top-k, top-p, seed), stop tokens, a batch of
 * prompts (left padding), and an optional soft-token prefix or per-layer memory KV in front.
 */
import { Tensor, cat, noGrad, ones, tensor, tidy } from '../tensor/index.js';
import { KVCache, type LayerKv, type LlamaModel } from './llama.js';
import type { LoraAdapters } from '../nn/layers.js';

export interface GenerateOptions {
  /** New tokens to generate at most (per prompt). */
  maxTokens: number;
  /** 0 (default) = greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** Generation of a prompt stops after any of these ids (the id is included in the output). */
  stopTokens?: number[];
  /** Soft tokens in front of every prompt: [batch, P, dim] (input-embedding space). */
  prefixEmbeds?: Tensor;
  /** Which prefix slots are real [batch, P] (bool); default all. */
  prefixMask?: Tensor;
  /** Per-layer memory keys/values in front of every prompt (CCF). */
  kvPrefix?: LayerKv[];
  /** External LoRA adapters for the decoder (e.g. a compressor's fine-tuned decoder delta). */
  lora?: LoraAdapters;
  /** Called with each new token of each sequence, for streaming. */
  onToken?: (sequence: number, id: number) => void;
}

export interface GenerateResult {
  /** Generated ids per prompt (without the prompt; stop token included when hit). */
  tokens: number[][];
  prefillMs: number;
  decodeMs: number;
}

/** A small, fast, seedable PRNG (mulberry32) so sampling is reproducible everywhere. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Picks the next id from one row of logits. Greedy takes the lowest id among ties. */
export function sampleFromLogits(logits: Float32Array, opts: { temperature?: number; topK?: number; topP?: number }, random: () => number): number {
  const temperature = opts.temperature ?? 0;
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let idx = Array.from(logits.keys());
  if (opts.topK && opts.topK > 0 && opts.topK < idx.length) {
    idx.sort((a, b) => logits[b] - logits[a]);
    idx = idx.slice(0, opts.topK);
  }
  let max = -Infinity;
  for (const i of idx) max = Math.max(max, logits[i]);
  let probs = idx.map((i) => Math.exp((logits[i] - max) / temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (opts.topP && opts.topP < 1) {
    const order = idx.map((_, j) => j).sort((a, b) => probs[b] - probs[a]);
    const keep: number[] = [];
    let acc = 0;
    for (const j of order) {
      keep.push(j);
      acc += probs[j] / total;
      if (acc >= opts.topP) break;
    }
    idx = keep.map((j) => idx[j]);
    probs = keep.map((j) => probs[j]);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let r = random() * total;
  for (let j = 0; j < idx.length; j++) {
    r -= probs[j];
    if (r <= 0) return idx[j];
  }
  return idx[idx.length - 1];
}

/** Generates continuations of token-id prompts. The model runs without gradients. */
export function generate(model: LlamaModel, prompts: number[][], opts: GenerateOptions): GenerateResult {
  if (prompts.length === 0) return { tokens: [], prefillMs: 0, decodeMs: 0 };
  const batch = prompts.length;
  if (opts.prefixEmbeds && opts.prefixEmbeds.size(0) !== batch) throw new Error(`generate: prefixEmbeds has batch ${opts.prefixEmbeds.size(0)}, prompts ${batch}`);
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 0) throw new Error(`generate: maxTokens must be a non-negative integer, got ${opts.maxTokens}`);
  const hasPrefix = !!opts.prefixEmbeds;
  if (prompts.some((p) => p.length === 0) && !hasPrefix) throw new Error('generate: empty prompt (give at least a BOS token)');
  const random = mulberry32(opts.seed ?? 0);
  const stop = new Set(opts.stopTokens ?? []);
  const out: number[][] = prompts.map(() => []);
  const done = prompts.map(() => opts.maxTokens === 0);
  const cache = new KVCache(model.config.numLayers);
  const maxLen = Math.max(...prompts.map((p) => p.length));
  const needsPadding = prompts.some((p) => p.length !== maxLen) || !!opts.prefixMask;
  const pad = 0;
  const t0 = performance.now();
  let prefillMs = 0;
  try {
    return noGrad(() => {
      // Left padding keeps every sequence's last token in the last column.
      const ids = prompts.flatMap((p) => [...new Array(maxLen - p.length).fill(pad), ...p]);
      const tokenMask = prompts.flatMap((p) => [...new Array(maxLen - p.length).fill(0), ...new Array(p.length).fill(1)]);
      let paddingMask: Tensor | undefined;
      let nextLogits = tidy(() => {
        const idT = tensor(ids, [batch, maxLen], { dtype: 'int64' });
        let inputsEmbeds = model.embed(idT);
        if (opts.prefixEmbeds) inputsEmbeds = cat([opts.prefixEmbeds.to(inputsEmbeds.dtype), inputsEmbeds], 1);
        if (needsPadding) {
          const pm = tensor(tokenMask, [batch, maxLen], { dtype: 'bool' });
          const prefixPart = opts.prefixEmbeds ? (opts.prefixMask ?? ones([batch, opts.prefixEmbeds.size(1)], { dtype: 'bool' })) : null;
          paddingMask = (prefixPart ? cat([prefixPart.to('bool'), pm], 1) : pm).keep();
        }
        const { logits } = model.forward({ inputsEmbeds, paddingMask, cache, kvPrefix: opts.kvPrefix, logits: 'last', lora: opts.lora });
        return logits!.reshape(batch, -1).to('float32');
      });
      prefillMs = performance.now() - t0;
      for (let step = 0; step < opts.maxTokens; step++) {
        const rows = nextLogits.toArray() as Float32Array;
        nextLogits.free();
        const vocab = rows.length / batch;
        const next: number[] = [];
        for (let b = 0; b < batch; b++) {
          if (done[b]) {
            next.push(pad);
            continue;
          }
          const id = sampleFromLogits(rows.subarray(b * vocab, (b + 1) * vocab), opts, random);
          out[b].push(id);
          opts.onToken?.(b, id);
          if (stop.has(id) || out[b].length >= opts.maxTokens) done[b] = true;
          next.push(id);
        }
        if (done.every(Boolean)) break;
        nextLogits = tidy(() => {
          if (paddingMask) {
            const grown = cat([paddingMask, ones([batch, 1], { dtype: 'bool' })], 1).keep();
            paddingMask.free();
            paddingMask = grown;
          }
          const { logits } = model.forward({ ids: tensor(next, [batch, 1], { dtype: 'int64' }), cache, paddingMask, kvPrefix: opts.kvPrefix, logits: 'last', lora: opts.lora });
          return logits!.reshape(batch, -1).to('float32');
        });
      }
      paddingMask?.free();
      return { tokens: out, prefillMs, decodeMs: performance.now() - t0 - prefillMs };
    });
  } finally {
    cache.free();
  }
}
