/**
 * Pretraining a Llama-style base model from scratch on a text mixture (softpress pretrain).
 * The run folder holds the config, the checkpoint, log.jsonl, loss.svg and, at the end, the
 * model in Hugging Face layout (config.json, model.safetensors, tokenizer.json).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { crossEntropy, manualSeed, noGrad, tensor, tidy, type Tensor } from '../tensor/index.js';
import { warmupCosine } from '../nn/index.js';
import { configFromHf } from '../models/config.js';
import { LlamaModel } from '../models/llama.js';
import { loadWeights, readHfWeights, saveModel } from '../models/load.js';
import { BpeTokenizer } from '../models/bpe.js';
import { buildMixture } from '../data/pretrain-mix.js';
import { ChunkSampler, cachedTokenStream } from '../data/lm.js';
import { makeCopyRows } from '../data/copy-task.js';
import { answerTargets } from '../data/qa.js';
import { Rng } from '../data/rng.js';
import { checkInductionSupervision, inductionSupervisionLoss, type InductionSupervision } from './induction.js';
import { answerCopyLoss, answerPointerLoss, answerPointerTargets, checkAnswerPointer, restatePointerTargets, type AnswerPointer } from './answer-pointer.js';
import { checkSoftRestate, drawSoftRestateShape, plainRestateLoss, softRestateLoss, type SoftRestate } from './soft-restate.js';
import { loadCheckpointParams, train, writeLossPlot, type MicroBatchLoss, type TrainSummary, type TrainTask } from './trainer.js';

export interface PretrainConfig {
  /** Hugging Face config.json fields of the model (vocab_size is taken from the tokenizer). */
  model: Record<string, unknown>;
  /** tokenizer.json (byte-level BPE), relative to the config file. */
  tokenizer: string;
  corpora: string[];
  data?: string;
  babiDir?: string;
  qaShare: number;
  /** Share of recall documents (passages with 2–8 planted facts, all asked back); default 0. */
  recallShare?: number;
  /** Share of restate documents (passage <|restate|> passage); default 0. */
  restateShare?: number;
  /** Fraction of restate documents with shuffled words (default 0). */
  restateShuffled?: number;
  /**
   * Start from the weights of another pretraining run (its folder, relative to the config) or of a
   * Hugging Face model folder (config.json + model.safetensors, e.g. a shipped model) instead of a
   * random initialisation: a continued phase with its own data mixture and schedule.
   */
  init?: string;
  /**
   * Synthetic copy rows (random ids with repeated spans, src/data/copy-task.ts) added to every
   * micro-batch, copyLen tokens each (default 0). Their loss, on the copied tokens only, is added
   * to the text loss: it teaches the model to copy from its context. With batchSize 0 a phase
   * trains on copy rows only (a copy warm-up; the text still validates).
   */
  copyRows?: number;
  /** Tokens per copy row (default seqLen). */
  copyLen?: number;
  /**
   * Copy rows draw their ids from this many non-special ids, a random subset fixed by the seed
   * (default: all). A small pool makes the copy signal dense per id, which is how a copy warm-up
   * gets an induction head started; later phases widen it to the whole vocabulary.
   */
  copyPool?: number;
  /**
   * Supervise one head's attention to the previous token and a later layer's same head to the
   * induction pattern, on text and copy rows alike (src/train/induction.ts): how our small base
   * gets an induction head, i.e. learns to copy from its context.
   */
  inductionSupervision?: InductionSupervision;
  /**
   * Extra weight on the answers of the QA documents in text rows (the tokens after "\nAnswer:"
   * up to the line's end), added as weight x their mean loss and logged as `answer_loss`
   * (default 0). The answer is one token in a hundred of a QA document; this makes the model
   * learn to answer from its context rather than mostly to predict the stories.
   */
  answerWeight?: number;
  /**
   * Supervise one head to attend, at each answer token of a QA document, to where that token
   * sequence stands earlier in the row (src/train/answer-pointer.ts); logged as
   * `pointer_attn_loss`. Retrieval from the context, which plain training did not find.
   */
  answerPointer?: AnswerPointer;
  /**
   * The same supervision on restate documents (needs restateShare > 0): the query that predicts
   * the k-th restated token attends to the k-th token of the passage (restatePointerTargets);
   * logged as `restate_attn_loss` and, with copyWeight, `restate_copy_loss`. Teaches the
   * decoder to restate its context, which next-token loss on restate documents alone did not.
   */
  restatePointer?: AnswerPointer;
  /**
   * Extra weight on the restated tokens of restate documents (those restatePointerTargets
   * aligns with their source), added as weight x their mean next-token loss and logged as
   * `restate_loss` (default 0). The pointer's copy loss reads the head alone; this makes the
   * copied token win in the model's own logits, against everything else in the residual.
   */
  restateWeight?: number;
  /**
   * Soft-prefix restate rows added to every micro-batch (src/train/soft-restate.ts): a passage's
   * group means of embeddings as soft tokens, then <|restate|> and the passage. Teaches the base
   * to read several tokens out of one vector, the skill a frozen decoder needs for group-merged
   * soft tokens (GMSA's autoencoding stage); logged as `soft_restate_loss` (and its pointer's
   * and plain rows' terms), validated as `soft_restate_loss` and `plain_restate_loss` on fixed
   * 128-token valid passages at ratio 4.
   */
  softRestate?: SoftRestate;
  /** Share of the QA characters that are bAbI stories when babiDir is given (default 0.4). */
  babiFraction?: number;
  seed: number;
  seqLen: number;
  batchSize: number;
  gradAccum: number;
  steps: number;
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  clip: number;
  evalEvery: number;
  validChunks: number;
  checkpointEvery: number;
}

const DEFAULTS: Omit<PretrainConfig, 'model' | 'tokenizer'> = {
  corpora: ['sotu', 'moby-dick', 'brown'],
  qaShare: 0.15,
  seed: 0,
  seqLen: 512,
  batchSize: 8,
  gradAccum: 1,
  steps: 1000,
  lr: 1e-3,
  minLr: 1e-4,
  warmup: 50,
  weightDecay: 0.1,
  clip: 1.0,
  evalEvery: 100,
  validChunks: 32,
  checkpointEvery: 50,
};

/** Reads a pretraining config; relative paths are resolved against the config's folder. */
export function readPretrainConfig(path: string): PretrainConfig {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  const cfg = { ...DEFAULTS, ...raw } as PretrainConfig;
  if (!cfg.model || typeof cfg.model !== 'object') throw new Error(`${path}: 'model' (Hugging Face config fields) is required`);
  if (typeof cfg.tokenizer !== 'string') throw new Error(`${path}: 'tokenizer' (path to tokenizer.json) is required`);
  const rel = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(dirname(path), p));
  cfg.tokenizer = rel(cfg.tokenizer)!;
  cfg.data = rel(cfg.data);
  cfg.babiDir = rel(cfg.babiDir);
  cfg.init = rel(cfg.init);
  for (const k of ['seqLen', 'batchSize', 'gradAccum', 'steps', 'warmup', 'evalEvery', 'validChunks', 'checkpointEvery'] as const) {
    if (!Number.isInteger(cfg[k]) || cfg[k] < (k === 'warmup' || k === 'batchSize' ? 0 : 1)) throw new Error(`${path}: '${k}' must be a positive integer, got ${JSON.stringify(cfg[k])}`);
  }
  if (cfg.copyRows !== undefined && !(Number.isInteger(cfg.copyRows) && cfg.copyRows >= 0)) throw new Error(`${path}: 'copyRows' must be an integer >= 0, got ${JSON.stringify(cfg.copyRows)}`);
  if (cfg.copyLen !== undefined && !(Number.isInteger(cfg.copyLen) && cfg.copyLen >= 16 && cfg.copyLen <= cfg.seqLen)) throw new Error(`${path}: 'copyLen' must be an integer in [16, seqLen], got ${JSON.stringify(cfg.copyLen)}`);
  if (cfg.answerWeight !== undefined && !(typeof cfg.answerWeight === 'number' && cfg.answerWeight >= 0)) throw new Error(`${path}: 'answerWeight' must be a number >= 0, got ${JSON.stringify(cfg.answerWeight)}`);
  if (cfg.restateWeight !== undefined && !(typeof cfg.restateWeight === 'number' && cfg.restateWeight >= 0)) throw new Error(`${path}: 'restateWeight' must be a number >= 0, got ${JSON.stringify(cfg.restateWeight)}`);
  if ((cfg.restateWeight ?? 0) > 0 && !((cfg.restateShare ?? 0) > 0)) throw new Error(`${path}: 'restateWeight' needs restate documents (restateShare > 0)`);
  if (cfg.copyPool !== undefined && !(Number.isInteger(cfg.copyPool) && cfg.copyPool >= 2)) throw new Error(`${path}: 'copyPool' must be an integer >= 2, got ${JSON.stringify(cfg.copyPool)}`);
  if (cfg.batchSize + (cfg.copyRows ?? 0) + (cfg.softRestate?.rows ?? 0) === 0) throw new Error(`${path}: 'batchSize' is 0 and there are no copy rows: nothing to train on`);
  for (const k of ['lr', 'minLr', 'weightDecay', 'clip'] as const) {
    if (typeof cfg[k] !== 'number' || !(cfg[k] >= 0)) throw new Error(`${path}: '${k}' must be a number >= 0`);
  }
  return cfg;
}

/** `size` ids of `ids`, a random subset fixed by the seed (all of them when size is undefined). */
export function copyPoolIds(ids: Int32Array, size: number | undefined, seed: number): Int32Array {
  if (size === undefined || size >= ids.length) return ids;
  const shuffled = Int32Array.from(ids);
  const rng = new Rng(`copy-pool:${seed}`);
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
  }
  return shuffled.slice(0, size);
}

export async function pretrain(cfg: PretrainConfig, outDir: string, opts: { resume?: boolean; stopAfter?: number; quiet?: boolean; exportOnly?: boolean } = {}): Promise<TrainSummary> {
  mkdirSync(outDir, { recursive: true });
  const cfgPath = join(outDir, 'pretrain-config.json');
  if ((opts.resume || opts.exportOnly) && existsSync(cfgPath)) {
    const before = readFileSync(cfgPath, 'utf8');
    if (before !== JSON.stringify(cfg, null, 2)) throw new Error(`${outDir}: --resume with a different config than the run was started with (${cfgPath})`);
  }
  writeFileSync(cfgPath, JSON.stringify(cfg, null, 2));
  const log = (s: string) => {
    if (!opts.quiet) process.stderr.write(s + '\n');
  };

  const tokenizer = BpeTokenizer.fromFile(cfg.tokenizer);
  const tokId = readFileSync(cfg.tokenizer, 'utf8');
  log('building the data mixture (train and valid splits)…');
  const trainMix = buildMixture({ corpora: cfg.corpora, data: cfg.data, babiDir: cfg.babiDir, qaShare: cfg.qaShare, restateShare: cfg.restateShare, restateShuffled: cfg.restateShuffled, recallShare: cfg.recallShare, babiFraction: cfg.babiFraction, seed: cfg.seed }, 'train');
  const validMix = buildMixture({ corpora: cfg.corpora, data: cfg.data, babiDir: cfg.babiDir, qaShare: 0, seed: cfg.seed }, 'valid');
  log(`train: ${trainMix.counts.documents} documents (${(trainMix.corpusChars / 1e6).toFixed(1)} M chars) + QA ${(trainMix.qaChars / 1e6).toFixed(1)} M chars (${trainMix.counts.babi} bAbI, ${trainMix.counts.needle} needle, ${trainMix.counts.cloze} cloze) + restate ${(trainMix.restateChars / 1e6).toFixed(1)} M chars (${trainMix.counts.restate})${trainMix.counts.recall !== undefined ? ` + recall ${(trainMix.recallChars / 1e6).toFixed(1)} M chars (${trainMix.counts.recall})` : ''}`);
  const tick = (label: string) => (done: number, total: number) => {
    if (!opts.quiet && (done % 500 === 0 || done === total)) process.stderr.write(`\rtokenizing ${label}: ${done}/${total}`);
    if (!opts.quiet && done === total) process.stderr.write('\n');
  };
  // Restate documents hold "<|restate|>"; with them, special-token strings anywhere in the training
  // text become specials (the bundled corpora contain none).
  const trainStream = cachedTokenStream(join(outDir, 'data', 'train.tokens'), trainMix.texts, tokenizer, tokId, tick('train'), { allowSpecial: (cfg.restateShare ?? 0) > 0 });
  const validStream = cachedTokenStream(join(outDir, 'data', 'valid.tokens'), validMix.texts, tokenizer, tokId, tick('valid'));
  const validBytes = validMix.texts.reduce((a, t) => a + Buffer.byteLength(t), 0);
  const bytesPerToken = validBytes / validStream.length;
  const sampler = new ChunkSampler(trainStream, cfg.seqLen, cfg.seed);
  const validSampler = new ChunkSampler(validStream, cfg.seqLen, cfg.seed);
  const validChunks = Math.min(cfg.validChunks, validSampler.numChunks);
  // Text tokens only: copy rows are synthetic.
  const tokensPerStep = cfg.seqLen * cfg.batchSize * cfg.gradAccum;
  log(`train stream ${(trainStream.length / 1e6).toFixed(2)} M tokens (${sampler.numChunks} chunks of ${cfg.seqLen}); ${cfg.steps} steps x ${tokensPerStep} tokens = ${((cfg.steps * tokensPerStep) / trainStream.length).toFixed(2)} epochs`);

  manualSeed(cfg.seed);
  const modelCfg = configFromHf({ model_type: 'llama', ...cfg.model, vocab_size: tokenizer.vocabSize, bos_token_id: tokenizer.bos, eos_token_id: tokenizer.eos, max_position_embeddings: Math.max(cfg.seqLen, Number(cfg.model.max_position_embeddings ?? 0)) });
  const model = noGrad(() => new LlamaModel(modelCfg));
  log(`model: ${(model.numParameters() / 1e6).toFixed(2)} M parameters (${modelCfg.numLayers} layers, dim ${modelCfg.hiddenSize}, vocab ${modelCfg.vocabSize})`);

  const rows = cfg.batchSize;
  const len = cfg.seqLen;
  const answerWeight = cfg.answerWeight ?? 0;
  const answerMarker = tokenizer.encode('\nAnswer:');
  const answerStops = new Set([...tokenizer.encode('\n'), tokenizer.eos]);
  const sup = cfg.inductionSupervision;
  if (sup) checkInductionSupervision(sup, modelCfg.numLayers, modelCfg.numHeads, 'pretrain config');
  const pointer = cfg.answerPointer;
  if (pointer) checkAnswerPointer(pointer, modelCfg.numLayers, modelCfg.numHeads, 'pretrain config');
  const restatePointer = cfg.restatePointer;
  if (restatePointer) {
    checkAnswerPointer(restatePointer, modelCfg.numLayers, modelCfg.numHeads, 'pretrain config', 'restatePointer');
    if (!((cfg.restateShare ?? 0) > 0)) throw new Error('pretrain config: restatePointer needs restate documents (restateShare > 0)');
  }
  const restateWeight = cfg.restateWeight ?? 0;
  const restateId = tokenizer.special.get('<|restate|>');
  if ((restatePointer || restateWeight > 0) && restateId === undefined) throw new Error(`pretrain config: ${restatePointer ? 'restatePointer' : 'restateWeight'} needs a tokenizer with <|restate|> (${cfg.tokenizer})`);
  const softRestate = cfg.softRestate;
  if (softRestate) {
    checkSoftRestate(softRestate, modelCfg.numLayers, modelCfg.numHeads, modelCfg.maxPositions, 'pretrain config');
    if (restateId === undefined) throw new Error(`pretrain config: softRestate needs a tokenizer with <|restate|> (${cfg.tokenizer})`);
  }
  /**
   * Next-token loss on n rows of rowLen + 1 ids (on `at` flat target positions only, if given);
   * `supervise` adds the training-only terms: attention supervision, and on text rows the answers'
   * loss and the answer pointer's losses.
   */
  const lossOn = (flat: Int32Array, n: number, rowLen: number, at?: Int32Array, supervise = false) => {
    const all = tensor(flat, [n, rowLen + 1]).to('int64');
    const pointerHere = supervise && !at && !!pointer;
    const copyHere = pointerHere && (pointer!.copyWeight ?? 0) > 0;
    const restateHere = supervise && !at && !!restatePointer;
    const restateCopyHere = restateHere && (restatePointer!.copyWeight ?? 0) > 0;
    const out = model.forward({ ids: all.narrow(1, 0, rowLen), outputAttentions: supervise && (!!sup || pointerHere || restateHere), outputAttnInputs: copyHere || restateCopyHere });
    let logits = out.logits!.reshape(n * rowLen, -1);
    let targets = all.narrow(1, 1, rowLen).reshape(n * rowLen);
    if (at) {
      const idx = tensor(at, [at.length]).to('int64');
      logits = logits.indexSelect(0, idx);
      targets = targets.indexSelect(0, idx);
    }
    const loss = crossEntropy(logits, targets);
    const attn = supervise && sup ? inductionSupervisionLoss(out.attentions!, flat, n, rowLen, rowLen + 1, sup) : undefined;
    let answer: Tensor | undefined;
    if (supervise && !at && answerWeight > 0) {
      const where = answerTargets(flat, n, rowLen, rowLen + 1, answerMarker, answerStops);
      if (where.length > 0) {
        const idx = tensor(where, [where.length]).to('int64');
        answer = crossEntropy(logits.indexSelect(0, idx), targets.indexSelect(0, idx));
      }
    }
    const pointerTargets = pointerHere ? answerPointerTargets(flat, n, rowLen, rowLen + 1, answerMarker, answerStops) : undefined;
    const pointed = pointerTargets ? answerPointerLoss(out.attentions!, pointerTargets, n, rowLen, pointer!) : undefined;
    const copied = pointerTargets && copyHere ? answerCopyLoss(model, out.attnInputs![pointer!.layer]!, out.attentions!, pointerTargets, flat, n, rowLen, rowLen + 1, pointer!) : undefined;
    const restateTargets = restateHere || (supervise && !at && restateWeight > 0) ? restatePointerTargets(flat, n, rowLen, rowLen + 1, restateId!, tokenizer.bos) : undefined;
    let restated: Tensor | undefined;
    if (restateTargets && restateWeight > 0 && restateTargets.queries.length > 0) {
      const idx = tensor(restateTargets.queries, [restateTargets.queries.length]).to('int64');
      restated = crossEntropy(logits.indexSelect(0, idx), targets.indexSelect(0, idx));
    }
    const restatePointed = restateHere && restateTargets ? answerPointerLoss(out.attentions!, restateTargets, n, rowLen, restatePointer!) : undefined;
    const restateCopied = restateTargets && restateCopyHere ? answerCopyLoss(model, out.attnInputs![restatePointer!.layer]!, out.attentions!, restateTargets, flat, n, rowLen, rowLen + 1, restatePointer!) : undefined;
    return { loss, attn, answer, pointed, copied, restated, restatePointed, restateCopied };
  };
  const lossOnChunks = (flat: Int32Array, n: number, supervise = false) => lossOn(flat, n, len, undefined, supervise);
  const specialIds = new Set(tokenizer.special.values());
  const copyPool = copyPoolIds(Int32Array.from({ length: tokenizer.vocabSize }, (_, i) => i).filter((i) => !specialIds.has(i)), cfg.copyPool, cfg.seed);
  const copyRows = cfg.copyRows ?? 0;
  const copyLen = cfg.copyLen ?? len;
  /** Mean loss on the copied tokens of n synthetic copy rows (deterministic in the seed string). */
  const copyLoss = (seed: string, n: number, supervise = false) => {
    const { ids, copied } = makeCopyRows(new Rng(seed), { rows: n, len: copyLen + 1, pool: copyPool });
    return lossOn(ids, n, copyLen, copied, supervise);
  };
  /** Passages without special ids (document breaks, <|restate|>) from a stream, for soft restate rows. */
  const passageSamplers = new Map<string, ChunkSampler>();
  const passages = (stream: Int32Array, name: string, first: number, rows: number, n: number): Int32Array => {
    const key = `${name}:${n}`;
    let s = passageSamplers.get(key);
    if (!s) passageSamplers.set(key, (s = new ChunkSampler(stream, n, cfg.seed + 1)));
    const out = new Int32Array(rows * n);
    // Up to 8 draws per row are reserved (first * 8 …), so rows stay fixed by the step on resume.
    for (let r = 0; r < rows; r++) {
      let chunk = s.chunk((first + r) * 8);
      for (let t = 1; t < 8 && chunk.subarray(0, n).some((id) => specialIds.has(id)); t++) chunk = s.chunk((first + r) * 8 + t);
      out.set(chunk.subarray(0, n), r * n);
    }
    return out;
  };
  const softIds = { bos: tokenizer.bos, eos: tokenizer.eos, restate: restateId ?? -1 };
  const params = model.namedParameters().filter(([, p]) => p.trainable);
  if (cfg.init && !opts.resume && !opts.exportOnly) {
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
    microBatch(step, micro): MicroBatchLoss {
      model.train();
      const parts: Record<string, number> = {};
      let loss: Tensor | undefined;
      let prevAttn = 0;
      let inductionAttn = 0;
      // Each part adds its loss (and attention supervision) to the micro-batch's.
      const add = (name: string, r: ReturnType<typeof lossOn>) => {
        parts[name] = r.loss.item();
        let l = r.loss;
        if (r.attn && sup) {
          l = l.add(r.attn.prev.add(r.attn.induction).mul(sup.weight));
          prevAttn += r.attn.prev.item();
          inductionAttn += r.attn.induction.item();
        }
        // Weighted extra terms, each logged under its name when the batch had targets for it.
        const term = (logName: string, v: Tensor | undefined, weight: number) => {
          if (!v) return;
          l = l.add(v.mul(weight));
          parts[logName] = v.item();
        };
        term('answer_loss', r.answer, answerWeight);
        term('pointer_attn_loss', r.pointed, pointer?.weight ?? 0);
        term('pointer_copy_loss', r.copied, pointer?.copyWeight ?? 0);
        term('restate_loss', r.restated, restateWeight);
        term('restate_attn_loss', r.restatePointed, restatePointer?.weight ?? 0);
        term('restate_copy_loss', r.restateCopied, restatePointer?.copyWeight ?? 0);
        loss = loss ? loss.add(l) : l;
      };
      if (copyRows > 0) add('copy_loss', copyLoss(`copy:${cfg.seed}:${step}:${micro}`, copyRows, true));
      if (rows > 0) add('text_loss', lossOnChunks(sampler.batch(step * cfg.gradAccum + micro, rows), rows, true));
      let softTokens = 0;
      if (softRestate) {
        const { length, ratio } = drawSoftRestateShape(softRestate, `soft-restate:${cfg.seed}:${step}:${micro}`);
        const drawn = passages(trainStream, 'train', (step * cfg.gradAccum + micro) * softRestate.rows, softRestate.rows, length);
        const r = softRestateLoss(model, drawn, softRestate.rows, length, ratio, softIds, softRestate);
        parts.soft_restate_loss = r.loss.item();
        let l = r.loss.mul(softRestate.weight ?? 1);
        if (r.pointed) {
          parts.soft_restate_attn_loss = r.pointed.item();
          l = l.add(r.pointed.mul(softRestate.pointer!.weight));
        }
        if (r.copied) {
          parts.soft_restate_copy_loss = r.copied.item();
          l = l.add(r.copied.mul(softRestate.pointer!.copyWeight!));
        }
        const plainRows = softRestate.plainRows ?? 0;
        if (plainRows > 0) {
          const plain = plainRestateLoss(model, drawn, plainRows, length, softIds);
          parts.plain_restate_loss = plain.item();
          l = l.add(plain.mul(softRestate.weight ?? 1));
        }
        loss = loss ? loss.add(l) : l;
        softTokens = (softRestate.rows + 2 * plainRows) * length;
      }
      const n = (copyRows > 0 ? 1 : 0) + (rows > 0 ? 1 : 0);
      if (sup) Object.assign(parts, { prev_attn_loss: prevAttn / n, induction_attn_loss: inductionAttn / n });
      const tokens = rows * len + copyRows * copyLen + softTokens;
      // A plain text step logs just its loss, as before.
      return copyRows === 0 && !sup && !pointer && !restatePointer && answerWeight === 0 && restateWeight === 0 && !softRestate ? { loss: loss!, tokens } : { loss: loss!, tokens, parts };
    },
    validate() {
      model.eval();
      let nats = 0;
      noGrad(() => {
        for (let i = 0; i < validChunks; i++) nats += tidy(() => lossOnChunks(validSampler.sequential(i), 1).loss.item());
      });
      const loss = nats / validChunks;
      const figures: Record<string, number> = { loss, ppl: Math.exp(loss), bpb: loss / Math.LN2 / bytesPerToken };
      // Copying from context, measured on fixed rows (chance: ln of the id range).
      if (copyRows > 0) figures.copy_loss = noGrad(() => tidy(() => copyLoss(`copy-valid:${cfg.seed}`, 4).loss.item()));
      // Reading group means of embeddings back out: 8 fixed 128-token valid passages at ratio 4.
      if (softRestate) {
        const fixed = passages(validStream, 'valid', 0, 8, 128);
        figures.soft_restate_loss = noGrad(() => tidy(() => softRestateLoss(model, fixed, 8, 128, 4, softIds, { ...softRestate, pointer: undefined }).loss.item()));
        // The same passages restated from themselves: what soft rows must not break.
        figures.plain_restate_loss = noGrad(() => tidy(() => plainRestateLoss(model, fixed, 8, 128, softIds).item()));
      }
      return figures;
    },
  };
  if (opts.exportOnly) {
    // Write the model of a run stopped before its last step (e.g. out of time), as it stands.
    const { step } = loadCheckpointParams(outDir, task.params);
    const valid = task.validate!();
    const rowsLog = readFileSync(join(outDir, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss?: number; time?: number });
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
  });
  if (summary.steps >= cfg.steps) writeModel(summary);
  return summary;

  function writeModel(summary: TrainSummary): void {
    const modelDir = join(outDir, 'model');
    saveModel(model, modelDir, { dtype: 'float16', metadata: { steps: String(summary.steps) } });
    copyFileSync(cfg.tokenizer, join(modelDir, 'tokenizer.json'));
    const training = { steps: summary.steps, plannedSteps: cfg.steps, tokensSeen: summary.steps * tokensPerStep, copyTokensSeen: summary.steps * cfg.gradAccum * copyRows * copyLen, seconds: summary.seconds, lastLoss: summary.lastLoss, valid: summary.lastValid, parameters: model.numParameters(), mixture: trainMix.counts, trainTokens: trainStream.length };
    writeFileSync(join(modelDir, 'training.json'), JSON.stringify(training, null, 2));
    log(`saved ${modelDir}`);
  }
}
