/**
 * Reader for GGUF v2/v3 files (llama.cpp's model format), with dequantization to float32 on
 * plain typed arrays (no tensor engine).
 *
 * Layout, all little-endian:
 *   "GGUF" magic, u32 version, u64 tensor count, u64 metadata count;
 *   metadata: (string key, u32 value type, value)*, where a string is u64 byte length + UTF-8
 *     and an array is u32 element type + u64 length + elements (arrays may nest);
 *   tensor infos: (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)*;
 *   padding to `general.alignment` (default 32), then the data section. Tensor offsets are
 *   relative to the start of the data section and aligned.
 * Version 1 (u32 counts) is refused; v2 and v3 share one layout (v3 only added big-endian files,
 * which are refused too). The file may be hostile: every length is checked against the bytes
 * that remain before anything is allocated, and every problem is a GgufError naming the file,
 * the field and the byte offset.
 *
 * Block layouts follow llama.cpp's ggml-quants.c and gguf-py's quants.py; arithmetic follows
 * gguf-py's float32 numpy order (no fused multiply-add) so results equal it bit for bit.
 */
import * as fs from 'node:fs';
import { f16ToF32 } from './safetensors.js';

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export class GgufError extends Error {
  /** The file (or '<buffer>') the problem was found in. */
  readonly source: string;
  /** Absolute byte offset of the offending field, when known. */
  readonly offset?: number;
  /** What was being read: a metadata key, a tensor name, a header field. */
  readonly field?: string;
  constructor(source: string, message: string, where: { offset?: number; field?: string } = {}) {
    super(`${source}: ${message}${where.offset !== undefined ? ` (at byte ${where.offset})` : ''}`);
    this.name = 'GgufError';
    this.source = source;
    if (where.offset !== undefined) this.offset = where.offset;
    if (where.field !== undefined) this.field = where.field;
  }
}

// ---------------------------------------------------------------------------------------------
// ggml tensor types

/** A ggml type: `blockSize` values are stored in `typeSize` bytes. */
export interface GgmlTypeInfo {
  type: number;
  name: string;
  blockSize: number;
  typeSize: number;
}

const QK_K = 256;

/** Every type gguf-py 0.19 knows (constants.py GGML_QUANT_SIZES); ids 4, 5, 31-33, 36-38 are retired. */
const GGML_TYPES: readonly GgmlTypeInfo[] = (
  [
    [0, 'F32', 1, 4],
    [1, 'F16', 1, 2],
    [2, 'Q4_0', 32, 2 + 16],
    [3, 'Q4_1', 32, 2 + 2 + 16],
    [6, 'Q5_0', 32, 2 + 4 + 16],
    [7, 'Q5_1', 32, 2 + 2 + 4 + 16],
    [8, 'Q8_0', 32, 2 + 32],
    [9, 'Q8_1', 32, 4 + 4 + 32],
    [10, 'Q2_K', QK_K, 2 + 2 + QK_K / 16 + QK_K / 4],
    [11, 'Q3_K', QK_K, 2 + QK_K / 4 + QK_K / 8 + 12],
    [12, 'Q4_K', QK_K, 2 + 2 + QK_K / 2 + 12],
    [13, 'Q5_K', QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12],
    [14, 'Q6_K', QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16],
    [15, 'Q8_K', QK_K, 4 + QK_K + QK_K / 8],
    [16, 'IQ2_XXS', QK_K, 2 + QK_K / 4],
    [17, 'IQ2_XS', QK_K, 2 + QK_K / 4 + QK_K / 32],
    [18, 'IQ3_XXS', QK_K, 2 + QK_K / 4 + QK_K / 8],
    [19, 'IQ1_S', QK_K, 2 + QK_K / 8 + QK_K / 16],
    [20, 'IQ4_NL', 32, 2 + 16],
    [21, 'IQ3_S', QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4],
    [22, 'IQ2_S', QK_K, 2 + QK_K / 4 + QK_K / 16],
    [23, 'IQ4_XS', QK_K, 2 + 2 + QK_K / 2 + QK_K / 64],
    [24, 'I8', 1, 1],
    [25, 'I16', 1, 2],
    [26, 'I32', 1, 4],
    [27, 'I64', 1, 8],
    [28, 'F64', 1, 8],
    [29, 'IQ1_M', QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32],
    [30, 'BF16', 1, 2],
    [34, 'TQ1_0', QK_K, 2 + 4 * 13],
    [35, 'TQ2_0', QK_K, 2 + 64],
    [39, 'MXFP4', 32, 1 + 16],
    [40, 'NVFP4', 64, 4 + 32],
    [41, 'Q1_0', 128, 2 + 16],
  ] as const
).map(([type, name, blockSize, typeSize]) => Object.freeze({ type, name, blockSize, typeSize }));

const TYPE_BY_ID = new Map(GGML_TYPES.map((t) => [t.type, t]));
const TYPE_BY_NAME = new Map(GGML_TYPES.map((t) => [t.name, t]));

/** ggml tensor type ids and names (F32=0, F16=1, Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q8_0=8, Q8_1=9, Q2_K=10, Q3_K=11, Q4_K=12, Q5_K=13, Q6_K=14, Q8_K=15, ..., BF16=30 ...); `UNKNOWN(n)` otherwise. */
export function ggmlTypeName(type: number): string {
  return TYPE_BY_ID.get(type)?.name ?? `UNKNOWN(${type})`;
}

/** Block size and bytes per block of a ggml type given by id or name; undefined when unknown. */
export function ggmlTypeInfo(type: number | string): GgmlTypeInfo | undefined {
  return typeof type === 'number' ? TYPE_BY_ID.get(type) : TYPE_BY_NAME.get(type);
}

/** The ggml types `dequantize` and `readGgufTensor` handle. */
export const DEQUANTIZABLE_TYPES: readonly string[] = Object.freeze(['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q5_K', 'Q6_K']);

// ---------------------------------------------------------------------------------------------
// The parsed file

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] is the fastest-varying (a matrix [out, in] in PyTorch is dims [in, out]). */
  dims: number[];
  /** PyTorch / row-major order (dims reversed). */
  shape: number[];
  type: number;
  typeName: string;
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
  numel: number;
}

export interface GgufFile {
  /** The file path (or the `source` name given to parseGguf). */
  path: string;
  version: number;
  alignment: number;
  /** Absolute file offset of the tensor data section. */
  dataOffset: number;
  /** Size of the file (or buffer) in bytes. */
  fileSize: number;
  metadata: Map<string, GgufValue>;
  /** The stored type of each metadata value: 'UINT32', 'STRING', 'ARRAY[STRING]', 'ARRAY[ARRAY[INT32]]'
   * (a nested array is named by its first element; GGUF lets inner arrays differ). */
  metadataTypes: Map<string, string>;
  /** In file order. */
  tensors: Map<string, GgufTensorInfo>;
  /** Set by parseGguf: tensor data are read from these bytes instead of from `path`. */
  bytes?: Uint8Array;
}

// Metadata value types.
const VT = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 } as const;
const VALUE_TYPE_NAMES = ['UINT8', 'INT8', 'UINT16', 'INT16', 'UINT32', 'INT32', 'FLOAT32', 'BOOL', 'STRING', 'ARRAY', 'UINT64', 'INT64', 'FLOAT64'];
/** Smallest encoding of one value of each type: bounds array lengths before allocating. */
const VALUE_MIN_SIZE = [1, 1, 2, 2, 4, 4, 4, 1, 8, 4 + 8, 8, 8, 8];
/** Fixed-size (numeric and bool) value types' sizes; 0 for string and array. */
const VALUE_FIXED_SIZE = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];

const DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4; // GGML_MAX_DIMS
/** Deeper nesting is no real model's metadata, and unbounded recursion would overflow the stack. */
const MAX_ARRAY_DEPTH = 16;
/**
 * Caps far above any real model (vocabularies hold ~10^5 entries, models ~10^4 tensors) that
 * keep a hostile file from turning each of its bytes into a JS object or array slot.
 */
const MAX_ARRAY_LENGTH = 1 << 24;
const MAX_COUNT = 1 << 20;
/** Chat templates and vocabulary entries are far shorter; V8 cannot make strings much longer. */
const MAX_STRING_BYTES = 1 << 28;
const HEADER_BYTES = 4 + 4 + 8 + 8;
/** Smallest tensor info: empty name, 1 dim, type, offset. */
const MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8;
/** Smallest metadata entry: empty key, type, a 1-byte value. */
const MIN_KV = 8 + 4 + 1;
const TWO_53 = 2n ** 53n;

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const q = (s: string) => `'${s}'`;

// ---------------------------------------------------------------------------------------------
// A bounds-checked cursor over the file, read through a window

/** Header bytes are read from a file in windows of this size (grown for a single larger field). */
const WINDOW = 1 << 20;

class Cursor {
  pos = 0;
  /** What is being read, for errors: `label` starts the message ("metadata key 'x'"), `field`
   * is the bare key, tensor name or header field. Set by the parser before each item. */
  label = 'header';
  field: string | undefined = 'header';
  private win: Uint8Array;
  private winStart = 0;
  private dv: DataView;
  /** The window as a Buffer, for Node's native UTF-8 decoding. */
  private text: Buffer;

  /** `fill(position, length)` returns exactly those file bytes; null when `bytes` is the whole file. */
  constructor(
    readonly source: string,
    readonly size: number,
    private readonly fill: ((position: number, length: number) => Uint8Array) | null,
    bytes: Uint8Array = new Uint8Array(0),
  ) {
    this.win = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get left(): number {
    return this.size - this.pos;
  }

  at(label: string, field: string | undefined = label): void {
    this.label = label;
    this.field = field;
  }

  fail(message: string, offset = this.pos): never {
    throw new GgufError(this.source, `${this.label}: ${message}`, { offset, field: this.field });
  }

  /** Claims the next n bytes; returns their start within the window's DataView. */
  private take(n: number): number {
    if (n > this.left) this.fail(`needs ${n} bytes but only ${this.left} remain (truncated file?)`);
    if (this.pos + n > this.winStart + this.win.length) {
      // Only the file-backed cursor gets here: the buffer cursor's window is the whole buffer.
      const len = Math.min(Math.max(WINDOW, n), this.left);
      this.win = this.fill!(this.pos, len);
      this.winStart = this.pos;
      this.dv = new DataView(this.win.buffer, this.win.byteOffset, this.win.byteLength);
      this.text = Buffer.from(this.win.buffer, this.win.byteOffset, this.win.byteLength);
    }
    const at = this.pos - this.winStart;
    this.pos += n;
    return at;
  }

  // take() may move the window, so it must run before this.dv is read.
  u8(): number {
    const p = this.take(1);
    return this.dv.getUint8(p);
  }
  u32(): number {
    const p = this.take(4);
    return this.dv.getUint32(p, true);
  }
  u64(): bigint {
    const p = this.take(8);
    return this.dv.getBigUint64(p, true);
  }

  /** A u64 count of items of at least `min` bytes each, checked against the bytes left and `max`. */
  count(what: string, min: number, max: number): number {
    const at = this.pos;
    const n = this.u64();
    if (n * BigInt(min) > BigInt(this.left)) {
      this.fail(`${what} ${n} exceeds the ${this.left} bytes left (each item takes at least ${min} bytes)`, at);
    }
    if (n > BigInt(max)) this.fail(`${what} ${n} is over softpress's limit of ${max}`, at);
    return Number(n);
  }

  string(): string {
    const at = this.pos;
    const p0 = this.take(8);
    // Two u32 halves instead of a BigInt: this runs for every vocabulary entry.
    const lo = this.dv.getUint32(p0, true);
    const hi = this.dv.getUint32(p0 + 4, true);
    if (hi !== 0 || lo > this.left) {
      this.fail(`string length ${(BigInt(hi) << 32n) | BigInt(lo)} exceeds the ${this.left} bytes left`, at);
    }
    if (lo > MAX_STRING_BYTES) this.fail(`string length ${lo} is over softpress's limit of ${MAX_STRING_BYTES} bytes`, at);
    const p = this.take(lo);
    // Node's native decoder is fast but replaces bad bytes with U+FFFD; only then is a strict
    // decode needed to tell a real U+FFFD from invalid UTF-8.
    const s = this.text.toString('utf8', p, p + lo);
    if (s.includes('\uFFFD')) {
      try {
        UTF8.decode(this.win.subarray(p, p + lo));
      } catch {
        this.fail(`string of ${lo} bytes is not valid UTF-8`, at + 8);
      }
    }
    return s;
  }

  /** One metadata value of value type `type` and its type name ('UINT32', 'ARRAY[STRING]'). */
  value(type: number, depth: number): { value: GgufValue; typeName: string } {
    if (type === VT.ARRAY) return this.array(depth + 1);
    if (type >= VALUE_TYPE_NAMES.length) this.fail(`unknown value type ${type} (known: 0..12)`, this.pos - 4);
    return { value: this.scalar(type), typeName: VALUE_TYPE_NAMES[type] };
  }

  /** A value of any type but ARRAY (already validated). */
  private scalar(type: number): GgufValue {
    if (type === VT.STRING) return this.string();
    if (type === VT.BOOL) {
      const at = this.pos;
      const b = this.u8();
      if (b > 1) this.fail(`bool value must be 0 or 1, got ${b}`, at);
      return b === 1;
    }
    const p = this.take(VALUE_FIXED_SIZE[type]);
    return readFixed(this.dv, type, p);
  }

  /** An array (element type, length, elements); nested arrays are named by their first element
   * ('ARRAY[ARRAY[INT32]]'), as GGUF lets inner arrays differ. */
  private array(depth: number): { value: GgufValue[]; typeName: string } {
    if (depth > MAX_ARRAY_DEPTH) this.fail(`arrays nested more than ${MAX_ARRAY_DEPTH} deep`);
    const typeAt = this.pos;
    const type = this.u32();
    if (type >= VALUE_TYPE_NAMES.length) this.fail(`unknown array element type ${type} (known: 0..12)`, typeAt);
    const n = this.count('array length', VALUE_MIN_SIZE[type], MAX_ARRAY_LENGTH);
    const out: GgufValue[] = new Array(n);
    if (type === VT.ARRAY) {
      let inner = 'ARRAY';
      for (let i = 0; i < n; i++) {
        const a = this.array(depth + 1);
        out[i] = a.value;
        if (i === 0) inner = a.typeName;
      }
      return { value: out, typeName: `ARRAY[${inner}]` };
    }
    const size = VALUE_FIXED_SIZE[type];
    if (size > 0 && type !== VT.BOOL) {
      // Numbers: claim the whole run once, then read straight from the window.
      const p = this.take(n * size);
      const dv = this.dv;
      for (let i = 0; i < n; i++) out[i] = readFixed(dv, type, p + i * size);
    } else {
      for (let i = 0; i < n; i++) out[i] = this.scalar(type);
    }
    return { value: out, typeName: `ARRAY[${VALUE_TYPE_NAMES[type]}]` };
  }
}

function readFixed(dv: DataView, type: number, p: number): number | bigint {
  switch (type) {
    case VT.U8:
      return dv.getUint8(p);
    case VT.I8:
      return dv.getInt8(p);
    case VT.U16:
      return dv.getUint16(p, true);
    case VT.I16:
      return dv.getInt16(p, true);
    case VT.U32:
      return dv.getUint32(p, true);
    case VT.I32:
      return dv.getInt32(p, true);
    case VT.F32:
      return dv.getFloat32(p, true);
    case VT.F64:
      return dv.getFloat64(p, true);
    case VT.U64:
      return int64(dv.getBigUint64(p, true));
    default:
      return int64(dv.getBigInt64(p, true)); // VT.I64
  }
}

/** A 64-bit integer as a number when exactly representable (|v| <= 2^53), else as a bigint. */
function int64(v: bigint): number | bigint {
  return v <= TWO_53 && v >= -TWO_53 ? Number(v) : v;
}

// ---------------------------------------------------------------------------------------------
// Parsing

function parse(c: Cursor, bytes?: Uint8Array): GgufFile {
  if (c.size < HEADER_BYTES) {
    // Say "not GGUF" rather than "truncated" when even the magic is wrong.
    if (c.size >= 4) checkMagic(c);
    c.fail(`file is ${c.size} bytes, too short for the ${HEADER_BYTES}-byte GGUF header`, 0);
  }
  checkMagic(c);
  c.at('version');
  const version = c.u32();
  if (version !== 2 && version !== 3) {
    const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
    if (version === 1) c.fail('GGUF version 1 is not supported (it predates 64-bit counts; re-convert the model with a current llama.cpp)', 4);
    if (swapped === 2 || swapped === 3) c.fail(`big-endian GGUF (version ${swapped}) is not supported`, 4);
    c.fail(`unsupported GGUF version ${version} (softpress reads versions 2 and 3)`, 4);
  }
  // Bound both counts by the smallest possible encodings before reading (or allocating) anything.
  c.at('header');
  const tensorCount = c.count('tensor count', MIN_TENSOR_INFO, MAX_COUNT);
  const kvCountAt = c.pos;
  const kvCount = c.count('metadata count', MIN_KV, MAX_COUNT);
  if (kvCount * MIN_KV + tensorCount * MIN_TENSOR_INFO > c.left) {
    c.fail(`${kvCount} metadata entries and ${tensorCount} tensor infos cannot fit in the ${c.left} bytes left`, kvCountAt);
  }

  const metadata = new Map<string, GgufValue>();
  const metadataTypes = new Map<string, string>();
  let alignment = DEFAULT_ALIGNMENT;
  for (let i = 0; i < kvCount; i++) {
    const keyAt = c.pos;
    c.at(`metadata entry #${i} key`, undefined);
    const key = c.string();
    c.at(`metadata key ${q(key)}`, key);
    if (metadata.has(key)) c.fail('appears twice', keyAt);
    const type = c.u32();
    const valueAt = c.pos;
    const { value, typeName } = c.value(type, 0);
    if (key === 'general.alignment') {
      if (type !== VT.U32) c.fail(`must be a UINT32, got ${typeName}`, valueAt - 4);
      const a = value as number;
      if (a === 0 || (a & (a - 1)) !== 0) c.fail(`alignment ${a} is not a power of two`, valueAt);
      alignment = a;
    }
    metadata.set(key, value);
    metadataTypes.set(key, typeName);
  }

  const tensors = new Map<string, GgufTensorInfo>();
  const relOffsets: number[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const infoAt = c.pos;
    c.at(`tensor info #${i} name`, undefined);
    const name = c.string();
    c.at(`tensor ${q(name)}`, name);
    if (tensors.has(name)) c.fail('appears twice', infoAt);
    const nDimsAt = c.pos;
    const nDims = c.u32();
    if (nDims < 1 || nDims > MAX_DIMS) c.fail(`has ${nDims} dimensions (GGUF allows 1..${MAX_DIMS})`, nDimsAt);
    const dims: number[] = [];
    let numel = 1;
    for (let d = 0; d < nDims; d++) {
      const at = c.pos;
      const dim = c.u64();
      if (dim < 1n || dim >= TWO_53) c.fail(`dims[${d}] = ${dim} is out of range (1..2^53-1)`, at);
      dims.push(Number(dim));
      numel *= Number(dim);
      if (!Number.isSafeInteger(numel)) c.fail(`dims [${dims.join(', ')}${d < nDims - 1 ? ', ...' : ''}] have more than 2^53 elements`, at);
    }
    const typeAt = c.pos;
    const type = c.u32();
    const info = TYPE_BY_ID.get(type);
    if (!info) c.fail(`unknown ggml type ${type}`, typeAt);
    if (dims[0] % info.blockSize !== 0) {
      c.fail(`${info.name} rows (dims[0] = ${dims[0]}) must be a multiple of its block size ${info.blockSize}`, nDimsAt);
    }
    const byteLength = (numel / info.blockSize) * info.typeSize;
    if (byteLength > c.size) c.fail(`${info.name} [${dims.join(', ')}] needs ${byteLength} bytes, more than the whole file (${c.size})`, nDimsAt);
    const offAt = c.pos;
    const rel = c.u64();
    if (rel > BigInt(c.size)) c.fail(`data offset ${rel} is past the end of the file (${c.size} bytes)`, offAt);
    if (Number(rel) % alignment !== 0) c.fail(`data offset ${rel} is not a multiple of the alignment ${alignment}`, offAt);
    relOffsets.push(Number(rel));
    // The absolute offset is known once the data section's start is.
    tensors.set(name, { name, dims, shape: [...dims].reverse(), type, typeName: info.name, offset: -1, byteLength, numel });
  }

  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  // Every tensor lies inside the file, and no two overlap.
  const all = [...tensors.values()];
  all.forEach((t, k) => {
    t.offset = dataOffset + relOffsets[k];
    const end = t.offset + t.byteLength;
    c.at(`tensor ${q(t.name)}`, t.name);
    if (end > c.size) c.fail(`data [${t.offset}, ${end}) runs past the end of the file (${c.size} bytes; truncated file?)`, t.offset);
  });
  all.sort((a, b) => a.offset - b.offset);
  for (let k = 1; k < all.length; k++) {
    const prev = all[k - 1];
    const t = all[k];
    if (t.offset < prev.offset + prev.byteLength) {
      c.at(`tensor ${q(t.name)}`, t.name);
      c.fail(`data [${t.offset}, ${t.offset + t.byteLength}) overlaps tensor ${q(prev.name)} [${prev.offset}, ${prev.offset + prev.byteLength})`, t.offset);
    }
  }

  const file: GgufFile = { path: c.source, version, alignment, dataOffset, fileSize: c.size, metadata, metadataTypes, tensors };
  if (bytes) file.bytes = bytes;
  return file;
}

function checkMagic(c: Cursor): void {
  c.at('magic');
  const m = [c.u8(), c.u8(), c.u8(), c.u8()];
  if (m[0] !== 0x47 || m[1] !== 0x47 || m[2] !== 0x55 || m[3] !== 0x46) {
    const hex = m.map((b) => b.toString(16).padStart(2, '0')).join(' ');
    c.fail(`not a GGUF file: it starts with bytes ${hex}, not 'GGUF' (47 47 55 46)`, 0);
  }
}

/** Parses a GGUF image held in memory (header, metadata, tensor infos; validates everything).
 * Tensor data are read from `bytes` later, so they must be inside it. */
export function parseGguf(bytes: Uint8Array, source = '<buffer>'): GgufFile {
  return parse(new Cursor(source, bytes.length, null, bytes), bytes);
}

/** Reads header, metadata and tensor infos (not the data) of a file; validates everything. */
export function readGguf(path: string): GgufFile {
  const fd = openFile(path);
  try {
    const size = fs.fstatSync(fd).size;
    const fill = (position: number, length: number) => {
      const buf = new Uint8Array(length);
      readExactly(fd, buf, position, path, 'header');
      return buf;
    };
    return parse(new Cursor(path, size, fill));
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Files

function openFile(path: string): number {
  try {
    return fs.openSync(path, 'r');
  } catch (e) {
    throw new GgufError(path, `cannot open: ${(e as Error).message}`);
  }
}

/** Reads exactly dst.length bytes at `position`, looping over short reads. */
function readExactly(fd: number, dst: Uint8Array, position: number, source: string, label: string, field?: string): void {
  const CHUNK = 1 << 30; // a single read() is capped near 2 GiB
  let done = 0;
  while (done < dst.length) {
    const got = fs.readSync(fd, dst, done, Math.min(CHUNK, dst.length - done), position + done);
    if (got === 0) {
      throw new GgufError(source, `${label}: unexpected end of file (changed since it was parsed?)`, { offset: position + done, field });
    }
    done += got;
  }
}

/** Typed-array allocation, with an engine refusal (too large) reported as a GgufError. */
function allocate<T>(make: () => T, source: string, label: string, what: string, field?: string): T {
  try {
    return make();
  } catch (e) {
    throw new GgufError(source, `${label}: cannot allocate ${what}: ${(e as Error).message}`, { field });
  }
}

function tensorInfo(file: GgufFile, name: string): GgufTensorInfo {
  const t = file.tensors.get(name);
  if (!t) throw new GgufError(file.path, `no tensor named ${q(name)} (the file has ${file.tensors.size} tensors)`, { field: name });
  return t;
}

/** Reads one tensor's raw bytes (its blocks as stored) from the file, or from parseGguf's buffer. */
export function readGgufTensorBytes(file: GgufFile, name: string): Uint8Array {
  const t = tensorInfo(file, name);
  const label = `tensor ${q(name)}`;
  const where = { offset: t.offset, field: name };
  const end = t.offset + t.byteLength;
  if (file.bytes) {
    if (end > file.bytes.length) {
      throw new GgufError(file.path, `${label}: data [${t.offset}, ${end}) runs past the end of the ${file.bytes.length}-byte buffer`, where);
    }
    return file.bytes.subarray(t.offset, end);
  }
  const fd = openFile(file.path);
  try {
    const size = fs.fstatSync(fd).size;
    if (end > size) {
      throw new GgufError(file.path, `${label}: data [${t.offset}, ${end}) runs past the end of the file (${size} bytes; changed since it was parsed?)`, where);
    }
    const buf = allocate(() => new Uint8Array(t.byteLength), file.path, label, `${t.byteLength} bytes`, name);
    readExactly(fd, buf, t.offset, file.path, label, name);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads one tensor's bytes from the file and dequantizes it: values in row-major `shape` order. */
export function readGgufTensor(file: GgufFile, name: string): { shape: number[]; data: Float32Array } {
  const t = tensorInfo(file, name);
  const label = `tensor ${q(name)}`;
  const kernel = KERNELS.get(t.type);
  // Refuse before reading a byte of it.
  if (!kernel) throw new GgufError(file.path, `${label} has type ${t.typeName}, ${CANNOT}`, { offset: t.offset, field: name });
  const bytes = readGgufTensorBytes(file, name);
  const data = allocate(() => new Float32Array(t.numel), file.path, label, `${t.numel} float32 values`, name);
  kernel(bytes, t.numel / TYPE_BY_ID.get(t.type)!.blockSize, data);
  return { shape: [...t.shape], data };
}

// ---------------------------------------------------------------------------------------------
// Dequantization

const CANNOT = `which softpress cannot dequantize (supported: ${DEQUANTIZABLE_TYPES.join(', ')})`;

/** Dequantizes `count` values of the given type from raw block bytes. Unknown/unsupported types: GgufError naming the type. */
export function dequantize(type: number | string, bytes: Uint8Array, count: number): Float32Array {
  const source = '<dequantize>';
  const info = ggmlTypeInfo(type);
  if (!info) throw new GgufError(source, `unknown ggml type ${typeof type === 'string' ? q(type) : type}`);
  const kernel = KERNELS.get(info.type);
  if (!kernel) throw new GgufError(source, `type ${info.name}, ${CANNOT}`);
  if (!Number.isSafeInteger(count) || count < 0) throw new GgufError(source, `count ${count} must be a non-negative integer`);
  if (count % info.blockSize !== 0) throw new GgufError(source, `${info.name}: count ${count} is not a multiple of the block size ${info.blockSize}`);
  const blocks = count / info.blockSize;
  if (bytes.length < blocks * info.typeSize) {
    throw new GgufError(source, `${info.name}: ${count} values need ${blocks * info.typeSize} bytes, got ${bytes.length}`);
  }
  const out = allocate(() => new Float32Array(count), source, info.name, `${count} float32 values`);
  kernel(bytes, blocks, out);
  return out;
}

/** Decodes `blocks` blocks from `b` (indexed from 0) into `out`. */
type Kernel = (b: Uint8Array, blocks: number, out: Float32Array) => void;

/** IEEE half bits -> float32, for all 65536 patterns (256 KB, built on first use). */
let f16Table: Float32Array | undefined;
function halfTable(): Float32Array {
  if (!f16Table) {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    f16Table = f16ToF32(all);
  }
  return f16Table;
}

const fround = Math.fround;

// Products of two float32 values are exact in a double, and a double sum of two float32 values
// rounds to the correctly rounded float32 sum, so storing into a Float32Array (and fround on
// intermediates) reproduces numpy's float32 arithmetic exactly.

const f32: Kernel = (b, n, out) => {
  if (HOST_LITTLE_ENDIAN) {
    new Uint8Array(out.buffer, out.byteOffset, n * 4).set(b.subarray(0, n * 4));
  } else {
    const dv = new DataView(b.buffer, b.byteOffset, n * 4);
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
  }
};

const f16: Kernel = (b, n, out) => {
  const H = halfTable();
  for (let i = 0; i < n; i++) out[i] = H[b[2 * i] | (b[2 * i + 1] << 8)];
};

const bf16: Kernel = (b, n, out) => {
  const bits = new Uint32Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = ((b[2 * i] << 16) | (b[2 * i + 1] << 24)) >>> 0;
};

/** Q8_0: fp16 d, 32 int8; x = q * d. */
const q8_0: Kernel = (b, n, out) => {
  const H = halfTable();
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 34, y += 32) {
    const d = H[b[o] | (b[o + 1] << 8)];
    for (let j = 0; j < 32; j++) out[y + j] = ((b[o + 2 + j] << 24) >> 24) * d;
  }
};

/** Q4_0: fp16 d, 16 bytes; low nibbles are values 0..15, high nibbles 16..31; x = (q - 8) * d. */
const q4_0: Kernel = (b, n, out) => {
  const H = halfTable();
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 18, y += 32) {
    const d = H[b[o] | (b[o + 1] << 8)];
    for (let j = 0; j < 16; j++) {
      const x = b[o + 2 + j];
      out[y + j] = ((x & 15) - 8) * d;
      out[y + j + 16] = ((x >> 4) - 8) * d;
    }
  }
};

/** Q4_1: fp16 d, fp16 m, 16 bytes of nibbles as Q4_0; x = q * d + m. */
const q4_1: Kernel = (b, n, out) => {
  const H = halfTable();
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 20, y += 32) {
    const d = H[b[o] | (b[o + 1] << 8)];
    const m = H[b[o + 2] | (b[o + 3] << 8)];
    for (let j = 0; j < 16; j++) {
      const x = b[o + 4 + j];
      out[y + j] = fround((x & 15) * d) + m;
      out[y + j + 16] = fround((x >> 4) * d) + m;
    }
  }
};

/** Q5_0: fp16 d, u32 qh (bit j is the fifth bit of value j), 16 bytes of nibbles; x = (q - 16) * d. */
const q5_0: Kernel = (b, n, out) => {
  const H = halfTable();
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 22, y += 32) {
    const d = H[b[o] | (b[o + 1] << 8)];
    const qh = b[o + 2] | (b[o + 3] << 8) | (b[o + 4] << 16) | (b[o + 5] << 24);
    for (let j = 0; j < 16; j++) {
      const x = b[o + 6 + j];
      out[y + j] = (((x & 15) | (((qh >>> j) & 1) << 4)) - 16) * d;
      out[y + j + 16] = (((x >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16) * d;
    }
  }
};

/** Q5_1: fp16 d, fp16 m, u32 qh, 16 bytes of nibbles; x = q * d + m. */
const q5_1: Kernel = (b, n, out) => {
  const H = halfTable();
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 24, y += 32) {
    const d = H[b[o] | (b[o + 1] << 8)];
    const m = H[b[o + 2] | (b[o + 3] << 8)];
    const qh = b[o + 4] | (b[o + 5] << 8) | (b[o + 6] << 16) | (b[o + 7] << 24);
    for (let j = 0; j < 16; j++) {
      const x = b[o + 8 + j];
      out[y + j] = fround(((x & 15) | (((qh >>> j) & 1) << 4)) * d) + m;
      out[y + j + 16] = fround(((x >> 4) | (((qh >>> (j + 16)) & 1) << 4)) * d) + m;
    }
  }
};

/**
 * The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes at `s`
 * (llama.cpp's get_scale_min_k4): bytes 0-3 hold scales 0-3 and the high bits of scales 4-7,
 * bytes 4-7 mins 0-3 and the high bits of mins 4-7, bytes 8-11 the low nibbles of both.
 */
function kScales(b: Uint8Array, s: number, sc: Float32Array, mn: Float32Array, d: number, dmin: number): void {
  for (let j = 0; j < 4; j++) {
    sc[j] = d * (b[s + j] & 63);
    mn[j] = dmin * (b[s + j + 4] & 63);
    sc[j + 4] = d * ((b[s + j + 8] & 15) | ((b[s + j] >> 6) << 4));
    mn[j + 4] = dmin * ((b[s + j + 8] >> 4) | ((b[s + j + 4] >> 6) << 4));
  }
}

/**
 * Q4_K: 256 values in 8 sub-blocks of 32: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins,
 * 128 bytes of nibbles (each 32 bytes: low nibbles are sub-block 2i, high ones 2i+1);
 * x = (d * scale) * q - dmin * min.
 */
const q4_k: Kernel = (b, n, out) => {
  const H = halfTable();
  const sc = new Float32Array(8);
  const mn = new Float32Array(8);
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 144, y += 256) {
    kScales(b, o + 4, sc, mn, H[b[o] | (b[o + 1] << 8)], H[b[o + 2] | (b[o + 3] << 8)]);
    for (let i = 0; i < 4; i++) {
      const q = o + 16 + 32 * i;
      const d1 = sc[2 * i],
        m1 = mn[2 * i],
        d2 = sc[2 * i + 1],
        m2 = mn[2 * i + 1];
      const y1 = y + 64 * i,
        y2 = y1 + 32;
      for (let l = 0; l < 32; l++) {
        const x = b[q + l];
        out[y1 + l] = fround(d1 * (x & 15)) - m1;
        out[y2 + l] = fround(d2 * (x >> 4)) - m2;
      }
    }
  }
};

/** Q5_K: as Q4_K plus 32 bytes qh before the nibbles; bit s of qh[l] is the fifth bit of value l of sub-block s. */
const q5_k: Kernel = (b, n, out) => {
  const H = halfTable();
  const sc = new Float32Array(8);
  const mn = new Float32Array(8);
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 176, y += 256) {
    kScales(b, o + 4, sc, mn, H[b[o] | (b[o + 1] << 8)], H[b[o + 2] | (b[o + 3] << 8)]);
    const qh = o + 16;
    for (let i = 0; i < 4; i++) {
      const q = o + 48 + 32 * i;
      const s1 = 2 * i,
        s2 = 2 * i + 1;
      const d1 = sc[s1],
        m1 = mn[s1],
        d2 = sc[s2],
        m2 = mn[s2];
      const y1 = y + 64 * i,
        y2 = y1 + 32;
      for (let l = 0; l < 32; l++) {
        const x = b[q + l];
        const h = b[qh + l];
        out[y1 + l] = fround(d1 * ((x & 15) | (((h >> s1) & 1) << 4))) - m1;
        out[y2 + l] = fround(d2 * ((x >> 4) | (((h >> s2) & 1) << 4))) - m2;
      }
    }
  }
};

/**
 * Q6_K: 256 values: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8 scales (one
 * per 16 values), fp16 d; x = (d * scale) * (q - 32). Each half of 128 values uses 64 ql bytes
 * (low nibbles then high nibbles) and 32 qh bytes (2-bit fields for its four 32-value quarters).
 */
const q6_k: Kernel = (b, n, out) => {
  const H = halfTable();
  const ds = new Float32Array(16);
  for (let k = 0, o = 0, y = 0; k < n; k++, o += 210, y += 256) {
    const d = H[b[o + 208] | (b[o + 209] << 8)];
    for (let s = 0; s < 16; s++) ds[s] = d * ((b[o + 192 + s] << 24) >> 24);
    for (let half = 0; half < 2; half++) {
      const ql = o + 64 * half,
        qh = o + 128 + 32 * half,
        sc = 8 * half,
        yy = y + 128 * half;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const a = b[ql + l],
          c = b[ql + l + 32],
          h = b[qh + l];
        out[yy + l] = ds[sc + is] * (((a & 15) | ((h & 3) << 4)) - 32);
        out[yy + l + 32] = ds[sc + is + 2] * (((c & 15) | (((h >> 2) & 3) << 4)) - 32);
        out[yy + l + 64] = ds[sc + is + 4] * (((a >> 4) | (((h >> 4) & 3) << 4)) - 32);
        out[yy + l + 96] = ds[sc + is + 6] * (((c >> 4) | (((h >> 6) & 3) << 4)) - 32);
      }
    }
  }
};

const KERNELS: ReadonlyMap<number, Kernel> = new Map<number, Kernel>([
  [0, f32],
  [1, f16],
  [30, bf16],
  [8, q8_0],
  [2, q4_0],
  [3, q4_1],
  [6, q5_0],
  [7, q5_1],
  [12, q4_k],
  [13, q5_k],
  [14, q6_k],
]);

// ---------------------------------------------------------------------------------------------
// Metadata helpers

function meta(file: GgufFile, key: string): GgufValue {
  const v = file.metadata.get(key);
  if (v === undefined) throw new GgufError(file.path, `metadata key ${q(key)} is missing`, { field: key });
  return v;
}

function wrongType(file: GgufFile, key: string, v: GgufValue, want: string): GgufError {
  const type = file.metadataTypes?.get(key) ?? typeof v;
  let shown = Array.isArray(v) ? `of ${v.length} elements` : JSON.stringify(typeof v === 'bigint' ? String(v) : v);
  if (shown.length > 60) shown = `${shown.slice(0, 57)}...`;
  return new GgufError(file.path, `metadata key ${q(key)} is ${type} ${shown}, not ${want}`, { field: key });
}

/** A numeric metadata value (integer or float). Missing without a fallback, not a number, or a
 * 64-bit integer beyond 2^53: GgufError naming the key. */
export function metaNumber(file: GgufFile, key: string, fallback?: number): number {
  if (fallback !== undefined && !file.metadata.has(key)) return fallback;
  const v = meta(file, key);
  if (typeof v !== 'number') throw wrongType(file, key, v, typeof v === 'bigint' ? 'a number within 2^53' : 'a number');
  return v;
}

/** A string metadata value; GgufError naming the key when missing (without a fallback) or not a string. */
export function metaString(file: GgufFile, key: string, fallback?: string): string {
  if (fallback !== undefined && !file.metadata.has(key)) return fallback;
  const v = meta(file, key);
  if (typeof v !== 'string') throw wrongType(file, key, v, 'a string');
  return v;
}

/** An array metadata value; GgufError naming the key when missing (without a fallback) or not an array. */
export function metaArray(file: GgufFile, key: string, fallback?: GgufValue[]): GgufValue[] {
  if (fallback !== undefined && !file.metadata.has(key)) return fallback;
  const v = meta(file, key);
  if (!Array.isArray(v)) throw wrongType(file, key, v, 'an array');
  return v;
}
