/**
 * Synthetic copy rows for pretraining: random token ids in which spans are repeated later in the
 * row. The repeated tokens (after the first of each repeat) can only be predicted by finding the
 * earlier occurrence and copying what followed it — an induction head, the mechanism behind
 * answering from and restating a context, which natural restate and QA documents did not teach
 * our small base (model card). The loss is taken on the copied tokens only, so the random filler
 * teaches nothing wrong. (In the steps tried so far these rows did not teach it either: the model
 * card has the figures.)
 */
import { Rng } from '../../src/data/rng.js';

export interface CopyRows {
  /** Token ids, [rows, len] row-major. */
  ids: Int32Array;
  /**
   * Flat indices into the [rows, len - 1] next-token targets (row * (len - 1) + position) whose
   * target is a copied token: ids[row, position + 1] equals the token at its span's source.
   */
  copied: Int32Array;
}

export interface CopyRowOptions {
  rows: number;
  /** Tokens per row (at least 16; every row holds at least one repeat, of 4 or more tokens). */
  len: number;
  /** The ids rows are drawn from, uniformly (e.g. the vocabulary without its special tokens). */
  pool: Int32Array;
}

/**
 * Rows of random ids made of blocks: a fresh span of 8–48 tokens, 0–40 fresh tokens, then the span
 * again. The distance between a span and its copy varies, so only matching on content (not a
 * fixed relative position) predicts the copy.
 */
export function makeCopyRows(rng: Rng, o: CopyRowOptions): CopyRows {
  if (!(o.len >= 16 && o.pool.length >= 2)) throw new Error(`copy rows: need len >= 16 and a pool of at least 2 ids, got len ${o.len}, ${o.pool.length} ids`);
  const ids = new Int32Array(o.rows * o.len);
  const copied: number[] = [];
  for (let r = 0; r < o.rows; r++) {
    const row = ids.subarray(r * o.len, (r + 1) * o.len);
    for (let i = 0; i < o.len; i++) row[i] = o.pool[rng.int(o.pool.length)];
    let from = 1 + rng.int(8);
    for (let block = 0; ; block++) {
      let span = 8 + rng.int(41);
      let gap = rng.int(41);
      if (from + 2 * span + gap > o.len) {
        if (block > 0) break;
        // Every row holds at least one repeat, shrunk to fit a short row.
        span = Math.max(1, Math.min(span, Math.floor((o.len - from) / 2)));
        gap = Math.min(gap, o.len - from - 2 * span);
      }
      const to = from + span + gap;
      for (let i = 0; i < span; i++) row[to + i] = row[from + i];
      for (let i = 1; i < span; i++) copied.push(r * (o.len - 1) + to + i - 1);
      from = to + span + rng.int(8);
    }
  }
  return { ids, copied: Int32Array.from(copied) };
}
