/**
 * ICAE-style autoencoder (Ge et al., "In-context Autoencoder", ICLR 2024; papers/baselines.md):
 * k learnable memory-token embeddings are appended after the context, the frozen base model
 * runs over [BOS] context [memory tokens] with the compressor's own LoRA adapters (the encoder),
 * and the final hidden states (after the final norm) at the k memory positions are the soft
 * tokens. The decoder (the same frozen base, without the adapters) reads them.
 *
 * - Memory table: `maxSlots` rows (default 256), initialised from the embedding of `<|mem|>`
 *   (option memTokenId, softpress's tokenizer id by default) plus small noise; memory token j
 *   of every context is row j. Ratio r → k = ceil(T / r) memory tokens (at most maxSlots).
 * - LoRA: rank 16, alpha 32, dropout 0.05 on q and v of every layer by default, kept in this
 *   compressor (passed to the base forward as `lora:`), never attached to the shared model.
 * - Ragged batches: contexts are right-padded and each row's memory tokens follow its own last
 *   real token. Under causal attention a row's real positions never see its padding and keep
 *   positions 0.., so every item is encoded exactly as it would be alone.
 * Trainable at every stage: the memory table and the LoRA adapters.
 */
import { Tensor, embedding, noGrad, randn, tensor, tidy, where, zeros } from '../tensor/index.js';
import { LoraAdapters, Module, type Parameter } from '../nn/index.js';
import { LORA_TARGETS, type LlamaModel, type LoraTarget } from '../models/llama.js';
import { SOFTPRESS_SPECIAL_TOKENS } from '../models/bpe.js';
import { registerCompressor } from './registry.js';
import { checkBudget, describeBudget, softCount, type Budget, type Compressor, type CompressorConfig, type SoftContext, type Stage } from './types.js';
import { optBool, optList, optNumber } from './options.js';

export interface IcaeOptions {
  maxSlots?: number;
  loraRank?: number;
  loraAlpha?: number;
  loraDropout?: number;
  /** Projections adapted in every layer (default q, v). */
  loraTargets?: LoraTarget[];
  /** Id whose embedding initialises the memory table (default softpress's `<|mem|>`). */
  memTokenId?: number;
  /** Std of the init noise, relative to the RMS of that embedding row (default 0.1). */
  memNoise?: number;
  /** Prepend the base model's BOS to each context (default true, when the base has one). */
  bos?: boolean;
}

class IcaeModule extends Module {
  readonly memory: Parameter;
  readonly lora: LoraAdapters;
  constructor(memory: Tensor, lora: LoraAdapters) {
    super();
    this.memory = this.param('memory', memory);
    this.lora = this.module('lora', lora);
  }
}

const DEFAULT_MEM_ID = SOFTPRESS_SPECIAL_TOKENS.indexOf('<|mem|>');

export class IcaeCompressor implements Compressor {
  readonly method = 'icae';
  readonly config: CompressorConfig;
  readonly module: IcaeModule;
  readonly maxSlots: number;
  readonly bos: boolean;

  constructor(
    readonly base: LlamaModel,
    options: Record<string, unknown> = {},
  ) {
    const m = this.method;
    this.maxSlots = optNumber(m, options, 'maxSlots', 256, { integer: true, min: 1 });
    const rank = optNumber(m, options, 'loraRank', 16, { integer: true, min: 1 });
    const alpha = optNumber(m, options, 'loraAlpha', 32, { min: 0 });
    const dropout = optNumber(m, options, 'loraDropout', 0.05, { min: 0, max: 0.99 });
    const targets = optList(m, options, 'loraTargets', LORA_TARGETS, ['q', 'v']);
    const memTokenId = optNumber(m, options, 'memTokenId', DEFAULT_MEM_ID, { integer: true, min: 0, max: base.config.vocabSize - 1 });
    const memNoise = optNumber(m, options, 'memNoise', 0.1, { min: 0 });
    this.bos = optBool(m, options, 'bos', true);
    if (base.dtype !== 'float32') throw new Error(`icae: the base model must be float32 to run LoRA adapters (it is ${base.dtype}); load it with dtype float32`);
    this.config = { method: m, maxSlots: this.maxSlots, loraRank: rank, loraAlpha: alpha, loraDropout: dropout, loraTargets: targets, memTokenId, memNoise, bos: this.bos };
    const memory = tidy(() =>
      noGrad(() => {
        const row = base.embed(tensor([memTokenId], [1], { dtype: 'int64' })).to('float32'); // [1, dim]
        const rms = row.square().mean().sqrt().item();
        return row.expand(this.maxSlots, base.dim).add(randn([this.maxSlots, base.dim]).mul(memNoise * (rms || 1))).contiguous();
      }),
    );
    const lora = new LoraAdapters(base.loraSpecs(targets), { rank, alpha, dropout });
    this.module = new IcaeModule(memory, lora);
    this.module.eval();
  }

  trainable(_stage: Stage): [string, Parameter][] {
    return this.module.namedParameters().filter(([, p]) => p.trainable);
  }

  setTraining(on: boolean): void {
    this.module.train(on);
  }

  compress(contexts: number[][], budget: Budget): SoftContext {
    checkBudget(budget);
    const b = contexts.length;
    if (b === 0) throw new Error('icae: no contexts to compress');
    const counts = contexts.map((c) => softCount(c.length, budget));
    const k = Math.max(0, ...counts);
    if (k > this.maxSlots) {
      const worst = contexts[counts.indexOf(k)].length;
      throw new Error(`icae: ${describeBudget(budget)} asks for ${k} memory tokens for a context of ${worst} tokens, but this compressor has ${this.maxSlots} slots (maxSlots); use a larger ratio or a shorter context`);
    }
    const meta = { method: this.method, budget: { ...budget }, sourceTokens: contexts.map((c) => c.length), softTokens: counts, baseFingerprint: this.base.fingerprint() };
    const dim = this.base.dim;
    if (k === 0) return { softTokens: zeros([b, 0, dim], { dtype: this.base.dtype }), mask: zeros([b, 0], { dtype: 'bool' }), meta };

    const bosId = this.base.config.bosTokenId;
    const off = this.bos && bosId !== undefined ? 1 : 0;
    const lens = contexts.map((c, i) => off + c.length + counts[i]);
    const len = Math.max(...lens);
    const ids: number[] = [];
    const slot: number[] = [];
    const isMem: boolean[] = [];
    const gatherAt: number[] = [];
    const maskVals: boolean[] = [];
    contexts.forEach((c, i) => {
      const n = counts[i];
      const row = [...(off ? [bosId!] : []), ...c];
      for (let p = 0; p < len; p++) {
        const j = p - row.length;
        const mem = j >= 0 && j < n;
        ids.push(p < row.length ? row[p] : 0);
        slot.push(mem ? j : 0);
        isMem.push(mem);
      }
      for (let j = 0; j < k; j++) {
        gatherAt.push(j < n ? row.length + j : 0);
        maskVals.push(j < n);
      }
    });
    const tokEmb = this.base.embed(tensor(ids, [b, len], { dtype: 'int64' }));
    const memEmb = embedding(this.module.memory.value, tensor(slot, [b, len], { dtype: 'int64' }));
    const inputsEmbeds = where(tensor(isMem, [b, len, 1], { dtype: 'bool' }), memEmb, tokEmb);
    const { hidden } = this.base.forward({ inputsEmbeds, lora: this.module.lora, logits: 'none' });
    const mask = tensor(maskVals, [b, k], { dtype: 'bool' });
    const idx = tensor(gatherAt, [b, k, 1], { dtype: 'int64' }).expand(b, k, dim);
    const softTokens = hidden.gather(1, idx).mul(mask.unsqueeze(-1).to(hidden.dtype));
    return { softTokens, mask, meta };
  }
}

registerCompressor('icae', 'ICAE-style: learned memory tokens after the context, read out by the base model with a LoRA encoder', true, (base, options) => new IcaeCompressor(base, options));
