/**
 * The fuzzer's seed files: small real files of each format (the repository's fixtures, pieces
 * of the shipped base model) and files written here in the same formats, with the offsets of
 * their length and count fields so that mutations can aim at them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readSafetensors, serializeSafetensors, type RawTensor } from '../../io/safetensors.js';
import { trainBpe, type BpeTokenizer } from '../../models/bpe.js';

/** Where a field of `width` bytes holding a length, count, type or offset sits in a seed. */
export interface Field {
  at: number;
  width: 1 | 2 | 4 | 8;
}

export interface Seed {
  name: string;
  bytes: Uint8Array;
  fields: Field[];
}

/** The repository root (the folder holding package.json, from dist/src/cli/fuzz or src/cli/fuzz). */
export function repoRoot(): string {
  for (const up of ['../../../..', '../../..']) {
    const dir = resolve(new URL('.', import.meta.url).pathname, up);
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'src'))) return dir;
  }
  return process.cwd();
}

// ---------------------------------------------------------------------------------------------
// GGUF

/** A metadata value for ggufImage: [value type, value] (arrays: [9, [element type, values]]). */
export type GgufKv = [key: string, type: number, value: unknown];

const FIXED: Record<number, [1 | 2 | 4 | 8, (dv: DataView, at: number, v: number) => void]> = {
  0: [1, (d, a, v) => d.setUint8(a, v)],
  1: [1, (d, a, v) => d.setInt8(a, v)],
  2: [2, (d, a, v) => d.setUint16(a, v, true)],
  3: [2, (d, a, v) => d.setInt16(a, v, true)],
  4: [4, (d, a, v) => d.setUint32(a, v, true)],
  5: [4, (d, a, v) => d.setInt32(a, v, true)],
  6: [4, (d, a, v) => d.setFloat32(a, v, true)],
  7: [1, (d, a, v) => d.setUint8(a, v ? 1 : 0)],
  10: [8, (d, a, v) => d.setBigUint64(a, BigInt(v), true)],
  11: [8, (d, a, v) => d.setBigInt64(a, BigInt(v), true)],
  12: [8, (d, a, v) => d.setFloat64(a, v, true)],
};

/** A growable little-endian writer that records its length/count fields. */
class Writer {
  buf = new Uint8Array(1 << 16);
  dv = new DataView(this.buf.buffer);
  pos = 0;
  readonly fields: Field[] = [];
  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    bigger.set(this.buf);
    this.buf = bigger;
    this.dv = new DataView(bigger.buffer);
  }
  fixed(type: number, v: number, field = false): void {
    const [w, put] = FIXED[type];
    this.room(w);
    if (field) this.fields.push({ at: this.pos, width: w });
    put(this.dv, this.pos, v);
    this.pos += w;
  }
  u32(v: number, field = true): void {
    this.fixed(4, v, field);
  }
  u64(v: number, field = true): void {
    this.fixed(10, v, field);
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  string(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  value(type: number, v: unknown): void {
    if (type === 8) this.string(v as string);
    else if (type === 9) {
      const [et, xs] = v as [number, unknown[]];
      this.u32(et);
      this.u64(xs.length);
      for (const x of xs) this.value(et, x);
    } else this.fixed(type, v as number);
  }
  pad(alignment: number): void {
    const n = (alignment - (this.pos % alignment)) % alignment;
    this.room(n);
    this.pos += n;
  }
  done(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

/** A GGUF v3 image of metadata and F32 tensors ([ggml dims], values), with its field offsets. */
export function ggufImage(kvs: GgufKv[], tensors: { name: string; dims: number[]; data: Float32Array }[] = []): { bytes: Uint8Array; fields: Field[] } {
  const w = new Writer();
  w.bytes(new TextEncoder().encode('GGUF'));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(kvs.length);
  for (const [key, type, value] of kvs) {
    w.string(key);
    w.u32(type);
    w.value(type, value);
  }
  let offset = 0;
  for (const t of tensors) {
    w.string(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(0); // F32
    w.u64(offset);
    offset += Math.ceil((t.data.length * 4) / 32) * 32;
  }
  w.pad(32);
  for (const t of tensors) {
    w.bytes(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    w.pad(32);
  }
  return { bytes: w.done(), fields: w.fields };
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

const SENTENCES = [
  'The quick brown fox jumps over the lazy dog.',
  "It's 2024 and we've got 3,141 reasons to test tokenizers!",
  'Soft context compression turns long documents into a few vectors.',
  'Numbers like 1234567 and dates like 2024-05-06 split into digits.',
  'Ünïcödé, 中文, русский текст and emoji 😀 all round-trip.',
];

let small: BpeTokenizer | undefined;

/** A small byte-level BPE (about 330 ids) trained on a few sentences: a quick tokenizer.json seed. */
export function smallBpe(): BpeTokenizer {
  small ??= trainBpe(
    Array.from({ length: 20 }, (_, i) => SENTENCES[i % SENTENCES.length]),
    { vocabSize: 16 + 256 + 60, minFrequency: 2 },
  );
  return small;
}

/** Llama 3's pre-tokenizer: a Split regex then ByteLevel without its own regex. */
export const LLAMA3_PRE = {
  type: 'Sequence',
  pretokenizers: [
    {
      type: 'Split',
      pattern: {
        Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      },
      behavior: 'Isolated',
      invert: false,
    },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
};

/** Patterns known to backtrack catastrophically, injected into Split and Replace entries. */
export const EVIL_PATTERNS = [
  '(a+)+$',
  '(a|a)+$',
  '(\\s*)*x',
  '(\\w+\\s?)+$',
  '^(\\d+)*$',
  '(.*a){12}',
  '(x+x+)+y',
  '(a|aa)+b',
  '\\s*\\s*\\s*\\s*!',
  '(?:\\p{L}|\\p{Ll})+$',
  '([a-z]+)*[0-9]',
];

/** tokenizer.json seeds: the small BPE as written, with Llama 3's Split pre-tokenizer, with a Replace normalizer; the shipped base's (large). */
export function tokenizerJsonSeeds(): { name: string; json: Record<string, unknown> }[] {
  const base = smallBpe().toJSON();
  const seeds = [
    { name: 'small-bytelevel', json: base },
    { name: 'small-split', json: { ...structuredClone(base), pre_tokenizer: LLAMA3_PRE } },
    {
      name: 'small-replace',
      json: {
        ...structuredClone(base),
        normalizer: { type: 'Sequence', normalizers: [{ type: 'Replace', pattern: { String: '\t' }, content: ' ' }, { type: 'NFC' }] },
      },
    },
  ];
  const real = join(repoRoot(), 'models/softpress-base/tokenizer.json');
  if (existsSync(real)) seeds.push({ name: 'softpress-base', json: JSON.parse(readFileSync(real, 'utf8')) as Record<string, unknown> });
  return seeds;
}

/** A GGUF holding the small BPE as llama.cpp writes a tokenizer (tokens, merges, types, ids, pre). */
export function tokenizerGguf(): Seed {
  const tok = smallBpe();
  const json = tok.toJSON() as { model: { vocab: Record<string, number>; merges: string[] }; added_tokens: { id: number; content: string }[] };
  const tokens: string[] = [];
  for (const [t, id] of Object.entries(json.model.vocab)) tokens[id] = t;
  for (const a of json.added_tokens) tokens[a.id] = a.content;
  const types = tokens.map((_, id) => (json.added_tokens.some((a) => a.id === id) ? 3 : 1));
  const { bytes, fields } = ggufImage([
    ['general.architecture', 8, 'llama'],
    ['tokenizer.ggml.model', 8, 'gpt2'],
    ['tokenizer.ggml.pre', 8, 'smollm'],
    ['tokenizer.ggml.tokens', 9, [8, tokens]],
    ['tokenizer.ggml.token_type', 9, [5, types]],
    ['tokenizer.ggml.merges', 9, [8, json.model.merges]],
    ['tokenizer.ggml.bos_token_id', 4, tok.bos],
    ['tokenizer.ggml.eos_token_id', 4, tok.eos],
    ['tokenizer.ggml.add_bos_token', 7, 1],
  ]);
  return { name: 'small-tokenizer.gguf', bytes, fields };
}

/** GGUF seeds: the repository's tiny.gguf fixture as it is, and a small model with a tokenizer, written here. */
export function ggufSeeds(): Seed[] {
  const seeds: Seed[] = [];
  const tiny = join(repoRoot(), 'test/fixtures/gguf/tiny.gguf');
  if (existsSync(tiny))
    seeds.push({
      name: 'tiny.gguf',
      bytes: new Uint8Array(readFileSync(tiny)),
      fields: [
        { at: 4, width: 4 },
        { at: 8, width: 8 },
        { at: 16, width: 8 },
      ],
    });
  const tok = tokenizerGguf();
  const model = ggufImage(
    [
      ['general.architecture', 8, 'llama'],
      ['general.alignment', 4, 32],
      ['llama.block_count', 4, 1],
      ['llama.embedding_length', 4, 8],
      [
        'some.array',
        9,
        [
          9,
          [
            [4, [1, 2]],
            [8, ['x']],
          ],
        ],
      ],
    ],
    [
      { name: 'token_embd.weight', dims: [8, 4], data: Float32Array.from({ length: 32 }, (_, i) => i / 7) },
      { name: 'output_norm.weight', dims: [8], data: new Float32Array(8).fill(1) },
    ],
  );
  seeds.push(tok, { name: 'small-model.gguf', ...model });
  return seeds;
}

// ---------------------------------------------------------------------------------------------
// safetensors, .softctx, llama2.c

/** safetensors seeds: three tensors of the shipped base model (F16 as stored), with and without a checksum. */
export function safetensorsSeeds(): Seed[] {
  const path = join(repoRoot(), 'models/softpress-base/model.safetensors');
  const picked = new Map<string, RawTensor>();
  if (existsSync(path)) {
    const { tensors } = readSafetensors(path);
    for (const name of ['model.norm.weight', 'model.layers.0.input_layernorm.weight', 'model.layers.0.self_attn.k_proj.weight']) {
      const t = tensors.get(name);
      if (t)
        picked.set(
          name,
          t.data.length > 4096
            ? {
                dtype: t.dtype,
                shape: [t.shape[0] > 8 ? 8 : t.shape[0], ...t.shape.slice(1)],
                data: t.data.slice(0, (t.shape[0] > 8 ? 8 : t.shape[0]) * (t.data.length / t.shape[0])),
              }
            : t,
        );
    }
  }
  if (picked.size === 0) picked.set('w', { dtype: 'F32', shape: [2, 3], data: new Uint8Array(24).fill(7) });
  picked.set('ids', { dtype: 'I64', shape: [3], data: new Uint8Array(24).fill(1) });
  const plain = serializeSafetensors(picked, { format: 'pt' });
  const sealed = serializeSafetensors(picked, { format: 'pt' }, { checksum: true });
  return [plain, sealed].map((bytes, i) => ({
    name: i ? 'base-pieces-checksum.safetensors' : 'base-pieces.safetensors',
    bytes,
    fields: [{ at: 0, width: 8 }],
  }));
}

/**
 * The records of a stored soft context (as serializeSoftContext writes them) for a few shapes and
 * dtypes, made for the base model with the given fingerprint: soft tokens of width 8, memory for 2
 * layers of 2 KV heads of size 4.
 */
export function softctxRecordSeeds(baseFingerprint = 'fuzz-0000'): { name: string; tensors: Map<string, RawTensor>; metadata: Record<string, string> }[] {
  const floats = (n: number, dtype: 'F32' | 'F16' | 'BF16'): Uint8Array => {
    const out = new Uint8Array(n * (dtype === 'F32' ? 4 : 2));
    const dv = new DataView(out.buffer);
    for (let i = 0; i < n; i++) {
      if (dtype === 'F32') dv.setFloat32(i * 4, Math.sin(i), true);
      else dv.setUint16(i * 2, dtype === 'F16' ? 0x3c00 - (i % 64) : 0x3f80 - (i % 64), true);
    }
    return out;
  };
  const meta = (soft: number[], source: number[], method = 'meanpool') =>
    JSON.stringify({ method, budget: { ratio: 4 }, sourceTokens: source, softTokens: soft, baseFingerprint, compressMs: 1 });
  const seeds: { name: string; tensors: Map<string, RawTensor>; metadata: Record<string, string> }[] = [];
  for (const dtype of ['F32', 'F16', 'BF16'] as const) {
    const tensors = new Map<string, RawTensor>([
      ['soft_tokens', { dtype, shape: [1, 3, 8], data: floats(24, dtype) }],
      ['mask', { dtype: 'BOOL', shape: [1, 3], data: Uint8Array.of(1, 1, 1) }],
    ]);
    seeds.push({ name: `soft-${dtype}`, tensors, metadata: { softpress_softctx: '1', meta: meta([3], [12]) } });
  }
  const mem = new Map<string, RawTensor>();
  for (let l = 0; l < 2; l++) for (const p of ['k', 'v']) mem.set(`memory.${l}.${p}`, { dtype: 'F32', shape: [1, 2, 2, 4], data: floats(16, 'F32') });
  mem.set('memory_mask', { dtype: 'BOOL', shape: [1, 2], data: Uint8Array.of(1, 1) });
  seeds.push({ name: 'memory-kv', tensors: mem, metadata: { softpress_softctx: '1', meta: meta([2], [40], 'ccf') } });
  return seeds;
}

/** llama2.c seeds: the stories260K checkpoint and its tok512.bin tokenizer (shared fixtures), with their length fields. */
export function llama2cSeeds(): { checkpoint: Seed[]; tokenizer: Seed[] } {
  const dir = resolve(repoRoot(), '../shared/fixtures/stories260K');
  const checkpoint: Seed[] = [];
  const tokenizer: Seed[] = [];
  const header = Array.from({ length: 7 }, (_, i) => ({ at: i * 4, width: 4 as const }));
  if (existsSync(join(dir, 'stories260K.bin')))
    checkpoint.push({ name: 'stories260K.bin', bytes: new Uint8Array(readFileSync(join(dir, 'stories260K.bin'))), fields: header });
  // a tiny checkpoint of the same layout: dim 8, hidden 16, 1 layer, 2 heads, 2 kv heads, vocab 4 (shared), seq 4
  const cfg = [8, 16, 1, 2, 2, 4, 4];
  const floats = 4 * 8 + 8 + 3 * 64 + 64 + 8 + 3 * 128 + 8 + 2 * 4 * 2;
  const tiny = new Uint8Array(28 + 4 * floats);
  const dv = new DataView(tiny.buffer);
  cfg.forEach((v, i) => dv.setInt32(i * 4, v, true));
  for (let i = 0; i < floats; i++) dv.setFloat32(28 + 4 * i, Math.cos(i), true);
  checkpoint.push({ name: 'tiny-llama2c.bin', bytes: tiny, fields: header });
  // tokenizer: the fixture, or one written here (<unk> <s> </s>, 256 byte pieces, a few words)
  let tok: Uint8Array;
  if (existsSync(join(dir, 'tok512.bin'))) tok = new Uint8Array(readFileSync(join(dir, 'tok512.bin')));
  else {
    const pieces = [
      '<unk>',
      '\n<s>\n',
      '\n</s>\n',
      ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`),
      ' the',
      ' a',
      'he',
      ' t',
    ];
    const parts: number[] = [7, 0, 0, 0];
    pieces.forEach((p, i) => {
      const b = new TextEncoder().encode(p);
      const s = new Uint8Array(8);
      new DataView(s.buffer).setFloat32(0, -i, true);
      new DataView(s.buffer).setInt32(4, b.length, true);
      parts.push(...s, ...b);
    });
    tok = Uint8Array.from(parts);
  }
  const fields: Field[] = [{ at: 0, width: 4 }];
  const tv = new DataView(tok.buffer, tok.byteOffset, tok.byteLength);
  for (let pos = 4; pos + 8 <= tok.length;) {
    fields.push({ at: pos + 4, width: 4 });
    const len = tv.getInt32(pos + 4, true);
    if (len < 0) break;
    pos += 8 + len;
  }
  tokenizer.push({ name: 'tok512.bin', bytes: tok, fields });
  return { checkpoint, tokenizer };
}
