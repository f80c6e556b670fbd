/**
 * The evaluation harness: methods x ratios x tasks on one base model.
 *
 * A method is a Compressor (the strategies full / none / truncate by name, or a trained
 * compressor loaded from its folder) with the ratios it is evaluated at; full and none have no
 * budget (ratio null). Every (method, ratio, task) runs its examples in batches (default up to
 * 16 contexts, sorted by length, fewer for long sequences so attention memory stays bounded), through the one decoder
 * interface (src/compress/decode.ts): greedy generation after the soft context for generation
 * tasks, tailLoss under noGrad for the continuation task.
 *
 * Compress once, ask many: examples with the same context tokens (the questions of one QA
 * context) go into one batch, where the context is compressed once and its soft context laid
 * out along its questions (indexSoftContext); a batch holds up to batchSize distinct contexts and
 * up to 4 x batchSize questions (within the attention budget). Latency rows then give
 * compression per question (compressMs) and per distinct context compressed (compressMsPerContext).
 *
 * Scores come out as flat rows (task, method, ratio, metric, group, value, n, retention), where
 * retention = (score - none) / (full - none) for the same task, metric and group. Latency and
 * memory come out per (method, ratio, task, length): compression, decoder prefill, generation
 * and end-to-end milliseconds per example (batch time shared equally by its examples), and the
 * KV-cache bytes a context occupies in the decoder:
 *   soft tokens: 2 * layers * kvHeads * headDim * bytes * (1 + k)   ([BOS] + k soft tokens)
 *   memory KV:   the bytes of the memory's keys and values (+ the [BOS] row)
 * plus, for the total, the tail (prompt and generated tokens).
 */
import { createHash } from 'node:crypto';
import { DTYPE_SIZE, getNumThreads, noGrad, tidy, type Tensor } from '../tensor/index.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import {
  freeSoftContext,
  generateWithContext,
  indexSoftContext,
  softTokensOf,
  tailLoss,
  withTaskEmbeddings,
  type Budget,
  type Compressor,
  type SoftContext,
} from '../compress/index.js';
import { corpusBleu, exactMatch, exactPrefixLength, f1Score, mean, retention, rougeL, squadScores } from './metrics.js';
import type { EvalExample, EvalTask, TaskName } from './tasks.js';

export interface EvalMethod {
  /** Name in results and reports ('full', 'none', 'truncate', 'icae', 'icae:dir', ...). */
  label: string;
  compressor: Compressor;
  /** Ratios to evaluate at; null means no budget (full, none). */
  ratios: (number | null)[];
  /** Where a loaded compressor came from. */
  source?: string;
  /**
   * What else decides this method's results besides its label and kind: for a trained
   * compressor, a digest of its files. Part of the key under which results are reused.
   */
  identity?: string;
}

export interface ResultRow {
  task: TaskName;
  method: string;
  /** Context tokens per soft token; null for full and none. */
  ratio: number | null;
  metric: string;
  /** 'all', or a breakdown like 'len=256', 'task=qa3', 'depth=25-50%', 'len=256,depth=0-25%'. */
  group: string;
  value: number;
  /** Examples behind the value. */
  n: number;
  /** (value - none) / (full - none), null when undefined. */
  retention: number | null;
}

export interface LatencyRow {
  task: TaskName;
  method: string;
  ratio: number | null;
  /** 'all' or 'len=L' for tasks with lengths. */
  group: string;
  examples: number;
  /** Mean context tokens and soft tokens (or memory slots) per context. */
  contextTokens: number;
  softTokens: number;
  /** Milliseconds per example (batch time / batch size); for QA, compression per question. */
  compressMs: number;
  /** Distinct contexts compressed (examples sharing a context in a batch are compressed once). */
  contexts: number;
  /** Compression milliseconds per distinct context compressed. */
  compressMsPerContext: number;
  prefillMs: number;
  generateMs: number;
  endToEndMs: number;
  /** Mean new tokens per context (generation tasks). */
  generatedTokens: number;
  /** KV-cache bytes of [BOS] + the compressed context, and with the tail (prompt + generated) too. */
  contextKvBytes: number;
  kvBytes: number;
  /**
   * libtorch threads when it was measured (a row reused by --resume keeps its own run's count;
   * absent in results written before it was recorded).
   */
  threads?: number;
}

export interface EvalError {
  task: TaskName;
  method: string;
  ratio: number | null;
  /** The first failure's message. */
  message: string;
  /** Examples whose batch failed; the groups holding them get no score. */
  examples: number;
}

/** One example's output (for predictions.jsonl). */
export interface Prediction {
  task: TaskName;
  method: string;
  ratio: number | null;
  id: string;
  prediction?: string;
  gold?: string;
  score?: Record<string, number>;
}

export interface EvalRun {
  rows: ResultRow[];
  latency: LatencyRow[];
  errors: EvalError[];
  predictions: Prediction[];
  seconds: number;
}

/** The metric the summary, retention table and plots use per task, and its direction. */
export const PRIMARY_METRIC: Readonly<Record<TaskName, { metric: string; higherIsBetter: boolean }>> = {
  reconstruct: { metric: 'bleu4', higherIsBetter: true },
  continue: { metric: 'ppl', higherIsBetter: false },
  babi: { metric: 'em', higherIsBetter: true },
  needle: { metric: 'em', higherIsBetter: true },
  cloze: { metric: 'f1', higherIsBetter: true },
  qa: { metric: 'f1', higherIsBetter: true },
};

export interface HarnessOptions {
  model: LlamaModel;
  tokenizer: Tokenizer;
  methods: EvalMethod[];
  tasks: EvalTask[];
  /**
   * Contexts per batch at most (default 16: a decoding step costs about the same for 4 or 16
   * sequences on CPU); long sequences use fewer, so that batch * len^2 <= batchBudget.
   */
  batchSize?: number;
  /** Default BATCH_BUDGET (8 sequences of 1,024 tokens). */
  batchBudget?: number;
  /**
   * After each batch: estimated work done of the whole run (a rough CPU cost model: tokens run
   * through the compressor and the decoder's prefill, plus 40 per decoding step).
   */
  onProgress?: (done: number, total: number) => void;
  /** When a (method, ratio, task) starts or fails. */
  onNote?: (message: string) => void;
  /**
   * Results of (method, ratio, task) runs kept between runs: each run's results are stored
   * under planKey() when it ends, and one already stored is reused instead of run again (an
   * interrupted evaluation continues where it stopped).
   */
  cache?: PlanCache;
}

/** The results of one (method, ratio, task) run. */
export interface PlanResult {
  rows: ResultRow[];
  latency: LatencyRow[];
  errors: EvalError[];
  predictions: Prediction[];
}

export interface PlanCache {
  get(key: string): PlanResult | undefined;
  set(key: string, result: PlanResult): void;
}

/**
 * The key of a (method, ratio, task) run's results: a digest of everything they depend on —
 * the base model, the method (label, kind, identity), the ratio, the task's format and every
 * example, and the batching.
 */
export function planKey(model: LlamaModel, p: Pick<Plan, 'method' | 'ratio' | 'task' | 'batches'>): string {
  const { method: m, task } = p;
  const h = createHash('sha256');
  h.update(
    JSON.stringify({
      version: 1,
      base: model.fingerprint(),
      label: m.label,
      method: m.compressor.method,
      config: m.compressor.config,
      identity: m.identity ?? null,
      ratio: p.ratio,
    }),
  );
  h.update(
    JSON.stringify({
      name: task.name,
      mode: task.mode,
      stopAtNewline: task.stopAtNewline,
      lead: task.lead ?? null,
      objective: task.objective ?? null,
      stopIds: task.stopIds ?? null,
      batches: p.batches,
    }),
  );
  for (const ex of task.examples) h.update(JSON.stringify(ex));
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Ratios

/** The usual ratios, and the higher ones evaluated where a compressor says it supports them. */
export const DEFAULT_RATIOS = [4, 8];
export const HIGH_RATIOS = [16, 32];

/**
 * Ratios to evaluate a compressor at. Budget-free (full, none): [null]. With explicit ratios, those the
 * compressor supports (all, when it declares none). By default 4 and 8, plus 16 and 32 when the
 * compressor declares them; a compressor supporting none of those gets its own list.
 */
export function ratiosFor(c: Compressor, requested?: number[]): (number | null)[] {
  if (c.budgetFree) return [null];
  const supported = c.ratios;
  if (requested && requested.length) return supported ? requested.filter((r) => supported.includes(r)) : [...requested];
  if (!supported) return [...DEFAULT_RATIOS];
  const picked = [...DEFAULT_RATIOS, ...HIGH_RATIOS].filter((r) => supported.includes(r));
  return picked.length ? picked : [...supported];
}

export function ratioLabel(r: number | null): string {
  return r === null ? '-' : `${r}`;
}

export function methodKey(method: string, ratio: number | null): string {
  return ratio === null ? method : `${method}@${ratio}`;
}

// ---------------------------------------------------------------------------------------------
// Helpers

const newlineCache = new WeakMap<Tokenizer, number[]>();

/** Ids whose text contains a newline (generation of an answer stops there). */
export function newlineTokens(tok: Tokenizer): number[] {
  let ids = newlineCache.get(tok);
  if (!ids) {
    ids = [];
    for (let id = 0; id < tok.vocabSize; id++) if (tok.decode([id]).includes('\n')) ids.push(id);
    newlineCache.set(tok, ids);
  }
  return ids;
}

/** The answer text of generated ids: special tokens dropped, cut at the first newline, trimmed. */
export function answerText(tok: Tokenizer, ids: readonly number[]): string {
  const text = tok.decode(ids.filter((id) => id !== tok.eos && id !== tok.bos));
  const nl = text.indexOf('\n');
  return (nl >= 0 ? text.slice(0, nl) : text).trim();
}

function budgetOf(ratio: number | null): Budget {
  return { ratio: ratio ?? 1 };
}

/** Groups an example contributes to: 'all', each key=value, and the combination of all keys. */
function groupsOf(ex: EvalExample): string[] {
  const entries = Object.entries(ex.groups);
  const out = ['all', ...entries.map(([k, v]) => `${k}=${v}`)];
  if (entries.length > 1) out.push(entries.map(([k, v]) => `${k}=${v}`).join(','));
  return out;
}

function latencyGroup(ex: EvalExample): string {
  return ex.groups.len !== undefined ? `len=${ex.groups.len}` : 'all';
}

/** Examples with equal keys have the same context tokens: compressed once in a batch. */
function contextKey(ex: EvalExample): string {
  return ex.context.join(',');
}

/**
 * The longest sequence a full forward pass of this example runs: the decoder's prefill
 * ([BOS] + soft tokens + prompt; decoding steps then attend from one position only) and, for
 * learned compressors, the compressor's own pass over the context. Used for batch sizing.
 */
function seqLength(method: Compressor, ratio: number | null, ex: EvalExample): number {
  const t = ex.context.length;
  const k = softTokensOf(method, t, budgetOf(ratio));
  const prefill = 1 + k + ex.tail.length;
  return method.module ? Math.max(t, prefill) : prefill;
}

export interface Plan {
  method: EvalMethod;
  ratio: number | null;
  task: EvalTask;
  /** Example indices per batch. */
  batches: number[][];
  /** Estimated work per batch (for progress). */
  work: number[];
}

/** Rough cost of a batch: sequence tokens, plus 40 per decoding step (a step costs ~ 40 prefill tokens on CPU). */
function batchWork(m: EvalMethod, ratio: number | null, task: EvalTask, batch: number[]): number {
  const items = batch.map((i) => task.examples[i]!);
  const steps = Math.max(0, ...items.map((ex) => ex.maxTokens ?? 0));
  // The compressor's pass runs once per distinct context.
  const distinct = new Map(items.map((ex) => [contextKey(ex), ex.context.length]));
  const tokens =
    items.reduce((a, ex) => a + seqLength(m.compressor, ratio, ex), 0) + (m.compressor.module ? [...distinct.values()].reduce((a, n) => a + n, 0) : 0);
  return tokens + 40 * steps;
}

/** Attention memory budget of a batch, in (sequence length)^2 x batch: 8 sequences of 1,024. */
export const BATCH_BUDGET = 8 * 1024 * 1024;

/** Questions per batch at most, as a multiple of the batch size in contexts. */
export const QUESTIONS_PER_CONTEXT_SLOT = 4;

/**
 * Batches of a (method, ratio, task): examples of one length group together (so per-length
 * latency is not averaged across lengths), the questions of one context together (compressed
 * once), longest first; at most batchSize distinct contexts and QUESTIONS_PER_CONTEXT_SLOT x
 * batchSize examples, within the attention budget. A context with more questions than a batch
 * holds is split over batches (and compressed once in each).
 */
function planBatches(m: EvalMethod, ratio: number | null, task: EvalTask, batchSize: number, budget: number): number[][] {
  const groups = new Map<string, Map<string, { idx: number[]; len: number }>>();
  task.examples.forEach((ex, i) => {
    const g = latencyGroup(ex);
    let units = groups.get(g);
    if (!units) groups.set(g, (units = new Map()));
    const key = contextKey(ex);
    const len = seqLength(m.compressor, ratio, ex);
    const u = units.get(key);
    if (u) {
      u.idx.push(i);
      u.len = Math.max(u.len, len);
    } else units.set(key, { idx: [i], len });
  });
  const out: number[][] = [];
  for (const units of groups.values()) {
    const order = [...units.values()].sort((a, b) => b.len - a.len || a.idx[0]! - b.idx[0]!);
    let batch: number[] = [];
    let contexts = 0;
    // Limits set by a batch's first (longest) context.
    let maxContexts = 0;
    let maxExamples = 0;
    const flush = () => {
      if (batch.length) out.push(batch);
      batch = [];
      contexts = 0;
    };
    for (const u of order) {
      let rest = u.idx;
      while (rest.length) {
        if (batch.length === 0) {
          const fit = Math.floor(budget / (u.len * u.len));
          maxContexts = Math.max(1, Math.min(batchSize, fit));
          maxExamples = Math.max(1, Math.min(QUESTIONS_PER_CONTEXT_SLOT * batchSize, fit));
        }
        if (batch.length > 0 && (contexts >= maxContexts || batch.length + rest.length > maxExamples)) {
          flush();
          continue;
        }
        const take = rest.slice(0, maxExamples - batch.length);
        batch.push(...take);
        contexts++;
        rest = rest.slice(take.length);
        if (rest.length) flush();
      }
    }
    flush();
  }
  return out;
}

interface Costs {
  compressMs: number;
  /** 1 for the example whose context was compressed (the first of those sharing it), else 0. */
  compressions: number;
  prefillMs: number;
  generateMs: number;
  generated: number;
  softTokens: number;
  contextKvBytes: number;
  kvBytes: number;
}

/** Decoder KV-cache bytes per token: 2 (k and v) x layers x kvHeads x headDim x bytes per element. */
export function perTokenKv(model: LlamaModel): number {
  const cfg = model.config;
  return 2 * cfg.numLayers * cfg.numKvHeads * cfg.headDim * DTYPE_SIZE[model.dtype];
}

/** Per-item soft tokens (or memory slots) and KV bytes of [BOS] + the context. */
function contextCosts(model: LlamaModel, ctx: SoftContext): { soft: number[]; kv: number[] } {
  const perToken = perTokenKv(model);
  const b = ctx.meta.sourceTokens.length;
  const soft = ctx.meta.softTokens.slice();
  let memPerItem: number[] = new Array(b).fill(0);
  if (ctx.memoryKv?.length) {
    // Memory slots per item: the mask's row sums when the batch is ragged, else the slot count.
    const m = (ctx.memoryKv[0] as { k: Tensor }).k.size(2);
    const slots = ctx.memoryMask ? Array.from(ctx.memoryMask.to('int64').sum([1]).toArray() as BigInt64Array, Number) : new Array(b).fill(m);
    const perSlot = ctx.memoryKv.reduce(
      (a, kv) => a + (kv.k.size(1) * kv.k.size(3) * DTYPE_SIZE[kv.k.dtype] + kv.v.size(1) * kv.v.size(3) * DTYPE_SIZE[kv.v.dtype]),
      0,
    );
    memPerItem = slots.map((s: number) => s * perSlot);
  }
  const softInDecoder = ctx.softTokens ? (ctx.memoryKv?.length ? new Array(b).fill(ctx.softTokens.size(1)) : soft) : new Array(b).fill(0);
  return { soft, kv: softInDecoder.map((k: number, i: number) => perToken * (1 + k) + (memPerItem[i] as number)) };
}

// ---------------------------------------------------------------------------------------------
// Running

interface BatchOutput {
  /** Generated ids per item (generation) or [nats, tokens] per batch (loss). */
  generated?: number[][];
  nats?: number;
  tokens?: number;
  costs: Costs[];
}

function runBatch(model: LlamaModel, tok: Tokenizer, m: EvalMethod, ratio: number | null, task: EvalTask, items: EvalExample[], stops: number[]): BatchOutput {
  const c = m.compressor;
  return tidy(() =>
    noGrad(() => {
      const b = items.length;
      // Each distinct context once; row[i] is item i's context among them.
      const first = new Map<string, number>();
      const row = items.map((ex) => {
        const key = contextKey(ex);
        let r = first.get(key);
        if (r === undefined) first.set(key, (r = first.size));
        return r;
      });
      const distinct = [...first.values()].map((r) => items[row.indexOf(r)]!.context);
      const compressions = items.map((_, i) => (row.indexOf(row[i]!) === i ? 1 : 0));
      const t0 = performance.now();
      const once = c.compress(distinct, budgetOf(ratio));
      const indexed = distinct.length === b ? once : indexSoftContext(once, row);
      // The compressor's own task embeddings (ICAE's [AE] / [LM]) follow its soft tokens, as in
      // training (prompts.ts); costs count the compressed context only.
      const ctx = withTaskEmbeddings(c, indexed, task.objective);
      try {
        const compressMs = performance.now() - t0;
        const { soft, kv } = contextCosts(model, indexed);
        const perTok = perTokenKv(model);
        if (task.mode === 'loss') {
          const t1 = performance.now();
          const { loss, tokens } = tailLoss(
            model,
            ctx,
            items.map((ex) => ex.tail),
            items.map(() => 0),
            { bos: task.lead ?? tok.bos, pad: tok.pad, lora: c.decoderLora },
          );
          const nats = loss.item() * tokens;
          const forwardMs = performance.now() - t1;
          const costs = items.map((ex, i) => ({
            compressMs: compressMs / b,
            compressions: compressions[i]!,
            prefillMs: forwardMs / b,
            generateMs: 0,
            generated: 0,
            softTokens: soft[i] as number,
            contextKvBytes: kv[i] as number,
            kvBytes: (kv[i] as number) + perTok * ex.tail.length,
          }));
          return { nats, tokens, costs };
        }
        const maxTokens = Math.max(...items.map((ex) => ex.maxTokens ?? 8));
        const res = generateWithContext(
          model,
          ctx,
          items.map((ex) => ex.tail),
          task.lead ?? tok.bos,
          { maxTokens, stopTokens: stops, lora: c.decoderLora },
        );
        // Items with a smaller budget than the batch's are cut to their own maxTokens.
        const generated = res.tokens.map((ids, i) => ids.slice(0, items[i]!.maxTokens ?? maxTokens));
        const costs = items.map((ex, i) => ({
          compressMs: compressMs / b,
          compressions: compressions[i]!,
          prefillMs: res.prefillMs / b,
          generateMs: res.decodeMs / b,
          generated: generated[i]!.length,
          softTokens: soft[i] as number,
          contextKvBytes: kv[i] as number,
          kvBytes: (kv[i] as number) + perTok * (ex.tail.length + generated[i]!.length),
        }));
        return { generated, costs };
      } finally {
        if (indexed !== once) freeSoftContext(once);
        if (ctx !== indexed) {
          ctx.softTokens?.free();
          ctx.mask?.free();
        }
        freeSoftContext(indexed);
      }
    }),
  );
}

/**
 * runBatch, and when it fails on contexts of different lengths (methods whose memory cannot be
 * padded, e.g. CCF's memory KV), again on each group of equal-length contexts.
 */
function runItems(model: LlamaModel, tok: Tokenizer, m: EvalMethod, ratio: number | null, task: EvalTask, items: EvalExample[], stops: number[]): BatchOutput {
  try {
    return runBatch(model, tok, m, ratio, task, items, stops);
  } catch (e) {
    const lengths = [...new Set(items.map((ex) => ex.context.length))];
    if (lengths.length < 2) throw e;
    const out: BatchOutput = { costs: new Array(items.length), generated: task.mode === 'generate' ? new Array(items.length) : undefined, nats: 0, tokens: 0 };
    for (const len of lengths) {
      const idx = items.map((ex, i) => (ex.context.length === len ? i : -1)).filter((i) => i >= 0);
      const sub = runBatch(
        model,
        tok,
        m,
        ratio,
        task,
        idx.map((i) => items[i]!),
        stops,
      );
      idx.forEach((i, j) => {
        out.costs[i] = sub.costs[j]!;
        if (out.generated) out.generated[i] = sub.generated![j]!;
      });
      out.nats! += sub.nats ?? 0;
      out.tokens! += sub.tokens ?? 0;
    }
    return out;
  }
}

interface ExampleScore {
  ex: EvalExample;
  /** Generation outputs. */
  hyp?: number[];
  text?: string;
  em?: number;
  f1?: number;
}

/** Rows of one (method, ratio, task). */
function scoreTask(
  task: EvalTask,
  method: string,
  ratio: number | null,
  scored: ExampleScore[],
  loss: { perGroup: Map<string, { nats: number; tokens: number; n: number }> } | null,
): ResultRow[] {
  const rows: ResultRow[] = [];
  const push = (metric: string, group: string, value: number, n: number) =>
    rows.push({ task: task.name, method, ratio, metric, group, value, n, retention: null });
  if (loss) {
    for (const [group, g] of loss.perGroup) {
      push('ppl', group, Math.exp(g.nats / g.tokens), g.n);
      push('nll', group, g.nats / g.tokens, g.n);
    }
    return rows;
  }
  const byGroup = new Map<string, ExampleScore[]>();
  for (const s of scored) for (const g of groupsOf(s.ex)) byGroup.set(g, [...(byGroup.get(g) ?? []), s]);
  for (const [group, list] of byGroup) {
    if (task.name === 'reconstruct') {
      const hyps = list.map((s) => s.hyp ?? []);
      const refs = list.map((s) => s.ex.reference ?? []);
      push('bleu4', group, corpusBleu(hyps, refs).bleu, list.length);
      push('exact_prefix', group, mean(list.map((_, i) => exactPrefixLength(hyps[i]!, refs[i]!))), list.length);
      push('exact_prefix_frac', group, mean(list.map((_, i) => exactPrefixLength(hyps[i]!, refs[i]!) / Math.max(1, refs[i]!.length))), list.length);
      push('rougeL', group, mean(list.map((_, i) => rougeL(hyps[i]!, refs[i]!).f)), list.length);
    } else {
      push('em', group, mean(list.map((s) => s.em ?? 0)), list.length);
      push('f1', group, mean(list.map((s) => s.f1 ?? 0)), list.length);
    }
  }
  return rows;
}

/** Fills in retention = (value - none) / (full - none) per task, metric and group. */
export function addRetention(rows: ResultRow[]): void {
  const key = (r: ResultRow) => `${r.task}\u0001${r.metric}\u0001${r.group}`;
  const full = new Map<string, number>();
  const none = new Map<string, number>();
  for (const r of rows) {
    if (r.method === 'full' && r.ratio === null) full.set(key(r), r.value);
    if (r.method === 'none' && r.ratio === null) none.set(key(r), r.value);
  }
  for (const r of rows) {
    const f = full.get(key(r));
    const z = none.get(key(r));
    r.retention = f === undefined || z === undefined ? null : retention(r.value, z, f);
  }
}

function summariseLatency(task: EvalTask, method: string, ratio: number | null, perExample: { ex: EvalExample; c: Costs }[]): LatencyRow[] {
  const groups = new Map<string, { ex: EvalExample; c: Costs }[]>();
  for (const e of perExample) {
    for (const g of new Set(['all', latencyGroup(e.ex)])) groups.set(g, [...(groups.get(g) ?? []), e]);
  }
  const out: LatencyRow[] = [];
  for (const [group, list] of groups) {
    const avg = (f: (e: { ex: EvalExample; c: Costs }) => number) => mean(list.map(f));
    const compressMs = avg((e) => e.c.compressMs);
    const contexts = list.reduce((a, e) => a + e.c.compressions, 0);
    const prefillMs = avg((e) => e.c.prefillMs);
    const generateMs = avg((e) => e.c.generateMs);
    out.push({
      task: task.name,
      method,
      ratio,
      group,
      examples: list.length,
      contextTokens: avg((e) => e.ex.context.length),
      softTokens: avg((e) => e.c.softTokens),
      compressMs,
      contexts,
      compressMsPerContext: contexts ? list.reduce((a, e) => a + e.c.compressMs, 0) / contexts : NaN,
      prefillMs,
      generateMs,
      endToEndMs: compressMs + prefillMs + generateMs,
      generatedTokens: avg((e) => e.c.generated),
      contextKvBytes: avg((e) => e.c.contextKvBytes),
      kvBytes: avg((e) => e.c.kvBytes),
      threads: getNumThreads(),
    });
  }
  return out;
}

/** The plan of a run: (method, ratio, task) triples and their batches. */
export function planRun(o: Pick<HarnessOptions, 'methods' | 'tasks' | 'batchSize' | 'batchBudget'>): Plan[] {
  const plans: Plan[] = [];
  for (const m of o.methods) {
    for (const ratio of m.ratios) {
      for (const task of o.tasks) {
        const batches = planBatches(m, ratio, task, o.batchSize ?? 16, o.batchBudget ?? BATCH_BUDGET);
        plans.push({ method: m, ratio, task, batches, work: batches.map((b) => batchWork(m, ratio, task, b)) });
      }
    }
  }
  return plans;
}

/**
 * Runs every (method, ratio, task). A failing batch is recorded (errors) and the run goes on;
 * the groups holding its examples ('all' among them) get no score, the others keep theirs
 * (e.g. a method refusing 2,048-token contexts is still scored at the shorter lengths).
 */
export function runEvaluation(o: HarnessOptions): EvalRun {
  const t0 = performance.now();
  const { model, tokenizer: tok } = o;
  const plans = planRun(o);
  const total = plans.reduce((a, p) => a + p.work.reduce((x, y) => x + y, 0), 0);
  const newline = newlineTokens(tok);
  const rows: ResultRow[] = [];
  const latency: LatencyRow[] = [];
  const errors: EvalError[] = [];
  const predictions: Prediction[] = [];
  let done = 0;
  for (const m of o.methods) m.compressor.setTraining(false);
  for (const p of plans) {
    const { method: m, ratio, task } = p;
    const key = o.cache ? planKey(model, p) : '';
    const kept = o.cache?.get(key);
    if (kept) {
      rows.push(...kept.rows);
      latency.push(...kept.latency);
      errors.push(...kept.errors);
      predictions.push(...kept.predictions);
      o.onNote?.(`${methodKey(m.label, ratio)} · ${task.name}: results of an earlier run reused`);
      o.onProgress?.((done += p.work.reduce((a, w) => a + w, 0)), total);
      continue;
    }
    const firstPrediction = predictions.length;
    const firstRow = rows.length;
    const firstLatency = latency.length;
    const firstErrorRow = errors.length;
    o.onNote?.(`${methodKey(m.label, ratio)} · ${task.name} (${task.examples.length} examples, ${p.batches.length} batches)`);
    const stops = [...new Set([tok.eos, ...(task.stopIds ?? []), ...(task.stopAtNewline ? newline : [])])];
    const scored: ExampleScore[] = [];
    const costs: { ex: EvalExample; c: Costs }[] = [];
    const perGroup = new Map<string, { nats: number; tokens: number; n: number }>();
    // Groups with a failed example get no score (a partial score would not compare).
    const failedGroups = new Set<string>();
    let failedExamples = 0;
    let firstError = '';
    for (const [bi, batch] of p.batches.entries()) {
      const work = p.work[bi]!;
      const items = batch.map((i) => task.examples[i]!);
      try {
        const out = runItems(model, tok, m, ratio, task, items, stops);
        items.forEach((ex, i) => costs.push({ ex, c: out.costs[i]! }));
        if (task.mode === 'loss') {
          // Loss is per batch; groups of loss tasks are 'all' and the batch's shared keys.
          for (const g of new Set(items.flatMap(groupsOf))) {
            if (!items.every((ex) => groupsOf(ex).includes(g))) continue;
            const acc = perGroup.get(g) ?? { nats: 0, tokens: 0, n: 0 };
            acc.nats += out.nats!;
            acc.tokens += out.tokens!;
            acc.n += items.length;
            perGroup.set(g, acc);
          }
        } else {
          items.forEach((ex, i) => {
            const hyp = out.generated![i]!;
            if (ex.reference) {
              const clean = hyp.filter((id) => !stops.includes(id));
              const text = tok.decode(clean);
              scored.push({ ex, hyp: clean, text });
              predictions.push({
                task: task.name,
                method: m.label,
                ratio,
                id: ex.id,
                prediction: text,
                score: { exact_prefix: exactPrefixLength(clean, ex.reference) },
              });
            } else if (ex.answers) {
              // SQuAD's official scoring (several gold answers; none: unanswerable).
              const text = answerText(tok, hyp);
              const { em, f1 } = squadScores(text, ex.answers);
              scored.push({ ex, text, em, f1 });
              predictions.push({ task: task.name, method: m.label, ratio, id: ex.id, prediction: text, gold: ex.answers.join(' | '), score: { em, f1 } });
            } else {
              const text = answerText(tok, hyp);
              const em = exactMatch(text, ex.answer ?? '');
              const f1 = f1Score(text, ex.answer ?? '');
              scored.push({ ex, text, em, f1 });
              predictions.push({ task: task.name, method: m.label, ratio, id: ex.id, prediction: text, gold: ex.answer, score: { em, f1 } });
            }
          });
        }
      } catch (e) {
        const message = (e as Error).message;
        if (!firstError) {
          firstError = message;
          o.onNote?.(`  failed: ${message}`);
        }
        failedExamples += items.length;
        for (const ex of items) for (const g of groupsOf(ex)) failedGroups.add(g);
      }
      o.onProgress?.((done += work), total);
    }
    if (failedExamples) errors.push({ task: task.name, method: m.label, ratio, message: firstError, examples: failedExamples });
    rows.push(...scoreTask(task, m.label, ratio, scored, task.mode === 'loss' ? { perGroup } : null).filter((r) => !failedGroups.has(r.group)));
    latency.push(...summariseLatency(task, m.label, ratio, costs).filter((l) => !failedGroups.has(l.group)));
    o.cache?.set(key, {
      rows: rows.slice(firstRow),
      latency: latency.slice(firstLatency),
      errors: errors.slice(firstErrorRow),
      predictions: predictions.slice(firstPrediction),
    });
  }
  addRetention(rows);
  return { rows, latency, errors, predictions, seconds: (performance.now() - t0) / 1000 };
}
