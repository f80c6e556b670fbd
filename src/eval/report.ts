/**
 * Evaluation reports: results.json (everything), report.md (Markdown tables), predictions.jsonl
 * and plots (quality vs ratio per task; latency and KV memory vs context length) as SVG, and as
 * PNG through the small built-in rasterizer (src/eval/png.ts; no browser, no dependency).
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { linePlotSvg, type Series } from '../io/plot.js';
import { linePlotPng } from './png.js';
import { paperClaims } from './claims.js';
import { PRIMARY_METRIC, methodKey, ratioLabel, type EvalError, type EvalRun, type LatencyRow, type Prediction, type ResultRow } from './harness.js';
import type { PerplexityResult } from './perplexity.js';
import type { EvalTask, TaskName } from './tasks.js';

export interface RunMeta {
  base: string;
  fingerprint: string;
  parameters: number;
  dtype: string;
  maxPositions: number;
  suite: string;
  seed: number;
  /** Split the passages were drawn from (reports written before this field: test). */
  split?: string;
  tasks: { name: TaskName; examples: number; about: string; groupOrder?: Record<string, string[]> }[];
  methods: { label: string; method: string; ratios: (number | null)[]; source?: string }[];
  threads: number;
  date: string;
  seconds: number;
  /** Free-form remarks shown in the report. */
  notes: string[];
}

export interface PerplexityReport extends PerplexityResult {
  split: string;
}

export interface EvalReport {
  meta: RunMeta;
  results: ResultRow[];
  latency: LatencyRow[];
  errors: EvalError[];
  perplexity?: PerplexityReport[];
  /** Plot files written (relative to the output folder). */
  plots: string[];
}

export function taskInfo(tasks: EvalTask[]): RunMeta['tasks'] {
  return tasks.map((t) => ({ name: t.name, examples: t.examples.length, about: t.about, groupOrder: t.groupOrder }));
}

// ---------------------------------------------------------------------------------------------
// Formatting

function fmt(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  if (Math.abs(v) >= 100) return v.toFixed(1);
  return v.toFixed(digits);
}

function pct(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '–' : `${(100 * v).toFixed(0)}%`;
}

function bytes(v: number): string {
  if (!Number.isFinite(v)) return '–';
  if (v >= 1 << 20) return `${(v / (1 << 20)).toFixed(2)} MiB`;
  if (v >= 1 << 10) return `${(v / (1 << 10)).toFixed(1)} KiB`;
  return `${v.toFixed(0)} B`;
}

/** A Markdown table; the first `left` columns are left-aligned, the rest (numbers) right-aligned. */
function table(header: string[], rows: string[][], left = 2): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map((_, i) => (i < left ? '---' : '---:'))), ...rows.map(line)].join('\n');
}

const METRIC_NAMES: Record<string, string> = {
  bleu4: 'BLEU-4',
  exact_prefix: 'exact prefix (tokens)',
  exact_prefix_frac: 'exact prefix (share)',
  rougeL: 'ROUGE-L',
  ppl: 'perplexity',
  nll: 'nats/token',
  em: 'EM',
  f1: 'F1',
};

function metricName(m: string): string {
  return METRIC_NAMES[m] ?? m;
}

/** Methods in the order they ran, each with its ratios. */
function methodOrder(rows: { method: string; ratio: number | null }[]): { method: string; ratio: number | null }[] {
  const seen = new Map<string, { method: string; ratio: number | null }>();
  for (const r of rows) if (!seen.has(methodKey(r.method, r.ratio))) seen.set(methodKey(r.method, r.ratio), { method: r.method, ratio: r.ratio });
  const rank = (m: string) => (m === 'full' ? 0 : m === 'none' ? 1 : m === 'truncate' ? 2 : 3);
  return [...seen.values()].sort(
    (a, b) => rank(a.method) - rank(b.method) || (a.method < b.method ? -1 : a.method > b.method ? 1 : 0) || (a.ratio ?? 0) - (b.ratio ?? 0),
  );
}

function find(rows: ResultRow[], task: string, method: string, ratio: number | null, metric: string, group = 'all'): ResultRow | undefined {
  return rows.find((r) => r.task === task && r.method === method && r.ratio === ratio && r.metric === metric && r.group === group);
}

// ---------------------------------------------------------------------------------------------
// Markdown

/**
 * Whether the latency rows were not all measured with this run's thread count (rows reused by
 * --resume keep theirs): then the latency table says each row's, as times are not comparable.
 */
function threadsDiffer(rep: EvalReport): boolean {
  // Results written before rows recorded their count say nothing either way.
  if (rep.latency.every((l) => l.threads === undefined)) return false;
  return rep.latency.some((l) => l.threads !== rep.meta.threads);
}

export function reportMarkdown(rep: EvalReport): string {
  const { meta, results } = rep;
  const out: string[] = [];
  const mins = meta.seconds >= 60 ? `${Math.floor(meta.seconds / 60)} min ${Math.round(meta.seconds % 60)} s` : `${meta.seconds.toFixed(1)} s`;
  out.push('# softpress evaluation', '');
  out.push(
    `- Base model: \`${meta.base}\` (fingerprint \`${meta.fingerprint}\`, ${(meta.parameters / 1e6).toFixed(2)} M parameters, ${meta.dtype}, max positions ${meta.maxPositions})`,
  );
  const hasTasks = meta.tasks.length > 0;
  const mixedThreads = threadsDiffer(rep);
  out.push(
    `- ${hasTasks ? `Suite \`${meta.suite}\`, seed ${meta.seed}; ` : ''}${meta.threads} threads${mixedThreads ? ' (this run; latency rows reused from earlier runs give their own)' : ''}; ${meta.date}; took ${mins}`,
  );
  if (hasTasks) {
    out.push(
      `- Methods: ${meta.methods.map((m) => `${m.label}${m.ratios.some((r) => r !== null) ? ` (ratios ${m.ratios.join(', ')})` : ''}${m.source ? ` from \`${m.source}\`` : ''}`).join('; ') || '–'}`,
    );
    out.push('- Ratio = context tokens / soft tokens. Retention = (score − none) / (full − none) on the same examples.');
    out.push(
      `- Passages come only from the ${meta.split ?? 'test'} split of sotu, moby-dick and brown (splitDocuments seed 0); bAbI from the file given (the held-out stories of a train file, all of any other file); qa from its SQuAD / JSONL file (by default span questions over test-split passages).`,
    );
    out.push('');
    for (const t of meta.tasks) out.push(`- **${t.name}** (${t.examples} examples): ${t.about}`);
  }
  out.push('');

  const methods = methodOrder(results);
  const taskNames = meta.tasks.map((t) => t.name);
  if (taskNames.length && methods.length) {
    out.push('## Summary', '');
    out.push('Primary metric per task (retention in parentheses; perplexity: lower is better).', '');
    const header = ['method', 'ratio', ...taskNames.map((t) => `${t} ${metricName(PRIMARY_METRIC[t].metric)}`)];
    const rows = methods.map(({ method, ratio }) => [
      method,
      ratioLabel(ratio),
      ...taskNames.map((t) => {
        const r = find(results, t, method, ratio, PRIMARY_METRIC[t].metric);
        if (!r) return '–';
        return ratio === null || r.retention === null ? fmt(r.value) : `${fmt(r.value)} (${pct(r.retention)})`;
      }),
    ]);
    out.push(table(header, rows), '');
  }

  const claims = paperClaims(rep);
  if (claims.some((c) => c.verdict !== 'not tested here')) {
    out.push("## The papers' claims, here", '');
    out.push('Each claim of the method papers that this run can test, judged on its figures (strictly: a tie does not hold).', '');
    out.push(
      table(
        ['paper', 'claim', 'here', 'figures'],
        claims.map((c) => [c.paper, c.claim, c.verdict, c.evidence]),
        4,
      ),
      '',
    );
  }

  for (const t of meta.tasks) {
    const taskRows = results.filter((r) => r.task === t.name);
    if (!taskRows.length) continue;
    out.push(`## ${t.name}`, '', t.about, '');
    const metrics = [...new Set(taskRows.map((r) => r.metric))];
    const ms = methodOrder(taskRows);
    out.push(
      table(
        ['method', 'ratio', ...metrics.map(metricName), 'retention'],
        ms.map(({ method, ratio }) => [
          method,
          ratioLabel(ratio),
          ...metrics.map((m) => fmt(find(taskRows, t.name, method, ratio, m)?.value)),
          pct(find(taskRows, t.name, method, ratio, PRIMARY_METRIC[t.name].metric)?.retention),
        ]),
      ),
      '',
    );
    // Breakdowns by each group key, on the primary metric.
    const primary = PRIMARY_METRIC[t.name].metric;
    for (const [key, values] of Object.entries(t.groupOrder ?? {})) {
      const present = values.filter((v) => taskRows.some((r) => r.group === `${key}=${v}`));
      if (present.length < 1) continue;
      out.push(`${metricName(primary)} by ${key}:`, '');
      out.push(
        table(
          ['method', 'ratio', ...present, 'all'],
          ms.map(({ method, ratio }) => [
            method,
            ratioLabel(ratio),
            ...present.map((v) => fmt(find(taskRows, t.name, method, ratio, primary, `${key}=${v}`)?.value)),
            fmt(find(taskRows, t.name, method, ratio, primary)?.value),
          ]),
        ),
        '',
      );
    }
  }

  if (rep.latency.length) {
    out.push('## Latency and memory', '');
    out.push(
      'Milliseconds per example (batch time shared by its examples; greedy decoding on CPU). KV bytes: the decoder cache of [BOS] + the compressed context (soft tokens: 2 × layers × kvHeads × headDim × bytes × (1 + k); memory KV: its keys and values), and with the tail (prompt + generated tokens).',
      '',
    );
    const lat = rep.latency.filter((l) => l.group === 'all');
    // Reports written before contexts were counted have one context per example.
    const contextsOf = (l: LatencyRow) => l.contexts ?? l.examples;
    const shared = lat.some((l) => contextsOf(l) < l.examples);
    if (shared)
      out.push(
        'Examples sharing a context (the questions of one QA context) are compressed once: "compress ms" is per example (question), "compress ms / context" per distinct context compressed, "contexts" how many were compressed for the examples.',
        '',
      );
    out.push(
      table(
        [
          'method',
          'ratio',
          'task',
          'context tokens',
          'soft tokens',
          ...(shared ? ['examples', 'contexts', 'compress ms / context'] : []),
          'compress ms',
          'prefill ms',
          'generate ms',
          'end-to-end ms',
          'new tokens',
          'KV / context',
          'KV with tail',
          ...(mixedThreads ? ['threads'] : []),
        ],
        methodOrder(lat).flatMap(({ method, ratio }) =>
          lat
            .filter((l) => l.method === method && l.ratio === ratio)
            .map((l) => [
              method,
              ratioLabel(ratio),
              l.task,
              fmt(l.contextTokens, 0),
              fmt(l.softTokens, 1),
              ...(shared ? [String(l.examples), String(contextsOf(l)), fmt(l.compressMsPerContext ?? l.compressMs, 2)] : []),
              fmt(l.compressMs, 2),
              fmt(l.prefillMs, 2),
              fmt(l.generateMs, 2),
              fmt(l.endToEndMs, 2),
              fmt(l.generatedTokens, 1),
              bytes(l.contextKvBytes),
              bytes(l.kvBytes),
              ...(mixedThreads ? [l.threads === undefined ? '?' : String(l.threads)] : []),
            ]),
        ),
        3,
      ),
      '',
    );
  }

  if (rep.perplexity?.length) {
    out.push('## Perplexity of the base model', '');
    out.push("Each document as [BOS] tokens [EOS], in windows of the model's max positions; ppl per predicted token; bpb = nats / ln 2 / UTF-8 bytes.", '');
    out.push(
      table(
        ['split', 'documents', 'tokens', 'bytes', 'nats/token', 'perplexity', 'bits/byte', 'window', 'seconds'],
        rep.perplexity.map((p) => [
          p.split,
          String(p.documents),
          String(p.tokens),
          String(p.bytes),
          p.nll.toFixed(4),
          p.ppl.toFixed(3),
          p.bpb.toFixed(4),
          String(p.window),
          p.seconds.toFixed(1),
        ]),
        1,
      ),
      '',
    );
  }

  if (rep.plots.length) {
    out.push('## Plots', '');
    for (const p of rep.plots.filter((x) => x.endsWith('.svg'))) out.push(`![${p}](${p})`, '');
  }
  if (rep.errors.length) {
    out.push('## Errors', '');
    out.push('Groups holding a failed example have no score above; the other groups keep theirs.', '');
    out.push(
      table(
        ['method', 'ratio', 'task', 'examples failed', 'error'],
        rep.errors.map((e) => [e.method, ratioLabel(e.ratio), e.task, String(e.examples), e.message.replace(/\|/g, '\\|').replace(/\n/g, ' ')]),
        5,
      ),
      '',
    );
  }
  if (meta.notes.length) {
    out.push('## Notes', '');
    for (const n of meta.notes) out.push(`- ${n}`);
    out.push('');
  }
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Plots

/** Method colours (green and grey are kept for full and none). */
const SERIES_COLORS = ['#1f77b4', '#d62728', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22'];

interface PlotSpec {
  file: string;
  series: Series[];
  opts: { title: string; xLabel: string; yLabel: string; logY?: boolean };
}

/** Whether positive values span more than a factor of 4 (then a log axis reads better). */
function wideRange(values: number[]): boolean {
  const v = values.filter((x) => Number.isFinite(x) && x > 0);
  return v.length > 1 && Math.max(...v) / Math.min(...v) > 4;
}

/** Quality vs ratio per task; latency and KV bytes vs context length. */
export function plotSpecs(rep: EvalReport): PlotSpec[] {
  const specs: PlotSpec[] = [];
  const { results } = rep;
  for (const t of rep.meta.tasks) {
    const { metric } = PRIMARY_METRIC[t.name];
    const rows = results.filter((r) => r.task === t.name && r.metric === metric && r.group === 'all');
    if (!rows.length) continue;
    const ratios = [...new Set(rows.map((r) => r.ratio).filter((r): r is number => r !== null))].sort((a, b) => a - b);
    const xs = ratios.length ? [ratios[0]!, ratios[ratios.length - 1]!] : [4, 8];
    if (xs[0] === xs[1]) xs[1] = xs[0]! * 2;
    const series: Series[] = [];
    for (const base of ['full', 'none']) {
      const r = rows.find((x) => x.method === base);
      if (r) series.push({ name: base, points: xs.map((x) => [x, r.value] as [number, number]), dashed: true, color: base === 'full' ? '#2ca02c' : '#7f7f7f' });
    }
    for (const [i, m] of [...new Set(rows.filter((r) => r.ratio !== null).map((r) => r.method))].entries()) {
      series.push({
        name: m,
        color: SERIES_COLORS[i % SERIES_COLORS.length],
        points: rows
          .filter((r) => r.method === m && r.ratio !== null)
          .map((r) => [r.ratio!, r.value] as [number, number])
          .sort((a, b) => a[0] - b[0]),
      });
    }
    specs.push({
      file: `quality-${t.name}`,
      series,
      opts: {
        title: `${t.name}: ${metricName(metric)} vs compression ratio`,
        xLabel: 'compression ratio (context tokens / soft tokens)',
        yLabel: metricName(metric),
        logY: metric === 'ppl' && wideRange(rows.map((r) => r.value)),
      },
    });
  }
  // Latency vs context length: the task with the widest range of lengths.
  const lengthTask = ['needle', 'reconstruct'].find((t) => rep.latency.some((l) => l.task === t && l.group.startsWith('len=')));
  if (lengthTask) {
    const lat = rep.latency.filter((l) => l.task === lengthTask && l.group.startsWith('len='));
    const keys = methodOrder(lat);
    const seriesOf = (f: (l: LatencyRow) => number) =>
      keys.map(({ method, ratio }, i) => ({
        name: methodKey(method, ratio),
        color: method === 'full' ? '#2ca02c' : method === 'none' ? '#7f7f7f' : SERIES_COLORS[i % SERIES_COLORS.length],
        points: lat
          .filter((l) => l.method === method && l.ratio === ratio)
          .map((l) => [Number(l.group.slice(4)), f(l)] as [number, number])
          .sort((a, b) => a[0] - b[0]),
      }));
    specs.push({
      file: 'latency-vs-length',
      series: seriesOf((l) => l.endToEndMs),
      opts: {
        title: `end-to-end latency per context (${lengthTask})`,
        xLabel: 'context tokens',
        yLabel: 'ms per context',
        logY: wideRange(lat.map((l) => l.endToEndMs)),
      },
    });
    specs.push({
      file: 'kv-vs-length',
      series: seriesOf((l) => l.contextKvBytes / 1024),
      opts: {
        title: `decoder KV cache per context (${lengthTask})`,
        xLabel: 'context tokens',
        yLabel: 'KiB',
        logY: wideRange(lat.map((l) => l.contextKvBytes)),
      },
    });
  }
  return specs;
}

function writeAtomic(path: string, data: string | Uint8Array): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

/**
 * Writes results.json, report.md, predictions.jsonl and plots/ (SVG, and PNG unless png is
 * false) into outDir; returns the report with its plot list.
 */
export function writeReport(outDir: string, rep: Omit<EvalReport, 'plots'>, predictions: Prediction[] = [], opts: { png?: boolean } = {}): EvalReport {
  mkdirSync(join(outDir, 'plots'), { recursive: true });
  const full: EvalReport = { ...rep, meta: { ...rep.meta, notes: [...rep.meta.notes] }, plots: [] };
  const specs = plotSpecs(full);
  if (specs.length)
    full.meta.notes.push(
      opts.png === false
        ? 'Plots as SVG only (PNG switched off).'
        : 'Plots as SVG, and as PNG rendered by the built-in rasterizer (src/eval/png.ts: no browser, no dependency).',
    );
  for (const spec of specs) {
    writeAtomic(join(outDir, 'plots', `${spec.file}.svg`), linePlotSvg(spec.series, spec.opts));
    full.plots.push(`plots/${spec.file}.svg`);
    if (opts.png !== false) {
      try {
        writeAtomic(join(outDir, 'plots', `${spec.file}.png`), linePlotPng(spec.series, spec.opts));
        full.plots.push(`plots/${spec.file}.png`);
      } catch (e) {
        full.meta.notes.push(`PNG of ${spec.file} not written: ${(e as Error).message}`);
      }
    }
  }
  writeAtomic(join(outDir, 'results.json'), JSON.stringify(full, null, 2) + '\n');
  writeAtomic(join(outDir, 'report.md'), reportMarkdown(full));
  writeAtomic(join(outDir, 'predictions.jsonl'), predictions.map((p) => JSON.stringify(p)).join('\n') + (predictions.length ? '\n' : ''));
  return full;
}

export type { EvalRun };
