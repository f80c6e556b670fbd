/**
 * Pretraining a Llama-style base model on a text mixture (softpress pretrain): corpus documents
 * packed as [BOS] text [EOS] into rows of seqLen tokens, plus a share of question-answering
 * documents (context, question, answer), next-token loss, AdamW with warm-up and cosine decay,
 * under the one trainer (atomic checkpoints, exact resume, validation, log.jsonl, loss.svg).
 * `init` continues from another run or from a model folder with its own mixture and schedule.
 *
 * Further loss terms and documents plug in through PretrainExtensions: a LossTerm adds to the
 * loss of the text rows, brings rows of its own, and adds validation figures; ExtraDocuments join
 * the mixture at a share of its characters.
 *
 * The run folder holds the config, the checkpoint, log.jsonl, loss.svg and, at the end, the
 * model in Hugging Face layout (config.json, model.safetensors, tokenizer.json, training.json).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crossEntropy, manualSeed, noGrad, tensor, tidy, type ProcessGroup, type Tensor } from '../tensor/index.js';
import { warmupCosine } from '../nn/index.js';
import { configFromHf } from '../models/config.js';
import { LlamaModel, type ForwardResult } from '../models/llama.js';
import { loadWeights, readHfWeights, saveModel } from '../models/load.js';
import { BpeTokenizer } from '../models/bpe.js';
import { buildMixture, type ExtraDocuments } from '../data/pretrain-mix.js';
import { ChunkSampler, cachedTokenStream } from '../data/lm.js';
import { shardRange } from '../data/shard.js';
import { loadCheckpointParams, train, writeLossPlot, type TrainSummary, type TrainTask } from './trainer.js';
import type { PretrainConfig } from './pretrain-config.js';

export * from './pretrain-config.js';

/** What a loss term is built from: the run's config, model, tokenizer and token streams. */
export interface PretrainRun {
  cfg: PretrainConfig;
  model: LlamaModel;
  tokenizer: BpeTokenizer;
  trainStream: Int32Array;
  validStream: Int32Array;
}

/** The text rows of a micro-batch after the model's forward pass over them. */
export interface TextRows {
  /** rows x (len + 1) ids: the inputs and, shifted by one, the targets. */
  ids: Int32Array;
  rows: number;
  len: number;
  forward: ForwardResult;
  /** [rows * len, vocab] and [rows * len]. */
  logits: Tensor;
  targets: Tensor;
}

/** A loss to add (already weighted) and the figures to log with it. */
export interface TermLoss {
  loss: Tensor;
  parts: Record<string, number>;
}

/** An extra term of the pretraining loss. Everything it draws must follow from (step, micro), so that resume stays exact. */
export interface LossTerm {
  /** Forward outputs the term reads on the text rows. */
  wants?: { attentions?: boolean; attnInputs?: boolean };
  /** A loss on the text rows, added to theirs (undefined: nothing this time). */
  onText?(rows: TextRows): TermLoss | undefined;
  /** Rows of its own in micro-batch (step, micro), and the tokens they count. */
  ownRows?(step: number, micro: number): (TermLoss & { tokens: number }) | undefined;
  /** Figures added to every validation (run without gradients). */
  validate?(): Record<string, number>;
  /** Facts added to the model's training.json after `steps` steps. */
  summary?(steps: number): Record<string, unknown>;
}

export interface PretrainExtensions {
  terms?: ((run: PretrainRun) => LossTerm)[];
  documents?: ExtraDocuments[];
}

/** exportOnly: write OUT/model from the last checkpoint of a stopped run instead of training. */
export interface PretrainOptions {
  resume?: boolean;
  stopAfter?: number;
  quiet?: boolean;
  exportOnly?: boolean;
  extensions?: PretrainExtensions;
  /** Data-parallel over this process group (plain runs: no loss terms); rank 0 alone writes outDir. */
  dist?: ProcessGroup;
}

export async function pretrain(cfg: PretrainConfig, outDir: string, opts: PretrainOptions = {}): Promise<TrainSummary> {
  const lead = !opts.dist || opts.dist.rank === 0;
  if (opts.dist && opts.exportOnly) throw new Error('pretrain: --export runs in one process');
  if (opts.dist && opts.extensions?.terms?.length) throw new Error('pretrain: runs with loss terms do not train data-parallel');
  if (opts.dist && cfg.batchSize < opts.dist.worldSize)
    throw new Error(`pretrain: a batch of ${cfg.batchSize} rows cannot be shared by ${opts.dist.worldSize} ranks`);
  mkdirSync(outDir, { recursive: true });
  const cfgPath = join(outDir, 'pretrain-config.json');
  if (lead && (opts.resume || opts.exportOnly) && existsSync(cfgPath)) {
    const before = readFileSync(cfgPath, 'utf8');
    if (before !== JSON.stringify(cfg, null, 2)) throw new Error(`${outDir}: --resume with a different config than the run was started with (${cfgPath})`);
  }
  if (lead) writeFileSync(cfgPath, JSON.stringify(cfg, null, 2));
  const log = (s: string) => {
    if (!opts.quiet && lead) process.stderr.write(s + '\n');
  };

  const tokenizer = BpeTokenizer.fromFile(cfg.tokenizer);
  const tokId = readFileSync(cfg.tokenizer, 'utf8');
  const extraDocs = opts.extensions?.documents ?? [];
  log('building the data mixture (train and valid splits)…');
  const mixOpts = { corpora: cfg.corpora, data: cfg.data, babiDir: cfg.babiDir, seed: cfg.seed };
  const trainMix = buildMixture({ ...mixOpts, qaShare: cfg.qaShare, babiFraction: cfg.babiFraction, extra: extraDocs }, 'train');
  const validMix = buildMixture({ ...mixOpts, qaShare: 0 }, 'valid');
  const extraLog = extraDocs.map((x) => ` + ${x.name} ${((trainMix.extraChars[x.name] ?? 0) / 1e6).toFixed(1)} M chars (${trainMix.counts[x.name]})`).join('');
  log(
    `train: ${trainMix.counts.documents} documents (${(trainMix.corpusChars / 1e6).toFixed(1)} M chars) + QA ${(trainMix.qaChars / 1e6).toFixed(1)} M chars (${trainMix.counts.babi} bAbI, ${trainMix.counts.needle} needle, ${trainMix.counts.cloze} cloze)${extraLog}`,
  );
  const tick = (label: string) => (done: number, total: number) => {
    if (!opts.quiet && (done % 500 === 0 || done === total)) process.stderr.write(`\rtokenizing ${label}: ${done}/${total}${done === total ? '\n' : ''}`);
  };
  // Special-token strings in the training text become specials only when extra documents hold them.
  const allowSpecial = extraDocs.some((x) => x.specialTokens);
  const trainStream = cachedTokenStream(join(outDir, 'data', 'train.tokens'), trainMix.texts, tokenizer, tokId, tick('train'), { allowSpecial });
  const validStream = cachedTokenStream(join(outDir, 'data', 'valid.tokens'), validMix.texts, tokenizer, tokId, tick('valid'));
  const bytesPerToken = validMix.texts.reduce((a, t) => a + Buffer.byteLength(t), 0) / validStream.length;
  const sampler = new ChunkSampler(trainStream, cfg.seqLen, cfg.seed);
  const validSampler = new ChunkSampler(validStream, cfg.seqLen, cfg.seed);
  const validChunks = Math.min(cfg.validChunks, validSampler.numChunks);
  const tokensPerStep = cfg.seqLen * cfg.batchSize * cfg.gradAccum;
  log(
    `train stream ${(trainStream.length / 1e6).toFixed(2)} M tokens (${sampler.numChunks} chunks of ${cfg.seqLen}); ${cfg.steps} steps x ${tokensPerStep} tokens = ${((cfg.steps * tokensPerStep) / trainStream.length).toFixed(2)} epochs`,
  );

  manualSeed(cfg.seed);
  const modelCfg = configFromHf({
    model_type: 'llama',
    ...cfg.model,
    vocab_size: tokenizer.vocabSize,
    bos_token_id: tokenizer.bos,
    eos_token_id: tokenizer.eos,
    max_position_embeddings: Math.max(cfg.seqLen, Number(cfg.model.max_position_embeddings ?? 0)),
  });
  const model = noGrad(() => new LlamaModel(modelCfg));
  log(
    `model: ${(model.numParameters() / 1e6).toFixed(2)} M parameters (${modelCfg.numLayers} layers, dim ${modelCfg.hiddenSize}, vocab ${modelCfg.vocabSize})`,
  );
  const terms = (opts.extensions?.terms ?? []).map((make) => make({ cfg, model, tokenizer, trainStream, validStream }));
  if (cfg.batchSize === 0 && !terms.some((t) => t.ownRows))
    throw new Error(`pretrain: 'batchSize' is 0 and no loss term brings rows of its own: nothing to train on`);
  const wants = { attentions: terms.some((t) => t.wants?.attentions), attnInputs: terms.some((t) => t.wants?.attnInputs) };

  const len = cfg.seqLen;
  /** Next-token loss on n rows of len + 1 ids, with the forward outputs the terms want. */
  const textLoss = (ids: Int32Array, n: number, want: LossTerm['wants'] = {}) => {
    const all = tensor(ids, [n, len + 1]).to('int64');
    const forward = model.forward({ ids: all.narrow(1, 0, len), outputAttentions: want?.attentions, outputAttnInputs: want?.attnInputs });
    const logits = forward.logits!.reshape(n * len, -1);
    const targets = all.narrow(1, 1, len).reshape(n * len);
    return { loss: crossEntropy(logits, targets), rows: { ids, rows: n, len, forward, logits, targets } satisfies TextRows };
  };
  const params = model.namedParameters().filter(([, p]) => p.trainable);
  // Rank 0 alone loads an init: the trainer starts the other ranks from its weights.
  if (cfg.init && !opts.resume && !opts.exportOnly && lead) {
    if (existsSync(join(cfg.init, 'model.safetensors')) || existsSync(join(cfg.init, 'model.safetensors.index.json'))) {
      loadWeights(model, readHfWeights(cfg.init), cfg.init);
      log(`initialised from the model in ${cfg.init}`);
    } else {
      const { step } = loadCheckpointParams(cfg.init, params);
      log(`initialised from ${cfg.init} (step ${step})`);
    }
  }
  const task: TrainTask = {
    params,
    sharded: terms.length === 0,
    microBatch(step, micro, shard) {
      model.train();
      const parts: Record<string, number> = {};
      let loss: Tensor | undefined;
      let tokens = 0;
      const add = (l: TermLoss) => {
        loss = loss ? loss.add(l.loss) : l.loss;
        Object.assign(parts, l.parts);
      };
      for (const term of terms) {
        const own = term.ownRows?.(step, micro);
        if (own) {
          add(own);
          tokens += own.tokens;
        }
      }
      if (cfg.batchSize > 0) {
        // A shard's rows of the batch (all of them in one process).
        const [a, b] = shardRange(cfg.batchSize, shard);
        const ids = sampler.batch(step * cfg.gradAccum + micro, cfg.batchSize).subarray(a * (len + 1), b * (len + 1));
        const text = textLoss(ids, b - a, wants);
        add({ loss: text.loss, parts: { text_loss: text.loss.item() } });
        for (const extra of terms.map((t) => t.onText?.(text.rows))) if (extra) add(extra);
        tokens += (b - a) * len;
      }
      // A plain run logs just its loss.
      return terms.length ? { loss: loss!, tokens, parts } : { loss: loss!, tokens };
    },
    validate() {
      model.eval();
      let nats = 0;
      noGrad(() => {
        for (let i = 0; i < validChunks; i++) nats += tidy(() => textLoss(validSampler.sequential(i), 1).loss.item());
      });
      const loss = nats / validChunks;
      const figures: Record<string, number> = { loss, ppl: Math.exp(loss), bpb: loss / Math.LN2 / bytesPerToken };
      for (const term of terms)
        if (term.validate)
          Object.assign(
            figures,
            noGrad(() => tidy(() => term.validate!())),
          );
      return figures;
    },
  };
  if (opts.exportOnly) {
    // Write the model of a run stopped before its last step (e.g. out of time), as it stands.
    const { step } = loadCheckpointParams(outDir, task.params);
    const valid = task.validate!();
    const rowsLog = readFileSync(join(outDir, 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: number; loss?: number; time?: number });
    const last = rowsLog.filter((r) => r.loss !== undefined && r.step <= step).pop();
    const summary: TrainSummary = { steps: step, lastLoss: last?.loss ?? NaN, lastValid: valid, seconds: last?.time ?? 0, interrupted: true };
    writeModel(summary);
    writeLossPlot(outDir, 'pretraining loss');
    return summary;
  }
  const summary = await train(task, {
    outDir,
    totalSteps: cfg.steps,
    gradAccum: cfg.gradAccum,
    clip: cfg.clip,
    schedule: warmupCosine({ peakLr: cfg.lr, warmupSteps: cfg.warmup, totalSteps: cfg.steps, minLr: cfg.minLr }),
    weightDecay: cfg.weightDecay,
    checkpointEvery: cfg.checkpointEvery,
    evalEvery: cfg.evalEvery,
    resume: opts.resume,
    stopAfter: opts.stopAfter,
    title: 'pretraining loss',
    quiet: opts.quiet,
    dist: opts.dist,
  });
  if (summary.steps >= cfg.steps && lead) writeModel(summary);
  return summary;

  function writeModel(summary: TrainSummary): void {
    const modelDir = join(outDir, 'model');
    saveModel(model, modelDir, { dtype: 'float16', metadata: { steps: String(summary.steps) } });
    copyFileSync(cfg.tokenizer, join(modelDir, 'tokenizer.json'));
    const training = {
      steps: summary.steps,
      plannedSteps: cfg.steps,
      tokensSeen: summary.steps * tokensPerStep,
      ...Object.assign({}, ...terms.map((t) => t.summary?.(summary.steps))),
      seconds: summary.seconds,
      lastLoss: summary.lastLoss,
      valid: summary.lastValid,
      parameters: model.numParameters(),
      mixture: trainMix.counts,
      trainTokens: trainStream.length,
    };
    writeFileSync(join(modelDir, 'training.json'), JSON.stringify(training, null, 2));
    log(`saved ${modelDir}`);
  }
}
