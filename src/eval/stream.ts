/**
 * Streaming evaluation of long documents, segment by segment (CCF's setting): every token after
 * the first is scored once, with what each strategy keeps of the text before its segment:
 *   ccf@r       — a streaming compressor's memory of all earlier segments (CCF: memory KV,
 *                 c = l / r slots per layer per segment), labelled with its method
 *   full        — the raw tokens, as many as fit the window (sliding window beyond it)
 *   none        — nothing but the segment itself (after BOS)
 *   window@r    — the raw tokens a streaming compressor's memory could hold instead: before a
 *                 segment starting at s, the last s / r tokens (as many KV entries as CCF's
 *                 c = l / r slots per earlier segment), so the two hold the same memory
 *   meanpool@r  — mean-pool soft tokens of all earlier text (the latest that fit the window)
 * Reports per-token perplexity, throughput and the bytes each strategy holds per document.
 */
import { crossEntropy, noGrad, tensor, tidy } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { tailLoss, type Compressor, type StreamingReader } from '../compress/index.js';

export interface StreamRow {
  method: string;
  ratio: number | null;
  length: number;
  docs: number;
  tokens: number;
  ppl: number;
  tokensPerSecond: number;
  /** Bytes of what the strategy holds about the past at the end of a document (mean). */
  stateBytes: number;
}

function kvBytesPerToken(m: LlamaModel): number {
  const c = m.config;
  return 2 * c.numLayers * c.numKvHeads * c.headDim * 4;
}

/** nll of tokens [from, to) of ids given ids [w0, from) in front (all in one forward). */
function windowNll(model: LlamaModel, ids: number[], w0: number, from: number, to: number, bos: number): { nll: number; n: number } {
  return tidy(() => {
    // [BOS] + ids[w0, to): position j (0 = BOS) predicts ids[w0 + j].
    const input = [bos, ...ids.slice(w0, to - 1)];
    const { logits } = model.forward({ ids: tensor(input, [1, input.length], { dtype: 'int64' }) });
    const first = from - w0; // index in `input` predicting ids[from]
    const n = to - from;
    const lg = logits!.narrow(1, first, n).reshape(n, -1);
    const targets = tensor(ids.slice(from, to), [n], { dtype: 'int64' });
    return { nll: crossEntropy(lg, targets, { reduction: 'sum' }).item(), n };
  });
}

export function streamEval(opts: {
  model: LlamaModel;
  tokenizer: Tokenizer;
  docs: number[][];
  lengths: number[];
  segmentLen: number;
  /** A compressor that reads text as a stream (Compressor.streaming: CCF), at streamRatios (default [8]). */
  streaming?: Compressor;
  streamRatios?: number[];
  meanpool?: Compressor;
  meanpoolRatios?: number[];
  log?: (s: string) => void;
}): StreamRow[] {
  const { model, tokenizer, segmentLen: l } = opts;
  if (opts.streaming && !opts.streaming.streaming) throw new Error(`streamEval: a '${opts.streaming.method}' compressor does not read text as a stream`);
  const window = model.config.maxPositions;
  const rows: StreamRow[] = [];
  const run = (method: string, ratio: number | null, length: number, scoreDoc: (ids: number[]) => { nll: number; n: number; bytes: number }) => {
    const docs = opts.docs.filter((d) => d.length >= length).map((d) => d.slice(0, length));
    if (!docs.length) return;
    let nll = 0;
    let n = 0;
    let bytes = 0;
    const t0 = performance.now();
    noGrad(() => {
      for (const d of docs) {
        const r = scoreDoc(d);
        nll += r.nll;
        n += r.n;
        bytes += r.bytes;
      }
    });
    const secs = (performance.now() - t0) / 1000;
    const row = { method, ratio, length, docs: docs.length, tokens: n, ppl: Math.exp(nll / n), tokensPerSecond: n / secs, stateBytes: bytes / docs.length };
    rows.push(row);
    opts.log?.(
      `${method}${ratio ? `@${ratio}` : ''} ${length} tokens: ppl ${row.ppl.toFixed(1)}, ${row.tokensPerSecond.toFixed(0)} tok/s, ${(row.stateBytes / 1024).toFixed(0)} KiB`,
    );
  };
  for (const length of opts.lengths) {
    run('full (sliding window)', null, length, (ids) => {
      let nll = 0;
      let n = 0;
      for (let s = 0; s < ids.length; s += l) {
        const e = Math.min(ids.length, s + l);
        const w0 = Math.max(0, e - (window - 1));
        const r = windowNll(model, ids, w0, Math.max(1, s), e, tokenizer.bos);
        nll += r.nll;
        n += r.n;
      }
      return { nll, n, bytes: Math.min(ids.length, window) * kvBytesPerToken(model) };
    });
    run('none (segment alone)', null, length, (ids) => {
      let nll = 0;
      let n = 0;
      for (let s = 0; s < ids.length; s += l) {
        const e = Math.min(ids.length, s + l);
        const r = windowNll(model, ids, s, Math.max(1, s), e, tokenizer.bos);
        nll += r.nll;
        n += r.n;
      }
      return { nll, n, bytes: 0 };
    });
    const reader: StreamingReader | undefined = opts.streaming?.streaming;
    for (const ratio of reader ? (opts.streamRatios ?? [8]) : []) {
      run('window (same memory)', ratio, length, (ids) => {
        let nll = 0;
        let n = 0;
        let held = 0;
        for (let s = 0; s < ids.length; s += reader!.segmentLen) {
          const e = Math.min(ids.length, s + reader!.segmentLen);
          const past = Math.floor(s / ratio);
          held = Math.max(held, past);
          const r = windowNll(model, ids, s - past, Math.max(1, s), e, tokenizer.bos);
          nll += r.nll;
          n += r.n;
        }
        return { nll, n, bytes: held * kvBytesPerToken(model) };
      });
      run(opts.streaming!.method, ratio, length, (ids) => {
        const stream = reader!.open({ ratio });
        try {
          for (let s = 0; s < ids.length; s += reader!.segmentLen) tidy(() => void stream.perplexityOf(ids.slice(s, s + reader!.segmentLen)));
          return { nll: stream.nll, n: stream.tokens, bytes: stream.memoryBytes };
        } finally {
          stream.free();
        }
      });
    }
    for (const ratio of opts.meanpool ? (opts.meanpoolRatios ?? [8]) : []) {
      run('meanpool memory', ratio, length, (ids) => {
        let nll = 0;
        let n = 0;
        let soft = 0;
        for (let s = 0; s < ids.length; s += l) {
          const e = Math.min(ids.length, s + l);
          if (s === 0) {
            const r = windowNll(model, ids, 0, 1, e, tokenizer.bos);
            nll += r.nll;
            n += r.n;
            continue;
          }
          // The latest earlier text whose soft tokens fit the window with the segment.
          const maxSoft = window - l - 2;
          const past = ids.slice(Math.max(0, s - maxSoft * ratio), s);
          const r = tidy(() => {
            const ctx = opts.meanpool!.compress([past], { ratio });
            soft = ctx.meta.softTokens[0];
            const { loss, tokens } = tailLoss(model, ctx, [ids.slice(s, e)], [0], { bos: tokenizer.bos, pad: tokenizer.pad });
            return { nll: loss.item() * tokens, n: tokens };
          });
          nll += r.nll;
          n += r.n;
        }
        return { nll, n, bytes: (1 + soft) * kvBytesPerToken(model) };
      });
    }
  }
  return rows;
}
