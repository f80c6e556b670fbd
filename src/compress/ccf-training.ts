/**
 * CCF's training procedure (papers/ccf.md): incremental segment decoding with sparse
 * reservoir sampling of the encoder graphs. For each document, segments t = 0, 1, 2, ...:
 *   1. decode segment t against the DETACHED memory leaves (requires_grad) of segments < t;
 *      cross-entropy over the segment; backward at once: gradients reach the decoder LoRA and
 *      accumulate in the leaves' .grad; the decoding graph is gone right after;
 *   2. run the encoder on segment t and keep its graph (roots = its per-layer memories);
 *   3. reservoir of size k: t < k is kept; otherwise j ~ U[0, t]: if j < k, reservoir[j] is
 *      evicted and t kept, else t is dropped at once;
 *   4. dropping or evicting segment s calls backward(roots_s, leaf_s.grad) over all layers in
 *      one multi-root call, then frees its graph;
 *   5. at the document's end the reservoir is flushed the same way; one optimiser step.
 *
 * The sparse approximation, exactly as specified: a segment's encoder receives only the
 * gradient accumulated in its leaves by the time its graph is released. A segment dropped at
 * once has had no later segment decoded against it yet, so its leaves hold no gradient and its
 * encoder gets none; an evicted segment gets what the segments decoded while it was kept sent
 * it. With k >= the number of segments nothing is released before the end and the gradients
 * equal full backpropagation through every segment (test/ccf.test.ts checks this). Peak
 * memory holds at most k + 1 encoder graphs and one decoding graph, whatever the length.
 *
 * Trainable: the encoder LoRA, the decoder LoRA and pi; the base model is frozen. CcfCompressor's
 * trainingProcedure hands `softpress train` this procedure (ccfTraining) to run under the shared
 * trainer; the optimiser settings are the run's (CCF_RECIPE's by default: AdamW (0.9, 0.95),
 * weight decay 0.1, lr 1e-4, 1% warm-up then cosine to 0, clip 1.0), and so are its documents:
 * 16 segments each (fewer when the base's position window cannot hold their memory), drawn from
 * inside single long documents, with a reservoir of 2.
 */
import { Tensor, backward, cat, memoryStats, noGrad, tensor, tidy } from '../tensor/index.js';
import { DocumentChunkSampler } from '../data/lm.js';
import { shardRange } from '../data/shard.js';
import { Rng } from '../data/rng.js';
import type { CcfCompressor } from './ccf.js';
import type { MethodTraining, MethodTrainingRun } from './types.js';

// ---- one document ----------------------------------------------------------------------------

/** A look inside the procedure at its memory peaks (for tests and benchmarks). */
export interface CcfProbe {
  segment: number;
  /** 'decode': after segment t's decoding forward, before its backward (its activations live);
   *  'encode': after segment t's encoder forward, before the reservoir decides (k + 1 graphs at most). */
  phase: 'decode' | 'encode';
  /** Encoder graphs held at this moment. */
  heldGraphs: number;
  liveHandles: number;
  reportedBytes: number;
}

export interface CcfDocumentOptions {
  /** Context tokens per memory slot: c = segmentLen / ratio. */
  ratio: number;
  /** Encoder graphs kept, k (default 2). */
  reservoir?: number;
  /** The reservoir's random draws (seeded for reproducible runs). */
  rng: { int(n: number): number };
  /** Multiplies every gradient (e.g. 1 / documents per optimiser step). */
  lossScale?: number;
  onProbe?: (p: CcfProbe) => void;
}

export interface CcfDocumentResult {
  /** Mean cross-entropy (nats per token) over the document's predicted tokens. */
  loss: number;
  /** Predicted tokens (rows x (length - 1)). */
  tokens: number;
  segments: number;
  /** Encoder backward calls made (segments released with some gradient). */
  encoderBackwards: number;
  /** Segments dropped as soon as they were encoded (their encoders got no gradient). */
  droppedAtOnce: number;
}

/**
 * Runs the procedure on one document and leaves the gradients in the trainable parameters
 * (accumulated onto any already there; no optimiser step). doc: B rows of N + 1 token ids
 * (equal lengths) — inputs are the first N, and token i predicts token i + 1, so segment t's
 * last position predicts the first token of segment t + 1, and the loss is the mean over all
 * B x N predictions, as one forward pass over the whole document would count them.
 */
export function ccfDocumentGradients(ccf: CcfCompressor, doc: number[][], opts: CcfDocumentOptions): CcfDocumentResult {
  const b = doc.length;
  const n1 = doc[0]?.length ?? 0;
  if (b === 0 || n1 < 2) throw new Error('ccf: a document needs at least one row of 2 or more tokens');
  if (doc.some((r) => r.length !== n1)) throw new Error('ccf: the rows of a document batch must have equal lengths');
  const k = opts.reservoir ?? 2;
  if (!Number.isInteger(k) || k < 1) throw new Error(`ccf: reservoir size must be an integer >= 1, got ${k}`);
  const total = n1 - 1;
  const plan = ccf.plan(total, { ratio: opts.ratio });
  const numLayers = ccf.base.config.numLayers;
  // Gradients of the document's mean loss: each segment's summed CE is scaled by this.
  const scale = (opts.lossScale ?? 1) / (b * total);

  const ids = tensor(doc.flat(), [b, n1], { dtype: 'int64' }).keep(); // [B, N + 1]
  /** Per segment, per layer [B, s, dim]: detached copies that collect the decoders' gradients. */
  const leaves: Tensor[][] = [];
  /** Per held segment, per layer [B, s, dim]: the encoder outputs, with their graph. */
  const roots = new Map<number, Tensor[]>();
  const reservoir: number[] = [];
  let nllSum = 0;
  let encoderBackwards = 0;
  let droppedAtOnce = 0;

  const probe = (segment: number, phase: CcfProbe['phase']) => {
    if (opts.onProbe) opts.onProbe({ segment, phase, heldGraphs: roots.size, ...memoryStats() });
  };

  /** Backward through segment s's encoder with what its leaves gathered so far; frees its graph. */
  const release = (s: number) => {
    const r = roots.get(s)!;
    roots.delete(s);
    tidy(() => {
      const rs: Tensor[] = [];
      const gs: Tensor[] = [];
      leaves[s].forEach((leaf, n) => {
        const g = leaf.grad;
        if (g !== null) {
          rs.push(r[n]);
          gs.push(g);
        }
      });
      if (rs.length) {
        backward(rs, gs); // one call: the layers' memories share one graph
        encoderBackwards++;
      }
    });
    for (const t of r) t.free(); // the graph goes with the last reference to its outputs
    // Nothing reads this leaf's gradient any more: stop accumulating it.
    for (const leaf of leaves[s]) {
      leaf.zeroGrad();
      leaf.setRequiresGrad(false);
    }
  };

  try {
    for (let t = 0; t < plan.length; t++) {
      const { start, length: n, slots } = plan[t];
      // 1. Decode segment t against the memories of segments < t, backward at once.
      tidy(() => {
        const input = ids.narrow(1, start, n);
        const target = ids.narrow(1, start + 1, n);
        const memory =
          t === 0
            ? undefined
            : ccf.memoryKv(
                Array.from({ length: numLayers }, (_, layer) =>
                  cat(
                    leaves.slice(0, t).map((l) => l[layer]),
                    1,
                  ),
                ),
                0,
              );
        const nll = ccf.decodeLoss(input, target, memory);
        nllSum += nll.item();
        probe(t, 'decode');
        // Segment 0 reads no memory: nothing trainable is in its graph.
        if (nll.requiresGrad) nll.mul(scale).backward();
      });

      // 2. Encode segment t and keep its graph.
      const r = tidy(() => ccf.encode(ids.narrow(1, start, n), slots));
      for (const x of r) x.keep();
      roots.set(t, r);
      // A copy, not a view: the leaf must not pin the encoder's whole [B, n + s, dim] buffer.
      leaves.push(tidy(() => noGrad(() => r.map((x) => x.detach().clone()))).map((x) => x.setRequiresGrad(true).keep()));
      probe(t, 'encode');

      // 3./4. Reservoir sampling of the graphs to keep.
      if (t < k) reservoir.push(t);
      else {
        const j = opts.rng.int(t + 1);
        if (j < k) {
          release(reservoir[j]);
          reservoir[j] = t;
        } else {
          release(t);
          droppedAtOnce++;
        }
      }
    }
    // 5. Flush: the kept segments' leaves now hold every gradient sent to them.
    for (const s of reservoir) release(s);
  } finally {
    for (const r of roots.values()) for (const x of r) x.free();
    for (const ls of leaves) for (const x of ls) x.free();
    ids.free();
  }
  return { loss: nllSum / (b * total), tokens: b * total, segments: plan.length, encoderBackwards, droppedAtOnce };
}

// ---- the procedure as `softpress train` runs it -------------------------------------------------

/** Streaming perplexity of a compressor over documents (no gradients). */
export function ccfStreamPerplexity(ccf: CcfCompressor, docs: Iterable<ArrayLike<number>>, ratio: number): { loss: number; ppl: number; tokens: number } {
  let nll = 0;
  let tokens = 0;
  for (const doc of docs) {
    const stream = ccf.streaming.open({ ratio });
    const ids = Array.from(doc);
    try {
      for (let s = 0; s < ids.length; s += ccf.segmentLen) stream.perplexityOf(ids.slice(s, s + ccf.segmentLen));
      nll += stream.nll;
      tokens += stream.tokens;
    } finally {
      stream.free();
    }
  }
  return { loss: nll / tokens, ppl: Math.exp(nll / tokens), tokens };
}

/**
 * The procedure over a run's data: each micro-batch is `batchSize` documents of docLen + 1 tokens
 * (from inside single documents of the training stream) read side by side at a ratio drawn from
 * the run's, everything random following from (seed, step, micro); validation is the streaming
 * perplexity of `validBatches` validation documents at the first ratio. Freezes the base model.
 * `recipe`: CCF's defaults for what the run does not set.
 */
export function ccfTraining(ccf: CcfCompressor, run: MethodTrainingRun, recipe: { reservoir: number; docSegments: number }): MethodTraining {
  if (!run.trainStream || !run.validStream || run.stages.join() !== 'lm')
    throw new Error('ccf trains with --stage lm (segment-wise language modelling over long documents of --doc-len tokens)');
  if (!run.ratios) throw new Error('ccf trains at ratios (--ratio), not a token budget');
  const ratios = [...run.ratios];
  for (const r of ratios) ccf.slotsForRatio(r); // clear errors before anything runs
  const l = ccf.segmentLen;
  const flagged = run.docLen !== undefined;
  const docLen = run.docLen ?? ccf.defaultDocLen(ratios);
  const reservoir = run.reservoir ?? recipe.reservoir;
  if (!Number.isInteger(docLen) || docLen < 2) throw new Error(`ccf: docLen must be an integer >= 2, got ${docLen}`);
  // The whole document must fit the base's positions at every ratio: the decoder reads the last
  // segment after the memory of all the others.
  for (const r of ratios) {
    const need = ccf.positionsNeeded(docLen, r);
    if (need > ccf.base.config.maxPositions) {
      throw new Error(
        `ccf: a document of ${docLen} tokens at ratio ${r} needs ${need} positions (memory of ${Math.ceil(docLen / l) - 1} segments + one segment of ${l}), beyond the base model's window of ${ccf.base.config.maxPositions}; use a shorter document (--doc-len) or a larger ratio`,
      );
    }
  }
  const segments = Math.ceil(docLen / l);
  const from = flagged ? 'flag' : 'not stated';
  const deviations =
    segments < recipe.docSegments && !flagged
      ? [
          {
            key: 'docSegments (window)',
            paper: 'documents up to 128k tokens',
            ours: String(segments),
            why: `the base's window (${ccf.base.config.maxPositions} positions) holds the memory of at most ${segments - 1} segments plus one at ratio ${Math.min(...ratios)}`,
          },
        ]
      : [];

  ccf.base.freeze();
  const sampler = new DocumentChunkSampler(run.trainStream, docLen, run.seed, run.docSeparator);
  const validSampler = new DocumentChunkSampler(run.validStream, docLen, run.seed, run.docSeparator);
  const { batchSize, gradAccum, seed } = run;
  return {
    params: ccf.trainable('lm'),
    sharded: true,
    microBatch(step, micro, shard) {
      ccf.setTraining(true);
      // Everything random in a document follows from (seed, step, micro): resume is exact.
      const rng = new Rng(`ccf:${seed}:${step}:${micro}`);
      const ratio = ratios[rng.int(ratios.length)]!;
      const first = (step * gradAccum + micro) * batchSize;
      // A shard reads its rows of the batch; all rows count equally many tokens, so its share
      // of the batch's tokens is its share of the rows.
      const [a, b] = shardRange(batchSize, shard);
      const share = ((b - a) * (shard?.count ?? 1)) / batchSize;
      const doc = Array.from({ length: b - a }, (_, r) => Array.from(sampler.chunk(first + a + r)));
      const res = ccfDocumentGradients(ccf, doc, { ratio, reservoir, rng, lossScale: share / gradAccum });
      // The gradients are already in the parameters (backward ran per segment). The trainer
      // gets the loss as a fresh leaf, so its own backward() changes no parameter.
      return { loss: tensor(res.loss, [], { requiresGrad: true }), tokens: res.tokens };
    },
    validate() {
      ccf.setTraining(false);
      const n = Math.min(run.validBatches, validSampler.numChunks);
      const docs = Array.from({ length: n }, (_, i) => validSampler.sequential(i).subarray(0, docLen));
      const { loss, ppl } = ccfStreamPerplexity(ccf, docs, ratios[0]!);
      return { loss, ppl };
    },
    settings: { docLen: { value: docLen, from }, docSegments: { value: segments, from } },
    deviations,
    training: { docLen, segments, reservoir, documents: 'inside single documents' },
    description: `ccf: documents of ${docLen} tokens (${segments} segments of ${l}) from inside single documents; reservoir ${reservoir}`,
  };
}
