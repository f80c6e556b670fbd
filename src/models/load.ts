/**
 * Loading and saving decoders: Hugging Face folders (config.json + model.safetensors, single or
 * sharded, + tokenizer.json), GGUF files (llama.cpp's format, tokenizer included), llama2.c
 * checkpoints (+ their tokenizer .bin), and named models from the cache (src/io/model-source.ts).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fromBytes, noGrad, tensor, tidy, type DType, type Tensor } from '../tensor/index.js';
import { readSafetensors, writeSafetensors, type RawTensor, type SafeDType } from '../io/safetensors.js';
import { Llama2cTokenizer, llama2cToHfConfig, readLlama2cCheckpoint } from '../io/llama2c.js';
import { configFromHf, configToHf, type LlamaConfig } from './config.js';
import { LlamaModel } from './llama.js';
import { withoutInit } from '../nn/layers.js';
import { HfTokenizer } from './hf-tokenizer.js';
import type { Tokenizer } from './tokenizer.js';
import { isGgufPath, readGgufModel } from './gguf.js';
import { resolveModelRef } from '../io/model-source.js';

export interface LoadedModel {
  model: LlamaModel;
  tokenizer?: Tokenizer;
  /** Where it came from (file or folder). */
  source: string;
}

const SAFE_TO_DTYPE: Partial<Record<SafeDType, DType>> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16', F64: 'float64', I64: 'int64', I32: 'int32', U8: 'uint8', BOOL: 'bool' };
const DTYPE_TO_SAFE: Partial<Record<DType, SafeDType>> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', float64: 'F64', int64: 'I64', int32: 'I32', uint8: 'U8', bool: 'BOOL' };

/** A safetensors record as a tensor (copied). */
export function rawToTensor(raw: RawTensor, name = 'tensor'): Tensor {
  const dtype = SAFE_TO_DTYPE[raw.dtype];
  if (!dtype) throw new Error(`${name}: safetensors dtype ${raw.dtype} is not supported here`);
  return fromBytes(raw.data, dtype, raw.shape);
}

/** A tensor as a safetensors record. */
export function tensorToRaw(t: Tensor, name = 'tensor'): RawTensor {
  const dtype = DTYPE_TO_SAFE[t.dtype];
  if (!dtype) throw new Error(`${name}: dtype ${t.dtype} cannot be stored in safetensors here`);
  return { dtype, shape: t.shape, data: t.contiguous().toBytes() };
}

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

/** Reads all tensors of a Hugging Face folder (model.safetensors or its sharded index). */
export function readHfWeights(dir: string): Map<string, RawTensor> {
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return readSafetensors(single).tensors;
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (!existsSync(indexPath)) throw new Error(`${dir}: no model.safetensors or model.safetensors.index.json`);
  const index = readJson(indexPath) as { weight_map?: Record<string, string> };
  if (!index.weight_map || typeof index.weight_map !== 'object') throw new Error(`${indexPath}: missing weight_map`);
  const out = new Map<string, RawTensor>();
  for (const shard of new Set(Object.values(index.weight_map))) {
    if (shard.includes('/') || shard.includes('..')) throw new Error(`${indexPath}: bad shard name '${shard}'`);
    for (const [name, t] of readSafetensors(join(dir, shard)).tensors) out.set(name, t);
  }
  for (const name of Object.keys(index.weight_map)) if (!out.has(name)) throw new Error(`${indexPath}: tensor '${name}' missing from its shard`);
  return out;
}

/** Copies named tensors into a model; every model parameter must be present. */
/** Copies named weights into a model (names and shapes must match; dtypes are converted). */
export function loadWeights(model: LlamaModel, weights: Map<string, RawTensor | { shape: number[]; data: Float32Array }>, source: string): void {
  // Tied heads may still be stored; rotary caches of some exporters too.
  const skip = (n: string) => (model.config.tieEmbeddings && n === 'lm_head.weight') || n.endsWith('rotary_emb.inv_freq');
  const own = new Map(model.namedParameters());
  const missing = [...own.keys()].filter((n) => !weights.has(n));
  if (missing.length) throw new Error(`${source}: missing weights ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`);
  const unexpected = [...weights.keys()].filter((n) => !own.has(n) && !skip(n));
  if (unexpected.length) throw new Error(`${source}: unexpected weights ${unexpected.slice(0, 5).join(', ')}`);
  for (const [name, p] of own) {
    const w = weights.get(name)!;
    tidy(() => {
      const t = 'dtype' in w ? rawToTensor(w, name) : tensor(w.data, w.shape);
      const want = p.value.shape;
      if (want.join() !== t.shape.join()) throw new Error(`${source}: ${name} has shape [${t.shape}] but the config implies [${want}]`);
      p.load(t.dtype === p.value.dtype ? t : t.to(p.value.dtype), name);
    });
  }
}

/** Finds llama2.c's tokenizer next to a checkpoint: tokenizer.bin or a single tok*.bin. */
function findLlama2cTokenizer(checkpoint: string): string | undefined {
  const dir = dirname(checkpoint);
  const named = join(dir, 'tokenizer.bin');
  if (existsSync(named)) return named;
  const toks = readdirSync(dir).filter((f) => /^tok\d*\.bin$/.test(f));
  return toks.length === 1 ? join(dir, toks[0]) : undefined;
}

export function loadTokenizerFromDir(dir: string, cfg: LlamaConfig): Tokenizer | undefined {
  if (existsSync(join(dir, 'tokenizer.json'))) return HfTokenizer.fromDir(dir, { bos: cfg.bosTokenId, eos: cfg.eosTokenId });
  if (existsSync(join(dir, 'tokenizer.bin'))) return Llama2cTokenizer.load(join(dir, 'tokenizer.bin'));
  return undefined;
}

/**
 * Loads a decoder from a Hugging Face folder, a GGUF file (dequantized to float32) or a llama2.c
 * .bin checkpoint, with its tokenizer when one is found (opts.tokenizer names one explicitly);
 * `ref` may also name a model of the cache (e.g. smollm2-135m-instruct). dtype converts the
 * weights.
 */
export function loadModel(ref: string, opts: { tokenizer?: string; dtype?: DType } = {}): LoadedModel {
  const path = resolveModelRef(ref);
  if (!existsSync(path)) throw new Error(`model not found: ${path}`);
  let model: LlamaModel;
  let tokenizer: Tokenizer | undefined;
  if (isGgufPath(path)) {
    const parts = readGgufModel(path);
    model = noGrad(() => withoutInit(() => new LlamaModel(parts.config)));
    loadWeights(model, parts.weights, path);
    tokenizer = opts.tokenizer ? openTokenizer(opts.tokenizer, parts.config) : parts.tokenizer;
  } else if (statSync(path).isDirectory()) {
    const cfg = configFromHf(readJson(join(path, 'config.json')), join(path, 'config.json'));
    model = noGrad(() => withoutInit(() => new LlamaModel(cfg)));
    loadWeights(model, readHfWeights(path), path);
    tokenizer = opts.tokenizer ? openTokenizer(opts.tokenizer, cfg) : loadTokenizerFromDir(path, cfg);
  } else {
    const { config, weights } = readLlama2cCheckpoint(path);
    const cfg = configFromHf(llama2cToHfConfig(config) as unknown as Record<string, unknown>, path);
    model = noGrad(() => withoutInit(() => new LlamaModel(cfg)));
    loadWeights(model, weights, path);
    const tokPath = opts.tokenizer ?? findLlama2cTokenizer(path);
    tokenizer = tokPath ? openTokenizer(tokPath, cfg) : undefined;
  }
  if (opts.dtype && opts.dtype !== model.dtype) model.toDtype(opts.dtype);
  model.freeze().eval();
  return { model, tokenizer, source: path };
}

function openTokenizer(path: string, cfg: LlamaConfig): Tokenizer {
  if (statSync(path).isDirectory()) {
    const t = loadTokenizerFromDir(path, cfg);
    if (!t) throw new Error(`${path}: no tokenizer.json or tokenizer.bin`);
    return t;
  }
  if (basename(path).endsWith('.json')) return HfTokenizer.fromDir(dirname(path), { bos: cfg.bosTokenId, eos: cfg.eosTokenId });
  return Llama2cTokenizer.load(path, cfg.vocabSize);
}

/**
 * Writes a Hugging Face folder: config.json and model.safetensors (dtype converts floating
 * weights, e.g. float16 for shipping). Files are written atomically.
 */
export function saveModel(model: LlamaModel, dir: string, opts: { dtype?: DType; metadata?: Record<string, string> } = {}): void {
  mkdirSync(dir, { recursive: true });
  const tensors = new Map<string, RawTensor>();
  tidy(() => {
    for (const [name, p] of model.namedParameters()) {
      if (name.includes('lora_')) continue; // adapters are saved with their compressor
      const t = opts.dtype && p.value.isFloatingPoint ? p.value.to(opts.dtype) : p.value;
      tensors.set(name, tensorToRaw(t.detach(), name));
    }
  });
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt', ...opts.metadata });
  const cfg = { ...configToHf(model.config), torch_dtype: opts.dtype ?? model.dtype };
  const tmp = join(dir, `config.json.tmp-${process.pid}`);
  writeFileSync(tmp, JSON.stringify(cfg, null, 2) + '\n');
  renameSync(tmp, join(dir, 'config.json'));
}
