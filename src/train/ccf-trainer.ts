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
 * Trainable: the encoder LoRA, the decoder LoRA and pi; the base model is frozen. The defaults
 * are CCF_RECIPE's (compress/ccf.ts): AdamW (0.9, 0.95), weight decay 0.1, lr 1e-4, 1% warm-up
 * then cosine to 0, clip 1.0, reservoir 2, documents of 16 segments (fewer when the base's
 * position window cannot hold their memory), drawn from inside single long documents.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor, backward, cat, crossEntropy, memoryStats, noGrad, tensor, tidy } from '../tensor/index.js';
import { warmupCosine } from '../nn/index.js';
import { ChunkSampler, DocumentChunkSampler } from '../data/lm.js';
import { Rng } from '../data/rng.js';
import { CCF_RECIPE, CcfStream, segmentPlan, type CcfCompressor } from '../compress/ccf.js';
import { saveCompressor } from '../compress/registry.js';
import { train, type TrainSummary, type TrainTask } from './trainer.js';

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
  const plan = segmentPlan(total, ccf.segmentLen, ccf.slotsForRatio(opts.ratio), 'proportional');
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
        const memory = t === 0 ? undefined : ccf.memoryKv(Array.from({ length: numLayers }, (_, layer) => cat(leaves.slice(0, t).map((l) => l[layer]), 1)), 0);
        const logits = ccf.decodeLogits(input, memory);
        const nll = crossEntropy(logits.reshape(b * n, -1), target.reshape(b * n), { reduction: 'sum' });
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

// ---- training runs ---------------------------------------------------------------------------

export interface CcfTrainOptions {
  compressor: CcfCompressor;
  /** Training token stream; each document is a chunk of docLen + 1 tokens. */
  stream: Int32Array;
  /**
   * The id that ends each document of the stream (EOS): training documents are then drawn from
   * inside single documents at least docLen + 1 tokens long. Without it, chunks of the stream.
   */
  docSeparator?: number;
  /** Tokens per document (default: CCF_RECIPE's segments per document, as many as fit the window; defaultCcfDocLen). */
  docLen?: number;
  /** Ratios, one drawn per document (default CCF_RECIPE's, [8]). */
  ratios?: number[];
  /** Encoder graphs kept per document, k (default 2). */
  reservoir?: number;
  /** Optimiser steps. */
  steps: number;
  /** Documents per optimiser step, one after another (default 1: a step per document). */
  gradAccum?: number;
  /** Documents decoded side by side as one batch (default 1). */
  batchSize?: number;
  lr?: number;
  /** Fraction of the steps spent warming up (default 0.01), then cosine to minLr (default 0). */
  warmupFrac?: number;
  minLr?: number;
  weightDecay?: number;
  betas?: [number, number];
  clip?: number;
  seed?: number;
  outDir: string;
  /** Where the trained compressor is saved (default outDir/compressor). */
  saveDir?: string;
  checkpointEvery?: number;
  resume?: boolean;
  stopAfter?: number;
  quiet?: boolean;
  /** Streaming perplexity on held-out documents every evalEvery steps (docSeparator applies too). */
  valid?: { stream: Int32Array; docs: number; ratio?: number };
  evalEvery?: number;
  /** More fields for the saved compressor.json (the run's card: recipe, training settings). */
  card?: Record<string, unknown>;
}

/**
 * Tokens per training document by default: CCF_RECIPE's segments per document (16), fewer when
 * the base's position window cannot hold the memory of all but the last segment plus that
 * segment at the smallest ratio (the largest memory). At least 2 segments.
 */
export function defaultCcfDocLen(ccf: CcfCompressor, ratios: readonly number[]): number {
  const l = ccf.segmentLen;
  const r = Math.min(...ratios);
  let segments = CCF_RECIPE.train.docSegments.value as number;
  while (segments > 2 && ccf.positionsNeeded(segments * l, r) > ccf.base.config.maxPositions) segments--;
  return segments * l;
}

export interface CcfTrainSummary extends TrainSummary {
  /** Where the trained compressor was saved (when the run reached its last step). */
  compressorDir?: string;
}

/** Streaming perplexity of a compressor over documents (no gradients). */
export function ccfStreamPerplexity(ccf: CcfCompressor, docs: Iterable<ArrayLike<number>>, ratio: number): { loss: number; ppl: number; tokens: number } {
  let nll = 0;
  let tokens = 0;
  for (const doc of docs) {
    const stream = new CcfStream(ccf, { ratio });
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
 * Trains a CCF compressor with the procedure above under the shared trainer (schedule,
 * clipping, AdamW, atomic checkpoints with exact resume, JSONL log, progress, loss plot), and
 * saves it to outDir/compressor at the end. Freezes the base model.
 */
export async function trainCcf(o: CcfTrainOptions): Promise<CcfTrainSummary> {
  const ccf = o.compressor;
  const l = ccf.segmentLen;
  const rec = CCF_RECIPE.stages.lm!;
  const ratios = o.ratios ?? (CCF_RECIPE.train.ratios.value as number[]);
  for (const r of ratios) ccf.slotsForRatio(r); // clear errors before anything runs
  const docLen = o.docLen ?? defaultCcfDocLen(ccf, ratios);
  const accum = o.gradAccum ?? 1;
  const batchSize = o.batchSize ?? 1;
  const seed = o.seed ?? 0;
  const reservoir = o.reservoir ?? (CCF_RECIPE.train.reservoir.value as number);
  const lr = o.lr ?? rec.lr.value;
  if (!Number.isInteger(docLen) || docLen < 2) throw new Error(`trainCcf: docLen must be an integer >= 2, got ${docLen}`);
  if (!Number.isInteger(o.steps) || o.steps < 1) throw new Error(`trainCcf: steps must be a positive integer, got ${o.steps}`);
  // The whole document must fit the base's positions at every ratio: the decoder reads the last
  // segment after the memory of all the others.
  for (const r of ratios) {
    const need = ccf.positionsNeeded(docLen, r);
    if (need > ccf.base.config.maxPositions) {
      throw new Error(`trainCcf: a document of ${docLen} tokens at ratio ${r} needs ${need} positions (memory of ${Math.ceil(docLen / l) - 1} segments + one segment of ${l}), beyond the base model's window of ${ccf.base.config.maxPositions}; use a shorter document (--doc-len) or a larger ratio`);
    }
  }

  // The run's settings, checked on resume (a different run must not continue this one).
  mkdirSync(o.outDir, { recursive: true });
  const settings = { method: 'ccf', compressor: ccf.config, baseFingerprint: ccf.base.fingerprint(), docLen, documents: o.docSeparator !== undefined ? 'inside single documents' : 'stream chunks', ratios, reservoir, steps: o.steps, gradAccum: accum, batchSize, lr, warmupFrac: o.warmupFrac ?? rec.warmupFraction.value, minLr: o.minLr ?? lr * rec.minLrFraction.value, weightDecay: o.weightDecay ?? rec.weightDecay.value, betas: o.betas ?? rec.betas.value, clip: o.clip ?? rec.clip.value, seed };
  const settingsPath = join(o.outDir, 'ccf-train.json');
  const settingsText = JSON.stringify(settings, null, 2);
  if (o.resume && existsSync(settingsPath) && readFileSync(settingsPath, 'utf8') !== settingsText) {
    throw new Error(`${o.outDir}: --resume with different settings than the run was started with (${settingsPath})`);
  }
  writeFileSync(settingsPath, settingsText);

  ccf.base.freeze();
  const chunks = (stream: Int32Array) => (o.docSeparator !== undefined ? new DocumentChunkSampler(stream, docLen, seed, o.docSeparator) : new ChunkSampler(stream, docLen, seed));
  const sampler = chunks(o.stream);
  const validSampler = o.valid ? chunks(o.valid.stream) : undefined;
  const params = ccf.trainable('lm');

  const task: TrainTask = {
    params,
    microBatch(step, micro) {
      ccf.setTraining(true);
      // Everything random in a document follows from (seed, step, micro): resume is exact.
      const rng = new Rng(`ccf:${seed}:${step}:${micro}`);
      const ratio = ratios[rng.int(ratios.length)];
      const first = (step * accum + micro) * batchSize;
      const doc = Array.from({ length: batchSize }, (_, r) => Array.from(sampler.chunk(first + r)));
      const res = ccfDocumentGradients(ccf, doc, { ratio, reservoir, rng, lossScale: 1 / accum });
      // The gradients are already in the parameters (backward ran per segment). The trainer
      // gets the loss as a fresh leaf, so its own backward() changes no parameter.
      return { loss: tensor(res.loss, [], { requiresGrad: true }), tokens: res.tokens };
    },
    validate: validSampler
      ? () => {
          ccf.setTraining(false);
          const n = Math.min(o.valid!.docs, validSampler.numChunks);
          const docs = Array.from({ length: n }, (_, i) => validSampler.sequential(i).subarray(0, docLen));
          const { loss, ppl } = ccfStreamPerplexity(ccf, docs, o.valid!.ratio ?? ratios[0]);
          return { loss, ppl };
        }
      : undefined,
  };

  const summary = await train(task, {
    outDir: o.outDir,
    totalSteps: o.steps,
    gradAccum: accum,
    clip: settings.clip,
    schedule: warmupCosine({ peakLr: lr, warmupSteps: Math.ceil(o.steps * settings.warmupFrac), totalSteps: o.steps, minLr: settings.minLr }),
    betas: settings.betas as [number, number],
    weightDecay: settings.weightDecay,
    checkpointEvery: o.checkpointEvery,
    evalEvery: o.evalEvery,
    resume: o.resume,
    stopAfter: o.stopAfter,
    title: `CCF training loss (l=${l}, ratios ${ratios.join('/')}, k=${reservoir})`,
    quiet: o.quiet,
  });
  ccf.setTraining(false);
  let compressorDir: string | undefined;
  if (summary.steps >= o.steps) {
    compressorDir = o.saveDir ?? join(o.outDir, 'compressor');
    saveCompressor(ccf, compressorDir, { steps: summary.steps, docLen, reservoir, ...o.card });
  }
  return { ...summary, compressorDir };
}
