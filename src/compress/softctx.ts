/**
 * .softctx files: a stored SoftContext. A safetensors file whose tensors are `soft_tokens`
 * [batch, k, dim] and `mask` [batch, k], and/or `memory.<layer>.k` / `memory.<layer>.v`
 * [batch, kvHeads, m, headDim] and `memory_mask` [batch, m], and whose metadata holds
 * `softpress_softctx` (format version), `meta` (SoftContextMeta JSON) and a content checksum
 * (`softpress_sha256`, see io/safetensors.ts; files from before it load without one).
 *
 * Loading checks every tensor against the header and, given the base model, against the model
 * it names: names, dtypes, ranks, the batch and soft-token counts of `meta`, mask values (0/1,
 * as many real tokens per row as `meta.softTokens` says), finite values, and the base's
 * fingerprint, width, layers, KV heads and head size. A file that fails is a SoftContextError
 * naming the file and the field, before any tensor is made.
 */
import { parseSafetensors, readSafetensors, serializeSafetensors, writeSafetensors, type RawTensor, type SafeDType } from '../io/safetensors.js';
import { rawToTensor, tensorToRaw } from '../models/load.js';
import { tidy } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import type { LayerKv } from '../models/llama.js';
import type { SoftContext, SoftContextMeta } from './types.js';

const VERSION = '1';

/** A .softctx that is not a well-formed soft context (or not one for the given base model). */
export class SoftContextError extends Error {
  /** The file (or store id) the problem was found in. */
  readonly source: string;
  /** The tensor or metadata field at fault. */
  readonly field: string;
  /** 'base_mismatch' when the context was made for another base model. */
  readonly code: 'invalid' | 'base_mismatch';
  constructor(source: string, field: string, message: string, code: 'invalid' | 'base_mismatch' = 'invalid') {
    super(`${source}: ${field}: ${message}`);
    this.name = 'SoftContextError';
    this.source = source;
    this.field = field;
    this.code = code;
  }
}

function toRecords(ctx: SoftContext): { tensors: Map<string, RawTensor>; metadata: Record<string, string> } {
  const tensors = new Map<string, RawTensor>();
  tidy(() => {
    if (ctx.softTokens) tensors.set('soft_tokens', tensorToRaw(ctx.softTokens.detach(), 'soft_tokens'));
    if (ctx.mask) tensors.set('mask', tensorToRaw(ctx.mask, 'mask'));
    ctx.memoryKv?.forEach((kv, i) => {
      tensors.set(`memory.${i}.k`, tensorToRaw(kv.k.detach(), `memory.${i}.k`));
      tensors.set(`memory.${i}.v`, tensorToRaw(kv.v.detach(), `memory.${i}.v`));
    });
    if (ctx.memoryMask) tensors.set('memory_mask', tensorToRaw(ctx.memoryMask, 'memory_mask'));
  });
  return { tensors, metadata: { softpress_softctx: VERSION, meta: JSON.stringify(ctx.meta) } };
}

const FLOATS: ReadonlySet<SafeDType> = new Set(['F32', 'F16', 'BF16']);
const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/** The index of the first non-finite value of a float tensor's bytes, or -1. */
function firstNonFinite(t: RawTensor): number {
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  if (t.dtype === 'F32') {
    for (let i = 0; i < t.data.length; i += 4) if (!Number.isFinite(dv.getFloat32(i, true))) return i / 4;
  } else {
    const exp = t.dtype === 'F16' ? 0x7c00 : 0x7f80; // all-ones exponent: Inf or NaN
    for (let i = 0; i < t.data.length; i += 2) if ((dv.getUint16(i, true) & exp) === exp) return i / 2;
  }
  return -1;
}

/** Validates the metadata's `meta` JSON. */
function checkMeta(metadata: Record<string, string>, source: string): SoftContextMeta {
  const bad = (field: string, msg: string): never => {
    throw new SoftContextError(source, field, msg);
  };
  if (metadata.softpress_softctx !== VERSION)
    bad(
      'softpress_softctx',
      `not a softpress soft context (format version ${metadata.softpress_softctx === undefined ? 'missing' : JSON.stringify(metadata.softpress_softctx)}, this build reads ${VERSION})`,
    );
  let raw: unknown;
  try {
    raw = JSON.parse(metadata.meta ?? '');
  } catch {
    return bad('meta', 'missing or not valid JSON');
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return bad('meta', 'must be a JSON object');
  const m = raw as Record<string, unknown>;
  if (typeof m.method !== 'string' || m.method === '') bad('meta.method', 'must be a non-empty string');
  if (typeof m.baseFingerprint !== 'string') bad('meta.baseFingerprint', 'must be a string');
  const budget = m.budget as Record<string, unknown> | null;
  if (budget === null || typeof budget !== 'object' || Array.isArray(budget)) return bad('meta.budget', 'must be an object {ratio} or {tokens}');
  const hasRatio = budget.ratio !== undefined;
  if (hasRatio === (budget.tokens !== undefined)) bad('meta.budget', 'must give exactly one of ratio or tokens');
  if (hasRatio && !(typeof budget.ratio === 'number' && Number.isFinite(budget.ratio) && budget.ratio >= 1))
    bad('meta.budget.ratio', `must be a number >= 1, got ${JSON.stringify(budget.ratio)}`);
  if (!hasRatio && !isCount(budget.tokens)) bad('meta.budget.tokens', `must be an integer >= 0, got ${JSON.stringify(budget.tokens)}`);
  const counts = (field: 'sourceTokens' | 'softTokens'): number[] => {
    const xs = m[field];
    if (!Array.isArray(xs) || xs.length === 0) return bad(`meta.${field}`, 'must be a non-empty array of counts');
    const i = xs.findIndex((x) => !isCount(x));
    if (i >= 0) bad(`meta.${field}[${i}]`, `must be a non-negative integer, got ${JSON.stringify(xs[i])}`);
    return xs as number[];
  };
  const sourceTokens = counts('sourceTokens');
  const softTokens = counts('softTokens');
  if (softTokens.length !== sourceTokens.length)
    bad('meta.softTokens', `has ${softTokens.length} counts for ${sourceTokens.length} contexts (meta.sourceTokens)`);
  return raw as SoftContextMeta;
}

/**
 * Checks every record against the header's counts and the base model; throws a
 * SoftContextError before any tensor is made.
 */
function checkRecords(tensors: Map<string, RawTensor>, meta: SoftContextMeta, source: string, base?: LlamaModel): { layers: number } {
  const bad = (field: string, msg: string): never => {
    throw new SoftContextError(source, field, msg);
  };
  const shapeOf = (t: RawTensor) => `[${t.shape.join(', ')}]`;
  const b = meta.sourceTokens.length;
  const k = Math.max(0, ...meta.softTokens);
  let layers = 0;
  for (const name of tensors.keys()) {
    const mem = /^memory\.(\d+)\.[kv]$/.exec(name);
    if (mem) {
      const i = Number(mem[1]);
      if (String(i) !== mem[1]) bad(name, 'layer numbers are written without leading zeros');
      layers = Math.max(layers, i + 1);
    } else if (name !== 'soft_tokens' && name !== 'mask' && name !== 'memory_mask') {
      bad(name, 'unknown tensor (a soft context holds soft_tokens, mask, memory.<layer>.k/v and memory_mask)');
    }
  }
  const soft = tensors.get('soft_tokens');
  if (!soft && layers === 0) bad('soft_tokens', 'missing: the file holds neither soft tokens nor memory');
  const floatTensor = (name: string, t: RawTensor, rank: number) => {
    if (!FLOATS.has(t.dtype)) bad(name, `dtype ${t.dtype}, expected F32, F16 or BF16`);
    if (t.shape.length !== rank) bad(name, `shape ${shapeOf(t)} has rank ${t.shape.length}, expected ${rank}`);
    if (t.shape[0] !== b) bad(name, `shape ${shapeOf(t)} is for ${t.shape[0]} contexts, meta.sourceTokens for ${b}`);
    const at = firstNonFinite(t);
    if (at >= 0) bad(name, `element ${at} is not finite`);
  };
  const maskTensor = (name: string, t: RawTensor, cols: number) => {
    if (t.dtype !== 'BOOL') bad(name, `dtype ${t.dtype}, expected BOOL`);
    if (t.shape.length !== 2 || t.shape[0] !== b || t.shape[1] !== cols) bad(name, `shape ${shapeOf(t)}, expected [${b}, ${cols}]`);
    for (let r = 0; r < b; r++) {
      let real = 0;
      for (let j = 0; j < cols; j++) {
        const v = t.data[r * cols + j];
        if (v > 1) bad(name, `element [${r}, ${j}] is ${v}, a BOOL is 0 or 1`);
        real += v;
      }
      if (real !== meta.softTokens[r]) bad(name, `row ${r} marks ${real} real positions, meta.softTokens[${r}] says ${meta.softTokens[r]}`);
    }
  };
  if (soft) {
    floatTensor('soft_tokens', soft, 3);
    if (soft.shape[1] !== k) bad('soft_tokens', `shape ${shapeOf(soft)} holds ${soft.shape[1]} soft tokens per context, meta.softTokens says at most ${k}`);
    if (base && soft.shape[2] !== base.dim) bad('soft_tokens', `shape ${shapeOf(soft)} has width ${soft.shape[2]}, the base model ${base.dim}`);
    const mask = tensors.get('mask');
    if (mask) maskTensor('mask', mask, k);
  } else if (tensors.has('mask')) {
    bad('mask', 'present without soft_tokens');
  }
  if (layers > 0) {
    if (base && layers !== base.config.numLayers) bad(`memory.${layers - 1}.k`, `memory for ${layers} layers, the base model has ${base.config.numLayers}`);
    let first: RawTensor | undefined;
    for (let i = 0; i < layers; i++) {
      for (const part of ['k', 'v']) {
        const name = `memory.${i}.${part}`;
        const t = tensors.get(name);
        if (!t) return bad(name, `missing: memory layer ${i} is incomplete`);
        floatTensor(name, t, 4);
        if (!first) {
          first = t;
          if (t.shape[2] !== k) bad(name, `shape ${shapeOf(t)} holds ${t.shape[2]} memory slots, meta.softTokens says ${k}`);
          if (base && (t.shape[1] !== base.config.numKvHeads || t.shape[3] !== base.config.headDim)) {
            bad(name, `shape ${shapeOf(t)} does not fit the base model's ${base.config.numKvHeads} KV heads of size ${base.config.headDim}`);
          }
        } else if (t.dtype !== first.dtype || t.shape.join() !== first.shape.join()) {
          bad(name, `${t.dtype} ${shapeOf(t)} differs from memory.0.k (${first.dtype} ${shapeOf(first)})`);
        }
      }
    }
    const mm = tensors.get('memory_mask');
    if (mm) maskTensor('memory_mask', mm, k);
  } else if (tensors.has('memory_mask')) {
    bad('memory_mask', 'present without memory');
  }
  return { layers };
}

function fromRecords(tensors: Map<string, RawTensor>, metadata: Record<string, string>, source: string, base?: LlamaModel): SoftContext {
  const meta = checkMeta(metadata, source);
  if (base && meta.baseFingerprint !== base.fingerprint()) {
    throw new SoftContextError(
      source,
      'meta.baseFingerprint',
      `made for base model ${meta.baseFingerprint}, but the loaded base model is ${base.fingerprint()}; compress the text again with this model`,
      'base_mismatch',
    );
  }
  const { layers } = checkRecords(tensors, meta, source, base);
  const made: { free(): void }[] = [];
  const get = (name: string) => {
    const r = tensors.get(name);
    if (!r) return undefined;
    const t = rawToTensor(r, name).keep();
    made.push(t);
    return t;
  };
  try {
    const ctx: SoftContext = { meta, softTokens: get('soft_tokens'), mask: get('mask'), memoryMask: get('memory_mask') };
    if (layers) {
      const kv: LayerKv[] = [];
      for (let i = 0; i < layers; i++) kv.push({ k: get(`memory.${i}.k`)!, v: get(`memory.${i}.v`)! });
      ctx.memoryKv = kv;
    }
    return ctx;
  } catch (e) {
    for (const t of made) t.free();
    throw e;
  }
}

export function saveSoftContext(path: string, ctx: SoftContext): void {
  const { tensors, metadata } = toRecords(ctx);
  writeSafetensors(path, tensors, metadata, { checksum: true });
}

export function serializeSoftContext(ctx: SoftContext): Uint8Array {
  const { tensors, metadata } = toRecords(ctx);
  return serializeSafetensors(tensors, metadata, { checksum: true });
}

/** Loads a .softctx; with a base model, refuses one made for another model. */
export function loadSoftContext(path: string, base?: LlamaModel): SoftContext {
  const { tensors, metadata } = readSafetensors(path);
  return fromRecords(tensors, metadata, path, base);
}

export function parseSoftContext(bytes: Uint8Array, base?: LlamaModel, source = '<softctx>'): SoftContext {
  const { tensors, metadata } = parseSafetensors(bytes, source);
  return fromRecords(tensors, metadata, source, base);
}

/** Frees a context's tensors. */
export function freeSoftContext(ctx: SoftContext): void {
  ctx.softTokens?.free();
  ctx.mask?.free();
  ctx.memoryMask?.free();
  for (const kv of ctx.memoryKv ?? []) {
    kv.k.free();
    kv.v.free();
  }
}
