/**
 * Answer-pointer supervision: teaches one attention head to look, when the model is about to
 * write an answer, at where that answer stands in the context.
 *
 * Our small base does not learn retrieval from its context by next-token loss alone, not even
 * from documents with several planted facts each (model card, "Session 5"): the answer loss falls
 * only as far as priors take it. Retrieval needs a head whose query at "Answer:" matches the
 * question's key against the context, and the gradient reaching that head through the answer's
 * logit is weak until the head already attends roughly right. Supervising its attention pattern
 * directly gives its query and key projections (and the earlier layers that feed them) a signal
 * from the first step; the language-modelling loss then teaches its values to carry the token.
 *
 * Targets: for each answer in a training row (the tokens after "\nAnswer:" up to the line's end,
 * as answerTargets finds them), every earlier place in the row where the same token sequence
 * occurs. The query that predicts the answer's k-th token should attend to the k-th token of such
 * an occurrence (any of them: copying any gives the right token). Answers that do not occur
 * earlier in the row (yes/no, counts, a story cut off by packing) are not supervised.
 */
import { cat, crossEntropy, linear, tensor, type Tensor } from '../../src/tensor/index.js';
import type { LlamaModel } from '../../src/models/llama.js';

/**
 * In token rows of packed training text, the next-token targets that are answers of QA documents:
 * every token after the `marker` ids (the encoding of "\nAnswer:") up to and including the first
 * `stop` id (newline or EOS), so that the answer and where it ends can be weighted in the loss.
 * `ids` holds `rows` rows of `stride` ids whose first `len` + 1 are inputs and targets; returned
 * are flat target indices (row * len + position, the target being ids[row, position + 1]).
 */
export function answerTargets(ids: Int32Array, rows: number, len: number, stride: number, marker: ArrayLike<number>, stop: ReadonlySet<number>): Int32Array {
  if (marker.length === 0) throw new Error('answerTargets: empty marker');
  if (!(stride >= len + 1 && ids.length >= rows * stride))
    throw new Error(`answerTargets: ${ids.length} ids cannot hold ${rows} rows of stride ${stride} with ${len} + 1 ids`);
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    const row = ids.subarray(r * stride, r * stride + len + 1);
    for (let p = marker.length - 1; p < len; p++) {
      let hit = true;
      for (let k = 0; k < marker.length && hit; k++) hit = row[p - marker.length + 1 + k] === marker[k];
      if (!hit) continue;
      // p is the marker's last id: targets p+1, p+2, ... until a stop id (included).
      for (let q = p; q < len; q++) {
        out.push(r * len + q);
        if (stop.has(row[q + 1])) break;
      }
    }
  }
  return Int32Array.from(out);
}

export interface AnswerPointer {
  /** Layer of the supervised head (a late one: its query and key need the earlier layers' work). */
  layer: number;
  /** Query head index. */
  head: number;
  /** Weight of the pointer loss next to the language-modelling loss. */
  weight: number;
  /**
   * Weight of a second loss (default 0): the head's own output, read through the output
   * embedding, should predict the answer token it points at — its values and output projection
   * learn to copy, which the answer's loss alone teaches slowly (the head points right long
   * before the model writes what it points at). Logged as `pointer_copy_loss`.
   */
  copyWeight?: number;
  /**
   * Which attention the copy loss mixes the values with (default "head"): the head's own, or the
   * pointer's targets ("targets", each query's target keys weighted equally). With "targets" the
   * values and output projection learn to copy before the head points right: a head that puts a
   * third of its attention on the source sees a blurred, weak copy signal, and our base's restate
   * head learnt no copying from it in 1,400 steps (its output, given exact attention, still cost
   * 4.96 nats per token; `experiments/probes/ov-ceiling.mjs` fits the same projections down to 1.4).
   */
  copyAttention?: 'head' | 'targets';
}

/** Validates a pointer config against a model shape; throws with the offending field. */
export function checkAnswerPointer(p: AnswerPointer, numLayers: number, numHeads: number, where: string, name = 'answerPointer'): void {
  const int = (v: unknown, lo: number, hi: number) => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  if (!int(p.layer, 0, numLayers - 1)) throw new Error(`${where}: ${name}.layer must be an integer in [0, ${numLayers - 1}], got ${JSON.stringify(p.layer)}`);
  if (!int(p.head, 0, numHeads - 1)) throw new Error(`${where}: ${name}.head must be an integer in [0, ${numHeads - 1}], got ${JSON.stringify(p.head)}`);
  if (!(typeof p.weight === 'number' && p.weight >= 0)) throw new Error(`${where}: ${name}.weight must be a number >= 0, got ${JSON.stringify(p.weight)}`);
  if (p.copyWeight !== undefined && !(typeof p.copyWeight === 'number' && p.copyWeight >= 0))
    throw new Error(`${where}: ${name}.copyWeight must be a number >= 0, got ${JSON.stringify(p.copyWeight)}`);
  if (p.copyAttention !== undefined && p.copyAttention !== 'head' && p.copyAttention !== 'targets')
    throw new Error(`${where}: ${name}.copyAttention must be "head" or "targets", got ${JSON.stringify(p.copyAttention)}`);
}

export interface PointerTargets {
  /** Flat query positions (row * len + i), each predicting an answer token found earlier in its row. */
  queries: Int32Array;
  /** [queries.length, len]: 1 on the keys the query should attend to, else 0. */
  targets: Float32Array;
}

/**
 * Where each answer-writing query should look. `ids` holds `rows` rows of `stride` ids whose
 * first `len` + 1 are inputs and targets; `marker` is the encoding of "\nAnswer:" and `stops` the
 * ids that end an answer (newline, EOS).
 */
export function answerPointerTargets(
  ids: Int32Array,
  rows: number,
  len: number,
  stride: number,
  marker: ArrayLike<number>,
  stops: ReadonlySet<number>,
): PointerTargets {
  const at = answerTargets(ids, rows, len, stride, marker, stops);
  const queries: number[] = [];
  const keys: number[][] = [];
  // Group the flat target positions into answers: runs of consecutive positions in one row.
  for (let a = 0; a < at.length;) {
    let b = a + 1;
    while (b < at.length && at[b] === (at[b - 1] as number) + 1 && Math.floor((at[b] as number) / len) === Math.floor((at[a] as number) / len)) b++;
    const r = Math.floor((at[a] as number) / len);
    const q0 = (at[a] as number) - r * len;
    const row = ids.subarray(r * stride, r * stride + len + 1);
    // The answer's tokens are the targets row[q + 1]; the stop id that ends it is not copied.
    let m = b - a;
    if (m > 0 && stops.has(row[q0 + m] as number)) m--;
    if (m > 0) {
      const starts: number[] = [];
      // Occurrences wholly before the query that predicts the first answer token.
      for (let s = 0; s + m <= q0; s++) {
        let k = 0;
        while (k < m && row[s + k] === row[q0 + 1 + k]) k++;
        if (k === m) starts.push(s);
      }
      if (starts.length > 0) {
        for (let k = 0; k < m; k++) {
          queries.push(r * len + q0 + k);
          keys.push(starts.map((s) => s + k));
        }
      }
    }
    a = b;
  }
  const targets = new Float32Array(queries.length * len);
  keys.forEach((ks, i) => ks.forEach((k) => (targets[i * len + k] = 1)));
  return { queries: Int32Array.from(queries), targets };
}

/**
 * Mean -log of the supervised head's total attention on its targets, from a forward pass's
 * attentions ([B, heads, T, T] per layer) over `rows` rows of input ids; undefined when no answer
 * in the batch occurs in its context.
 */
export function answerPointerLoss(attentions: Tensor[], t: PointerTargets, rows: number, len: number, p: AnswerPointer): Tensor | undefined {
  if (t.queries.length === 0) return undefined;
  const probs = attentions[p.layer]!.select(1, p.head).reshape(rows * len, len);
  const picked = probs.indexSelect(0, tensor(t.queries, [t.queries.length]).to('int64'));
  const onTargets = picked.mul(tensor(t.targets, [t.queries.length, len]).to(picked.dtype)).sum(-1);
  return onTargets.add(1e-6).log().mean().neg();
}

/**
 * Cross-entropy of the supervised head's direct logits at the pointer queries against the
 * answer tokens they predict: its output alone (attention-weighted values of its kv head
 * through its slice of the output projection, [Q, dim]) times the output embedding. Needs the
 * layer's normalised attention input ([B, T, dim], forward's outputAttnInputs).
 */
export function answerCopyLoss(
  model: LlamaModel,
  attnInput: Tensor,
  attentions: Tensor[],
  t: PointerTargets,
  ids: Int32Array,
  rows: number,
  len: number,
  stride: number,
  p: AnswerPointer,
): Tensor | undefined {
  if (t.queries.length === 0) return undefined;
  const { numHeads: h, numKvHeads: kv, headDim: hd, hiddenSize: d } = model.config;
  const attn = model.layers[p.layer]!.selfAttn;
  const kvHead = Math.floor(p.head / (h / kv));
  // Values of the head's kv group, [B, T, hd]; each query mixes its own row's.
  const wv = attn.vProj.weight.value.narrow(0, kvHead * hd, hd); // [hd, dim]
  const values = linear(attnInput, wv, attn.vProj.bias?.value.narrow(0, kvHead * hd, hd)); // [B, T, hd]
  const q = tensor(t.queries, [t.queries.length]).to('int64');
  const mixed =
    p.copyAttention === 'targets'
      ? targetMix(values, t, len)
      : attentions[p.layer]!.select(1, p.head)
          .matmul(values)
          .reshape(rows * len, hd)
          .indexSelect(0, q); // [Q, hd]
  const wo = attn.oProj.weight.value.narrow(1, p.head * hd, hd); // [dim, hd]
  const out = linear(mixed, wo); // [Q, dim]
  if (out.size(1) !== d) throw new Error(`answerCopyLoss: head output has ${out.size(1)} features, expected ${d}`);
  const targets = tensor(
    Int32Array.from(t.queries, (x) => ids[Math.floor(x / len) * stride + (x % len) + 1] as number),
    [t.queries.length],
  ).to('int64');
  return crossEntropy(model.head(out), targets);
}

/**
 * The supervised queries' values as the pointer's targets mix them, [Q, hd]: each query's
 * target keys weighted equally. Queries come in row order, so each row's block of the targets
 * ([Q_r, len]) multiplies that row's values ([len, hd]) once.
 */
function targetMix(values: Tensor, t: PointerTargets, len: number): Tensor {
  const q = t.queries.length;
  const targets = tensor(t.targets, [q, len]).to(values.dtype);
  const w = targets.div(targets.sum(-1, true)); // every query has at least one target
  const blocks: Tensor[] = [];
  for (let a = 0; a < q;) {
    const r = Math.floor((t.queries[a] as number) / len);
    let b = a + 1;
    while (b < q && Math.floor((t.queries[b] as number) / len) === r) b++;
    blocks.push(w.narrow(0, a, b - a).matmul(values.select(0, r)));
    a = b;
  }
  return blocks.length === 1 ? blocks[0]! : cat(blocks, 0);
}

/**
 * Where each restating query should look, in restate documents ("<BOS>passage<|restate|>passage
 * <EOS>"): the query that predicts the k-th restated token (at the marker's position + k) should
 * attend to the k-th token of the passage, its source. Positional, not by content: a passage
 * repeats words, and copying the aligned occurrence is what restating in order means. Passages
 * whose start (the BOS before the marker) is not in the row are skipped, and so is any query
 * whose target token differs from its source token (never, when both copies tokenise alike).
 */
export function restatePointerTargets(ids: Int32Array, rows: number, len: number, stride: number, restateId: number, bos: number): PointerTargets {
  const queries: number[] = [];
  const keys: number[] = [];
  for (let r = 0; r < rows; r++) {
    const row = ids.subarray(r * stride, r * stride + len + 1);
    for (let m = 1; m < len; m++) {
      if (row[m] !== restateId) continue;
      let s = m;
      while (s > 0 && row[s - 1] !== bos) s--;
      if (s === 0) continue; // the passage began in an earlier row
      const n = m - s;
      for (let k = 0; k < n && m + k < len; k++) {
        if (row[m + 1 + k] !== row[s + k]) continue;
        queries.push(r * len + m + k);
        keys.push(s + k);
      }
    }
  }
  const targets = new Float32Array(queries.length * len);
  keys.forEach((k, i) => (targets[i * len + k] = 1));
  return { queries: Int32Array.from(queries), targets };
}
