/**
 * softpress bench train [--nproc 1,2] [--base models/softpress-base] [--method icae] [--steps 8]
 *   [--batch 8] [--context-len 256] [--json] [--keep DIR]
 *
 * Data-parallel training speed on this machine: the same short `softpress train` run (ICAE with
 * LoRA rank 8, autoencoding at ratio 4 on the base; no validation until the last step) once per
 * process count N, each process with cores / N threads — `--nproc 1,2` compares 1 process x 2
 * threads with 2 processes x 1 thread on two cores. Per run: the median step time (wall clock
 * between log rows, from the third step on: the first steps warm the allocator), tokens/s of
 * the global batch, the median time a step spends averaging gradients (comm_s in log.jsonl) and
 * waiting for the slowest rank to get there (wait_s), and the speed-up over the first N. With --json the last stdout
 * line is one JSON object.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { numberOpt } from './args.js';
import { median } from './bench.js';

export interface TrainBenchRun {
  nproc: number;
  threads: number;
  step_s: number;
  tok_s: number;
  comm_s: number;
  wait_s: number;
  speedup: number;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      nproc: { type: 'string', default: '1,2' },
      base: { type: 'string', default: 'models/softpress-base' },
      method: { type: 'string', default: 'icae' },
      steps: { type: 'string', default: '8' },
      batch: { type: 'string', default: '8' },
      'context-len': { type: 'string', default: '256' },
      json: { type: 'boolean', default: false },
      keep: { type: 'string' },
    },
    strict: true,
  });
  const counts = values.nproc.split(',').map((s) => numberOpt('nproc', s.trim(), { integer: true, min: 1 })!);
  const steps = numberOpt('steps', values.steps, { integer: true, min: 4 })!;
  const batch = numberOpt('batch', values.batch, { integer: true, min: Math.max(...counts) })!;
  const contextLen = numberOpt('context-len', values['context-len'], { integer: true, min: 8 })!;
  const cores = availableParallelism();
  const bin = fileURLToPath(new URL('../../../bin/softpress.js', import.meta.url));
  const root = values.keep ?? mkdtempSync(join(tmpdir(), 'softpress-bench-train-'));
  const say = (s: string) => process.stderr.write(s + '\n');
  const runs: TrainBenchRun[] = [];
  try {
    for (const n of counts) {
      const threads = Math.max(1, Math.floor(cores / n));
      const out = join(root, `nproc-${n}`);
      const args = [
        bin,
        'train',
        '--base',
        values.base,
        '--method',
        values.method,
        '--ratio',
        '4',
        '--stage',
        'ae',
        '--steps',
        String(steps),
        '--batch',
        String(batch),
        '--context-len',
        String(contextLen),
        '--continuation-len',
        '32',
        '--corpora',
        'sotu',
        '--eval-every',
        String(steps),
        '--valid-batches',
        '1',
        '--checkpoint-every',
        String(steps),
        '--out',
        out,
        '--quiet',
      ];
      if (values.method === 'icae') args.push('--method-option', 'loraRank=8', '--method-option', 'loraDropout=0');
      if (n > 1) args.push('--nproc', String(n));
      say(
        `bench train: ${n} process${n > 1 ? 'es' : ''} x ${threads} thread${threads > 1 ? 's' : ''} (${steps} steps of ${batch} x ${contextLen} tokens, ${values.method} on ${values.base})`,
      );
      const r = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, SOFTPRESS_THREADS: String(threads) } });
      if (r.status !== 0) throw new Error(`the run with ${n} process(es) failed:\n${r.stderr}`);
      const rows = readFileSync(join(out, 'log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, number>)
        .filter((x) => x.loss !== undefined);
      const times = rows.slice(2).map((x, i) => x.time - rows[i + 1].time);
      const stepS = median(times);
      const tokS = median(rows.slice(2).map((x) => x.tok_s));
      runs.push({
        nproc: n,
        threads,
        step_s: stepS,
        tok_s: tokS,
        comm_s: n > 1 ? median(rows.slice(2).map((x) => x.comm_s)) : 0,
        wait_s: n > 1 ? median(rows.slice(2).map((x) => x.wait_s)) : 0,
        speedup: runs.length ? runs[0].step_s / stepS : 1,
      });
    }
  } finally {
    if (!values.keep) rmSync(root, { recursive: true, force: true });
  }
  const out = process.stdout;
  out.write(`softpress bench train (${cores} cores, ${values.method} on ${values.base}, batch ${batch} x ${contextLen} tokens, median of steps 3..${steps})\n`);
  out.write('processes x threads   s/step   tokens/s   averaging s/step   waiting s/step   speed-up\n');
  for (const x of runs)
    out.write(
      `${`${x.nproc} x ${x.threads}`.padEnd(22)}${x.step_s.toFixed(3).padStart(6)}   ${x.tok_s.toFixed(0).padStart(8)}   ${x.comm_s.toFixed(4).padStart(16)}   ${x.wait_s.toFixed(4).padStart(14)}   ${x.speedup.toFixed(2).padStart(8)}\n`,
    );
  if (values.json) {
    const round = (v: number, d: number) => Number(v.toFixed(d));
    out.write(
      JSON.stringify({
        bench: 'train',
        cores,
        method: values.method,
        base: values.base,
        batch,
        contextLen,
        steps,
        runs: runs.map((x) => ({
          ...x,
          step_s: round(x.step_s, 4),
          tok_s: round(x.tok_s, 1),
          comm_s: round(x.comm_s, 5),
          wait_s: round(x.wait_s, 5),
          speedup: round(x.speedup, 3),
        })),
      }) + '\n',
    );
  }
}
