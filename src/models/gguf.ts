/**
 * A Llama-family decoder from a GGUF file (llama.cpp's format): the configuration from the
 * `<arch>.*` metadata, every tensor dequantized to float32 under its Hugging Face name, and the
 * tokenizer and chat template from the `tokenizer.*` metadata.
 *
 * llama.cpp's converter permutes the rows of the Llama query and key projections so that its
 * RoPE can rotate adjacent pairs (dims 2j, 2j+1); our decoder rotates j with j + headDim/2 as
 * Hugging Face does, so those rows are permuted back here (as transformers does when it loads a
 * GGUF). Qwen2 files keep Hugging Face's layout (llama.cpp runs them with NeoX-style RoPE).
 */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { GgufError, metaNumber, metaString, readGguf, readGgufTensor, type GgufFile } from '../io/gguf.js';
import { ggufTokenizer } from '../io/gguf-tokenizer.js';
import { configFromHf, type LlamaConfig } from './config.js';
import { HfTokenizer } from './hf-tokenizer.js';

/** Architectures read from GGUF, and whether llama.cpp permuted their q/k rows. */
const ARCHITECTURES: Record<string, { modelType: string; permutedQk: boolean }> = {
  llama: { modelType: 'llama', permutedQk: true },
  mistral: { modelType: 'mistral', permutedQk: true },
  qwen2: { modelType: 'qwen2', permutedQk: false },
};

/** The Hugging Face config.json object that a GGUF file's metadata describes. */
export function ggufHfConfig(file: GgufFile): Record<string, unknown> {
  const arch = metaString(file, 'general.architecture');
  const known = ARCHITECTURES[arch];
  if (!known) throw new GgufError(file.path, `architecture '${arch}' is not supported (${Object.keys(ARCHITECTURES).join(', ')})`, { field: 'general.architecture' });
  const key = (k: string) => `${arch}.${k}`;
  const opt = (k: string): number | undefined => (file.metadata.has(key(k)) ? metaNumber(file, key(k)) : undefined);
  const hidden = metaNumber(file, key('embedding_length'));
  const heads = metaNumber(file, key('attention.head_count'));
  const headDim = opt('attention.key_length') ?? hidden / heads;
  const ropeDims = opt('rope.dimension_count');
  if (ropeDims !== undefined && ropeDims !== headDim) {
    throw new GgufError(file.path, `${key('rope.dimension_count')} = ${ropeDims} rotates part of each head (head dim ${headDim}); partial RoPE is not supported`, { field: key('rope.dimension_count') });
  }
  if (file.tensors.has('rope_freqs.weight')) throw new GgufError(file.path, 'rope_freqs.weight (per-frequency RoPE factors) is not supported', { field: 'rope_freqs.weight' });
  const scalingType = file.metadata.has(key('rope.scaling.type')) ? metaString(file, key('rope.scaling.type')) : 'none';
  let ropeScaling: Record<string, unknown> | undefined;
  if (scalingType === 'linear') ropeScaling = { rope_type: 'linear', factor: metaNumber(file, key('rope.scaling.factor')) };
  else if (scalingType !== 'none') throw new GgufError(file.path, `${key('rope.scaling.type')} '${scalingType}' is not supported (none, linear)`, { field: key('rope.scaling.type') });

  const embed = file.tensors.get('token_embd.weight');
  if (!embed) throw new GgufError(file.path, 'no token_embd.weight tensor', { field: 'token_embd.weight' });
  const vocab = opt('vocab_size') ?? embed.shape[0];
  const bos = file.metadata.get('tokenizer.ggml.bos_token_id');
  const eos = file.metadata.get('tokenizer.ggml.eos_token_id');
  return {
    model_type: known.modelType,
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: metaNumber(file, key('feed_forward_length')),
    num_hidden_layers: metaNumber(file, key('block_count')),
    num_attention_heads: heads,
    num_key_value_heads: opt('attention.head_count_kv') ?? heads,
    head_dim: headDim,
    max_position_embeddings: opt('context_length') ?? 2048,
    rms_norm_eps: metaNumber(file, key('attention.layer_norm_rms_epsilon')),
    rope_theta: opt('rope.freq_base') ?? 10000,
    ...(ropeScaling ? { rope_scaling: ropeScaling } : {}),
    tie_word_embeddings: !file.tensors.has('output.weight'),
    attention_bias: file.tensors.has('blk.0.attn_q.bias'),
    ...(typeof bos === 'number' ? { bos_token_id: bos } : {}),
    ...(typeof eos === 'number' ? { eos_token_id: eos } : {}),
  };
}

/** GGUF tensor names to Hugging Face names; blocks are `blk.N.*`. */
const BLOCK_NAMES: Record<string, string> = {
  'attn_norm.weight': 'input_layernorm.weight',
  'attn_q.weight': 'self_attn.q_proj.weight',
  'attn_k.weight': 'self_attn.k_proj.weight',
  'attn_v.weight': 'self_attn.v_proj.weight',
  'attn_q.bias': 'self_attn.q_proj.bias',
  'attn_k.bias': 'self_attn.k_proj.bias',
  'attn_v.bias': 'self_attn.v_proj.bias',
  'attn_output.weight': 'self_attn.o_proj.weight',
  'ffn_norm.weight': 'post_attention_layernorm.weight',
  'ffn_gate.weight': 'mlp.gate_proj.weight',
  'ffn_up.weight': 'mlp.up_proj.weight',
  'ffn_down.weight': 'mlp.down_proj.weight',
};
const TOP_NAMES: Record<string, string> = { 'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight' };

/** The Hugging Face name of a GGUF tensor, or undefined for tensors a decoder does not use. */
export function hfTensorName(name: string): string | undefined {
  if (name in TOP_NAMES) return TOP_NAMES[name];
  const m = /^blk\.(\d+)\.(.+)$/.exec(name);
  if (m && m[2] in BLOCK_NAMES) return `model.layers.${m[1]}.${BLOCK_NAMES[m[2]]}`;
  return undefined;
}

/**
 * Undoes llama.cpp's row permutation of a query or key projection, in place of a copy: within
 * each head, GGUF row 2i + j (j = 0, 1) is Hugging Face row j * headDim/2 + i. Works for weights
 * [heads * headDim, in] and biases [heads * headDim].
 */
export function unpermuteQk(data: Float32Array, rows: number, heads: number): Float32Array {
  const cols = data.length / rows;
  const headDim = rows / heads;
  const half = headDim / 2;
  if (!Number.isInteger(cols) || !Number.isInteger(half)) throw new Error(`unpermuteQk: ${rows} rows do not split into ${heads} heads of an even size`);
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const src = (h * headDim + 2 * i + j) * cols;
        const dst = (h * headDim + j * half + i) * cols;
        out.set(data.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

export interface GgufModelParts {
  file: GgufFile;
  config: LlamaConfig;
  hfConfig: Record<string, unknown>;
  /** Hugging Face name -> float32 values. */
  weights: Map<string, { shape: number[]; data: Float32Array }>;
  tokenizer: HfTokenizer;
  tokenizerFiles: { tokenizer: Record<string, unknown>; config: Record<string, unknown> };
}

/** Reads a GGUF file: configuration, dequantized weights under Hugging Face names, tokenizer. */
export function readGgufModel(path: string): GgufModelParts {
  const file = readGguf(path);
  const hfConfig = ggufHfConfig(file);
  const config = configFromHf(hfConfig, path);
  const arch = ARCHITECTURES[metaString(file, 'general.architecture')];
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const info of file.tensors.values()) {
    const name = hfTensorName(info.name);
    if (!name) throw new GgufError(path, `tensor '${info.name}' has no place in a ${config.modelType} decoder`, { field: info.name, offset: info.offset });
    const read = readGgufTensor(file, info.name);
    const shape = read.shape;
    let data = read.data;
    if (arch.permutedQk && /\.self_attn\.[qk]_proj\./.test(name)) {
      const heads = name.includes('.q_proj.') ? config.numHeads : config.numKvHeads;
      data = unpermuteQk(data, shape[0], heads);
    }
    weights.set(name, { shape, data });
  }
  const files = ggufTokenizer(file);
  const tokenizer = new HfTokenizer(files.tokenizer, files.config, { bos: files.bos, eos: files.eos, source: `${path} (its tokenizer)` });
  return { file, config, hfConfig, weights, tokenizer, tokenizerFiles: { tokenizer: files.tokenizer, config: files.config } };
}

/** Whether a path is a GGUF file (by its magic "GGUF", so any file name works). */
export function isGgufPath(path: string): boolean {
  if (!existsSync(path) || !statSync(path).isFile()) return false;
  const fd = openSync(path, 'r');
  try {
    const head = new Uint8Array(4);
    return readSync(fd, head, 0, 4, 0) === 4 && head[0] === 0x47 && head[1] === 0x47 && head[2] === 0x55 && head[3] === 0x46;
  } finally {
    closeSync(fd);
  }
}
