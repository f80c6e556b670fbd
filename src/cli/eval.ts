/**
 * softpress eval — the evaluation harness from the command line.
 *
 *   softpress eval [--suite default|quick] [--out DIR] [--task T[,T]] [--methods full,none,truncate,DIR,...]
 *                  [--ratios 4,8] [--data PATH] [--base DIR] [--n N] [--json] [--seed S] [--batch B] [--resume]
 *   softpress eval --task perplexity [--split test|valid] [--base DIR]
 *
 * --split chooses the documents passages are drawn from (perplexity, reconstruct, continue,
 * needle, cloze; default test); babi always uses the stories held out of its training files.
 *
 * Tasks: reconstruct, continue, babi, needle, cloze, qa (the suite's default: all six; babi needs
 * bAbI data: --data FILE|FOLDER, else the repository's fixtures when present; qa reads a SQuAD
 * v1.1 / v2.0 .json or a JSONL file: --data FILE, else the committed data/qa/prose-test.json) and
 * perplexity (the base model's document-level perplexity and bits per byte on a split). With
 * both babi and qa asked for, --data goes to qa when it is a .json / .jsonl / .ndjson file, else
 * to babi. Each (method, ratio, task) run's results are kept in OUT/plans/ as it ends; --resume
 * reuses those made with the same base, compressor files, examples and batching (an interrupted
 * evaluation goes on where it stopped). Methods: the strategies
 * by name and trained compressors by folder; by default full, none, truncate and every
 * compressor folder beside the base model made for it.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { getNumThreads, setNumThreads } from '../tensor/index.js';
import { loadModel } from '../models/load.js';
import { BpeTokenizer } from '../models/bpe.js';
import type { LlamaModel } from '../models/llama.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { compressorNames, createCompressor, loadCompressor } from '../compress/index.js';
import { isSplitName } from '../data/splits.js';
import { isQaFileName } from '../data/squad.js';
import { Progress } from '../train/progress.js';
import {
  DEFAULT_QA_SET,
  DEFAULT_RATIOS,
  buildTasks,
  documentPerplexity,
  evalDocuments,
  isTaskName,
  ratiosFor,
  runEvaluation,
  taskInfo,
  writeReport,
  type EvalMethod,
  type EvalReport,
  type PlanCache,
  type PlanResult,
  type PerplexityReport,
  type SuiteName,
  type TaskName,
  TASK_NAMES,
} from '../eval/index.js';

const USAGE = `usage: softpress eval [--suite default|quick] [--out DIR] [--task T[,T]] [--methods full,none,truncate,DIR,...]
                     [--ratios 4,8] [--data PATH] [--base DIR] [--n N] [--split test|valid] [--json] [--seed S] [--batch 4]
                     [--threads T] [--no-png] [--quiet] [--resume]
       softpress eval --task perplexity [--split test|valid] [--base DIR] [--json]
       softpress eval --task qa --data FILE.json|FILE.jsonl [--methods ...] [--ratios ...] [--base DIR] [--n N] [--json]
tasks: ${TASK_NAMES.join(', ')}, perplexity
--data: bAbI file or folder (babi); SQuAD v1.1/v2.0 JSON or JSONL {"context", "question", "answers"} (qa)`;

/** The bAbI fixtures of the repository, when present (used when --data is not given). */
const FIXTURE_BABI = resolve('../shared/fixtures/babi/en-10k');

function list(v: string | undefined): string[] {
  return (v ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function positiveInt(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(Number.isInteger(n) && n > 0)) throw new Error(`--${name} must be a positive integer, got '${v}'`);
  return n;
}

/** Our byte-level BPE reads tokenizer.json ~6x faster than the generic one; same ids. */
function fastTokenizer(base: string, model: LlamaModel, fallback: Tokenizer): Tokenizer {
  const path = join(base, 'tokenizer.json');
  if (!existsSync(path)) return fallback;
  try {
    const t = BpeTokenizer.fromFile(path);
    const cfg = model.config;
    if (
      (cfg.bosTokenId !== undefined && t.bos !== cfg.bosTokenId) ||
      (cfg.eosTokenId !== undefined && t.eos !== cfg.eosTokenId) ||
      t.bos !== fallback.bos ||
      t.eos !== fallback.eos
    )
      return fallback;
    const probe = 'Mary went to the kitchen.\nQuestion: Where is Mary?\nAnswer: kitchen 1,234 — “quoted”';
    return t.encode(probe).join() === fallback.encode(probe).join() ? t : fallback;
  } catch {
    return fallback;
  }
}

/** Compressor folders beside the base model (siblings holding compressor.json made for it). */
function discoverCompressors(base: string, fingerprint: string): string[] {
  const parent = dirname(resolve(base));
  const out: string[] = [];
  for (const name of readdirSync(parent).sort()) {
    const dir = join(parent, name);
    const cfg = join(dir, 'compressor.json');
    if (dir === resolve(base) || !existsSync(cfg)) continue;
    try {
      const j = JSON.parse(readFileSync(cfg, 'utf8')) as { baseFingerprint?: string };
      if (j.baseFingerprint === fingerprint) out.push(dir);
    } catch {
      // not a readable compressor; skip
    }
  }
  return out;
}

/** sha256 of a compressor folder's config and weights (what its results depend on). */
function folderDigest(dir: string): string {
  const h = createHash('sha256');
  for (const f of readdirSync(dir)
    .filter((x) => x === 'compressor.json' || x.endsWith('.safetensors'))
    .sort()) {
    h.update(f);
    h.update(readFileSync(join(dir, f)));
  }
  return h.digest('hex');
}

/** Results of (method, ratio, task) runs as files under dir, one per key. */
function planCache(dir: string, reuse: boolean): PlanCache {
  return {
    get(key) {
      const path = join(dir, `${key}.json`);
      if (!reuse || !existsSync(path)) return undefined;
      try {
        return JSON.parse(readFileSync(path, 'utf8')) as PlanResult;
      } catch {
        return undefined; // a file cut short by a kill: run again
      }
    },
    set(key, result) {
      mkdirSync(dir, { recursive: true });
      const path = join(dir, `${key}.json`);
      writeFileSync(`${path}.tmp-${process.pid}`, JSON.stringify(result));
      renameSync(`${path}.tmp-${process.pid}`, path);
    },
  };
}

function buildMethods(specs: string[], model: LlamaModel, ratios: number[] | undefined, notes: string[], tokenizer?: Tokenizer): EvalMethod[] {
  const methods: EvalMethod[] = [];
  const labels = new Set<string>();
  for (const spec of specs) {
    let m: EvalMethod;
    if (existsSync(spec) && statSync(spec).isDirectory()) {
      const c = loadCompressor(spec, model);
      let label = c.method;
      if (labels.has(label) || ['full', 'none', 'truncate'].includes(label)) label = `${c.method}:${basename(resolve(spec))}`;
      m = { label, compressor: c, ratios: ratiosFor(c, ratios), source: spec, identity: folderDigest(spec) };
    } else if (compressorNames().includes(spec)) {
      const c = createCompressor(spec, model, {}, { tokenizer });
      if (c.module) notes.push(`${spec} was created by name, untrained (give a trained compressor's folder to evaluate it)`);
      m = { label: spec, compressor: c, ratios: ratiosFor(c, ratios) };
    } else {
      throw new Error(`--methods: '${spec}' is neither a compressor folder nor a method (${compressorNames().join(', ')})`);
    }
    if (labels.has(m.label)) throw new Error(`--methods: '${m.label}' is listed twice`);
    if (m.ratios.length === 0) {
      notes.push(`${m.label} supports none of the ratios asked for (it supports ${m.compressor.ratios?.join(', ')}); skipped`);
      continue;
    }
    labels.add(m.label);
    methods.push(m);
  }
  // Strategies that follow the budget (truncate), by default at the ratios of the learned methods, so they are compared at each.
  if (!ratios) {
    const learned = [...new Set(methods.filter((m) => m.compressor.module).flatMap((m) => m.ratios))]
      .filter((r): r is number => r !== null)
      .sort((a, b) => a - b);
    for (const m of methods) if (!m.compressor.module && !m.compressor.budgetFree) m.ratios = learned.length ? learned : [...DEFAULT_RATIOS];
  }
  return methods;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      suite: { type: 'string', default: 'default' },
      out: { type: 'string' },
      task: { type: 'string' },
      methods: { type: 'string' },
      ratios: { type: 'string' },
      data: { type: 'string' },
      base: { type: 'string', default: 'models/softpress-base' },
      n: { type: 'string' },
      json: { type: 'boolean', default: false },
      split: { type: 'string', default: 'test' },
      seed: { type: 'string', default: '0' },
      // 16 ran out of the machine's 24 GiB on long contexts through learned encoders; 4 peaked at ~4.5 GB.
      batch: { type: 'string', default: '4' },
      threads: { type: 'string' },
      dtype: { type: 'string', default: 'float32' },
      'no-png': { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
      resume: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const t0 = performance.now();
  const suite = values.suite as SuiteName;
  if (suite !== 'default' && suite !== 'quick') throw new Error(`--suite must be default or quick, got '${values.suite}'`);
  const split = values.split!;
  if (!isSplitName(split) || split === 'train') throw new Error(`--split must be test or valid, got '${split}'`);
  const n = positiveInt('n', values.n);
  const batchSize = positiveInt('batch', values.batch)!;
  const seed = Number(values.seed);
  if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer, got '${values.seed}'`);
  const ratios = values.ratios === undefined ? undefined : list(values.ratios).map(Number);
  if (ratios && (ratios.length === 0 || ratios.some((r) => !(Number.isFinite(r) && r >= 1))))
    throw new Error(`--ratios must be numbers >= 1, got '${values.ratios}'`);
  if (values.dtype !== 'float32' && values.dtype !== 'float16' && values.dtype !== 'bfloat16') throw new Error(`--dtype must be float32, float16 or bfloat16`);

  const threads = positiveInt('threads', values.threads);
  if (threads) setNumThreads(threads);
  const notes: string[] = [];
  const requested = values.task === undefined ? undefined : list(values.task);
  for (const t of requested ?? [])
    if (!isTaskName(t) && t !== 'perplexity') throw new Error(`--task: unknown task '${t}' (${TASK_NAMES.join(', ')}, perplexity)`);
  const wantPerplexity = requested?.includes('perplexity') ?? false;
  let tasks: TaskName[] = requested ? requested.filter(isTaskName) : [...TASK_NAMES];
  // --data: for qa when qa alone of the two is asked, or when both are and it names a QA file.
  const data = values.data;
  const bothData = tasks.includes('qa') && tasks.includes('babi');
  const dataIsQa = data !== undefined && tasks.includes('qa') && (!tasks.includes('babi') || isQaFileName(data));
  const qaPath = dataIsQa ? data : undefined;
  let babiPath = data !== undefined && tasks.includes('babi') && !dataIsQa ? data : undefined;
  if (data !== undefined && !tasks.includes('qa') && !tasks.includes('babi'))
    throw new Error(`--data is for the babi and qa tasks; the tasks asked for (${tasks.join(', ') || 'perplexity'}) read the corpora`);
  if (tasks.includes('qa') && !qaPath && !existsSync(DEFAULT_QA_SET)) {
    if (requested) throw new Error(`the qa task needs a SQuAD or JSONL file: --data FILE (the default set ${DEFAULT_QA_SET} is missing)`);
    tasks = tasks.filter((t) => t !== 'qa');
    notes.push(`qa skipped: no QA data (pass --data FILE.json|FILE.jsonl; the default set ${DEFAULT_QA_SET} is missing)`);
  }
  if (bothData && qaPath) notes.push(`qa read ${qaPath}; babi its default data`);
  if (tasks.includes('babi') && !babiPath) {
    if (existsSync(FIXTURE_BABI)) babiPath = FIXTURE_BABI;
    else if (requested) throw new Error('the babi task needs bAbI data: --data FILE|FOLDER');
    else {
      tasks = tasks.filter((t) => t !== 'babi');
      notes.push('babi skipped: no bAbI data (pass --data FILE|FOLDER)');
    }
  }

  const log = (s: string) => {
    if (!values.quiet) process.stderr.write(s + '\n');
  };
  const base = values.base!;
  const loaded = loadModel(base, { dtype: values.dtype as 'float32' });
  const model = loaded.model;
  if (!loaded.tokenizer) throw new Error(`${base}: no tokenizer (tokenizer.json) beside the model`);
  const tok = fastTokenizer(base, model, loaded.tokenizer);
  const fingerprint = model.fingerprint();
  log(`base ${base}: ${(model.numParameters() / 1e6).toFixed(2)} M parameters, ${model.dtype}, fingerprint ${fingerprint}`);
  if (model.dtype !== 'float32') notes.push(`the decoder ran in ${model.dtype}`);

  const out = values.out ?? (values.json ? undefined : join('eval-reports', wantPerplexity && tasks.length === 0 ? `perplexity-${split}` : suite));
  const perplexity: PerplexityReport[] = [];
  if (wantPerplexity) {
    const docs = evalDocuments(split);
    log(`perplexity on the ${split} split: ${docs.length} documents`);
    let pbar: Progress | undefined;
    const r = documentPerplexity(
      model,
      tok,
      docs.map((d) => d.text),
      {
        onProgress: (d, total) => {
          pbar ??= new Progress(total, { quiet: values.quiet, label: `perplexity ${split} windows` });
          pbar.update(d);
        },
      },
    );
    pbar?.done();
    perplexity.push({ ...r, split });
    log(`${split}: ppl ${r.ppl.toFixed(3)}, ${r.bpb.toFixed(4)} bits/byte (${r.tokens} tokens, ${r.bytes} bytes, ${r.seconds.toFixed(1)} s)`);
  }

  let report: Omit<EvalReport, 'plots'>;
  const metaBase = {
    base,
    fingerprint,
    parameters: model.numParameters(),
    dtype: model.dtype,
    maxPositions: model.config.maxPositions,
    suite,
    seed,
    split,
    threads: getNumThreads(),
    date: new Date().toISOString(),
    notes,
  };
  let predictions: Parameters<typeof writeReport>[2] = [];
  if (tasks.length) {
    const specs = values.methods ? list(values.methods) : ['full', 'none', 'truncate', ...discoverCompressors(base, fingerprint)];
    const methods = buildMethods(specs, model, ratios, notes, tok);
    if (methods.length === 0) throw new Error('no method to evaluate');
    const tt = performance.now();
    log(`building tasks ${tasks.join(', ')} (suite ${suite}${n ? `, n ${n}` : ''})…`);
    // Passages from the chosen split (default test); bAbI always uses the stories held out of its training files.
    const built = buildTasks(tok, {
      suite,
      tasks,
      seed,
      n,
      babiPath,
      qaPath,
      docs: tasks.some((t) => t !== 'babi' && t !== 'qa') ? evalDocuments(split) : undefined,
    });
    log(
      `tasks ready in ${((performance.now() - tt) / 1000).toFixed(1)} s: ${built.map((t) => `${t.name} ${t.examples.length}`).join(', ')}; methods ${methods.map((m) => `${m.label}${m.ratios[0] === null ? '' : ` @${m.ratios.join('/')}`}`).join(', ')}`,
    );
    const needleLong = built.find((t) => t.name === 'needle')?.examples.some((e) => e.context.length + 16 > model.config.maxPositions);
    if (needleLong)
      notes.push(
        `needle contexts longer than the base model's ${model.config.maxPositions} positions: full (and any method decoding them as tokens) runs past its trained positions there`,
      );
    const qaTask = built.find((t) => t.name === 'qa');
    const qaLong = qaTask?.examples.filter(
      (e) => e.context.length + e.tail.length + (qaTask.lead?.length ?? 1) + (e.maxTokens ?? 0) > model.config.maxPositions,
    ).length;
    if (qaLong)
      notes.push(
        `${qaLong} qa questions have contexts (with prompt and answer) longer than the base model's ${model.config.maxPositions} positions: full runs past its trained positions there`,
      );
    let bar: Progress | undefined;
    const run = runEvaluation({
      model,
      tokenizer: tok,
      methods,
      tasks: built,
      batchSize,
      // Progress in thousandths of the estimated work (batches differ a lot in cost).
      onProgress: (done, total) => {
        bar ??= new Progress(1000, { quiet: values.quiet, label: 'eval ‰' });
        bar.update(Math.round((1000 * done) / total));
      },
      onNote: (msg) => (bar ? bar.note(msg) : log(msg)),
      // Each (method, ratio, task) result is kept in OUT/plans; --resume reuses those that match.
      cache: out ? planCache(join(out, 'plans'), values.resume!) : undefined,
    });
    bar?.done();
    predictions = run.predictions;
    notes.push(
      `Latency is measured on this machine with the whole batch (up to ${batchSize} contexts, fewer for long sequences) and shared equally by its examples (examples sharing a context share its one compression); the first batch of each run includes warm-up.`,
    );
    report = {
      meta: {
        ...metaBase,
        tasks: taskInfo(built),
        methods: methods.map((m) => ({ label: m.label, method: m.compressor.method, ratios: m.ratios, source: m.source })),
        seconds: (performance.now() - t0) / 1000,
      },
      results: run.rows,
      latency: run.latency,
      errors: run.errors,
      perplexity: perplexity.length ? perplexity : undefined,
    };
  } else {
    report = { meta: { ...metaBase, tasks: [], methods: [], seconds: (performance.now() - t0) / 1000 }, results: [], latency: [], errors: [], perplexity };
  }

  if (values.json) {
    for (const r of report.results) process.stdout.write(JSON.stringify(r) + '\n');
    for (const p of perplexity) {
      for (const metric of ['ppl', 'bpb', 'nll'] as const)
        process.stdout.write(
          JSON.stringify({
            task: 'perplexity',
            method: 'base',
            ratio: null,
            metric,
            group: `split=${p.split}`,
            value: p[metric],
            n: p.documents,
            tokens: p.tokens,
            bytes: p.bytes,
            retention: null,
          }) + '\n',
        );
    }
    for (const e of report.errors) process.stdout.write(JSON.stringify({ ...e, error: true }) + '\n');
  }
  if (out) {
    const written = writeReport(out, report, predictions, { png: !values['no-png'] });
    log(
      `wrote ${join(out, 'report.md')}, results.json, predictions.jsonl and ${written.plots.length} plots (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
  }
  // Failures (e.g. a method refusing a context length) are part of the results, not a crash.
  if (report.errors.length)
    process.stderr.write(
      `softpress eval: ${report.errors.length} (method, ratio, task) runs had failing examples (${report.errors.map((e) => `${e.method}${e.ratio === null ? '' : `@${e.ratio}`} ${e.task}`).join(', ')}); see the report's Errors\n`,
    );
}
