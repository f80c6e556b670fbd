/**
 * .softctx files: a stored SoftContext. A safetensors file whose tensors are `soft_tokens`
 * [batch, k, dim] and `mask` [batch, k], and/or `memory.<layer>.k` / `memory.<layer>.v`, and
 * whose metadata holds `softpress_softctx` (format version) and `meta` (SoftContextMeta JSON).
 * Loading checks the base model's fingerprint and refuses a mismatch.
 */
import { parseSafetensors, readSafetensors, serializeSafetensors, writeSafetensors, type RawTensor } from '../io/safetensors.js';
import { rawToTensor, tensorToRaw } from '../models/load.js';
import { tidy } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import type { SoftContext, SoftContextMeta } from './types.js';

const VERSION = '1';

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

function fromRecords(tensors: Map<string, RawTensor>, metadata: Record<string, string>, source: string, base?: LlamaModel): SoftContext {
  if (metadata.softpress_softctx !== VERSION) throw new Error(`${source}: not a softpress soft context (softctx version ${metadata.softpress_softctx ?? 'missing'})`);
  let meta: SoftContextMeta;
  try {
    meta = JSON.parse(metadata.meta ?? '') as SoftContextMeta;
  } catch {
    throw new Error(`${source}: bad 'meta' in the soft context's metadata`);
  }
  if (!meta || typeof meta.method !== 'string' || !Array.isArray(meta.sourceTokens) || !Array.isArray(meta.softTokens)) throw new Error(`${source}: incomplete soft context metadata`);
  if (base && meta.baseFingerprint !== base.fingerprint()) {
    throw new Error(`${source}: made for base model ${meta.baseFingerprint}, but the loaded base model is ${base.fingerprint()}; compress the text again with this model`);
  }
  const get = (name: string) => {
    const r = tensors.get(name);
    return r ? rawToTensor(r, name).keep() : undefined;
  };
  const ctx: SoftContext = { meta, softTokens: get('soft_tokens'), mask: get('mask'), memoryMask: get('memory_mask') };
  const layers = [...tensors.keys()].filter((n) => /^memory\.\d+\.k$/.test(n)).length;
  if (layers) {
    ctx.memoryKv = [];
    for (let i = 0; i < layers; i++) {
      const k = get(`memory.${i}.k`);
      const v = get(`memory.${i}.v`);
      if (!k || !v) throw new Error(`${source}: memory layer ${i} is incomplete`);
      ctx.memoryKv.push({ k, v });
    }
  }
  if (!ctx.softTokens && !ctx.memoryKv) throw new Error(`${source}: holds neither soft tokens nor memory`);
  const b = meta.sourceTokens.length;
  if (ctx.softTokens && (ctx.softTokens.rank !== 3 || ctx.softTokens.size(0) !== b)) throw new Error(`${source}: soft_tokens ${ctx.softTokens.describe()} do not match ${b} contexts`);
  if (base && ctx.softTokens && ctx.softTokens.size(2) !== base.dim) throw new Error(`${source}: soft tokens have dim ${ctx.softTokens.size(2)}, the model ${base.dim}`);
  return ctx;
}

export function saveSoftContext(path: string, ctx: SoftContext): void {
  const { tensors, metadata } = toRecords(ctx);
  writeSafetensors(path, tensors, metadata);
}

export function serializeSoftContext(ctx: SoftContext): Uint8Array {
  const { tensors, metadata } = toRecords(ctx);
  return serializeSafetensors(tensors, metadata);
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
