/**
 * The experiment fields (config.ts) as pretraining extensions (src/train/pretrain.ts LossTerm,
 * ExtraDocuments): copy rows, attention supervision of induction, answer-pointer and
 * restate-pointer heads, weighted answer and restate losses, soft restate rows, and restate and
 * recall documents. Each term logs its parts under the names the model card's tables use.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crossEntropy, tensor, type Tensor } from '../../src/tensor/index.js';
import { ChunkSampler } from '../../src/data/lm.js';
import { Rng } from '../../src/data/rng.js';
import type { ExtraDocuments } from '../../src/data/pretrain-mix.js';
import type { TrainSummary } from '../../src/train/trainer.js';
import { pretrain, type LossTerm, type PretrainExtensions, type PretrainOptions, type PretrainRun, type TermLoss } from '../../src/train/pretrain.js';
import { makeCopyRows } from './copy-task.js';
import { checkInductionSupervision, inductionSupervisionLoss } from './induction.js';
import { answerCopyLoss, answerPointerLoss, answerPointerTargets, answerTargets, checkAnswerPointer, restatePointerTargets } from './answer-pointer.js';
import { checkSoftRestate, drawSoftRestateShape, plainRestateLoss, softRestateLoss, type SoftRestate } from './soft-restate.js';
import { recallDocuments, restateDocuments } from './documents.js';
import type { ExperimentConfig, ExperimentFields } from './config.js';

/** `size` ids of `ids`, a random subset fixed by the seed (all of them when size is undefined). */
export function copyPoolIds(ids: Int32Array, size: number | undefined, seed: number): Int32Array {
  if (size === undefined || size >= ids.length) return ids;
  const shuffled = Int32Array.from(ids);
  const rng = new Rng(`copy-pool:${seed}`);
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  return shuffled.slice(0, size);
}

/** Sums weighted terms and records each one's value under its name. */
function terms(): { add(name: string, v: Tensor | undefined, weight: number): void; result(): TermLoss | undefined; parts: Record<string, number> } {
  let loss: Tensor | undefined;
  const parts: Record<string, number> = {};
  return {
    parts,
    add(name, v, weight) {
      if (!v) return;
      loss = loss ? loss.add(v.mul(weight)) : v.mul(weight);
      parts[name] = v.item();
    },
    result: () => (loss ? { loss, parts } : undefined),
  };
}

/** Copy rows in every micro-batch, with the induction supervision on them too. */
function copyRowsTerm(x: ExperimentFields, run: PretrainRun): LossTerm {
  const { cfg, model, tokenizer } = run;
  const sup = x.inductionSupervision;
  const specialIds = new Set(tokenizer.special.values());
  const pool = copyPoolIds(
    Int32Array.from({ length: tokenizer.vocabSize }, (_, i) => i).filter((i) => !specialIds.has(i)),
    x.copyPool,
    cfg.seed,
  );
  const rows = x.copyRows!;
  const len = x.copyLen ?? cfg.seqLen;
  /** Loss on the copied tokens of n rows (deterministic in the seed string), and optionally the supervision. */
  const copyLoss = (seed: string, n: number, supervise: boolean) => {
    const { ids, copied } = makeCopyRows(new Rng(seed), { rows: n, len: len + 1, pool });
    const all = tensor(ids, [n, len + 1]).to('int64');
    const out = model.forward({ ids: all.narrow(1, 0, len), outputAttentions: supervise && !!sup });
    const at = tensor(copied, [copied.length]).to('int64');
    const ce = crossEntropy(
      out.logits!.reshape(n * len, -1).indexSelect(0, at),
      all
        .narrow(1, 1, len)
        .reshape(n * len)
        .indexSelect(0, at),
    );
    return { ce, attn: supervise && sup ? inductionSupervisionLoss(out.attentions!, ids, n, len, len + 1, sup) : undefined };
  };
  return {
    ownRows(step, micro) {
      const { ce, attn } = copyLoss(`copy:${cfg.seed}:${step}:${micro}`, rows, true);
      const t = terms();
      t.add('copy_loss', ce, 1);
      t.add('copy_prev_attn_loss', attn?.prev, sup?.weight ?? 0);
      t.add('copy_induction_attn_loss', attn?.induction, sup?.weight ?? 0);
      return { ...t.result()!, tokens: rows * len };
    },
    // Copying from context, measured on fixed rows (chance: ln of the pool's size).
    validate: () => ({ copy_loss: copyLoss(`copy-valid:${cfg.seed}`, 4, false).ce.item() }),
    summary: (steps) => ({ copyTokensSeen: steps * cfg.gradAccum * rows * len }),
  };
}

/** Supervision and weighting on the text rows: induction heads, answers, the answer and restate pointers, restated tokens. */
function textTerm(x: ExperimentFields, run: PretrainRun): LossTerm {
  const { model, tokenizer } = run;
  const { numLayers, numHeads } = model.config;
  const where = 'pretrain config';
  const sup = x.inductionSupervision;
  if (sup) checkInductionSupervision(sup, numLayers, numHeads, where);
  const pointer = x.answerPointer;
  if (pointer) checkAnswerPointer(pointer, numLayers, numHeads, where);
  const restatePointer = x.restatePointer;
  if (restatePointer) {
    checkAnswerPointer(restatePointer, numLayers, numHeads, where, 'restatePointer');
    if (!((x.restateShare ?? 0) > 0)) throw new Error(`${where}: restatePointer needs restate documents (restateShare > 0)`);
  }
  const answerWeight = x.answerWeight ?? 0;
  const restateWeight = x.restateWeight ?? 0;
  const restateId = tokenizer.special.get('<|restate|>');
  if ((restatePointer || restateWeight > 0) && restateId === undefined)
    throw new Error(`${where}: ${restatePointer ? 'restatePointer' : 'restateWeight'} needs a tokenizer with <|restate|>`);
  const marker = tokenizer.encode('\nAnswer:');
  const stops = new Set([...tokenizer.encode('\n'), tokenizer.eos]);
  const copies = (p: typeof pointer) => (p?.copyWeight ?? 0) > 0;
  /** Next-token loss at the flat positions `at` of the text rows. */
  const lossAt = (logits: Tensor, targets: Tensor, at: Int32Array) => {
    const idx = tensor(at, [at.length]).to('int64');
    return crossEntropy(logits.indexSelect(0, idx), targets.indexSelect(0, idx));
  };
  return {
    wants: { attentions: !!sup || !!pointer || !!restatePointer, attnInputs: copies(pointer) || copies(restatePointer) },
    onText({ ids, rows, len, forward, logits, targets }) {
      const t = terms();
      const stride = len + 1;
      if (sup) {
        const a = inductionSupervisionLoss(forward.attentions!, ids, rows, len, stride, sup);
        t.add('prev_attn_loss', a.prev, sup.weight);
        t.add('induction_attn_loss', a.induction, sup.weight);
      }
      if (answerWeight > 0) {
        const at = answerTargets(ids, rows, len, stride, marker, stops);
        if (at.length > 0) t.add('answer_loss', lossAt(logits, targets, at), answerWeight);
      }
      if (pointer) {
        const pt = answerPointerTargets(ids, rows, len, stride, marker, stops);
        t.add('pointer_attn_loss', answerPointerLoss(forward.attentions!, pt, rows, len, pointer), pointer.weight);
        if (copies(pointer))
          t.add(
            'pointer_copy_loss',
            answerCopyLoss(model, forward.attnInputs![pointer.layer]!, forward.attentions!, pt, ids, rows, len, stride, pointer),
            pointer.copyWeight!,
          );
      }
      if (restatePointer || restateWeight > 0) {
        const rt = restatePointerTargets(ids, rows, len, stride, restateId!, tokenizer.bos);
        if (restateWeight > 0 && rt.queries.length > 0) t.add('restate_loss', lossAt(logits, targets, rt.queries), restateWeight);
        if (restatePointer) {
          t.add('restate_attn_loss', answerPointerLoss(forward.attentions!, rt, rows, len, restatePointer), restatePointer.weight);
          if (copies(restatePointer))
            t.add(
              'restate_copy_loss',
              answerCopyLoss(model, forward.attnInputs![restatePointer.layer]!, forward.attentions!, rt, ids, rows, len, stride, restatePointer),
              restatePointer.copyWeight!,
            );
        }
      }
      return t.result();
    },
  };
}

/** Soft restate rows in every micro-batch; validated on 8 fixed 128-token valid passages at ratio 4. */
function softRestateTerm(s: SoftRestate, run: PretrainRun): LossTerm {
  const { cfg, model, tokenizer, trainStream, validStream } = run;
  checkSoftRestate(s, model.config.numLayers, model.config.numHeads, model.config.maxPositions, 'pretrain config');
  const restate = tokenizer.special.get('<|restate|>');
  if (restate === undefined) throw new Error(`pretrain config: softRestate needs a tokenizer with <|restate|> (${cfg.tokenizer})`);
  const ids = { bos: tokenizer.bos, eos: tokenizer.eos, restate };
  const specialIds = new Set(tokenizer.special.values());
  const samplers = new Map<string, ChunkSampler>();
  /** Passages without special ids (document breaks, <|restate|>) from a stream. */
  const passages = (stream: Int32Array, name: string, first: number, rows: number, n: number): Int32Array => {
    const key = `${name}:${n}`;
    let sampler = samplers.get(key);
    if (!sampler) samplers.set(key, (sampler = new ChunkSampler(stream, n, cfg.seed + 1)));
    const out = new Int32Array(rows * n);
    // Up to 8 draws per row are reserved (first * 8 …), so rows stay fixed by the step on resume.
    for (let r = 0; r < rows; r++) {
      let chunk = sampler.chunk((first + r) * 8);
      for (let k = 1; k < 8 && chunk.subarray(0, n).some((id) => specialIds.has(id)); k++) chunk = sampler.chunk((first + r) * 8 + k);
      out.set(chunk.subarray(0, n), r * n);
    }
    return out;
  };
  const weight = s.weight ?? 1;
  const plainRows = s.plainRows ?? 0;
  return {
    ownRows(step, micro) {
      const { length, ratio } = drawSoftRestateShape(s, `soft-restate:${cfg.seed}:${step}:${micro}`);
      const drawn = passages(trainStream, 'train', (step * cfg.gradAccum + micro) * s.rows, s.rows, length);
      const r = softRestateLoss(model, drawn, s.rows, length, ratio, ids, s);
      const t = terms();
      t.add('soft_restate_loss', r.loss, weight);
      t.add('soft_restate_attn_loss', r.pointed, s.pointer?.weight ?? 0);
      t.add('soft_restate_copy_loss', r.copied, s.pointer?.copyWeight ?? 0);
      if (plainRows > 0) t.add('plain_restate_loss', plainRestateLoss(model, drawn, plainRows, length, ids), weight);
      return { ...t.result()!, tokens: (s.rows + 2 * plainRows) * length };
    },
    validate() {
      const fixed = passages(validStream, 'valid', 0, 8, 128);
      return {
        soft_restate_loss: softRestateLoss(model, fixed, 8, 128, 4, ids, { ...s, pointer: undefined }).loss.item(),
        // The same passages restated from themselves: what soft rows must not break.
        plain_restate_loss: plainRestateLoss(model, fixed, 8, 128, ids).item(),
      };
    },
  };
}

/** The extensions an experiment's fields ask for. */
export function experimentExtensions(x: ExperimentFields): PretrainExtensions {
  const documents: ExtraDocuments[] = [];
  if ((x.restateShare ?? 0) > 0 || x.restateShuffled !== undefined) documents.push(restateDocuments(x.restateShare ?? 0, x.restateShuffled ?? 0));
  if ((x.recallShare ?? 0) > 0) documents.push(recallDocuments(x.recallShare!));
  const made: PretrainExtensions['terms'] = [];
  if ((x.copyRows ?? 0) > 0) made.push((run) => copyRowsTerm(x, run));
  if (x.inductionSupervision || (x.answerWeight ?? 0) > 0 || x.answerPointer || x.restatePointer || (x.restateWeight ?? 0) > 0)
    made.push((run) => textTerm(x, run));
  if (x.softRestate) made.push((run) => softRestateTerm(x.softRestate!, run));
  return { documents, terms: made };
}

/**
 * Pretraining with an experiment's fields: softpress's pretrain() with the extensions, the
 * experiment fields kept in the run folder (experiment-config.json) and checked on resume.
 */
export async function pretrainExperiment(cfg: ExperimentConfig, outDir: string, opts: Omit<PretrainOptions, 'extensions'> = {}): Promise<TrainSummary> {
  mkdirSync(outDir, { recursive: true });
  const path = join(outDir, 'experiment-config.json');
  const text = JSON.stringify(cfg.experiment, null, 2);
  if ((opts.resume || opts.exportOnly) && existsSync(path) && readFileSync(path, 'utf8') !== text)
    throw new Error(`${outDir}: --resume with different experiment fields than the run was started with (${path})`);
  writeFileSync(path, text);
  return pretrain(cfg.base, outDir, { ...opts, extensions: experimentExtensions(cfg.experiment) });
}
