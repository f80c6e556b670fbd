/**
 * Shards of a batch for data-parallel training: rank `index` of `count` takes a contiguous run
 * of the batch's rows, so that the ranks together take every row of the batch exactly once.
 */

/** This process's part of every batch: rank `index` of `count` ranks. */
export interface Shard {
  index: number;
  count: number;
}

/** Rows [start, end) of a batch of n rows that shard takes (all of them without a shard). */
export function shardRange(n: number, shard?: Shard): [number, number] {
  if (!shard || shard.count === 1) return [0, n];
  const { index, count } = shard;
  if (!(Number.isInteger(count) && count >= 1 && Number.isInteger(index) && index >= 0 && index < count)) throw new Error(`shard ${index} of ${count}: index must be an integer in [0, count)`);
  if (n < count) throw new Error(`a batch of ${n} rows cannot be shared by ${count} ranks (each needs a row at least): use a batch of ${count} or more`);
  return [Math.floor((index * n) / count), Math.floor(((index + 1) * n) / count)];
}
