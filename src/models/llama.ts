/**
 * A Llama-family decoder (Llama 2/3, Mistral, Qwen2) written top to bottom, with what the
 * compressors need beyond "ids in, logits out": input embeddings, every layer's hidden states,
 * padding and explicit masks, explicit positions, per-layer key/value prefixes (memory KV),
 * LoRA, running only the bottom layers, and a KV cache.
 *
 * Parameter names follow Hugging Face (model.layers.0.self_attn.q_proj.weight, ...), so
 * checkpoints load by name.
 */
import { Tensor, arange, cat, full, groupedAttention, isGradEnabled, linear, noGrad, rotary, tensor, tidy, where, zeros, type DType } from '../tensor/index.js';
import { Module } from '../nn/module.js';
import { linearCrossEntropy } from '../nn/loss.js';
import { BlockWeightCache, Embedding, FusedLinears, Linear, LoraAdapters, RMSNorm, inferenceLinear, type LoraConfig } from '../nn/layers.js';
import { configToHf, ropeInvFreq, type LlamaConfig } from './config.js';
import { createHash } from 'node:crypto';

/** Keys/values prepended inside one layer's attention: [batch, kvHeads, prefixLen, headDim], post-RoPE. */
export interface LayerKv {
  k: Tensor;
  v: Tensor;
}

/**
 * Per-layer keys/values of the tokens seen so far, for incremental decoding. Each layer's
 * history lives in a buffer with spare capacity, written in place, so a decoding step costs
 * O(new tokens) instead of copying the whole history; `keys[i]` / `values[i]` are views of the
 * valid part [B, kvH, length, hd]. Code may also put its own tensors there (the next append
 * then moves them into a fresh buffer).
 */
export class KVCache {
  readonly keys: (Tensor | null)[];
  readonly values: (Tensor | null)[];
  /** Tokens cached (the same for every layer). */
  length = 0;
  private readonly buffers: ({ k: Tensor; v: Tensor } | null)[];
  constructor(readonly numLayers: number) {
    this.keys = new Array(numLayers).fill(null);
    this.values = new Array(numLayers).fill(null);
    this.buffers = new Array(numLayers).fill(null);
  }
  /** Appends this step's k/v [B, kvH, T, hd] to layer i and returns the whole history. */
  append(i: number, k: Tensor, v: Tensor): LayerKv {
    return noGrad(() => {
      const t = k.size(2);
      const curK = this.keys[i];
      const curV = this.values[i];
      const past = curK ? curK.size(2) : 0;
      let buf = this.buffers[i];
      const ours = buf !== null && curK !== null && this.views.get(curK) === buf;
      if (!buf || !ours || buf.k.size(2) < past + t) {
        const [b, h, , d] = k.shape;
        const cap = Math.max(past + t, 2 * past, 64);
        const fresh = { k: zeros([b, h, cap, d], { dtype: k.dtype }).keep(), v: zeros([b, h, cap, d], { dtype: v.dtype }).keep() };
        if (curK && curV && past) {
          fresh.k.narrowCopy_(2, 0, curK);
          fresh.v.narrowCopy_(2, 0, curV);
        }
        curK?.free();
        curV?.free();
        if (buf) {
          buf.k.free();
          buf.v.free();
        }
        buf = fresh;
        this.buffers[i] = buf;
      } else {
        curK?.free();
        curV?.free();
      }
      buf.k.narrowCopy_(2, past, k);
      buf.v.narrowCopy_(2, past, v);
      const viewK = buf.k.narrow(2, 0, past + t).keep();
      const viewV = buf.v.narrow(2, 0, past + t).keep();
      this.views.set(viewK, buf);
      this.keys[i] = viewK;
      this.values[i] = viewV;
      return { k: viewK, v: viewV };
    });
  }
  private readonly views = new WeakMap<Tensor, { k: Tensor; v: Tensor }>();
  /** Frees the cached tensors. */
  free(): void {
    for (const t of [...this.keys, ...this.values]) t?.free();
    for (const b of this.buffers) {
      b?.k.free();
      b?.v.free();
    }
    this.keys.fill(null);
    this.values.fill(null);
    this.buffers.fill(null);
    this.length = 0;
  }
  /** Bytes of the valid keys/values (not counting spare capacity). */
  get bytes(): number {
    let n = 0;
    for (const t of [...this.keys, ...this.values]) if (t) n += t.numel * (t.dtype === 'float32' ? 4 : t.dtype === 'float64' ? 8 : 2);
    return n;
  }
}

export interface ForwardOptions {
  /** Token ids [batch, seq] (int64). Exactly one of ids / inputsEmbeds. */
  ids?: Tensor;
  /** Input embeddings [batch, seq, dim] (soft tokens mixed with token embeddings). */
  inputsEmbeds?: Tensor;
  /** Positions [batch, seq] or [seq]; default past..past+seq-1 (or from the padding mask). */
  positionIds?: Tensor;
  /** Padding mask over keys [batch, past + seq], true (1) = real token. */
  paddingMask?: Tensor;
  /** Explicit boolean mask [seq, past + seq] or [batch, seq, past + seq], true = may attend; overrides causal. */
  attnMask?: Tensor;
  /** Per-layer key/value prefixes (memory KV), visible to every query. */
  kvPrefix?: LayerKv[];
  /** Cache for incremental decoding; appended to in place. */
  cache?: KVCache;
  /** Return the embedding output and every block's output (the last after the final norm). */
  outputHiddenStates?: boolean;
  /** Return each layer's normalised attention input (input_layernorm output), per layer. */
  outputAttnInputs?: boolean;
  /** Return every layer's attention probabilities (e.g. to supervise a head's pattern). */
  outputAttentions?: boolean;
  /** Run only the first N blocks (an encoder made of the bottom of the model). */
  numLayers?: number;
  /** Logits for every position ('all', default), only the last ('last'), or none. */
  logits?: 'all' | 'last' | 'none';
  /** External LoRA adapters keyed "layer.target" (see LoraAdapters), e.g. a compressor's encoder. */
  lora?: LoraAdapters;
}

export interface ForwardResult {
  /** [batch, seq, vocab] or [batch, 1, vocab] */
  logits?: Tensor;
  /** Final hidden state after the final norm [batch, seq, dim]. */
  hidden: Tensor;
  /** numLayers + 1 tensors [batch, seq, dim]. */
  hiddenStates?: Tensor[];
  /** One per layer run [batch, seq, dim]. */
  attnInputs?: Tensor[];
  /** One per layer run, [batch, heads, seq, keys] (keys = memory prefix + past + seq), after masking and softmax. */
  attentions?: Tensor[];
}

/** Shared, per-forward attention inputs (computed once, used by every layer). */
interface AttnContext {
  cos: Tensor; // [B|1, 1, T, hd/2]
  sin: Tensor;
  /** Additive mask [B|1, 1, 1, T, Tk] (broadcast over kv groups and heads in a group). */
  mask: Tensor | null;
  /** Set when the mask is causal after this many visible keys (prefix + cache): see groupedAttention. */
  causalOffset?: number;
  cache?: KVCache;
  kvPrefix?: LayerKv[];
  lora?: LoraAdapters;
  /** When set, each layer appends its attention probabilities [B, heads, T, Tk]. */
  attentions?: Tensor[];
  /** Running without gradients: fused projections may be used (asked of autograd when absent). */
  noGrad?: boolean;
  /** ... and one-row products may read exact 8-bit weight copies (LlamaModel.exactInt8). */
  int8?: boolean;
}

export class Attention extends Module {
  readonly qProj: Linear;
  readonly kProj: Linear;
  readonly vProj: Linear;
  readonly oProj: Linear;
  /** q, k and v weights as one buffer, for one product per step when running without gradients. */
  readonly qkv: FusedLinears;
  constructor(
    readonly cfg: LlamaConfig,
    readonly layerIndex: number,
  ) {
    super();
    const { hiddenSize: d, numHeads: h, numKvHeads: kv, headDim: hd, attentionBias: bias } = cfg;
    this.qProj = this.module('q_proj', new Linear(d, h * hd, { bias, std: 0.02 }));
    this.kProj = this.module('k_proj', new Linear(d, kv * hd, { bias, std: 0.02 }));
    this.vProj = this.module('v_proj', new Linear(d, kv * hd, { bias, std: 0.02 }));
    this.oProj = this.module('o_proj', new Linear(h * hd, d, { bias: false, std: 0.02 }));
    this.qkv = new FusedLinears([this.qProj, this.kProj, this.vProj]);
  }

  /** Applies RoPE to x [B, heads, T, hd] with cos/sin [., 1, T, hd/2], then multiplies by scale. */
  rope(x: Tensor, cos: Tensor, sin: Tensor, scale = 1): Tensor {
    return rotary(x, cos, sin, { interleaved: this.cfg.ropeInterleaved, scale });
  }

  /** Keys and values of hidden states x [B, T, dim] at the given rope tables, [B, kvH, T, hd]. */
  keysValues(x: Tensor, cos: Tensor, sin: Tensor, lora?: LoraAdapters): LayerKv {
    const [b, t] = x.shape;
    const { numKvHeads: kv, headDim: hd } = this.cfg;
    const i = this.layerIndex;
    const k = this.kProj.forward(x, lora?.get(`${i}.k`)).view(b, t, kv, hd).transpose(1, 2);
    const v = this.vProj.forward(x, lora?.get(`${i}.v`)).view(b, t, kv, hd).transpose(1, 2);
    return { k: this.rope(k, cos, sin), v };
  }

  /**
   * Queries (RoPE'd and scaled), keys (RoPE'd) and values of x [B, T, dim], heads-first. Without
   * gradients and adapters on q/k/v, one product over the fused weights; otherwise (training)
   * the three projections as they are.
   */
  private queriesKeysValues(x: Tensor, b: number, t: number, ctx: AttnContext): { q: Tensor; k: Tensor; v: Tensor } {
    const { numHeads: h, numKvHeads: kv, headDim: hd } = this.cfg;
    const i = this.layerIndex;
    const lora = ctx.lora;
    const scale = 1 / Math.sqrt(hd);
    const fused = !(ctx.noGrad ?? !isGradEnabled()) || lora?.get(`${i}.q`) || lora?.get(`${i}.k`) || lora?.get(`${i}.v`) ? null : this.qkv.fused();
    if (fused) {
      const [q, k, v] = inferenceLinear(x, fused.weight, fused.bias, ctx.int8 ? this.qkv.blockWeights : undefined).split(this.qkv.sizes, -1);
      return {
        q: this.rope(q.view(b, t, h, hd).transpose(1, 2), ctx.cos, ctx.sin, scale),
        k: this.rope(k.view(b, t, kv, hd).transpose(1, 2), ctx.cos, ctx.sin),
        v: v.view(b, t, kv, hd).transpose(1, 2),
      };
    }
    const q = this.qProj.forward(x, lora?.get(`${i}.q`)).view(b, t, h, hd).transpose(1, 2);
    return { q: this.rope(q, ctx.cos, ctx.sin, scale), ...this.keysValues(x, ctx.cos, ctx.sin, lora) };
  }

  /** x [B, T, dim] -> [B, T, dim] */
  forward(x: Tensor, ctx: AttnContext): Tensor {
    const [b, t] = x.shape;
    const { numHeads: h, numKvHeads: kv, headDim: hd } = this.cfg;
    const rep = h / kv;
    const lora = ctx.lora;
    const qkv = this.queriesKeysValues(x, b, t, ctx);
    const q = qkv.q;
    let { k, v } = qkv;
    if (ctx.cache) ({ k, v } = ctx.cache.append(this.layerIndex, k, v));
    const prefix = ctx.kvPrefix?.[this.layerIndex];
    if (prefix) {
      k = cat([prefix.k, k], 2);
      v = cat([prefix.v, v], 2);
    }
    let out: Tensor;
    if (!ctx.attentions) out = groupedAttention(q, k, v, ctx.mask, ctx.causalOffset);
    else {
      // The same computation step by step, keeping the probabilities.
      const tk = k.size(2);
      // Grouped-query attention without copying k/v: the rep query heads sharing a kv head are
      // stacked along the query axis, [B, kvH, rep*T, hd].
      const qg = q.reshape(b, kv, rep * t, hd);
      let scores = qg.matmul(k.transpose(-2, -1)); // [B, kvH, rep*T, Tk]
      if (ctx.mask) scores = scores.view(b, kv, rep, t, tk).add(ctx.mask).view(b, kv, rep * t, tk);
      // Half types take the softmax in float32; float32/float64 keep their own precision.
      const half = scores.dtype === 'float16' || scores.dtype === 'bfloat16';
      const probs = half ? scores.to('float32').softmax(-1).to(scores.dtype) : scores.softmax(-1);
      ctx.attentions.push(probs.view(b, h, t, tk));
      out = probs.matmul(v).view(b, h, t, hd).transpose(1, 2).reshape(b, t, h * hd);
    }
    const oLora = lora?.get(`${this.layerIndex}.o`);
    if (ctx.int8 && !oLora && !this.oProj.loraA) return inferenceLinear(out, this.oProj.weight.value, this.oProj.bias?.value, this.oProj.blockWeights);
    return this.oProj.forward(out, oLora);
  }
}

export class MLP extends Module {
  readonly gateProj: Linear;
  readonly upProj: Linear;
  readonly downProj: Linear;
  /** gate and up weights as one buffer, for one product per step when running without gradients. */
  readonly gateUp: FusedLinears;
  constructor(
    cfg: LlamaConfig,
    readonly layerIndex = 0,
  ) {
    super();
    const { hiddenSize: d, intermediateSize: f } = cfg;
    this.gateProj = this.module('gate_proj', new Linear(d, f, { std: 0.02 }));
    this.upProj = this.module('up_proj', new Linear(d, f, { std: 0.02 }));
    this.downProj = this.module('down_proj', new Linear(f, d, { std: 0.02 }));
    this.gateUp = new FusedLinears([this.gateProj, this.upProj]);
  }
  /**
   * SwiGLU: down(silu(gate x) * up x). Without gradients (`mode`, else asked), one gate/up
   * product; with mode.int8, one-row products read exact 8-bit weight copies.
   */
  forward(x: Tensor, lora?: LoraAdapters, mode?: { noGrad?: boolean; int8?: boolean }): Tensor {
    const i = this.layerIndex;
    const noGrad = mode?.noGrad ?? !isGradEnabled();
    const int8 = noGrad && !!mode?.int8;
    const fused = !noGrad || lora?.get(`${i}.gate`) || lora?.get(`${i}.up`) ? null : this.gateUp.fused();
    let gate: Tensor;
    let up: Tensor;
    if (fused) [gate, up] = inferenceLinear(x, fused.weight, fused.bias, int8 ? this.gateUp.blockWeights : undefined).split(this.gateUp.sizes, -1);
    else {
      gate = this.gateProj.forward(x, lora?.get(`${i}.gate`));
      up = this.upProj.forward(x, lora?.get(`${i}.up`));
    }
    const act = gate.silu().mul(up);
    const downLora = lora?.get(`${i}.down`);
    if (int8 && !downLora && !this.downProj.loraA) return inferenceLinear(act, this.downProj.weight.value, this.downProj.bias?.value, this.downProj.blockWeights);
    return this.downProj.forward(act, downLora);
  }
}

export class DecoderLayer extends Module {
  readonly inputNorm: RMSNorm;
  readonly selfAttn: Attention;
  readonly postNorm: RMSNorm;
  readonly mlp: MLP;
  constructor(cfg: LlamaConfig, index: number) {
    super();
    this.inputNorm = this.module('input_layernorm', new RMSNorm(cfg.hiddenSize, cfg.rmsNormEps));
    this.selfAttn = this.module('self_attn', new Attention(cfg, index));
    this.postNorm = this.module('post_attention_layernorm', new RMSNorm(cfg.hiddenSize, cfg.rmsNormEps));
    this.mlp = this.module('mlp', new MLP(cfg, index));
  }
  /** The block's projection that a LoRA target names. */
  projection(target: LoraTarget): Linear {
    const a = this.selfAttn;
    const m = this.mlp;
    return { q: a.qProj, k: a.kProj, v: a.vProj, o: a.oProj, gate: m.gateProj, up: m.upProj, down: m.downProj }[target];
  }
  /** Returns the block output and the normalised attention input. */
  forward(x: Tensor, ctx: AttnContext): { out: Tensor; attnInput: Tensor } {
    const attnInput = this.inputNorm.forward(x);
    const h = x.add(this.selfAttn.forward(attnInput, ctx));
    return { out: h.add(this.mlp.forward(this.postNorm.forward(h), ctx.lora, ctx)), attnInput };
  }
}

class ModuleList<M extends Module> extends Module {
  readonly items: M[] = [];
  push(m: M): void {
    this.module(String(this.items.length), m);
    this.items.push(m);
  }
}

class LlamaBody extends Module {
  readonly embedTokens: Embedding;
  readonly layers = new ModuleList<DecoderLayer>();
  readonly norm: RMSNorm;
  constructor(cfg: LlamaConfig) {
    super();
    this.embedTokens = this.module('embed_tokens', new Embedding(cfg.vocabSize, cfg.hiddenSize, { std: 0.02 }));
    this.module('layers', this.layers);
    for (let i = 0; i < cfg.numLayers; i++) this.layers.push(new DecoderLayer(cfg, i));
    this.norm = this.module('norm', new RMSNorm(cfg.hiddenSize, cfg.rmsNormEps));
  }
}

export const LORA_TARGETS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

export class LlamaModel extends Module {
  readonly model: LlamaBody;
  readonly lmHead?: Linear;
  private cosTable?: Tensor;
  private sinTable?: Tensor;
  private readonly maskCache = new Map<string, Tensor>();
  /**
   * One-row products without gradients (batch-1 decoding) read an 8-bit copy of each weight
   * that is exactly block-representable (weights from a Q4_x / Q5_x / Q8_0 GGUF file; made on
   * first use, +31% of those weights' memory; see BlockWeightCache). Their results differ from
   * the float32 products by rounding only. SOFTPRESS_EXACT_INT8=0 turns it off.
   */
  exactInt8 = process.env.SOFTPRESS_EXACT_INT8 !== '0';
  private readonly headBlockWeights = new BlockWeightCache();

  constructor(readonly config: LlamaConfig) {
    super();
    this.model = this.module('model', new LlamaBody(config));
    if (!config.tieEmbeddings) this.lmHead = this.module('lm_head', new Linear(config.hiddenSize, config.vocabSize, { std: 0.02 }));
  }

  /** Converts the floating parameters to a dtype; the fused projection buffers follow. */
  override toDtype(dtype: DType): this {
    super.toDtype(dtype);
    for (const layer of this.layers) {
      layer.selfAttn.qkv.bind();
      layer.mlp.gateUp.bind();
    }
    return this;
  }

  private cachedFingerprint?: string;
  /** Frees the weights and the cached rope tables and masks (the model cannot be used afterwards). */
  override free(): void {
    super.free();
    for (const layer of this.layers) {
      layer.selfAttn.qkv.free();
      layer.selfAttn.oProj.blockWeights.free();
      layer.mlp.gateUp.free();
      layer.mlp.downProj.blockWeights.free();
    }
    this.headBlockWeights.free();
    this.cosTable?.free();
    this.sinTable?.free();
    this.cosTable = this.sinTable = undefined;
    for (const m of this.maskCache.values()) m.free();
    this.maskCache.clear();
  }

  /**
   * A short hash of the configuration and weights (names, shapes and the first 64 KiB of each
   * tensor), so stored soft contexts and compressors can refuse a different base model.
   */
  fingerprint(): string {
    if (!this.cachedFingerprint) {
      const h = createHash('sha256');
      h.update(JSON.stringify(configToHf(this.config)));
      tidy(() => {
        for (const [name, p] of this.namedParameters()) {
          if (name.includes('lora_')) continue;
          const v = p.value.detach().reshape(-1);
          const head = v.narrow(0, 0, Math.min(v.numel, 16384)).to('float32');
          h.update(`${name}:${p.value.shape.join('x')}:`);
          h.update(head.toBytes());
        }
      });
      this.cachedFingerprint = h.digest('hex').slice(0, 16);
    }
    return this.cachedFingerprint;
  }
  /** Forget the cached fingerprint (after changing weights in place). */
  invalidateFingerprint(): void {
    this.cachedFingerprint = undefined;
  }

  get layers(): DecoderLayer[] {
    return this.model.layers.items;
  }
  get dim(): number {
    return this.config.hiddenSize;
  }
  get dtype(): DType {
    return this.model.embedTokens.weight.value.dtype;
  }

  /** ids [B, T] -> token embeddings [B, T, dim] */
  embed(ids: Tensor): Tensor {
    return this.model.embedTokens.forward(ids);
  }

  /** Hidden states [..., dim] (after the final norm) -> logits [..., vocab] */
  head(hidden: Tensor): Tensor {
    const weight = this.lmHead ? this.lmHead.weight.value : this.model.embedTokens.weight.value;
    if (this.exactInt8 && !this.lmHead?.loraA && !isGradEnabled()) return inferenceLinear(hidden, weight, this.lmHead?.bias?.value, this.headBlockWeights);
    return linear(hidden, weight, this.lmHead?.bias?.value);
  }

  /**
   * Cross-entropy of the head's logits over hidden [..., dim] (after the final norm) against
   * targets [...] (int64; ignoreIndex counts nothing), without materialising the logits
   * [..., vocab] (linearCrossEntropy): the mean over counted positions, or the sum.
   */
  headLoss(hidden: Tensor, targets: Tensor, opts: { reduction?: 'mean' | 'sum'; ignoreIndex?: number } = {}): Tensor {
    const weight = this.lmHead ? this.lmHead.weight.value : this.model.embedTokens.weight.value;
    return linearCrossEntropy(hidden.reshape(-1, this.dim), weight, targets.reshape(-1), { ...opts, bias: this.lmHead?.bias?.value });
  }

  /** Attaches LoRA adapters to the chosen projections of the chosen layers (default all). */
  addLora(cfg: LoraConfig, targets: readonly LoraTarget[], layers?: number[]): Linear[] {
    const added: Linear[] = [];
    for (const [i, layer] of this.layers.entries()) {
      if (layers && !layers.includes(i)) continue;
      for (const t of targets) added.push(layer.projection(t).addLora(cfg));
    }
    return added;
  }

  /** RoPE cos/sin [positions, hd/2] (float32), grown on demand. */
  ropeTables(upTo: number): { cos: Tensor; sin: Tensor } {
    const have = this.cosTable?.size(0) ?? 0;
    if (!this.cosTable || have < upTo) {
      const n = Math.max(upTo, this.config.maxPositions, 2 * have);
      const inv = ropeInvFreq(this.config);
      const half = inv.length;
      const cos = new Float32Array(n * half);
      const sin = new Float32Array(n * half);
      for (let p = 0; p < n; p++) {
        for (let j = 0; j < half; j++) {
          const a = p * inv[j];
          cos[p * half + j] = Math.cos(a);
          sin[p * half + j] = Math.sin(a);
        }
      }
      this.cosTable?.free();
      this.sinTable?.free();
      this.cosTable = tensor(cos, [n, half]).keep();
      this.sinTable = tensor(sin, [n, half]).keep();
    }
    return { cos: this.cosTable!, sin: this.sinTable! };
  }

  /** cos/sin for positions [B, T] or [T] (or a contiguous run), shaped [B|1, 1, T, hd/2]. */
  private ropeFor(positions: Tensor | { start: number; length: number }, dtype: DType): { cos: Tensor; sin: Tensor } {
    let cos: Tensor;
    let sin: Tensor;
    if (positions instanceof Tensor) {
      const flat = positions.reshape(-1);
      const maxPos = flat.numel ? flat.max().item() : 0;
      const tables = this.ropeTables(maxPos + 1);
      const shape = positions.rank === 1 ? [1, 1, positions.size(0), -1] : [positions.size(0), 1, positions.size(1), -1];
      cos = tables.cos.indexSelect(0, flat).reshape(...shape);
      sin = tables.sin.indexSelect(0, flat).reshape(...shape);
    } else {
      const tables = this.ropeTables(positions.start + positions.length);
      cos = tables.cos.narrow(0, positions.start, positions.length).reshape(1, 1, positions.length, -1);
      sin = tables.sin.narrow(0, positions.start, positions.length).reshape(1, 1, positions.length, -1);
    }
    if (dtype !== 'float32') return { cos: cos.to(dtype), sin: sin.to(dtype) };
    return { cos, sin };
  }

  private maskValue(dtype: DType): number {
    return dtype === 'float16' ? -65504 : -1e30;
  }

  /**
   * The additive attention mask [B|1, 1, 1, T, P + past + T]: prefix columns always visible,
   * then causal (or the explicit mask), with padded keys hidden. Null when nothing is masked.
   */
  private buildMask(b: number, t: number, past: number, prefixLen: number, dtype: DType, opts: ForwardOptions): Tensor | null {
    const tk = past + t;
    if (!opts.attnMask && !opts.paddingMask) {
      if (t === 1) return null; // one new token sees everything before it
      const key = `${t}:${past}:${prefixLen}:${dtype}`;
      let m = this.maskCache.get(key);
      if (!m) {
        m = noGrad(() => {
          const allowed = arange(0, tk).unsqueeze(0).le(arange(past, past + t).unsqueeze(1)); // [T, Tk]
          const withPrefix = prefixLen ? cat([full([t, prefixLen], 1, { dtype: 'bool' }), allowed], 1) : allowed;
          return where(withPrefix, 0, this.maskValue(dtype)).to(dtype).reshape(1, 1, 1, t, prefixLen + tk);
        }).keep();
        if (this.maskCache.size > 64) {
          for (const old of this.maskCache.values()) old.free();
          this.maskCache.clear();
        }
        this.maskCache.set(key, m);
      }
      return m;
    }
    let allowed: Tensor;
    if (opts.attnMask) {
      const am = opts.attnMask.dtype === 'bool' ? opts.attnMask : opts.attnMask.ne(0);
      const want = `[${t}, ${tk}]`;
      const s = am.shape;
      if (s[s.length - 2] !== t || s[s.length - 1] !== tk) throw new Error(`forward: attnMask ${am.describe()} must be ${want} or [batch, ${t}, ${tk}]`);
      allowed = am.rank === 2 ? am.unsqueeze(0) : am; // [B|1, T, Tk]
    } else {
      allowed = arange(0, tk).unsqueeze(0).le(arange(past, past + t).unsqueeze(1)).unsqueeze(0);
    }
    if (opts.paddingMask) {
      const pm = opts.paddingMask.dtype === 'bool' ? opts.paddingMask : opts.paddingMask.ne(0);
      if (pm.rank !== 2 || pm.size(0) !== b || pm.size(1) !== tk) throw new Error(`forward: paddingMask ${pm.describe()} must be [${b}, ${tk}] (batch, past + seq)`);
      allowed = allowed.logicalAnd(pm.unsqueeze(1));
    }
    if (prefixLen) allowed = cat([full([allowed.size(0), t, prefixLen], 1, { dtype: 'bool' }), allowed], 2);
    return where(allowed, 0, this.maskValue(dtype)).to(dtype).reshape(allowed.size(0), 1, 1, t, prefixLen + tk);
  }

  forward(opts: ForwardOptions): ForwardResult {
    if (!!opts.ids === !!opts.inputsEmbeds) throw new Error('forward: give exactly one of ids or inputsEmbeds');
    let x: Tensor;
    if (opts.ids) {
      if (opts.ids.rank !== 2) throw new Error(`forward: ids must be [batch, seq], got ${opts.ids.describe()}`);
      x = this.embed(opts.ids);
    } else {
      x = opts.inputsEmbeds!;
      if (x.rank !== 3 || x.size(2) !== this.dim) throw new Error(`forward: inputsEmbeds must be [batch, seq, ${this.dim}], got ${x.describe()}`);
    }
    const [b, t] = x.shape;
    const past = opts.cache?.length ?? 0;
    const prefixLen = opts.kvPrefix?.[0]?.k.size(2) ?? 0;
    const nLayers = opts.numLayers ?? this.config.numLayers;
    if (nLayers < 1 || nLayers > this.config.numLayers) throw new Error(`forward: numLayers ${nLayers} outside 1..${this.config.numLayers}`);
    if (opts.kvPrefix && opts.kvPrefix.length < nLayers) throw new Error(`forward: kvPrefix has ${opts.kvPrefix.length} layers, need ${nLayers}`);

    if (opts.paddingMask) {
      // Checked before the positions are derived from it (a bad shape would fail obscurely there).
      const pm = opts.paddingMask;
      if (pm.rank !== 2 || pm.size(0) !== b || pm.size(1) !== past + t) throw new Error(`forward: paddingMask ${pm.describe()} must be [${b}, ${past + t}] (batch, past + seq)`);
    }
    // Positions: explicit, else from the padding mask (left padding), else past..past+T-1.
    let positions: Tensor | { start: number; length: number };
    if (opts.positionIds) positions = opts.positionIds;
    else if (opts.paddingMask) {
      const pm = opts.paddingMask.to('int64');
      const pos = pm.cumsum(1).sub(1).clamp(0, null).add(prefixLen);
      positions = pos.narrow(1, past, t);
    } else positions = { start: prefixLen + past, length: t };
    const { cos, sin } = this.ropeFor(positions, x.dtype);
    const noGrad = !isGradEnabled();
    const ctx: AttnContext = { cos, sin, mask: this.buildMask(b, t, past, prefixLen, x.dtype, opts), causalOffset: opts.attnMask ? undefined : prefixLen + past, cache: opts.cache, kvPrefix: opts.kvPrefix, lora: opts.lora, attentions: opts.outputAttentions ? [] : undefined, noGrad, int8: noGrad && this.exactInt8 };

    const hiddenStates: Tensor[] | undefined = opts.outputHiddenStates ? [x] : undefined;
    const attnInputs: Tensor[] | undefined = opts.outputAttnInputs ? [] : undefined;
    for (let i = 0; i < nLayers; i++) {
      // One scope per layer: its intermediates (attention scores are [B, heads, T, T]) are freed
      // when the layer ends, not when the caller's scope does — 30 layers' worth of 2,048-token
      // scores would otherwise be held at once. Autograd keeps what backward needs by itself.
      const layer = this.layers[i];
      const r = tidy(() => {
        const { out, attnInput } = layer.forward(x, ctx);
        return { out, attnInput: attnInputs ? attnInput : undefined, attention: ctx.attentions?.[ctx.attentions.length - 1] };
      });
      x = r.out;
      hiddenStates?.push(x);
      if (r.attnInput) attnInputs?.push(r.attnInput);
    }
    if (opts.cache) opts.cache.length = past + t;
    const hidden = this.model.norm.forward(x);
    if (hiddenStates) hiddenStates[hiddenStates.length - 1] = hidden;
    const mode = opts.logits ?? 'all';
    const logits = mode === 'none' ? undefined : this.head(mode === 'last' ? hidden.narrow(1, t - 1, 1) : hidden);
    return { logits, hidden, hiddenStates, attnInputs, attentions: ctx.attentions };
  }

  /**
   * Keys/values for the given hidden states at one layer, as kvPrefix entries: normed inputs
   * m [B, P, dim] at positions start..start+P-1. Uses the layer's k/v projections (with LoRA).
   */
  prefixKv(layer: number, normedInputs: Tensor, start = 0, lora?: LoraAdapters): LayerKv {
    const p = normedInputs.size(1);
    const { cos, sin } = this.ropeFor({ start, length: p }, normedInputs.dtype);
    return this.layers[layer].selfAttn.keysValues(normedInputs, cos, sin, lora);
  }

  /** Shapes for external LoRA adapters on the chosen projections of the chosen layers. */
  loraSpecs(targets: readonly LoraTarget[], layers?: number[]): { key: string; inFeatures: number; outFeatures: number }[] {
    const out: { key: string; inFeatures: number; outFeatures: number }[] = [];
    for (const [i, layer] of this.layers.entries()) {
      if (layers && !layers.includes(i)) continue;
      for (const t of targets) {
        const lin = layer.projection(t);
        out.push({ key: `${i}.${t}`, inFeatures: lin.inFeatures, outFeatures: lin.outFeatures });
      }
    }
    return out;
  }
}
