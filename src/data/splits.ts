/**
 * Deterministic document-level train / valid / test splits. A document's split depends only on
 * (seed, its id) through a hash, so adding documents to a corpus does not move the others;
 * afterwards each source (corpus) is repaired so that every split holds at least one of its
 * documents whenever it has three or more.
 */
import { hashToUnit } from './rng.js';

export const SPLIT_NAMES = ['train', 'valid', 'test'] as const;
export type SplitName = (typeof SPLIT_NAMES)[number];

export interface SplitFractions {
  train: number;
  valid: number;
  test: number;
}

export const DEFAULT_FRACTIONS: Readonly<SplitFractions> = Object.freeze({ train: 0.9, valid: 0.05, test: 0.05 });

export interface SplitOptions {
  seed?: number | string;
  fractions?: Partial<SplitFractions>;
}

export interface Splits<T> {
  train: T[];
  valid: T[];
  test: T[];
}

function checkFractions(f: Partial<SplitFractions> | undefined): SplitFractions {
  const out = { ...DEFAULT_FRACTIONS, ...f };
  for (const name of SPLIT_NAMES) {
    const v = out[name];
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`split fraction ${name} must be >= 0, got ${v}`);
  }
  const sum = out.train + out.valid + out.test;
  if (Math.abs(sum - 1) > 1e-6) {
    throw new RangeError(`split fractions must sum to 1, got ${out.train} + ${out.valid} + ${out.test} = ${sum}`);
  }
  return out;
}

/** The document's position in [0,1) under the seed; the split is read off this number. */
export function splitKey(id: string, seed: number | string = 0): number {
  return hashToUnit(id, `split:${String(seed)}`);
}

/** The split of one document id by its hash alone (no per-corpus repair). */
export function assignSplit(id: string, opts: SplitOptions = {}): SplitName {
  const f = checkFractions(opts.fractions);
  const u = splitKey(id, opts.seed ?? 0);
  if (u < f.train) return 'train';
  if (u < f.train + f.valid) return 'valid';
  return 'test';
}

/**
 * Splits documents by `source`, keeping input order within each split. With three or more
 * documents in a source, every split with a positive fraction gets at least one of them (the
 * document whose hash lies nearest that split's interval is moved, taken from the largest
 * split). Sources with fewer documents keep their hash assignment.
 */
export function splitDocuments<T extends { readonly id: string; readonly source: string }>(
  docs: readonly T[],
  opts: SplitOptions = {},
): Splits<T> {
  const f = checkFractions(opts.fractions);
  const seed = opts.seed ?? 0;
  const seen = new Set<string>();
  for (const d of docs) {
    if (seen.has(d.id)) throw new Error(`splitDocuments: duplicate document id "${d.id}"`);
    seen.add(d.id);
  }
  const bounds: Record<SplitName, [number, number]> = {
    train: [0, f.train],
    valid: [f.train, f.train + f.valid],
    test: [f.train + f.valid, 1],
  };
  const assignment = new Map<string, SplitName>();
  const bySource = new Map<string, { id: string; u: number }[]>();
  for (const d of docs) {
    const u = splitKey(d.id, seed);
    const list = bySource.get(d.source) ?? [];
    list.push({ id: d.id, u });
    bySource.set(d.source, list);
    assignment.set(d.id, u < bounds.train[1] ? 'train' : u < bounds.valid[1] ? 'valid' : 'test');
  }
  const wanted = SPLIT_NAMES.filter((s) => f[s] > 0);
  for (const list of bySource.values()) {
    if (list.length < wanted.length) continue;
    for (const target of wanted) {
      const members = (s: SplitName) => list.filter((x) => assignment.get(x.id) === s);
      if (members(target).length > 0) continue;
      // Donor: the largest other split, so that the repair never empties another split.
      const donor = wanted
        .filter((s) => s !== target)
        .reduce((a, b) => (members(b).length > members(a).length ? b : a));
      const [lo, hi] = bounds[target];
      const dist = (u: number) => (u < lo ? lo - u : u >= hi ? u - hi : 0);
      const moved = members(donor).reduce((a, b) => (dist(b.u) < dist(a.u) || (dist(b.u) === dist(a.u) && b.id < a.id) ? b : a));
      assignment.set(moved.id, target);
    }
  }
  const out: Splits<T> = { train: [], valid: [], test: [] };
  for (const d of docs) out[assignment.get(d.id) as SplitName].push(d);
  return out;
}

/** One split of the documents (see splitDocuments). */
export function selectSplit<T extends { readonly id: string; readonly source: string }>(
  docs: readonly T[],
  split: SplitName,
  opts: SplitOptions = {},
): T[] {
  return splitDocuments(docs, opts)[split];
}

export function isSplitName(s: string): s is SplitName {
  return (SPLIT_NAMES as readonly string[]).includes(s);
}
