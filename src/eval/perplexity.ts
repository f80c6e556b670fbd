/**
 * Document-level perplexity and bits per byte of a decoder on a set of texts: each document is
 * [BOS] tokens [EOS], scored in consecutive windows of at most the model's max positions (each
 * token after BOS predicted exactly once; a window restarts the context, as pretraining chunks
 * do). ppl = exp(nats / predicted tokens); bpb = nats / ln 2 / UTF-8 bytes of the documents.
 */
import { crossEntropy, noGrad, tensor, tidy } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { bitsPerByte, perplexity } from './metrics.js';

export interface PerplexityOptions {
  /** Window length (inputs per window); default the model's max positions. */
  window?: number;
  /** Windows per forward pass (default: as many as fit 4 full windows of 1,024 tokens). */
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface PerplexityResult {
  documents: number;
  /** Predicted tokens (EOS included, BOS not). */
  tokens: number;
  /** UTF-8 bytes of the documents' text. */
  bytes: number;
  nats: number;
  /** Mean nats per token. */
  nll: number;
  ppl: number;
  bpb: number;
  window: number;
  seconds: number;
}

/** Perplexity and bits per byte of `model` on `texts` (see the module comment). */
export function documentPerplexity(model: LlamaModel, tok: Tokenizer, texts: readonly string[], o: PerplexityOptions = {}): PerplexityResult {
  const t0 = performance.now();
  const window = o.window ?? model.config.maxPositions;
  if (!(Number.isInteger(window) && window >= 1)) throw new RangeError(`perplexity: window must be a positive integer, got ${window}`);
  const windows: { inputs: number[]; targets: number[] }[] = [];
  let bytes = 0;
  for (const text of texts) {
    bytes += Buffer.byteLength(text, 'utf8');
    const ids = tok.encode(text, { bos: true, eos: true });
    for (let s = 0; s + 1 < ids.length; s += window) {
      const len = Math.min(window, ids.length - 1 - s);
      windows.push({ inputs: ids.slice(s, s + len), targets: ids.slice(s + 1, s + 1 + len) });
    }
  }
  if (windows.length === 0) throw new Error('perplexity: no tokens to score');
  // Longest first, so each batch pads little; attention memory is bounded by batch * len^2.
  windows.sort((a, b) => b.inputs.length - a.inputs.length);
  const budget = (o.batchSize ?? 4) * 1024 * 1024;
  let nats = 0;
  let tokens = 0;
  let done = 0;
  noGrad(() => {
    for (let i = 0; i < windows.length;) {
      const len = windows[i]!.inputs.length;
      const b = Math.max(1, Math.min(o.batchSize ?? 64, Math.floor(budget / (len * len)), windows.length - i));
      const batch = windows.slice(i, i + b);
      const ids: number[] = [];
      const targets: number[] = [];
      for (const w of batch) {
        const pad = len - w.inputs.length;
        // Right padding: under the causal mask no real position sees the pads.
        ids.push(...w.inputs, ...new Array(pad).fill(tok.pad));
        targets.push(...w.targets, ...new Array(pad).fill(-100));
        tokens += w.targets.length;
      }
      nats += tidy(() => {
        const { logits } = model.forward({ ids: tensor(ids, [b, len], { dtype: 'int64' }) });
        return crossEntropy(logits!.reshape(b * len, -1).to('float32'), tensor(targets, [b * len], { dtype: 'int64' }), {
          reduction: 'sum',
          ignoreIndex: -100,
        }).item();
      });
      i += b;
      done += b;
      o.onProgress?.(done, windows.length);
    }
  });
  return {
    documents: texts.length,
    tokens,
    bytes,
    nats,
    nll: nats / tokens,
    ppl: perplexity(nats, tokens),
    bpb: bitsPerByte(nats, bytes),
    window,
    seconds: (performance.now() - t0) / 1000,
  };
}
