/**
 * Seeded mutations for the fuzzer: a small deterministic RNG, byte-level mutations of a file
 * (bit flips, interesting integers written over length fields, truncations, duplicated or
 * deleted chunks) and JSON-level mutations of a parsed document (values replaced by other
 * types, huge or negative numbers, deleted keys, hostile strings).
 */

/** Mulberry32: a 32-bit seeded generator (deterministic across platforms). */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** A case's seed from the run seed, the target name and the case index (FNV-1a). */
export function caseSeed(seed: number, target: string, index: number): number {
  let h = 0x811c9dc5 ^ seed;
  for (const c of `${target}#${index}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193);
  return h >>> 0;
}

/** Integers that break length and count fields: zero, one, powers of two and their neighbours, all ones. */
export const INTERESTING = [
  0,
  1,
  2,
  3,
  7,
  8,
  16,
  31,
  32,
  64,
  127,
  128,
  255,
  256,
  1023,
  4096,
  65535,
  65536,
  2 ** 24,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 40,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 63,
  2 ** 64 - 1,
];

/** Writes v little-endian in `width` bytes at `at` (clamped to the buffer). */
export function writeUint(buf: Uint8Array, at: number, v: number | bigint, width: 1 | 2 | 4 | 8): void {
  let x = BigInt.asUintN(64, BigInt(v));
  for (let i = 0; i < width && at + i < buf.length; i++) {
    buf[at + i] = Number(x & 0xffn);
    x >>= 8n;
  }
}

/** One byte-level mutation of `b` (a new array). `fields` are offsets of length/count fields (with their widths) to aim at. */
export function mutateBytes(b: Uint8Array, rng: Rng, fields: readonly { at: number; width: 1 | 2 | 4 | 8 }[] = []): Uint8Array {
  const out = new Uint8Array(b);
  const n = out.length;
  switch (rng.int(fields.length ? 9 : 8)) {
    case 0: {
      // bit flips
      const k = 1 + rng.int(8);
      for (let i = 0; i < k && n; i++) out[rng.int(n)] ^= 1 << rng.int(8);
      return out;
    }
    case 1: {
      // bytes set to boundary values
      const k = 1 + rng.int(4);
      for (let i = 0; i < k && n; i++) out[rng.int(n)] = rng.pick([0, 1, 0x7f, 0x80, 0xff, 0x20, 0x22, 0x5c, 0x7b, 0x5d]);
      return out;
    }
    case 2: {
      // an interesting integer over any position
      if (n) writeUint(out, rng.int(n), rng.pick(INTERESTING) + (rng.chance(0.3) ? rng.int(3) - 1 : 0), rng.pick([1, 2, 4, 8] as const));
      return out;
    }
    case 3:
      // truncation
      return out.slice(0, rng.int(n + 1));
    case 4: {
      // random bytes appended
      const extra = new Uint8Array(1 + rng.int(64)).map(() => rng.int(256));
      const grown = new Uint8Array(n + extra.length);
      grown.set(out);
      grown.set(extra, n);
      return grown;
    }
    case 5: {
      // a chunk deleted
      if (n < 2) return out;
      const at = rng.int(n);
      const len = 1 + rng.int(Math.min(256, n - at));
      const shrunk = new Uint8Array(n - len);
      shrunk.set(out.subarray(0, at));
      shrunk.set(out.subarray(at + len), at);
      return shrunk;
    }
    case 6: {
      // a chunk duplicated in place
      if (n < 2) return out;
      const at = rng.int(n);
      const len = 1 + rng.int(Math.min(256, n - at));
      const chunk = out.subarray(at, at + len);
      const grown = new Uint8Array(n + len);
      grown.set(out.subarray(0, at + len));
      grown.set(chunk, at + len);
      grown.set(out.subarray(at + len), at + 2 * len);
      return grown;
    }
    case 7: {
      // two chunks swapped (overlapping data, reordered records)
      if (n < 4) return out;
      const len = 1 + rng.int(Math.min(64, n >> 1));
      const a = rng.int(n - len);
      const c = rng.int(n - len);
      const tmp = out.slice(a, a + len);
      out.copyWithin(a, c, c + len);
      out.set(tmp, c);
      return out;
    }
    default: {
      // a length or count field inflated, zeroed or set off by one
      const f = rng.pick(fields);
      const v = rng.chance(0.7) ? rng.pick(INTERESTING) : rng.int(1 << 16);
      writeUint(out, f.at, v, f.width);
      return out;
    }
  }
}

/** Strings that break text handling: empty, huge, control characters, lone surrogates, NUL, traversal-like. */
export const HOSTILE_STRINGS = [
  '',
  ' ',
  '\u0000',
  'a\u0000b',
  '\ud800',
  '\udfff x',
  '../../../etc/passwd',
  '..\\..\\x',
  '%00',
  '\u202e',
  '\ufeff',
  '{"a":1}',
  '<|bos|>',
  '😀'.repeat(50),
  'x'.repeat(70_000),
  '\n'.repeat(2000),
  ' '.repeat(5000) + 'y',
  'constructor',
  '__proto__',
  'toString',
  '1e309',
];

/** Numbers that break numeric fields. */
export const HOSTILE_NUMBERS = [0, -1, 1, 0.5, -0, 1e308, -1e308, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 1e-320, 3.7, 65536, 1_000_000_000];

/** A random JSON value of any type (used to replace a value). */
export function hostileValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 4 : 7)) {
    case 0:
      return rng.pick(HOSTILE_NUMBERS);
    case 1:
      return rng.pick(HOSTILE_STRINGS);
    case 2:
      return rng.pick([null, true, false]);
    case 3:
      return rng.pick([{}, [], [[]], { '': null }]);
    case 4:
      return Array.from({ length: rng.int(4) }, () => hostileValue(rng, depth + 1));
    case 5:
      return Object.fromEntries(
        Array.from({ length: rng.int(3) }, (_, i) => [rng.pick(['id', 'type', 'content', String(i), '__proto__']), hostileValue(rng, depth + 1)]),
      );
    default: {
      // deep nesting
      let v: unknown = 1;
      for (let i = rng.int(300); i > 0; i--) v = [v];
      return v;
    }
  }
}

type Json = unknown;

/** Paths to every value of a JSON document ([] is the root), at most `limit` of them (a reservoir sample). */
function paths(doc: Json, rng: Rng, limit = 2000): (string | number)[][] {
  const out: (string | number)[][] = [];
  let seen = 0;
  const walk = (v: Json, p: (string | number)[]) => {
    seen++;
    if (out.length < limit) out.push(p);
    else {
      const j = rng.int(seen);
      if (j < limit) out[j] = p;
    }
    if (Array.isArray(v)) {
      // long arrays (a vocabulary's merges): a sample of their elements
      const step = Math.max(1, Math.floor(v.length / 50));
      for (let i = rng.int(step); i < v.length; i += step) walk(v[i], [...p, i]);
    } else if (v !== null && typeof v === 'object') {
      const keys = Object.keys(v);
      const step = Math.max(1, Math.floor(keys.length / 50));
      for (let i = rng.int(step); i < keys.length; i += step) walk((v as Record<string, Json>)[keys[i]], [...p, keys[i]]);
    }
  };
  walk(doc, []);
  return out;
}

function getAt(doc: Json, p: (string | number)[]): Json {
  let v = doc;
  for (const k of p) v = (v as Record<string | number, Json>)[k];
  return v;
}

/** One JSON-level mutation of a (deep-copied) document; returns the new document. */
export function mutateJson(doc: Json, rng: Rng): Json {
  let copy: Json;
  try {
    copy = structuredClone(doc);
  } catch {
    return doc; // nested too deep to copy: left as it is
  }
  const all = paths(copy, rng);
  const p = rng.pick(all);
  if (p.length === 0) return rng.chance(0.5) ? hostileValue(rng) : copy;
  const parent = getAt(copy, p.slice(0, -1)) as Record<string | number, Json>;
  const k = p[p.length - 1];
  const old = parent[k];
  switch (rng.int(6)) {
    case 0:
      parent[k] = hostileValue(rng);
      break;
    case 1:
      if (Array.isArray(parent)) parent.splice(k as number, 1);
      else delete parent[k];
      break;
    case 2:
      parent[k] = typeof old === 'number' ? rng.pick(HOSTILE_NUMBERS) + (rng.chance(0.5) ? old : 0) : rng.pick(HOSTILE_NUMBERS);
      break;
    case 3:
      parent[k] = typeof old === 'string' ? old + rng.pick(HOSTILE_STRINGS).slice(0, 100) : rng.pick(HOSTILE_STRINGS);
      break;
    case 4:
      // a sibling's value copied over (duplicate ids, overlapping offsets)
      {
        const keys = Object.keys(parent);
        parent[k] = structuredClone(parent[rng.pick(keys) as string]);
      }
      break;
    default:
      if (Array.isArray(old)) old.push(structuredClone(old[rng.int(old.length)] ?? hostileValue(rng)));
      else if (old !== null && typeof old === 'object') (old as Record<string, Json>)[rng.pick(['extra', 'type', '__proto__', 'id'])] = hostileValue(rng);
      else parent[k] = [old];
  }
  return copy;
}

/** Text-level damage to a serialized document: truncation, a flipped character, a stray quote. */
export function mutateText(text: string, rng: Rng): string {
  const at = rng.int(text.length + 1);
  switch (rng.int(4)) {
    case 0:
      return text.slice(0, at);
    case 1:
      return text.slice(0, at) + String.fromCharCode(rng.int(128)) + text.slice(at + 1);
    case 2:
      return text.slice(0, at) + rng.pick(['"', '\\', '{', ']', ',', '\\u', '\ud800', '\u0000']) + text.slice(at);
    default:
      return text.slice(0, at) + text.slice(at + 1 + rng.int(100));
  }
}
