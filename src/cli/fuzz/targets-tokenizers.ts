/**
 * Fuzz targets for tokenizers: tokenizer.json through both loaders (HfTokenizer over
 * @huggingface/tokenizers, and softpress's own BpeTokenizer) and the tokenizer a GGUF file
 * carries. A tokenizer that loads must also encode and decode the probe texts (long runs of one
 * character among them), since a pattern that backtracks catastrophically freezes there.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HfTokenizer } from '../../models/hf-tokenizer.js';
import { BpeTokenizer } from '../../models/bpe.js';
import { parseGguf, type GgufValue } from '../../io/gguf.js';
import { ggufTokenizer } from '../../io/gguf-tokenizer.js';
import type { Tokenizer } from '../../models/tokenizer.js';
import { HOSTILE_NUMBERS, HOSTILE_STRINGS, Rng, hostileValue, mutateBytes, mutateJson, mutateText } from './mutate.js';
import { EVIL_PATTERNS, LLAMA3_PRE, ggufImage, tokenizerGguf, tokenizerJsonSeeds, type GgufKv } from './seeds.js';
import { PROBES } from './targets-files.js';
import { isNamedErrorWith, type Prepared, type Target } from './target.js';

type Json = Record<string, unknown>;

interface JsonCase {
  json?: unknown;
  /** Text-level damage: the file as written (read through the loader's file reader). */
  text?: string;
}

/** Encodes and decodes every probe text. */
function probe(tok: Tokenizer): void {
  for (const p of PROBES) tok.decode(tok.encode(p, { bos: true, eos: true, allowSpecial: true }), { keepSpecial: true });
}

/** Damage aimed at what a tokenizer.json loader must validate: regexes, ids, vocabularies, merges. */
function targeted(json: Json, rng: Rng): Json {
  const j = structuredClone(json) as Json & { model: Json & { vocab: Record<string, unknown>; merges: unknown[] }; added_tokens?: Json[] };
  const split = () => ({
    type: 'Split',
    pattern: { Regex: rng.pick(EVIL_PATTERNS) },
    behavior: rng.pick(['Isolated', 'Removed', 'MergedWithPrevious']),
    invert: rng.chance(0.2),
  });
  const vocabKeys = Object.keys(j.model.vocab ?? {});
  switch (rng.int(10)) {
    case 0:
      j.pre_tokenizer = rng.chance(0.5) ? split() : { type: 'Sequence', pretokenizers: [split(), structuredClone(LLAMA3_PRE.pretokenizers[1])] };
      break;
    case 1:
      j.normalizer = {
        type: 'Replace',
        pattern: rng.chance(0.7) ? { Regex: rng.pick(EVIL_PATTERNS) } : { String: '' },
        content: rng.pick(['$`', "$'", '$&$&', 'x', '$1']),
      };
      break;
    case 2:
      j.decoder = { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { Regex: rng.pick(EVIL_PATTERNS) }, content: ' ' }, { type: 'ByteLevel' }] };
      break;
    case 3:
      if (vocabKeys.length) j.model.vocab[rng.pick(vocabKeys)] = rng.pick([...HOSTILE_NUMBERS, 2 ** 31, -5, '7', null]);
      break;
    case 4:
      j.model.vocab = rng.chance(0.5) ? {} : (hostileValue(rng) as Record<string, unknown>);
      break;
    case 5:
      j.model.merges = Array.isArray(j.model.merges)
        ? [...j.model.merges, rng.pick(['zz qq', 'a', '', 'a b c', ['x'], 'constructor toString', '__proto__ a'])]
        : [];
      break;
    case 6:
      j.added_tokens = [
        ...(j.added_tokens ?? []),
        { id: rng.pick([...HOSTILE_NUMBERS, 2 ** 31 - 1]), content: rng.pick(HOSTILE_STRINGS).slice(0, 50), special: true },
      ];
      break;
    case 7:
      j.model.type = rng.pick(['Unigram', 'WordPiece', 'WordLevel', 'Nope', 7]);
      break;
    case 8:
      // deep nesting of sequences
      {
        let pre: unknown = { type: 'ByteLevel' };
        for (let i = rng.int(1000); i > 0; i--) pre = { type: 'Sequence', pretokenizers: [pre] };
        j.pre_tokenizer = pre;
      }
      break;
    default:
      if (vocabKeys.length > 1) j.model.vocab[rng.pick(vocabKeys)] = j.model.vocab[rng.pick(vocabKeys)];
  }
  return j;
}

function jsonCases(seeds: { name: string; json: Json }[], rng: Rng): JsonCase {
  // the shipped base's tokenizer.json is large: one case in ten
  const small = seeds.filter((s) => s.name !== 'softpress-base');
  const seed = rng.chance(0.1) ? rng.pick(seeds) : rng.pick(small);
  const r = rng.next();
  if (r < 0.35) return { json: targeted(seed.json, rng) };
  if (r < 0.85) {
    let doc: unknown = seed.json;
    for (let k = 1 + rng.int(3); k > 0; k--) doc = mutateJson(doc, rng);
    return { json: doc };
  }
  return { text: mutateText(JSON.stringify(seed.json), rng) };
}

const caseBytes = (input: unknown) => new TextEncoder().encode((input as JsonCase).text ?? JSON.stringify((input as JsonCase).json) ?? '');

const HF_SOURCE = 'fuzz-case-hf.json';

export const hfTokenizerTarget: Target = {
  name: 'tokenizer-json-hf',
  about: 'tokenizer.json via HfTokenizer',
  timeoutMs: 10_000,
  prepare(tmp): Prepared {
    const seeds = tokenizerJsonSeeds();
    const dir = join(tmp, 'hf');
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'tokenizer.json');
    return {
      make: (rng) => jsonCases(seeds, rng),
      run: (input) => {
        const c = input as JsonCase;
        let tok: HfTokenizer;
        if (c.text !== undefined) {
          writeFileSync(path, c.text);
          tok = HfTokenizer.fromDir(dir);
        } else tok = new HfTokenizer(c.json as Json, {}, { source: HF_SOURCE });
        probe(tok);
      },
      clean: (e) => isNamedErrorWith(e, HF_SOURCE) || isNamedErrorWith(e, path),
      bytes: caseBytes,
    };
  },
};

const BPE_SOURCE = 'fuzz-case-bpe.json';

export const bpeTokenizerTarget: Target = {
  name: 'tokenizer-json-bpe',
  about: 'tokenizer.json via BpeTokenizer',
  timeoutMs: 10_000,
  prepare(tmp): Prepared {
    const seeds = tokenizerJsonSeeds();
    const path = join(tmp, BPE_SOURCE);
    return {
      make: (rng) => jsonCases(seeds, rng),
      run: (input) => {
        const c = input as JsonCase;
        let tok: BpeTokenizer;
        if (c.text !== undefined) {
          writeFileSync(path, c.text);
          tok = BpeTokenizer.fromFile(path);
        } else tok = BpeTokenizer.fromJSON(c.json, BPE_SOURCE);
        probe(tok);
      },
      clean: (e) => isNamedErrorWith(e, BPE_SOURCE),
      bytes: caseBytes,
    };
  },
};

// ---------------------------------------------------------------------------------------------
// A GGUF's tokenizer

const GGUF_TOK_SOURCE = 'fuzz-case-tokenizer.gguf';

/** A metadata entry for a JavaScript value (arrays of mixed types become strings). */
function kvOf(key: string, v: unknown): GgufKv {
  if (typeof v === 'string') return [key, 8, v];
  if (typeof v === 'boolean') return [key, 7, v ? 1 : 0];
  if (typeof v === 'bigint') return [key, 11, BigInt.asIntN(64, v)];
  if (typeof v === 'number')
    return Number.isInteger(v) && v >= 0 && v < 2 ** 32 ? [key, 4, v] : Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31 ? [key, 5, v] : [key, 12, v];
  if (Array.isArray(v)) {
    if (v.every((x) => typeof x === 'number' && Number.isInteger(x) && x >= -(2 ** 31) && x < 2 ** 31)) return [key, 9, [5, v]];
    if (v.every((x) => typeof x === 'number')) return [key, 9, [12, v]];
    return [key, 9, [8, v.map((x) => (typeof x === 'string' ? x : (JSON.stringify(x) ?? '')))]];
  }
  return [key, 8, JSON.stringify(v) ?? ''];
}

export const ggufTokenizerTarget: Target = {
  name: 'gguf-tokenizer',
  about: "a GGUF's tokenizer",
  timeoutMs: 10_000,
  prepare(): Prepared {
    const seed = tokenizerGguf();
    const meta = parseGguf(seed.bytes).metadata;
    return {
      make: (rng) => {
        if (rng.chance(0.4)) {
          let b = seed.bytes;
          for (let k = 1 + rng.int(3); k > 0; k--) b = mutateBytes(b, rng, seed.fields);
          return b;
        }
        // metadata-level damage, written back as a well-formed GGUF
        const m = new Map<string, unknown>([...meta].map(([k, v]) => [k, structuredClone(v)]));
        const keys = [...m.keys()];
        for (let k = 1 + rng.int(2); k > 0; k--) {
          const key = rng.pick(keys);
          const v = m.get(key);
          if (rng.chance(0.5) && Array.isArray(v)) m.set(key, mutateJson(v, rng));
          else if (rng.chance(0.3)) m.delete(key);
          else m.set(key, rng.chance(0.5) ? rng.pick([...HOSTILE_NUMBERS, ...HOSTILE_STRINGS.slice(0, 12), 'llama', 'qwen2', 'llama-bpe']) : hostileValue(rng));
        }
        return ggufImage([...m].map(([k, v]) => kvOf(k, v as GgufValue))).bytes;
      },
      run: (input) => {
        const files = ggufTokenizer(parseGguf(input as Uint8Array, GGUF_TOK_SOURCE));
        probe(new HfTokenizer(files.tokenizer, files.config, { bos: files.bos, eos: files.eos, source: GGUF_TOK_SOURCE }));
      },
      clean: (e) => isNamedErrorWith(e, GGUF_TOK_SOURCE),
      bytes: (input) => input as Uint8Array,
    };
  },
};
