/**
 * The papers' claims that one run of the suite can test (../shared/papers/*.md), each judged on
 * that run's results: GMSA reconstructs better than ICAE at every length and ratio; ComprExIT
 * answers questions better than ICAE and mean-pool, and compresses at least twice as fast as
 * ICAE. CCF's claim (below a sliding window of the same memory) is measured by stream-eval.
 */
import type { LatencyRow, ResultRow } from './harness.js';
import type { RunMeta } from './report.js';

export interface Claim {
  paper: 'GMSA' | 'ComprExIT' | 'CCF';
  claim: string;
  verdict: 'holds' | 'does not hold' | 'not tested here';
  /** The figures compared (or what is missing to compare them). */
  evidence: string;
}

type Run = { meta: Pick<RunMeta, 'methods'>; results: ResultRow[]; latency: LatencyRow[] };

const num = (v: number) => v.toFixed(3);

/** Labels of the evaluated methods made by one compressor method (usually one label). */
function labelsOf(run: Run, method: string): string[] {
  return run.meta.methods.filter((m) => m.method === method).map((m) => m.label);
}

function value(run: Run, task: string, method: string, ratio: number, metric: string, group = 'all'): number | undefined {
  return run.results.find((r) => r.task === task && r.method === method && r.ratio === ratio && r.metric === metric && r.group === group)?.value;
}

function ratiosOf(run: Run, label: string): number[] {
  return (run.meta.methods.find((m) => m.label === label)?.ratios ?? []).filter((r): r is number => r !== null);
}

function verdict(comparisons: boolean[]): Claim['verdict'] {
  if (!comparisons.length) return 'not tested here';
  return comparisons.every(Boolean) ? 'holds' : 'does not hold';
}

function gmsaReconstruction(run: Run): Claim {
  const claim = 'GMSA above ICAE in reconstruction (BLEU-4) at every length and ratio';
  const checks: boolean[] = [];
  const shown: string[] = [];
  for (const g of labelsOf(run, 'gmsa'))
    for (const i of labelsOf(run, 'icae'))
      for (const ratio of ratiosOf(run, g).filter((r) => ratiosOf(run, i).includes(r))) {
        const groups = [
          ...new Set(
            run.results.filter((r) => r.task === 'reconstruct' && r.method === g && r.ratio === ratio && r.group.startsWith('len=')).map((r) => r.group),
          ),
        ];
        for (const group of groups.length ? groups : ['all']) {
          const a = value(run, 'reconstruct', g, ratio, 'bleu4', group);
          const b = value(run, 'reconstruct', i, ratio, 'bleu4', group);
          if (a === undefined || b === undefined) continue;
          checks.push(a > b);
          shown.push(`${ratio}x ${group.replace('len=', '')} tokens: ${num(a)} vs ${num(b)}`);
        }
      }
  return {
    paper: 'GMSA',
    claim,
    verdict: verdict(checks),
    evidence: shown.length ? `GMSA vs ICAE — ${shown.join('; ')}` : 'needs gmsa and icae on reconstruct at a common ratio',
  };
}

function comprexitQa(run: Run): Claim {
  const claim = 'ComprExIT above ICAE and mean-pool on question answering (bAbI EM, prose QA F1)';
  const checks: boolean[] = [];
  const shown: string[] = [];
  const tasks = [
    ['babi', 'em', 'bAbI EM'],
    ['qa', 'f1', 'QA F1'],
  ] as const;
  for (const c of labelsOf(run, 'comprexit'))
    for (const [task, metric, name] of tasks)
      for (const ratio of ratiosOf(run, c)) {
        const mine = value(run, task, c, ratio, metric);
        if (mine === undefined) continue;
        const others = [...labelsOf(run, 'icae'), ...labelsOf(run, 'meanpool')]
          .map((o) => ({ o, v: value(run, task, o, ratio, metric) }))
          .filter((x): x is { o: string; v: number } => x.v !== undefined);
        if (!others.length) continue;
        checks.push(others.every((x) => mine > x.v));
        shown.push(`${name} ${ratio}x: ${num(mine)} vs ${others.map((x) => `${x.o} ${num(x.v)}`).join(', ')}`);
      }
  return {
    paper: 'ComprExIT',
    claim,
    verdict: verdict(checks),
    evidence: shown.length ? shown.join('; ') : 'needs comprexit and icae or meanpool on babi or qa',
  };
}

function comprexitSpeed(run: Run): Claim {
  const claim = 'ComprExIT compresses at least 2x faster than ICAE';
  const speedups: { at: string; x: number }[] = [];
  for (const c of labelsOf(run, 'comprexit'))
    for (const i of labelsOf(run, 'icae'))
      for (const mine of run.latency.filter((l) => l.method === c && l.group === 'all' && l.ratio !== null)) {
        const theirs = run.latency.find((l) => l.method === i && l.group === 'all' && l.task === mine.task && l.ratio === mine.ratio);
        const a = mine.compressMsPerContext ?? mine.compressMs;
        const b = theirs ? (theirs.compressMsPerContext ?? theirs.compressMs) : undefined;
        if (b === undefined || !(a > 0)) continue;
        speedups.push({ at: `${mine.task} ${mine.ratio}x`, x: b / a });
      }
  if (!speedups.length)
    return { paper: 'ComprExIT', claim, verdict: 'not tested here', evidence: 'needs comprexit and icae latency on a common task and ratio' };
  speedups.sort((p, q) => p.x - q.x);
  const list = speedups.map((s) => `${s.at} ${s.x.toFixed(2)}x`).join(', ');
  return { paper: 'ComprExIT', claim, verdict: verdict(speedups.map((s) => s.x >= 2)), evidence: `ICAE's compression ms per context / ComprExIT's: ${list}` };
}

/** Every claim, judged on this run (an untested one says what it needs). */
export function paperClaims(run: Run): Claim[] {
  return [
    gmsaReconstruction(run),
    comprexitQa(run),
    comprexitSpeed(run),
    {
      paper: 'CCF',
      claim: "below a sliding window's perplexity at the same memory",
      verdict: 'not tested here',
      evidence: '`softpress stream-eval` measures it: its `window (same memory)` rows against `ccf`',
    },
  ];
}
