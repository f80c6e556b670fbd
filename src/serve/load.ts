/**
 * Loading what a server serves: the base model and its tokenizer (a Hugging Face folder, a GGUF
 * file, or a cached model's name), the compressors given and those found beside the base model
 * for its fingerprint, and the id clients pass as `model`.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { loadModel } from '../models/load.js';
import { MODELS, cachedModelPath, namedModel, resolveModelRef } from '../io/model-source.js';
import { freeCompressor, loadCompressor, type Compressor } from '../compress/index.js';

export interface ServedModelOptions {
  /**
   * The base model: a Hugging Face folder (with tokenizer.json), a GGUF file, or the name of a
   * model in the cache (e.g. smollm2-135m-instruct; the CLI pulls it first).
   */
  base: string;
  /** Compressor folders to load (each fails loudly). */
  compressorDirs?: string[];
  /** Also load compressors found beside the base model whose fingerprint matches (default true). */
  discover?: boolean;
  log?: (line: string) => void;
}

export interface ServedModel {
  model: LlamaModel;
  tokenizer: Tokenizer;
  /** The id clients pass as `model`. */
  modelName: string;
  /** The base model's file or folder. */
  path: string;
  compressors: Compressor[];
  /** The compressor folders loaded, in order (a worker thread loads the same ones). */
  compressorDirs: string[];
}

/**
 * Compressor folders in and beside the base folder (those holding compressor.json). For a base
 * model that is a file (a GGUF, e.g. a cached model), the base folder is the one holding it.
 */
export function findCompressorDirs(base: string): string[] {
  const baseDir = existsSync(base) && !statSync(base).isDirectory() ? dirname(resolve(base)) : base;
  const out: string[] = [];
  const scan = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      try {
        if (statSync(p).isDirectory() && existsSync(join(p, 'compressor.json'))) out.push(p);
      } catch {
        // vanished while scanning
      }
    }
  };
  scan(baseDir);
  scan(dirname(resolve(baseDir)));
  return [...new Set(out.map((p) => resolve(p)))].sort();
}

/**
 * The id clients pass as `model` for a base model: a model name as given (or a cached named
 * model's file, by its name), else the file name without its extension, or the folder name.
 */
export function baseModelName(ref: string, path: string): string {
  if (!existsSync(ref) && namedModel(ref)) return ref;
  const abs = resolve(path);
  for (const m of MODELS) {
    const cached = cachedModelPath(m);
    if (cached && resolve(cached) === abs) return m.name;
  }
  const name = basename(abs);
  return existsSync(abs) && statSync(abs).isDirectory() ? name : name.replace(/\.(gguf|bin)$/i, '');
}

/** Loads the base model, its tokenizer and the compressors (given, then discovered). */
export function loadServedModel(o: ServedModelOptions): ServedModel {
  const log = o.log ?? (() => {});
  const path = resolveModelRef(o.base); // a name not in the cache: an error that says to pull it
  if (!existsSync(path) || (statSync(path).isDirectory() && !existsSync(join(path, 'config.json')))) {
    throw new Error(
      `no base model at ${o.base} (a folder with config.json, model.safetensors and tokenizer.json, a .gguf file, or a model name such as smollm2-135m-instruct; pretraining writes models/softpress-base) — pass --base`,
    );
  }
  const { model, tokenizer } = loadModel(path);
  const compressors: Compressor[] = [];
  const dirs: string[] = [];
  try {
    if (!tokenizer) throw new Error(`${o.base}: no tokenizer.json or tokenizer.bin beside the model`);
    for (const dir of o.compressorDirs ?? []) {
      const c = loadCompressor(dir, model);
      compressors.push(c);
      dirs.push(dir);
      log(`loaded compressor '${c.method}' from ${dir}`);
    }
    if (o.discover ?? true) {
      const explicit = new Set((o.compressorDirs ?? []).map((d) => resolve(d)));
      const have = new Set(compressors.map((c) => c.method));
      for (const dir of findCompressorDirs(path)) {
        if (explicit.has(dir)) continue;
        try {
          const cfg = JSON.parse(readFileSync(join(dir, 'compressor.json'), 'utf8')) as { method?: string; baseFingerprint?: string };
          if (cfg.baseFingerprint && cfg.baseFingerprint !== model.fingerprint()) continue; // for another base model
          if (typeof cfg.method !== 'string' || have.has(cfg.method)) continue;
          const c = loadCompressor(dir, model);
          compressors.push(c);
          dirs.push(dir);
          have.add(c.method);
          log(`found compressor '${c.method}' in ${dir}`);
        } catch (e) {
          log(`skipped ${dir}: ${(e as Error).message}`);
        }
      }
    }
    return { model, tokenizer, modelName: baseModelName(o.base, path), path, compressors, compressorDirs: dirs };
  } catch (e) {
    freeServedModel({ model, compressors });
    throw e;
  }
}

export function freeServedModel(m: { model: LlamaModel; compressors: Compressor[] }): void {
  for (const c of m.compressors) freeCompressor(c);
  m.model.free();
}
