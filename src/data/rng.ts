/**
 * Seeded pseudo-random numbers for everything in data generation. Never use Math.random in
 * src/data: every split, passage and planted fact must be reproducible from a seed.
 *
 * The generator is mulberry32 (32-bit state, fast, good enough for sampling; not
 * cryptographic). Seeds may be numbers or strings; both are hashed into the 32-bit state so
 * that nearby seeds (0, 1, 2) give unrelated streams.
 */

/** Murmur3's 32-bit finaliser: spreads every input bit over the whole word. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** 32-bit hash of a string (FNV-1a over UTF-16 units, then fmix32), optionally salted. */
export function hashString(s: string, salt = 0): number {
  let h = (0x811c9dc5 ^ fmix32(salt >>> 0)) >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h ^ s.length);
}

/** Deterministic value in [0, 1) for a string under a seed (e.g. a document id). */
export function hashToUnit(s: string, seed: number | string = 0): number {
  return hashString(s, seedToUint32(seed)) / 4294967296;
}

/** Any number (including negatives, fractions, values beyond 2^32) or string to 32 bits. */
export function seedToUint32(seed: number | string): number {
  if (typeof seed === 'string') return hashString(seed, 0x5eed);
  if (!Number.isFinite(seed)) throw new RangeError(`seed must be a finite number, got ${seed}`);
  // Fold the high bits in so that seeds differing only above bit 32 still differ.
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 4294967296) >>> 0;
  return fmix32(lo ^ Math.imul(hi, 0x9e3779b1) ^ 0x6a09e667);
}

/** mulberry32 as a bare function returning floats in [0, 1) (the one generation uses too). */
export { mulberry32 } from '../models/generate.js';

/** The first index whose cumulative weight exceeds x (x in [0, total)): weighted sampling. */
export function indexOfCumulative(cum: readonly number[], x: number): number {
  let lo = 0;
  let hi = cum.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cum[mid]! > x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

export class Rng {
  private state: number;

  constructor(seed: number | string = 0) {
    this.state = seedToUint32(seed);
  }

  /** Next unsigned 32-bit integer. */
  nextUint32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform float in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0) throw new RangeError(`Rng.int: n must be a positive integer, got ${n}`);
    return Math.floor(this.next() * n);
  }

  /** Uniform integer in [lo, hi] (both inclusive). */
  intBetween(lo: number, hi: number): number {
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || hi < lo) {
      throw new RangeError(`Rng.intBetween: need integers lo <= hi, got ${lo}, ${hi}`);
    }
    return lo + this.int(hi - lo + 1);
  }

  /** Uniform float in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One element, uniformly. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('Rng.pick: empty array');
    return items[this.int(items.length)] as T;
  }

  /** Fisher-Yates shuffle in place; returns the same array. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = items[i] as T;
      items[i] = items[j] as T;
      items[j] = tmp;
    }
    return items;
  }

  /** k distinct elements (k clipped to the array length), in random order. */
  sample<T>(items: readonly T[], k: number): T[] {
    return this.shuffle(items.slice()).slice(0, Math.max(0, Math.min(k, items.length)));
  }

  /**
   * An independent child stream named by a label, without advancing this one; lets e.g.
   * example i be generated the same way whatever was drawn for example i-1.
   */
  fork(label: string | number): Rng {
    const child = new Rng(0);
    child.state = hashString(String(label), this.state);
    return child;
  }
}
