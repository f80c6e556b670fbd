/**
 * Evaluation tasks: deterministic example generators (by seed) over held-out data only.
 *
 * - reconstruct: passages of 128/256/512 tokens, restated from the compressed context in the
 *   restate format of training (compress/prompts.ts: GMSA's "Restate the aforementioned text.",
 *   in the chat template for instruct models; the compressor's [AE] embedding, if it has one,
 *   after its soft tokens), greedy, up to len + 8 tokens; BLEU-4, exact prefix.
 * - continue: the next 128 tokens after a compressed 512-token context; perplexity.
 * - babi: story = context, question -> answer (greedy, <= 8 tokens, stop at EOS or newline);
 *   EM per task 1..20.
 * - needle: a planted fact at a (stratified) random depth of a 256..2,048-token passage;
 *   EM by depth bucket and length.
 * - cloze: a blanked content word asked back; EM and F1.
 * - qa: extractive questions of a SQuAD (v1.1 / v2.0) or JSONL file (default: data/qa/prose-test.json,
 *   span questions over test-split passages, `softpress data qa-set`); SQuAD's official EM and F1,
 *   v2.0's unanswerable questions right iff the answer abstains (empty, or a no-answer phrase:
 *   metrics.ts, NO_ANSWER_PHRASES). Questions on one context share one compression (the harness
 *   compresses each distinct context of a batch once and asks all its questions in that batch).
 *
 * Passages come from the TEST split of the corpora (splitDocuments(..., {seed: 0}).test), never
 * from what the base model or the compressors trained on. bAbI reads any bAbI file: the
 * held-out 'valid' part of a *_train.txt file, or all of any other file (e.g. official tests).
 *
 * QA prompts (models/chat.ts, qaPromptFormat), one format for babi, needle, cloze and qa: the
 * context goes through the compressor; a base model's decoder reads [BOS] context
 * "\nQuestion: q\nAnswer:", exactly the pretraining format; an instruct model reads the same
 * plain format after a one-shot demonstration, not its chat template (measured on 48 held-out
 * bAbI questions: SmolLM2-135M-Instruct answers 0.29 EM this way and 0.00 as a ChatML turn,
 * where it answers in full sentences). Answers are greedy and end at the end of turn (EOS, the chat's end-of-turn ids) or
 * at a newline.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Tokenizer } from '../models/tokenizer.js';
import type { Doc } from '../data/corpora.js';
import { loadDocs } from '../data/pretrain-mix.js';
import { splitDocuments, type SplitName } from '../data/splits.js';
import { babiTaskFromFileName, loadBabiFile, splitBabi } from '../data/babi.js';
import { makeClozeExamples, makeNeedleExamples } from '../data/qa.js';
import { loadQaFile } from '../data/squad.js';
import { qaPromptFormat } from '../models/chat.js';
import { restateFormat } from '../compress/prompts.js';
import type { Stage } from '../compress/types.js';
import { Rng, indexOfCumulative } from '../data/rng.js';

export const TASK_NAMES = ['reconstruct', 'continue', 'babi', 'needle', 'cloze', 'qa'] as const;
export type TaskName = (typeof TASK_NAMES)[number];

export function isTaskName(s: string): s is TaskName {
  return (TASK_NAMES as readonly string[]).includes(s);
}

/** The corpora the base model was pretrained on (their test split is evaluated). */
export const EVAL_CORPORA = ['sotu', 'moby-dick', 'brown'] as const;

export interface EvalExample {
  id: string;
  /** Context token ids (no BOS): what the compressor sees. */
  context: number[];
  /** Decoder tail after the soft context: the prompt (generation) or the scored tokens (loss). */
  tail: number[];
  /** Generation: new tokens at most. */
  maxTokens?: number;
  /** QA: the gold answer. */
  answer?: string;
  /** qa: every gold answer (SQuAD: the best counts); empty for an unanswerable question. */
  answers?: string[];
  /** reconstruct: the gold tokens (the passage). */
  reference?: number[];
  /** Documents the passage came from (provenance; bAbI: none). */
  docIds?: string[];
  /** Breakdown keys, e.g. {len: '256'}, {task: 'qa3'}, {len: '512', depth: '25-50%'}. */
  groups: Record<string, string>;
}

export interface EvalTask {
  name: TaskName;
  /** generate: greedy generation, scored against answer/reference; loss: perplexity of the tail. */
  mode: 'generate' | 'loss';
  /** Generation stops at a newline (QA) or only at EOS (reconstruct). */
  stopAtNewline: boolean;
  /** Tokens before the context (default [BOS]; a chat head for QA with chat models). */
  lead?: number[];
  /**
   * The training objective the task asks for (reconstruct: 'ae', continue: 'lm', QA tasks:
   * 'qa'): which of a compressor's task embeddings follow its soft tokens.
   */
  objective?: Stage;
  /** More ids that end generation (a chat model's end of turn). */
  stopIds?: number[];
  examples: EvalExample[];
  /** Order of group values in reports (e.g. lengths ascending). */
  groupOrder?: Record<string, string[]>;
  /** One line on what the task is. */
  about: string;
}

// ---------------------------------------------------------------------------------------------
// Data

const splitCache = new Map<string, Doc[]>();

/** Documents of one split of the corpora (split seed 0, as in pretraining). Default: test. */
export function evalDocuments(split: SplitName = 'test', corpora: readonly string[] = EVAL_CORPORA): Doc[] {
  const key = `${split}:${corpora.join(',')}`;
  let docs = splitCache.get(key);
  if (!docs) {
    docs = splitDocuments(loadDocs({ corpora: [...corpora] }), { seed: 0 })[split];
    splitCache.set(key, docs);
  }
  return docs.slice();
}

/** Token counts of texts, memoised (the passage generators measure the same text many times). */
export function tokenCounter(tok: Tokenizer, limit = 4096): (text: string) => number {
  const cache = new Map<string, number>();
  return (text: string) => {
    let n = cache.get(text);
    if (n === undefined) {
      n = tok.encode(text).length;
      if (cache.size >= limit) cache.clear();
      cache.set(text, n);
    }
    return n;
  };
}

/** Token windows of `length` tokens from documents, chosen by seed (documents weighted by size). */
class WindowSampler {
  private readonly tokens = new Map<string, number[]>();
  private readonly cum: number[] = [];
  private readonly total: number;

  constructor(
    private readonly docs: readonly Doc[],
    private readonly tok: Tokenizer,
  ) {
    if (docs.length === 0) throw new Error('evaluation: no documents to draw passages from');
    let sum = 0;
    for (const d of docs) this.cum.push((sum += d.text.length));
    this.total = sum;
  }

  private ids(doc: Doc): number[] {
    let ids = this.tokens.get(doc.id);
    if (!ids) {
      ids = this.tok.encode(doc.text);
      this.tokens.set(doc.id, ids);
    }
    return ids;
  }

  window(rng: Rng, length: number): { ids: number[]; docId: string } {
    for (let tries = 0; tries < 256; tries++) {
      const x = rng.next() * this.total;
      const doc = this.docs[indexOfCumulative(this.cum, x)] as Doc;
      const ids = this.ids(doc);
      if (ids.length < length) continue;
      const at = rng.int(ids.length - length + 1);
      return { ids: ids.slice(at, at + length), docId: doc.id };
    }
    throw new Error(`evaluation: no held-out document has ${length} tokens`);
  }
}

function checkN(n: number, what: string): void {
  if (!(Number.isInteger(n) && n >= 1)) throw new RangeError(`${what}: n must be a positive integer, got ${n}`);
}

// ---------------------------------------------------------------------------------------------
// Tasks

export interface ReconstructOptions {
  seed?: number;
  /** Examples per length. */
  n: number;
  lengths?: number[];
  /** Extra tokens allowed beyond the passage length (default 8). */
  slack?: number;
}

/** Held-out passages of exactly `len` tokens, restated from the soft context. */
export function makeReconstructTask(docs: readonly Doc[], tok: Tokenizer, o: ReconstructOptions): EvalTask {
  checkN(o.n, 'reconstruct');
  const restate = restateFormat(tok);
  const lengths = o.lengths ?? [128, 256, 512];
  const sampler = new WindowSampler(docs, tok);
  const examples: EvalExample[] = [];
  for (const len of lengths) {
    const base = new Rng(`eval:reconstruct:${o.seed ?? 0}:${len}`);
    for (let i = 0; i < o.n; i++) {
      const { ids, docId } = sampler.window(base.fork(i), len);
      examples.push({
        id: `reconstruct/${len}/${i}`,
        context: ids,
        tail: restate.prompt,
        maxTokens: len + (o.slack ?? 8),
        reference: ids,
        docIds: [docId],
        groups: { len: String(len) },
      });
    }
  }
  return {
    name: 'reconstruct',
    mode: 'generate',
    stopAtNewline: false,
    lead: restate.lead,
    stopIds: [restate.end],
    objective: 'ae',
    examples,
    groupOrder: { len: lengths.map(String) },
    about: `restate held-out passages of ${lengths.join('/')} tokens (soft context, then "Restate the aforementioned text."${restate.chat ? ' in the chat template' : ''}; greedy)`,
  };
}

export interface ContinueOptions {
  seed?: number;
  n: number;
  contextLen?: number;
  continuationLen?: number;
}

/** Perplexity of the next `continuationLen` tokens given a compressed `contextLen`-token context. */
export function makeContinueTask(docs: readonly Doc[], tok: Tokenizer, o: ContinueOptions): EvalTask {
  checkN(o.n, 'continue');
  const ctxLen = o.contextLen ?? 512;
  const contLen = o.continuationLen ?? 128;
  const sampler = new WindowSampler(docs, tok);
  const base = new Rng(`eval:continue:${o.seed ?? 0}:${ctxLen}:${contLen}`);
  const examples: EvalExample[] = [];
  for (let i = 0; i < o.n; i++) {
    const { ids, docId } = sampler.window(base.fork(i), ctxLen + contLen);
    examples.push({ id: `continue/${i}`, context: ids.slice(0, ctxLen), tail: ids.slice(ctxLen), docIds: [docId], groups: {} });
  }
  return {
    name: 'continue',
    mode: 'loss',
    stopAtNewline: false,
    objective: 'lm',
    examples,
    about: `perplexity of the next ${contLen} tokens after a compressed ${ctxLen}-token context`,
  };
}

export interface BabiTaskOptions {
  seed?: number;
  /** Questions per bAbI task (file). */
  n: number;
  /**
   * Which part of each file: 'auto' (default) takes the held-out 'valid' stories of a
   * *_train.txt file and all of any other file (e.g. the official *_test.txt).
   */
  split?: 'auto' | 'train' | 'valid' | 'all';
}

/**
 * bAbI files under a path: the file itself, or the qaN_*.txt files of a folder by task number;
 * where a folder holds a task's test file (qaN_*_test.txt, as the official release does), only
 * the test file of that task is used.
 */
export function babiFiles(path: string): string[] {
  if (!existsSync(path)) throw new Error(`bAbI data not found: ${path}`);
  if (!statSync(path).isDirectory()) return [path];
  const files = readdirSync(path)
    .filter((f) => /^qa\d+_.*\.txt$/.test(f))
    .map((f) => join(path, f))
    .sort((a, b) => (babiTaskFromFileName(a) ?? 0) - (babiTaskFromFileName(b) ?? 0) || a.localeCompare(b));
  if (files.length === 0) throw new Error(`no bAbI files (qaN_*.txt) in ${path}`);
  const isTest = (f: string) => /_test\b/.test(basename(f));
  const tasksWithTests = new Set(files.filter(isTest).map((f) => babiTaskFromFileName(f)));
  return files.filter((f) => isTest(f) || !tasksWithTests.has(babiTaskFromFileName(f)));
}

function babiSplitFor(path: string, split: BabiTaskOptions['split']): 'train' | 'valid' | 'all' {
  if (split && split !== 'auto') return split;
  return /_train\b/.test(basename(path)) ? 'valid' : 'all';
}

/** n questions per bAbI task (file), story as context. */
export function makeBabiTask(path: string, tok: Tokenizer, o: BabiTaskOptions): EvalTask {
  checkN(o.n, 'babi');
  const examples: EvalExample[] = [];
  const tasks: number[] = [];
  const parts = new Set<string>();
  // Model-free references on the picked questions: a uniform guess among the task's answers, and
  // always its most frequent answer (both from the training part when the valid part is asked).
  let uniform = 0;
  let majority = 0;
  const qa = qaPromptFormat(tok);
  for (const file of babiFiles(path)) {
    const split = babiSplitFor(file, o.split);
    parts.add(split);
    // One parse per file: the asked part, and the training part for the references below.
    const whole = loadBabiFile(file, { split: 'all' });
    const halves = split === 'all' ? undefined : splitBabi(whole);
    const all = halves ? halves[split as 'train' | 'valid'] : whole;
    if (all.length === 0) continue;
    const task = all[0]!.task;
    if (!tasks.includes(task)) tasks.push(task);
    const picked = new Rng(`eval:babi:${o.seed ?? 0}:${task}:${basename(file)}`).sample(all, o.n);
    const known = new Map<string, number>();
    for (const ex of split === 'valid' ? halves!.train : all) known.set(ex.answer, (known.get(ex.answer) ?? 0) + 1);
    const top = [...known.entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
    for (const ex of picked) {
      uniform += known.has(ex.answer) ? 1 / known.size : 0;
      majority += ex.answer === top ? 1 : 0;
      examples.push({
        id: `babi/${ex.id}`,
        context: tok.encode(ex.story),
        tail: qa.tail(ex.question),
        maxTokens: 8,
        answer: ex.answer,
        groups: { task: `qa${task}` },
      });
    }
  }
  if (examples.length === 0) throw new Error(`no bAbI questions in ${path}`);
  return {
    name: 'babi',
    mode: 'generate',
    stopAtNewline: true,
    lead: qa.lead,
    stopIds: qa.stopIds,
    objective: 'qa',
    examples,
    groupOrder: { task: tasks.sort((a, b) => a - b).map((t) => `qa${t}`) },
    about: `bAbI (${[...parts].join('/')} part of ${basename(path)}): story as context, answer greedy <= 8 tokens, EM per task; without a model, a uniform guess among each task's answers scores ${(uniform / examples.length).toFixed(3)}, its most frequent answer ${(majority / examples.length).toFixed(3)}`,
  };
}

export interface NeedleTaskOptions {
  seed?: number;
  /** Examples per length. */
  n: number;
  lengths?: number[];
  /** Depth buckets; example i of a length gets a uniform depth in bucket i mod buckets. */
  depthBuckets?: number;
}

function bucketLabel(b: number, buckets: number): string {
  return `${Math.round((100 * b) / buckets)}-${Math.round((100 * (b + 1)) / buckets)}%`;
}

/** A planted fact at a stratified random depth in a held-out passage of `len` tokens. */
export function makeNeedleTask(docs: readonly Doc[], tok: Tokenizer, o: NeedleTaskOptions): EvalTask {
  checkN(o.n, 'needle');
  const lengths = o.lengths ?? [256, 512, 1024, 2048];
  const buckets = o.depthBuckets ?? 4;
  const countTokens = tokenCounter(tok);
  const examples: EvalExample[] = [];
  const qa = qaPromptFormat(tok);
  for (const len of lengths) {
    const base = new Rng(`eval:needle:${o.seed ?? 0}:${len}`);
    for (let i = 0; i < o.n; i++) {
      const b = i % buckets;
      const depth = Math.min(1, (b + base.fork(i).next()) / buckets);
      const [ex] = makeNeedleExamples(docs, { seed: `eval:${o.seed ?? 0}:${len}:${i}`, count: 1, tokens: len, countTokens, depth });
      examples.push({
        id: `needle/${len}/${i}`,
        context: tok.encode(ex!.context),
        tail: qa.tail(ex!.question),
        maxTokens: 8,
        answer: ex!.answer,
        docIds: ex!.docIds,
        groups: { len: String(len), depth: bucketLabel(b, buckets) },
      });
    }
  }
  return {
    name: 'needle',
    mode: 'generate',
    stopAtNewline: true,
    lead: qa.lead,
    stopIds: qa.stopIds,
    objective: 'qa',
    examples,
    groupOrder: { len: lengths.map(String), depth: Array.from({ length: buckets }, (_, b) => bucketLabel(b, buckets)) },
    about: `planted fact in held-out passages of ${lengths.join('/')} tokens at ${buckets} depth buckets, EM`,
  };
}

export interface ClozeTaskOptions {
  seed?: number;
  n: number;
  /** Passage length in tokens (default 256). */
  tokens?: number;
}

/** A blanked content word of a held-out passage, asked back (EM / F1). */
export function makeClozeTask(docs: readonly Doc[], tok: Tokenizer, o: ClozeTaskOptions): EvalTask {
  checkN(o.n, 'cloze');
  const len = o.tokens ?? 256;
  const made = makeClozeExamples(docs, { seed: `eval:${o.seed ?? 0}:${len}`, count: o.n, tokens: len, countTokens: tokenCounter(tok) });
  const qa = qaPromptFormat(tok);
  const examples = made.map((ex, i) => ({
    id: `cloze/${i}`,
    context: tok.encode(ex.context),
    tail: qa.tail(ex.question),
    maxTokens: 8,
    answer: ex.answer,
    docIds: ex.docIds,
    groups: {},
  }));
  return {
    name: 'cloze',
    mode: 'generate',
    stopAtNewline: true,
    lead: qa.lead,
    stopIds: qa.stopIds,
    objective: 'qa',
    examples,
    about: `blanked content word of held-out ${len}-token passages, EM/F1`,
  };
}

/** The QA set of the suite: span questions over test-split passages (SQuAD v2.0; `softpress data qa-set`). */
export const DEFAULT_QA_SET = fileURLToPath(new URL('../../../data/qa/prose-test.json', import.meta.url));

/** New tokens an answer may take (SQuAD answers are a few words; generation stops at a newline). */
export const QA_MAX_TOKENS = 32;

export interface QaTaskOptions {
  seed?: number;
  /**
   * Questions at most (default: all). Fewer than the file holds: whole contexts in an order drawn
   * by seed, until n questions (the last context may give only some of its), so that questions
   * still share their context's compression.
   */
  n?: number;
}

/** The questions of a SQuAD / JSONL file, their contexts as the compressor's input; SQuAD EM / F1. */
export function makeQaTask(path: string, tok: Tokenizer, o: QaTaskOptions = {}): EvalTask {
  if (o.n !== undefined) checkN(o.n, 'qa');
  const set = loadQaFile(path);
  // Questions by context, in file order.
  const byContext = new Map<string, typeof set.records>();
  for (const r of set.records) byContext.set(r.context, [...(byContext.get(r.context) ?? []), r]);
  let groups = [...byContext.values()];
  if (o.n !== undefined && o.n < set.records.length) {
    const order = new Rng(`eval:qa:${o.seed ?? 0}:${basename(path)}`).shuffle(groups.slice());
    groups = [];
    let left = o.n;
    for (const g of order) {
      if (left <= 0) break;
      groups.push(g.slice(0, left));
      left -= g.length;
    }
    // Asked in file order.
    groups.sort((a, b) => set.records.indexOf(a[0]!) - set.records.indexOf(b[0]!));
  }
  const qa = qaPromptFormat(tok);
  const withUnanswerable = set.records.some((r) => r.unanswerable);
  const examples: EvalExample[] = [];
  let contextTokens = 0;
  for (const g of groups) {
    const context = tok.encode(g[0]!.context);
    contextTokens += context.length;
    for (const r of g) {
      examples.push({
        id: `qa/${r.id}`,
        context,
        tail: qa.tail(r.question),
        maxTokens: QA_MAX_TOKENS,
        answer: r.answers[0] ?? '',
        answers: r.answers,
        // SQuAD 2.0's HasAns / NoAns breakdown, when the file has unanswerable questions.
        groups: withUnanswerable ? { gold: r.unanswerable ? 'no-answer' : 'has-answer' } : {},
      });
    }
  }
  const asked = examples.length;
  const unanswerable = examples.filter((e) => e.answers!.length === 0).length;
  const format = set.format === 'squad' ? `SQuAD${set.version ? ` ${set.version}` : ''}` : 'JSONL';
  const of = asked < set.records.length ? ` (of ${set.records.length} on ${set.contexts}; --n to change)` : '';
  return {
    name: 'qa',
    mode: 'generate',
    stopAtNewline: true,
    lead: qa.lead,
    stopIds: qa.stopIds,
    objective: 'qa',
    examples,
    groupOrder: withUnanswerable ? { gold: ['has-answer', 'no-answer'] } : undefined,
    about: `${basename(path)} (${format}): ${asked} questions on ${groups.length} contexts${of}, ${Math.round(contextTokens / groups.length)} tokens per context on average${unanswerable ? `, ${unanswerable} unanswerable` : ''}; each context compressed once for its questions; answers greedy <= ${QA_MAX_TOKENS} tokens, SQuAD's official EM / F1${withUnanswerable ? ' (an unanswerable question is right iff the answer is empty or a no-answer phrase such as "unanswerable")' : ''}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Suites

export type SuiteName = 'default' | 'quick';

export interface SuiteConfig {
  reconstruct: { n: number; lengths: number[] };
  continue: { n: number; contextLen: number; continuationLen: number };
  babi: { n: number };
  needle: { n: number; lengths: number[]; depthBuckets: number };
  cloze: { n: number; tokens: number };
  /** Questions at most (the default set has 48). */
  qa: { n: number };
}

export const SUITES: Readonly<Record<SuiteName, SuiteConfig>> = {
  default: {
    reconstruct: { n: 8, lengths: [128, 256, 512] },
    continue: { n: 32, contextLen: 512, continuationLen: 128 },
    babi: { n: 10 },
    needle: { n: 16, lengths: [256, 512, 1024, 2048], depthBuckets: 4 },
    cloze: { n: 64, tokens: 256 },
    qa: { n: 64 },
  },
  quick: {
    reconstruct: { n: 4, lengths: [128] },
    continue: { n: 4, contextLen: 512, continuationLen: 128 },
    babi: { n: 2 },
    needle: { n: 4, lengths: [256, 512], depthBuckets: 4 },
    cloze: { n: 8, tokens: 256 },
    qa: { n: 8 },
  },
};

export interface BuildTasksOptions {
  suite: SuiteName;
  tasks: TaskName[];
  seed?: number;
  /** Overrides every task's example count (per length / per bAbI task where the task has those). */
  n?: number;
  /** bAbI file or folder (needed for the babi task). */
  babiPath?: string;
  babiSplit?: BabiTaskOptions['split'];
  /** SQuAD / JSONL file for the qa task (default DEFAULT_QA_SET). */
  qaPath?: string;
  /** Documents to draw passages from (default: the test split of the corpora). */
  docs?: readonly Doc[];
}

/** The examples of the chosen tasks of a suite. */
export function buildTasks(tok: Tokenizer, o: BuildTasksOptions): EvalTask[] {
  const s = SUITES[o.suite];
  if (!s) throw new Error(`unknown suite '${o.suite}' (default, quick)`);
  const seed = o.seed ?? 0;
  const needDocs = o.tasks.some((t) => t !== 'babi' && t !== 'qa');
  const docs = needDocs ? (o.docs ?? evalDocuments('test')) : [];
  return o.tasks.map((t): EvalTask => {
    switch (t) {
      case 'reconstruct':
        return makeReconstructTask(docs, tok, { seed, n: o.n ?? s.reconstruct.n, lengths: s.reconstruct.lengths });
      case 'continue':
        return makeContinueTask(docs, tok, { seed, n: o.n ?? s.continue.n, contextLen: s.continue.contextLen, continuationLen: s.continue.continuationLen });
      case 'babi':
        if (!o.babiPath) throw new Error('the babi task needs bAbI data (--data FILE|FOLDER)');
        return makeBabiTask(o.babiPath, tok, { seed, n: o.n ?? s.babi.n, split: o.babiSplit });
      case 'needle':
        return makeNeedleTask(docs, tok, { seed, n: o.n ?? s.needle.n, lengths: s.needle.lengths, depthBuckets: s.needle.depthBuckets });
      case 'cloze':
        return makeClozeTask(docs, tok, { seed, n: o.n ?? s.cloze.n, tokens: s.cloze.tokens });
      case 'qa':
        return makeQaTask(o.qaPath ?? DEFAULT_QA_SET, tok, { seed, n: o.n ?? s.qa.n });
    }
  });
}
