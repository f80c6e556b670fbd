/**
 * Attention supervision that builds an induction head — the circuit that copies from context
 * ("... A B ... A" -> "B") and that a model needs to answer from, or restate, a passage.
 *
 * Our 6-layer base did not grow one from text, restate documents or synthetic copy rows within
 * our compute (model card). Induction needs two heads that are useless without each other: a
 * previous-token head (layer p attends to position i - 1, writing "my predecessor was A" into the
 * residual) and an induction head (layer q > p attends to the position after an earlier
 * occurrence of the current token, where that note says "A"). Gradient descent finds the pair
 * only after a long plateau. Supervising the two attention patterns directly breaks the
 * deadlock: the previous-token pattern forms within tens of steps and the induction pattern within
 * a few hundred; the copy loss then teaches the induction head's values to carry the token on.
 * Everything else in the model stays free. (On our base this gave copying of random-id spans, but
 * little of it carried over to restating text or to QA: model card, "Session 4".)
 */
import { crossEntropy, tensor, type Tensor } from '../../src/tensor/index.js';
import type { LlamaModel } from '../../src/models/llama.js';
import type { CopyRows } from './copy-task.js';

export interface InductionSupervision {
  /** Layer whose head `head` is taught to attend to the previous token. */
  prevLayer: number;
  /** Later layer whose head `head` is taught the induction pattern. */
  inductionLayer: number;
  /** Which query head (same index in both layers). */
  head: number;
  /** Weight of the two attention losses next to the language-modelling loss. */
  weight: number;
  /**
   * Up to how many tokens of the query's suffix an earlier occurrence must share to be a target
   * (default 1: every earlier occurrence of the current token). With more, only the occurrences
   * sharing the longest suffix are targets: in text, where a token like " the" recurs everywhere,
   * that is the occurrence a restatement is copying from.
   */
  match?: number;
  /**
   * Queries whose longest shared suffix is shorter than this are not supervised (default 1: all
   * are). In text a one-token match rarely predicts the next token; supervising only long matches
   * teaches a head whose output is worth trusting where it fires.
   */
  minMatch?: number;
}

/** Validates a supervision config against a model shape; throws with the offending field. */
export function checkInductionSupervision(s: InductionSupervision, numLayers: number, numHeads: number, where: string): void {
  const int = (v: unknown, lo: number, hi: number) => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  if (!int(s.prevLayer, 0, numLayers - 2))
    throw new Error(`${where}: inductionSupervision.prevLayer must be an integer in [0, ${numLayers - 2}], got ${JSON.stringify(s.prevLayer)}`);
  if (!int(s.inductionLayer, s.prevLayer + 1, numLayers - 1))
    throw new Error(
      `${where}: inductionSupervision.inductionLayer must be an integer in [prevLayer + 1, ${numLayers - 1}], got ${JSON.stringify(s.inductionLayer)}`,
    );
  if (!int(s.head, 0, numHeads - 1))
    throw new Error(`${where}: inductionSupervision.head must be an integer in [0, ${numHeads - 1}], got ${JSON.stringify(s.head)}`);
  if (s.match !== undefined && !int(s.match, 1, 64))
    throw new Error(`${where}: inductionSupervision.match must be an integer in [1, 64], got ${JSON.stringify(s.match)}`);
  if (s.minMatch !== undefined && !int(s.minMatch, 1, s.match ?? 1))
    throw new Error(`${where}: inductionSupervision.minMatch must be an integer in [1, match], got ${JSON.stringify(s.minMatch)}`);
  if (!(typeof s.weight === 'number' && s.weight >= 0))
    throw new Error(`${where}: inductionSupervision.weight must be a number >= 0, got ${JSON.stringify(s.weight)}`);
}

export interface InductionTargets {
  /** [rows, len, len]: 1 at (i, j + 1) for the targeted j < i with ids[j] = ids[i], else 0. */
  targets: Float32Array;
  /** Flat query positions (row * len + i) that have at least one target. */
  queries: Int32Array;
}

/**
 * Where an induction head at query position i should look: just after each earlier occurrence of
 * token ids[i] (with match > 1: only after those sharing the longest suffix with position i, up to
 * `match` tokens; queries whose longest is below `minMatch` get none). `ids` holds `rows` rows of
 * `stride` ids of which the first `len` are the inputs.
 */
export function inductionTargets(ids: Int32Array, rows: number, len: number, stride = len, match = 1, minMatch = 1): InductionTargets {
  if (!(len >= 2 && stride >= len && ids.length >= rows * stride))
    throw new Error(`inductionTargets: ${ids.length} ids cannot hold ${rows} rows of stride ${stride} with ${len} inputs`);
  const targets = new Float32Array(rows * len * len);
  const queries: number[] = [];
  for (let r = 0; r < rows; r++) {
    const row = ids.subarray(r * stride, r * stride + len);
    // Earlier positions of each id, grown as the query moves right.
    const seen = new Map<number, number[]>();
    for (let i = 0; i < len; i++) {
      const before = seen.get(row[i]);
      if (before) {
        const base = (r * len + i) * len;
        let best = 0;
        let chosen: number[] = [];
        for (const j of before) {
          let m = 1;
          while (m < match && j - m >= 0 && row[j - m] === row[i - m]) m++;
          if (m > best) {
            best = m;
            chosen = [j];
          } else if (m === best) chosen.push(j);
        }
        if (best >= minMatch) {
          for (const j of chosen) targets[base + j + 1] = 1;
          queries.push(r * len + i);
        }
        before.push(i);
      } else seen.set(row[i], [i]);
    }
  }
  return { targets, queries: Int32Array.from(queries) };
}

/**
 * The supervision loss from a forward pass's attentions ([B, heads, T, T] per layer) over input
 * ids [B, T] (given as rows of `stride`): mean -log of the previous-token head's weight on i - 1,
 * plus mean -log of the induction head's total weight on its targets (queries without an earlier
 * occurrence, or without a long enough match, are skipped). Returns both terms (scalars) so they can be logged.
 */
export function inductionSupervisionLoss(
  attentions: Tensor[],
  ids: Int32Array,
  rows: number,
  len: number,
  stride: number,
  s: InductionSupervision,
): { prev: Tensor; induction: Tensor } {
  const prevProbs = attentions[s.prevLayer].select(1, s.head); // [B, T, T]
  // Weight on the key one to the left of each query: the first sub-diagonal, (i, i - 1) for
  // i >= 1, at flat offsets i * (T + 1) - 1 of each [T, T] map.
  const sub = tensor(
    Array.from({ length: len - 1 }, (_, k) => (k + 1) * (len + 1) - 1),
    [len - 1],
  ).to('int64');
  const prev = prevProbs
    .reshape(rows, len * len)
    .indexSelect(1, sub)
    .add(1e-6)
    .log()
    .mean()
    .neg();
  const { targets, queries } = inductionTargets(ids, rows, len, stride, s.match ?? 1, s.minMatch ?? 1);
  const indProbs = attentions[s.inductionLayer].select(1, s.head);
  if (queries.length === 0) return { prev, induction: prev.mul(0) };
  const onTargets = indProbs
    .mul(tensor(targets, [rows, len, len]).to(indProbs.dtype))
    .sum(-1)
    .reshape(rows * len);
  const induction = onTargets
    .indexSelect(0, tensor(queries, [queries.length]).to('int64'))
    .add(1e-6)
    .log()
    .mean()
    .neg();
  return { prev, induction };
}

/**
 * Mean loss of `model` on the copied tokens of synthetic copy rows (`n` rows of len + 1 ids, from
 * makeCopyRows): how well it copies from its context (chance: ln of the id pool's size).
 */
export function copyRowsLoss(model: LlamaModel, rows: CopyRows, n: number, len: number): Tensor {
  const x = tensor(rows.ids, [n, len + 1]).to('int64');
  const { logits } = model.forward({ ids: x.narrow(1, 0, len) });
  const at = tensor(rows.copied, [rows.copied.length]).to('int64');
  return crossEntropy(
    logits!.reshape(n * len, -1).indexSelect(0, at),
    x
      .narrow(1, 1, len)
      .reshape(n * len)
      .indexSelect(0, at),
  );
}
