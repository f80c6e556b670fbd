/**
 * Compressors by name. A method registers a factory (new, untrained, with options) and is
 * saved as a folder: compressor.json (its config, the base fingerprint) + weights.safetensors
 * (+ decoder.safetensors for methods that adapt the decoder).
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tidy, type DType, type Tensor } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import { rawToTensor, tensorToRaw } from '../models/load.js';
import { readSafetensors, writeSafetensors, type RawTensor } from '../io/safetensors.js';
import type { Tokenizer } from '../models/tokenizer.js';
import type { Compressor, CompressorConfig } from './types.js';
import type { MethodRecipe } from './recipe.js';

/**
 * What a new compressor may read besides its options: the base model's tokenizer, when the
 * caller has it (e.g. whether sequences start with BOS). Saved compressors are rebuilt from
 * their compressor.json alone, so whatever a factory derives from it must be in its config.
 */
export interface CompressorEnv {
  tokenizer?: Tokenizer;
}

/**
 * Whether a new compressor's encoder input starts with the base's BOS: when the base has a BOS
 * id and its tokenizer starts sequences with it (softpress-base does; SmolLM2's tokenizer adds
 * none, and its BOS id is the chat's <|im_start|>). Without a tokenizer: when the base has one.
 */
export function encoderBosDefault(base: LlamaModel, env: CompressorEnv = {}): boolean {
  return base.config.bosTokenId !== undefined && env.tokenizer?.addsBos !== false;
}

export type CompressorFactory = (base: LlamaModel, options: Record<string, unknown>, env: CompressorEnv) => Compressor;

export interface CompressorRegistration {
  /** The method's training recipe (recipe.ts), used by `softpress train`. */
  recipe?: MethodRecipe;
  /**
   * Options a compressor.json saved before an option existed is read with: the layout that
   * compressor was trained with (new compressors get the current defaults instead).
   */
  savedDefaults?: Record<string, unknown>;
}

interface Entry extends CompressorRegistration {
  factory: CompressorFactory;
  about: string;
  /** Learned methods have weights to train and save; strategies do not. */
  learned: boolean;
}

const registry = new Map<string, Entry>();

export function registerCompressor(method: string, about: string, learned: boolean, factory: CompressorFactory, extra: CompressorRegistration = {}): void {
  if (registry.has(method)) throw new Error(`compressor '${method}' is already registered`);
  registry.set(method, { factory, about, learned, ...extra });
}

/** A method's training recipe (undefined for strategies and methods without one). */
export function compressorRecipe(method: string): MethodRecipe | undefined {
  return registry.get(method)?.recipe;
}

export function compressorNames(opts: { learnedOnly?: boolean } = {}): string[] {
  return [...registry.entries()].filter(([, e]) => !opts.learnedOnly || e.learned).map(([n]) => n);
}

export function compressorAbout(method: string): string {
  return registry.get(method)?.about ?? '';
}

export function isLearned(method: string): boolean {
  const e = registry.get(method);
  if (!e) throw new Error(`unknown compressor '${method}' (known: ${compressorNames().join(', ')})`);
  return e.learned;
}

/** A new compressor of a registered method over a base model. */
export function createCompressor(method: string, base: LlamaModel, options: Record<string, unknown> = {}, env: CompressorEnv = {}): Compressor {
  const e = registry.get(method);
  if (!e) throw new Error(`unknown compressor '${method}' (known: ${compressorNames().join(', ')})`);
  return e.factory(base, options, env);
}

function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
  renameSync(tmp, path);
}

/**
 * Saves a compressor's config and weights into dir; opts.dtype stores floating weights in
 * another dtype (float16 for shipping; loading converts back to the parameters' dtype). The
 * weight files carry a content checksum that loading verifies (io/safetensors.ts).
 */
export function saveCompressor(c: Compressor, dir: string, extra: Record<string, unknown> = {}, opts: { dtype?: DType } = {}): void {
  mkdirSync(dir, { recursive: true });
  const raw = (t: Tensor, name: string) => tensorToRaw(opts.dtype && t.isFloatingPoint ? t.detach().to(opts.dtype) : t.detach(), name);
  tidy(() => {
    if (c.module) {
      const tensors = new Map<string, RawTensor>();
      for (const [name, p] of c.module.namedParameters()) tensors.set(name, raw(p.value, name));
      writeSafetensors(join(dir, 'weights.safetensors'), tensors, { method: c.method }, { checksum: true });
    }
    if (c.decoderLora) {
      const tensors = new Map<string, RawTensor>();
      for (const [name, p] of c.decoderLora.namedParameters()) tensors.set(name, raw(p.value, name));
      writeSafetensors(join(dir, 'decoder.safetensors'), tensors, { method: c.method }, { checksum: true });
    }
  });
  writeJsonAtomic(join(dir, 'compressor.json'), { ...c.config, baseFingerprint: c.base.fingerprint(), ...extra });
}

/** Loads a saved compressor over its base model; refuses a different base model. */
export function loadCompressor(dir: string, base: LlamaModel): Compressor {
  const cfgPath = join(dir, 'compressor.json');
  if (!existsSync(cfgPath)) throw new Error(`${dir}: no compressor.json (not a saved compressor)`);
  let cfg: CompressorConfig & { baseFingerprint?: string };
  try {
    cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as CompressorConfig & { baseFingerprint?: string };
  } catch (e) {
    throw new Error(`${cfgPath}: ${(e as Error).message}`);
  }
  if (cfg.baseFingerprint && cfg.baseFingerprint !== base.fingerprint()) {
    throw new Error(`${dir}: this compressor was trained for base model ${cfg.baseFingerprint}, but the loaded base model is ${base.fingerprint()}`);
  }
  // Options the file predates take the layout it was saved with.
  const saved = registry.get(cfg.method)?.savedDefaults ?? {};
  const c = createCompressor(cfg.method, base, { ...saved, ...cfg });
  const load = (
    file: string,
    module: { namedParameters(): [string, { load(t: import('../tensor/index.js').Tensor, name: string): void }][] } | null | undefined,
  ) => {
    if (!module) return;
    const path = join(dir, file);
    if (!existsSync(path)) throw new Error(`${dir}: missing ${file}`);
    const tensors = readSafetensors(path).tensors;
    for (const [name, p] of module.namedParameters()) {
      const raw = tensors.get(name);
      if (!raw) throw new Error(`${path}: no tensor '${name}'`);
      tidy(() => p.load(rawToTensor(raw, name), name));
    }
  };
  load('weights.safetensors', c.module);
  load('decoder.safetensors', c.decoderLora);
  c.setTraining(false);
  return c;
}

/**
 * Frees a compressor's parameters, decoder delta and caches now (not at garbage collection).
 * The compressor cannot be used afterwards; the base model is not touched.
 */
export function freeCompressor(c: Compressor): void {
  c.dispose?.();
  c.module?.free();
  c.decoderLora?.free();
}
