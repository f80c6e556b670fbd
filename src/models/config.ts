/** The decoder's configuration, read from a Hugging Face config.json (Llama 2/3, Mistral, Qwen2). */

export interface RopeScaling {
  /** Llama 3.1 style frequency-dependent scaling. */
  type: 'llama3' | 'linear';
  factor: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositions?: number;
}

export interface LlamaConfig {
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling?: RopeScaling;
  /** llama2.c pairs dims (2j, 2j+1); Hugging Face pairs j with j + headDim/2 (rotate_half). */
  ropeInterleaved: boolean;
  tieEmbeddings: boolean;
  /** Qwen2: q/k/v projections carry biases. */
  attentionBias: boolean;
  bosTokenId?: number;
  eosTokenId?: number;
}

const SUPPORTED = new Set(['llama', 'mistral', 'qwen2']);

function num(json: Record<string, unknown>, key: string, fallback?: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`config.json: '${key}' must be a number (got ${JSON.stringify(json[key])})`);
  return v;
}

/** Parses a Hugging Face config.json object; refuses model types it does not cover. */
export function configFromHf(json: Record<string, unknown>, source = 'config.json'): LlamaConfig {
  const modelType = String(json.model_type ?? 'llama');
  if (!SUPPORTED.has(modelType)) throw new Error(`${source}: model_type '${modelType}' is not supported (llama, mistral, qwen2)`);
  const hiddenSize = num(json, 'hidden_size');
  const numHeads = num(json, 'num_attention_heads');
  const numKvHeads = num(json, 'num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) throw new Error(`${source}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  const headDim = num(json, 'head_dim', hiddenSize / numHeads);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new Error(`${source}: head dim ${headDim} must be an even integer`);
  let ropeScaling: RopeScaling | undefined;
  const rs = json.rope_scaling as Record<string, unknown> | null | undefined;
  if (rs) {
    const type = String(rs.rope_type ?? rs.type);
    if (type === 'llama3') {
      ropeScaling = {
        type,
        factor: num(rs, 'factor'),
        lowFreqFactor: num(rs, 'low_freq_factor', 1),
        highFreqFactor: num(rs, 'high_freq_factor', 4),
        originalMaxPositions: num(rs, 'original_max_position_embeddings', 8192),
      };
    } else if (type === 'linear') {
      ropeScaling = { type, factor: num(rs, 'factor') };
    } else if (type !== 'default') {
      throw new Error(`${source}: rope_scaling type '${type}' is not supported (llama3, linear)`);
    }
  }
  const eos = json.eos_token_id;
  return {
    modelType,
    vocabSize: num(json, 'vocab_size'),
    hiddenSize,
    intermediateSize: num(json, 'intermediate_size'),
    numLayers: num(json, 'num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions: num(json, 'max_position_embeddings', 2048),
    rmsNormEps: num(json, 'rms_norm_eps', 1e-6),
    ropeTheta: num(json, 'rope_theta', 10000),
    ropeScaling,
    ropeInterleaved: json.rope_interleaved === true,
    tieEmbeddings: json.tie_word_embeddings === true,
    attentionBias: json.attention_bias === true || modelType === 'qwen2',
    bosTokenId: typeof json.bos_token_id === 'number' ? json.bos_token_id : undefined,
    eosTokenId: typeof eos === 'number' ? eos : Array.isArray(eos) && typeof eos[0] === 'number' ? eos[0] : undefined,
  };
}

/** The Hugging Face config.json for a config (what we write next to saved weights). */
export function configToHf(c: LlamaConfig): Record<string, unknown> {
  const archByType: Record<string, string> = { llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM' };
  const out: Record<string, unknown> = {
    architectures: [archByType[c.modelType] ?? 'LlamaForCausalLM'],
    model_type: c.modelType,
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tieEmbeddings,
    attention_bias: c.attentionBias,
    hidden_act: 'silu',
  };
  if (c.ropeInterleaved) out.rope_interleaved = true;
  if (c.ropeScaling) {
    const s = c.ropeScaling;
    out.rope_scaling =
      s.type === 'llama3'
        ? { rope_type: 'llama3', factor: s.factor, low_freq_factor: s.lowFreqFactor, high_freq_factor: s.highFreqFactor, original_max_position_embeddings: s.originalMaxPositions }
        : { rope_type: 'linear', factor: s.factor };
  }
  if (c.bosTokenId !== undefined) out.bos_token_id = c.bosTokenId;
  if (c.eosTokenId !== undefined) out.eos_token_id = c.eosTokenId;
  return out;
}

/** Inverse frequencies of RoPE for one head, with Llama 3 / linear scaling applied. */
export function ropeInvFreq(c: LlamaConfig): Float64Array {
  const half = c.headDim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / Math.pow(c.ropeTheta, (2 * j) / c.headDim);
  const s = c.ropeScaling;
  if (s?.type === 'linear') for (let j = 0; j < half; j++) inv[j] /= s.factor;
  if (s?.type === 'llama3') {
    const low = s.lowFreqFactor ?? 1;
    const high = s.highFreqFactor ?? 4;
    const orig = s.originalMaxPositions ?? 8192;
    const lowWavelen = orig / low;
    const highWavelen = orig / high;
    for (let j = 0; j < half; j++) {
      const wavelen = (2 * Math.PI) / inv[j];
      if (wavelen > lowWavelen) inv[j] /= s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (orig / wavelen - low) / (high - low);
        inv[j] = (1 - smooth) * (inv[j] / s.factor) + smooth * inv[j];
      }
    }
  }
  return inv;
}
