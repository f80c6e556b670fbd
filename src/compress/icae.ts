/**
 * ICAE-style autoencoder (Ge et al., "In-context Autoencoder", ICLR 2024; papers/baselines.md;
 * the official code, getao/icae, icae_v2): k learnable memory-token embeddings are appended
 * after the context, the frozen base model runs over [BOS] context [memory tokens] with the
 * compressor's own LoRA adapters (the encoder), and the final hidden states (after the final
 * norm) at the k memory positions are the soft tokens. The decoder (the same frozen base,
 * without the adapters) reads them.
 *
 * - Memory table: `maxSlots` rows (default 256); memory token j of every context is row j.
 *   Ratio r → k = ceil(T / r) memory tokens (at most maxSlots). The rows start as learned
 *   vectors drawn like embedding rows of this base, N(0, std of its embedding table) — the
 *   official code draws them from nn.Embedding's N(0, 1), scaled here to the base — so no
 *   tokenizer token is needed (compressors saved with `memTokenId` started from that token's
 *   embedding plus noise, and are rebuilt the same way).
 * - Task tokens, as the official code has them: a learned [AE] embedding read after the memory
 *   slots when the decoder restates (`aeToken`, default true), and a learned [LM] embedding
 *   before a continuation (`lmToken`, default false as the official add_special_token_for_lm).
 *   They are Compressor.taskEmbeddings: training and evaluation put them after the soft tokens
 *   (decode.ts withTaskEmbeddings), and the shared text prompt follows (compress/prompts.ts).
 * - LoRA: the official rank 128, alpha 32, dropout 0.05 on q and v (PEFT's default for Llama) of
 *   every layer, kept in this compressor (passed to the base forward as `lora:`), never attached
 *   to the shared model. Trainable parameters stay in float32 for any base dtype.
 * - Ragged batches: contexts are right-padded and each row's memory tokens follow its own last
 *   real token. Under causal attention a row's real positions never see its padding and keep
 *   positions 0.., so every item is encoded exactly as it would be alone.
 * Trainable at every stage: the memory table, the task tokens and the LoRA adapters.
 */
import { Tensor, embedding, noGrad, randn, tensor, tidy, where, zeros } from '../tensor/index.js';
import { LoraAdapters, Module, type Parameter } from '../nn/index.js';
import { LORA_TARGETS, type LlamaModel, type LoraTarget } from '../models/llama.js';
import { encoderBosDefault, registerCompressor, type CompressorEnv } from './registry.js';
import {
  checkBudget,
  describeBudget,
  softCount,
  trainableDtype,
  type Budget,
  type Compressor,
  type CompressorConfig,
  type SoftContext,
  type Stage,
} from './types.js';
import { optBool, optList, optNumber } from './options.js';
import { code, ours, type MethodRecipe, type StageRecipe } from './recipe.js';

export interface IcaeOptions {
  maxSlots?: number;
  loraRank?: number;
  loraAlpha?: number;
  loraDropout?: number;
  /** Projections adapted in every layer (default q, v). */
  loraTargets?: LoraTarget[];
  /**
   * A token whose embedding (plus noise) initialises the memory table; unset (the default), the
   * rows are learned vectors drawn N(0, std of the base's embedding table).
   */
  memTokenId?: number | null;
  /** Std of the init noise around memTokenId's row, relative to its RMS (default 0.1). */
  memNoise?: number;
  /** A learned [AE] embedding after the memory slots when restating (default true). */
  aeToken?: boolean;
  /** A learned [LM] embedding after the memory slots before a continuation (default false). */
  lmToken?: boolean;
  /** Prepend the base model's BOS to each context (default: as its tokenizer starts sequences). */
  bos?: boolean;
}

/** Optimiser settings our summary does not give for ICAE: softpress's own (train-compressor). */
const ICAE_STAGE: StageRecipe = {
  lr: ours(1e-3),
  minLrFraction: ours(0.1),
  warmupFraction: ours(0.05),
  schedule: ours('cosine'),
  weightDecay: ours(0.01),
  betas: ours([0.9, 0.95]),
  clip: ours(1.0),
};

/**
 * ICAE's recipe: the architecture from papers/baselines.md and the official code (getao/icae,
 * icae_v2: lora_r 128, lora_alpha 32, dropout 0.05, PEFT's default q/v targets, [AE] token,
 * optional [LM] token); the optimiser is not in our summary, so softpress's own settings stay.
 */
export const ICAE_RECIPE: MethodRecipe = {
  method: 'icae',
  source: 'Ge et al., ICLR 2024 (papers/baselines.md); official code getao/icae (icae_v2)',
  options: {
    maxSlots: ours(256, 'the official code: 128 slots per span, several spans'),
    loraRank: code(128),
    loraAlpha: code(32),
    loraDropout: code(0.05),
    loraTargets: code(['q', 'v'], "PEFT's default for Llama/Mistral"),
    memInit: code('random', 'learned vectors; N(0, 1) there, N(0, std of the embeddings) here'),
    aeToken: code(true),
    lmToken: code(false, 'add_special_token_for_lm'),
  },
  stages: { ae: ICAE_STAGE, lm: ICAE_STAGE, qa: ICAE_STAGE },
  train: {},
  deviations: [
    {
      key: 'options.maxSlots',
      paper: '128 memory slots per span, long contexts in several spans',
      ours: 'one span of up to 256 slots',
      why: 'our contexts (<= 1,024 tokens at ratio >= 4) fit one span',
    },
    {
      key: 'options.memInit',
      paper: 'nn.Embedding default, N(0, 1)',
      ours: 'N(0, std of the base embedding table)',
      why: "the same kind of learned vector at the base's embedding scale",
    },
    {
      key: 'restate prompt',
      paper: '[memory slots][AE] context EOS',
      ours: '[memory slots][AE] "Restate the aforementioned text." context EOS (chat-wrapped on instruct bases)',
      why: 'every method is asked to restate with the same prompt (compress/prompts.ts)',
    },
    {
      key: 'qa prompt',
      paper: '[memory slots][FT] prompt answer (Mistral [INST] format)',
      ours: "the evaluation's QA format, no [FT] token",
      why: 'one QA format for every method, train and eval (models/chat.ts qaPromptFormat)',
    },
  ],
};

/** Options of compressors saved before task tokens existed. */
export const ICAE_LEGACY = Object.freeze({ aeToken: false, lmToken: false });

class IcaeModule extends Module {
  readonly memory: Parameter;
  readonly lora: LoraAdapters;
  readonly ae?: Parameter;
  readonly lm?: Parameter;
  constructor(memory: Tensor, lora: LoraAdapters, tokens: { ae?: Tensor; lm?: Tensor }) {
    super();
    this.memory = this.param('memory', memory);
    this.lora = this.module('lora', lora);
    if (tokens.ae) this.ae = this.param('ae_token', tokens.ae);
    if (tokens.lm) this.lm = this.param('lm_token', tokens.lm);
  }
}

export class IcaeCompressor implements Compressor {
  readonly method = 'icae';
  readonly config: CompressorConfig;
  readonly module: IcaeModule;
  readonly maxSlots: number;
  readonly bos: boolean;

  constructor(
    readonly base: LlamaModel,
    options: Record<string, unknown> = {},
    env: CompressorEnv = {},
  ) {
    const m = this.method;
    const r = ICAE_RECIPE.options;
    this.maxSlots = optNumber(m, options, 'maxSlots', r.maxSlots.value as number, { integer: true, min: 1 });
    const rank = optNumber(m, options, 'loraRank', r.loraRank.value as number, { integer: true, min: 1 });
    const alpha = optNumber(m, options, 'loraAlpha', r.loraAlpha.value as number, { min: 0 });
    const dropout = optNumber(m, options, 'loraDropout', r.loraDropout.value as number, { min: 0, max: 0.99 });
    const targets = optList(m, options, 'loraTargets', LORA_TARGETS, r.loraTargets.value as LoraTarget[]);
    const memTokenId =
      options.memTokenId === undefined || options.memTokenId === null
        ? null
        : optNumber(m, options, 'memTokenId', 0, { integer: true, min: 0, max: base.config.vocabSize - 1 });
    const memNoise = optNumber(m, options, 'memNoise', 0.1, { min: 0 });
    const aeToken = optBool(m, options, 'aeToken', r.aeToken.value as boolean);
    const lmToken = optBool(m, options, 'lmToken', r.lmToken.value as boolean);
    this.bos = optBool(m, options, 'bos', encoderBosDefault(base, env));
    this.config = {
      method: m,
      maxSlots: this.maxSlots,
      loraRank: rank,
      loraAlpha: alpha,
      loraDropout: dropout,
      loraTargets: targets,
      memTokenId,
      memNoise,
      aeToken,
      lmToken,
      bos: this.bos,
    };
    // Learned vectors (float32 whatever the base's dtype), drawn like rows of the base's table.
    const draw = (rows: number) =>
      tidy(() =>
        noGrad(() => {
          if (memTokenId !== null) {
            const row = base.embed(tensor([memTokenId], [1], { dtype: 'int64' })).to('float32'); // [1, dim]
            const rms = row.square().mean().sqrt().item();
            return row
              .expand(rows, base.dim)
              .add(randn([rows, base.dim]).mul(memNoise * (rms || 1)))
              .contiguous();
          }
          const table = base.model.embedTokens.weight.value.to('float32');
          const std = table.sub(table.mean()).square().mean().sqrt().item();
          return randn([rows, base.dim]).mul(std || 1);
        }),
      );
    const memory = draw(this.maxSlots);
    const lora = new LoraAdapters(base.loraSpecs(targets), { rank, alpha, dropout });
    this.module = new IcaeModule(memory, lora, { ae: aeToken ? draw(1).reshape(base.dim) : undefined, lm: lmToken ? draw(1).reshape(base.dim) : undefined });
    if (trainableDtype(base) !== 'float32') this.module.toDtype(trainableDtype(base));
    this.module.eval();
  }

  /** [AE] when restating, [LM] before a continuation (when this compressor has them). */
  taskEmbeddings(task: Stage): Tensor | undefined {
    const p = task === 'ae' ? this.module.ae : task === 'lm' ? this.module.lm : undefined;
    return p ? p.value.unsqueeze(0).to(this.base.dtype) : undefined;
  }

  /** The memory table and the LoRA at every stage, plus the stage's own task token ([AE] at ae, [LM] at lm). */
  trainable(stage: Stage): [string, Parameter][] {
    const other = new Set(['ae_token', 'lm_token'].filter((n) => n !== (stage === 'ae' ? 'ae_token' : stage === 'lm' ? 'lm_token' : '')));
    return this.module.namedParameters().filter(([n, p]) => p.trainable && !other.has(n));
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
      throw new Error(
        `icae: ${describeBudget(budget)} asks for ${k} memory tokens for a context of ${worst} tokens, but this compressor has ${this.maxSlots} slots (maxSlots); use a larger ratio or a shorter context`,
      );
    }
    const meta = {
      method: this.method,
      budget: { ...budget },
      sourceTokens: contexts.map((c) => c.length),
      softTokens: counts,
      baseFingerprint: this.base.fingerprint(),
    };
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
    const memEmb = embedding(this.module.memory.value, tensor(slot, [b, len], { dtype: 'int64' })).to(tokEmb.dtype);
    const inputsEmbeds = where(tensor(isMem, [b, len, 1], { dtype: 'bool' }), memEmb, tokEmb);
    const { hidden } = this.base.forward({ inputsEmbeds, lora: this.module.lora, logits: 'none' });
    const mask = tensor(maskVals, [b, k], { dtype: 'bool' });
    const idx = tensor(gatherAt, [b, k, 1], { dtype: 'int64' }).expand(b, k, dim);
    const softTokens = hidden.gather(1, idx).mul(mask.unsqueeze(-1).to(hidden.dtype));
    return { softTokens, mask, meta };
  }
}

registerCompressor(
  'icae',
  'ICAE-style: learned memory tokens after the context, read out by the base model with a LoRA encoder',
  true,
  (base, options, env) => new IcaeCompressor(base, options, env),
  {
    recipe: ICAE_RECIPE,
    savedDefaults: ICAE_LEGACY,
  },
);
