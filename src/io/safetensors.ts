/**
 * Reader and writer for the safetensors format, on plain typed arrays (no tensor engine).
 *
 * Layout: u64 little-endian header length N, N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`,
 * then the data buffer. Offsets are relative to the start of the data buffer, and the tensors
 * must cover it exactly (no overlaps, no gaps, no trailing bytes) as the reference
 * implementation requires. All tensor data is little-endian.
 *
 * Content checksum: files softpress writes for itself (.softctx, compressor weights, training
 * checkpoints) carry `softpress_sha256` in their metadata, the SHA-256 of every tensor's name,
 * dtype, shape and bytes and of the other metadata (see contentDigest). Reading any file that has
 * it verifies it (a ChecksumError on mismatch), so a flipped byte or a relabelled dtype is
 * caught; files without it (older files, other tools' files) load as before.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as nodePath from 'node:path';

export type SafeDType = 'BOOL' | 'U8' | 'I8' | 'F8_E4M3' | 'F8_E5M2' | 'I16' | 'U16' | 'F16' | 'BF16' | 'I32' | 'U32' | 'F32' | 'F64' | 'I64' | 'U64';

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<SafeDType, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
});

/** One tensor: `data` holds exactly its bytes, little-endian, row-major. */
export interface RawTensor {
  dtype: SafeDType;
  shape: number[];
  data: Uint8Array;
}

/** A header entry, without the data (see readSafetensorsHeader). */
export interface TensorInfo {
  dtype: SafeDType;
  shape: number[];
  /** [begin, end) relative to the start of the data buffer. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Absolute file offset of the data buffer (8 + header length). */
  dataStart: number;
  /** Length of the data buffer in bytes. */
  dataLength: number;
}

export class SafetensorsError extends Error {
  /** The file (or '<buffer>') the problem was found in. */
  readonly source: string;
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = 'SafetensorsError';
    this.source = source;
  }
}

/** A file whose content does not match the checksum recorded in its metadata. */
export class ChecksumError extends SafetensorsError {
  constructor(source: string, message: string) {
    super(source, message);
    this.name = 'ChecksumError';
  }
}

/** Metadata key of softpress's content checksum (64 lower-case hex digits of a SHA-256). */
export const CHECKSUM_KEY = 'softpress_sha256';

/**
 * SHA-256 over a file's content as softpress defines it: a format line, each metadata entry
 * but the checksum's own (sorted by key) as a JSON pair, then each tensor (sorted by name) as a
 * JSON [name, dtype, shape] line followed by its bytes. It does not depend on the header's
 * layout (key order, padding), only on what the file holds.
 */
export function contentDigest(tensors: Iterable<[string, RawTensor]>, metadata: Record<string, string>): string {
  const h = createHash('sha256');
  h.update('softpress-safetensors-sha256 1\n');
  const byCodeUnits = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  for (const k of Object.keys(metadata).sort(byCodeUnits)) {
    if (k !== CHECKSUM_KEY) h.update(`${JSON.stringify([k, metadata[k]])}\n`);
  }
  for (const [name, t] of [...tensors].sort((a, b) => byCodeUnits(a[0], b[0]))) {
    h.update(`${JSON.stringify([name, t.dtype, t.shape])}\n`);
    h.update(t.data);
  }
  return h.digest('hex');
}

/** Verifies the checksum when the metadata records one (a ChecksumError on mismatch). */
function verifyChecksum(tensors: Map<string, RawTensor>, metadata: Record<string, string>, source: string): void {
  const recorded = metadata[CHECKSUM_KEY];
  if (recorded === undefined) return;
  if (!/^[0-9a-f]{64}$/.test(recorded)) {
    throw new ChecksumError(source, `__metadata__.${CHECKSUM_KEY} must be 64 hex digits (a SHA-256), got ${describe(recorded)}`);
  }
  const actual = contentDigest(tensors, metadata);
  if (actual !== recorded) {
    throw new ChecksumError(
      source,
      `content checksum mismatch: the tensors and metadata hash to sha256 ${actual.slice(0, 16)}…, but the file records ` +
        `${recorded.slice(0, 16)}… (the file was changed or damaged after it was written)`,
    );
  }
}

/** Options of the writers. */
export interface WriteOptions {
  /** Record a content checksum (CHECKSUM_KEY) in the metadata, verified whenever the file is read. */
  checksum?: boolean;
}

function withChecksum(
  tensors: Map<string, RawTensor> | Record<string, RawTensor>,
  metadata: Record<string, string> | undefined,
  opts: WriteOptions,
): Record<string, string> | undefined {
  if (!opts.checksum) return metadata;
  const entries: [string, RawTensor][] = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  // Malformed records are left to plan(), which names what is wrong with them.
  if (entries.some(([, t]) => !(t?.data instanceof Uint8Array))) return metadata;
  const meta = { ...(metadata ?? {}) };
  delete meta[CHECKSUM_KEY];
  return { ...meta, [CHECKSUM_KEY]: contentDigest(entries, meta) };
}

/** Same bound as the reference implementation; guards against absurd allocations. */
export const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = '__metadata__';

export function isSafeDType(x: unknown): x is SafeDType {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZE, x);
}

/** Number of elements of a shape; throws when it cannot be a real tensor's size. */
export function numelOf(shape: readonly number[]): number {
  if (shape.some((d) => d === 0)) return 0;
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) throw new RangeError(`shape [${shape.join(', ')}] has too many elements`);
  }
  return n;
}

function describe(x: unknown): string {
  const s = JSON.stringify(x);
  if (s === undefined) return String(x);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function checkShape(shape: unknown, source: string, name: string): number[] {
  if (!Array.isArray(shape)) {
    throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: shape must be an array, got ${describe(shape)}`);
  }
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: shape ${describe(shape)} must hold non-negative integers`);
    }
  }
  return shape as number[];
}

/**
 * Validates a header's JSON against a data buffer of `dataLength` bytes. `dataStart` is only
 * used to report absolute file offsets in errors.
 */
function parseHeader(headerBytes: Uint8Array, dataStart: number, dataLength: number, source: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    throw new SafetensorsError(source, `header (bytes 8..${dataStart}) is not valid UTF-8`);
  }
  if (!text.startsWith('{')) {
    throw new SafetensorsError(source, `header (bytes 8..${dataStart}) must be a JSON object starting with '{', got ${describe(text.slice(0, 20))}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(source, `header (bytes 8..${dataStart}) is not valid JSON: ${(e as Error).message}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new SafetensorsError(source, `header must be a JSON object, got ${describe(json)}`);
  }

  const metadata: Record<string, string> = {};
  const entries: { name: string; info: TensorInfo }[] = [];
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      // The reference implementation treats a null __metadata__ as absent.
      if (value === null) continue;
      if (typeof value !== 'object' || Array.isArray(value)) {
        throw new SafetensorsError(source, `__metadata__ must be an object of strings, got ${describe(value)}`);
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== 'string') {
          throw new SafetensorsError(source, `__metadata__[${JSON.stringify(k)}] must be a string, got ${describe(v)}`);
        }
        metadata[k] = v;
      }
      continue;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: entry must be an object, got ${describe(value)}`);
    }
    const entry = value as Record<string, unknown>;
    const dtype = entry.dtype;
    if (!isSafeDType(dtype)) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: unknown dtype ${describe(dtype)} (known: ${Object.keys(DTYPE_SIZE).join(', ')})`);
    }
    const shape = checkShape(entry.shape, source, name);
    const offs = entry.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: data_offsets must be [begin, end] non-negative integers, got ${describe(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: data_offsets [${begin}, ${end}] end before begin`);
    }
    if (end > dataLength) {
      throw new SafetensorsError(
        source,
        `tensor ${JSON.stringify(name)}: data_offsets [${begin}, ${end}] run past the end of the data buffer ` +
          `(${dataLength} bytes starting at file offset ${dataStart})`,
      );
    }
    let expected: number;
    try {
      expected = numelOf(shape) * DTYPE_SIZE[dtype];
    } catch {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: shape [${shape.join(', ')}] is too large`);
    }
    if (end - begin !== expected) {
      throw new SafetensorsError(
        source,
        `tensor ${JSON.stringify(name)}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ` + `${dtype} [${shape.join(', ')}] needs ${expected}`,
      );
    }
    entries.push({ name, info: { dtype, shape: [...shape], dataOffsets: [begin, end] } });
  }

  // The tensors must tile the data buffer exactly, in offset order.
  const byOffset = [...entries].sort((a, b) => a.info.dataOffsets[0] - b.info.dataOffsets[0] || a.info.dataOffsets[1] - b.info.dataOffsets[1]);
  let cursor = 0;
  let prevName = '';
  for (const { name, info } of byOffset) {
    const [begin, end] = info.dataOffsets;
    if (begin < cursor) {
      throw new SafetensorsError(
        source,
        `tensor ${JSON.stringify(name)}: data_offsets [${begin}, ${end}] overlap tensor ${JSON.stringify(prevName)} ` + `(which ends at ${cursor})`,
      );
    }
    if (begin > cursor) {
      throw new SafetensorsError(
        source,
        `data buffer bytes [${cursor}, ${begin}) (file offset ${dataStart + cursor}) are not covered by any tensor ` +
          `(gap before tensor ${JSON.stringify(name)})`,
      );
    }
    cursor = end;
    prevName = name;
  }
  if (cursor !== dataLength) {
    throw new SafetensorsError(
      source,
      `data buffer has ${dataLength - cursor} trailing bytes after the last tensor ` + `(tensors end at ${cursor}, buffer is ${dataLength} bytes)`,
    );
  }

  const tensors = new Map<string, TensorInfo>();
  for (const { name, info } of entries) tensors.set(name, info);
  return { tensors, metadata, dataStart, dataLength };
}

/** Checks the 8-byte prefix and returns the header length N. */
function headerLength(prefix: Uint8Array, totalLength: number, source: string): number {
  if (totalLength < 8) {
    throw new SafetensorsError(source, `file is ${totalLength} bytes, too short for the 8-byte header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(source, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  if (n > BigInt(totalLength - 8)) {
    throw new SafetensorsError(source, `header length ${n} exceeds the ${totalLength - 8} bytes after the length field (truncated file?)`);
  }
  return Number(n);
}

/** Parses a whole safetensors image held in memory; tensor data are subarrays of `bytes`. */
export function parseSafetensors(
  bytes: Uint8Array,
  source = '<buffer>',
): {
  tensors: Map<string, RawTensor>;
  metadata: Record<string, string>;
} {
  const n = headerLength(bytes.subarray(0, 8), bytes.length, source);
  const dataStart = 8 + n;
  const header = parseHeader(bytes.subarray(8, dataStart), dataStart, bytes.length - dataStart, source);
  const tensors = new Map<string, RawTensor>();
  for (const [name, info] of header.tensors) {
    const [begin, end] = info.dataOffsets;
    tensors.set(name, { dtype: info.dtype, shape: info.shape, data: bytes.subarray(dataStart + begin, dataStart + end) });
  }
  verifyChecksum(tensors, header.metadata, source);
  return { tensors, metadata: header.metadata };
}

/** Reads exactly dst.length bytes at `position`, looping over short reads. */
function readExactly(fd: number, dst: Uint8Array, position: number, source: string, what: string): void {
  const CHUNK = 1 << 30; // a single read() is capped near 2 GiB
  let done = 0;
  while (done < dst.length) {
    const len = Math.min(CHUNK, dst.length - done);
    const got = fs.readSync(fd, dst, done, len, position + done);
    if (got === 0) {
      throw new SafetensorsError(source, `unexpected end of file reading ${what} at file offset ${position + done}`);
    }
    done += got;
  }
}

function readHeaderFromFd(fd: number, source: string): SafetensorsHeader {
  const size = fs.fstatSync(fd).size;
  const prefix = new Uint8Array(8);
  if (size >= 8) readExactly(fd, prefix, 0, source, 'the header length');
  const n = headerLength(prefix, size, source);
  const headerBytes = new Uint8Array(n);
  readExactly(fd, headerBytes, 8, source, 'the JSON header');
  return parseHeader(headerBytes, 8 + n, size - 8 - n, source);
}

/** Reads and validates only the header of a file (no tensor data is loaded). */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const fd = fs.openSync(path, 'r');
  try {
    return readHeaderFromFd(fd, path);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads a safetensors file. Each tensor gets its own ArrayBuffer at offset 0, so its bytes are
 * aligned for any typed-array view, and files larger than one Buffer can hold still load.
 */
export function readSafetensors(path: string): { tensors: Map<string, RawTensor>; metadata: Record<string, string> } {
  const fd = fs.openSync(path, 'r');
  try {
    const header = readHeaderFromFd(fd, path);
    const tensors = new Map<string, RawTensor>();
    for (const [name, info] of header.tensors) {
      const [begin, end] = info.dataOffsets;
      const data = new Uint8Array(end - begin);
      readExactly(fd, data, header.dataStart + begin, path, `tensor ${JSON.stringify(name)}`);
      tensors.set(name, { dtype: info.dtype, shape: info.shape, data });
    }
    verifyChecksum(tensors, header.metadata, path);
    return { tensors, metadata: header.metadata };
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

interface Plan {
  header: Uint8Array;
  order: { name: string; data: Uint8Array }[];
  total: number;
}

function plan(tensors: Map<string, RawTensor> | Record<string, RawTensor>, metadata: Record<string, string> | undefined, source: string): Plan {
  const entries: [string, RawTensor][] = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

  const parts: string[] = [];
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') {
        throw new SafetensorsError(source, `metadata[${JSON.stringify(k)}] must be a string, got ${describe(v)}`);
      }
    }
    if (Object.keys(metadata).length > 0) parts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }

  const order: Plan['order'] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === METADATA_KEY) throw new SafetensorsError(source, `"${METADATA_KEY}" is reserved and cannot name a tensor`);
    if (!isSafeDType(t.dtype)) throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: unknown dtype ${describe(t.dtype)}`);
    const shape = checkShape(t.shape, source, name);
    if (!(t.data instanceof Uint8Array)) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: data must be a Uint8Array of raw bytes`);
    }
    let expected: number;
    try {
      expected = numelOf(shape) * DTYPE_SIZE[t.dtype];
    } catch {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: shape [${shape.join(', ')}] is too large`);
    }
    if (t.data.length !== expected) {
      throw new SafetensorsError(source, `tensor ${JSON.stringify(name)}: ${t.dtype} [${shape.join(', ')}] needs ${expected} bytes, data has ${t.data.length}`);
    }
    // Built by hand so that integer-like names keep sorted order (JS objects would reorder them).
    parts.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype: t.dtype, shape, data_offsets: [offset, offset + expected] })}`);
    order.push({ name, data: t.data });
    offset += expected;
  }

  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  // Pad with spaces so the data buffer starts 8-byte aligned.
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > MAX_HEADER_BYTES) throw new SafetensorsError(source, `header would be ${padded} bytes, over the limit`);
  const header = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, order, total: header.length + offset };
}

/** Serializes tensors (laid out in sorted-name order) and optional string metadata. */
export function serializeSafetensors(
  tensors: Map<string, RawTensor> | Record<string, RawTensor>,
  metadata?: Record<string, string>,
  opts: WriteOptions = {},
): Uint8Array {
  const p = plan(tensors, withChecksum(tensors, metadata, opts), '<buffer>');
  const out = new Uint8Array(p.total);
  out.set(p.header, 0);
  let pos = p.header.length;
  for (const { data } of p.order) {
    out.set(data, pos);
    pos += data.length;
  }
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, Math.min(1 << 30, bytes.length - done));
  }
}

/**
 * Writes a safetensors file atomically: the bytes go to `path.tmp-<pid>`, are fsynced, and
 * the temporary is renamed over `path`, so readers never see a half-written file.
 */
export function writeSafetensors(
  path: string,
  tensors: Map<string, RawTensor> | Record<string, RawTensor>,
  metadata?: Record<string, string>,
  opts: WriteOptions = {},
): void {
  const p = plan(tensors, withChecksum(tensors, metadata, opts), path);
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    writeAll(fd, p.header);
    for (const { data } of p.order) writeAll(fd, data);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  try {
    fs.renameSync(tmp, path);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  // Persist the rename itself; not every platform lets a directory be opened for fsync.
  try {
    const dfd = fs.openSync(nodePath.dirname(nodePath.resolve(path)), 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    /* best effort */
  }
}

// ---------------------------------------------------------------------------------------------
// Float conversions (bit-exact, round-to-nearest-even)

/** float32 -> IEEE half bits, round-to-nearest-even; overflow to ±Inf, NaN stays NaN. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32BitsToF16(bits[i]);
  return out;
}

function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) {
    if (mant === 0) return sign | 0x7c00;
    // Keep the top payload bits and force the quiet bit so the result is still a NaN.
    return sign | 0x7e00 | (mant >>> 13);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e >= 1) {
    let h = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // a carry may round up to Inf, correctly
    return sign | h;
  }
  // Subnormal half (or zero): value = m * 2^-24 with m < 1024.
  if (e < -10) return sign; // below half the smallest subnormal (2^-25): rounds to ±0
  const m = mant | 0x800000;
  const shift = 14 - e; // 14..24
  let h = m >>> shift;
  const rest = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1) === 1)) h++; // may carry into the smallest normal
  return sign | h;
}

/** IEEE half bits -> float32 (exact). */
export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    let mant = h & 0x3ff;
    if (exp === 0x1f) {
      outBits[i] = (sign | 0x7f800000 | (mant << 13)) >>> 0;
    } else if (exp !== 0) {
      outBits[i] = (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
    } else if (mant === 0) {
      outBits[i] = sign >>> 0;
    } else {
      // Normalise the subnormal: shift until the implicit bit appears.
      let e = 113;
      while ((mant & 0x400) === 0) {
        mant <<= 1;
        e--;
      }
      outBits[i] = (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
    }
  }
  return out;
}

/** bfloat16 bits -> float32 (exact). */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) outBits[i] = (src[i] << 16) >>> 0;
  return out;
}

/** float32 -> bfloat16 bits, round-to-nearest-even; NaN stays NaN (quiet). */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      out[i] = (x >>> 16) | 0x0040; // truncation alone could clear every mantissa bit
    } else {
      // Adding 0x7fff plus the lowest kept bit rounds half to even; Inf and FLT_MAX behave.
      out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Typed views of raw tensors

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Copies `bytes` into a fresh aligned buffer, byte-swapping `width`-byte words on big-endian hosts. */
function alignedCopy(bytes: Uint8Array, width: number): ArrayBuffer {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  if (!HOST_LITTLE_ENDIAN && width > 1) {
    for (let i = 0; i < copy.length; i += width) copy.subarray(i, i + width).reverse();
  }
  return copy.buffer;
}

/** Decodes a floating-point tensor (F32, F16, BF16, F64) to a new Float32Array. */
export function toFloat32(t: RawTensor): Float32Array {
  switch (t.dtype) {
    case 'F32':
      return new Float32Array(alignedCopy(t.data, 4));
    case 'F16':
      return f16ToF32(new Uint16Array(alignedCopy(t.data, 2)));
    case 'BF16':
      return bf16ToF32(new Uint16Array(alignedCopy(t.data, 2)));
    case 'F64':
      return Float32Array.from(new Float64Array(alignedCopy(t.data, 8)));
    default:
      throw new TypeError(`toFloat32: dtype ${t.dtype} is not a floating-point type`);
  }
}

/** Encodes float32 values as a raw tensor of dtype F32, F16 or BF16 (rounding to nearest even). */
export function fromFloat32(values: Float32Array, shape: number[], dtype: 'F32' | 'F16' | 'BF16' = 'F32'): RawTensor {
  if (numelOf(shape) !== values.length) {
    throw new RangeError(`fromFloat32: shape [${shape.join(', ')}] does not match ${values.length} values`);
  }
  const words: Float32Array | Uint16Array = dtype === 'F32' ? values : dtype === 'F16' ? f32ToF16(values) : f32ToBf16(values);
  const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  // Always copy so the raw tensor never aliases the caller's array.
  return { dtype, shape: [...shape], data: new Uint8Array(alignedCopy(bytes, words.BYTES_PER_ELEMENT)) };
}
