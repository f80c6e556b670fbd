/**
 * softpress bench engine [--json] [--threads N] [--reps N]
 * softpress bench model --config S|M|smol [--json] ...   (src/cli/bench-model.ts)
 * softpress bench serve [--json] ...                (src/cli/bench-serve.ts)
 * softpress bench generate --model NAME|PATH [--json] ... (src/cli/bench-generate.ts)
 * softpress bench train [--nproc 1,2] [--json] ...        (src/cli/bench-train.ts)
 *
 * The engine benchmark (../shared/bench-spec.md): fp32 1024^3 matmul throughput and the per-op
 * cost of the binding (an add of two 8-element tensors called from TypeScript). Each figure is
 * the median of the timed repetitions after 3 warm-ups. With --json the last stdout line is one
 * JSON object.
 */
import { parseArgs } from 'node:util';
import { getNumThreads, randn, setNumThreads, tidy } from '../tensor/index.js';

const USAGE =
  'usage: softpress bench engine [--json] [--threads N] [--reps N]\n       softpress bench model --config S|M|smol [--json] [--threads N] [--reps N]\n' +
  '       softpress bench serve [--json] [--base DIR | --random-base] [--clients 1,8] [--seconds 5] [--lengths 512,1024,2048] [--ratios 4,8]\n' +
  '       softpress bench serve --soak [--requests 10000] [--clients 8] [--kills N] [--method truncate] [--json]\n' +
  '       softpress bench generate --model NAME|PATH [--json] [--threads 2] [--prompt-tokens 512] [--gen-tokens 128] [--reps 3] [--profile]\n' +
  '       softpress bench train [--nproc 1,2] [--json] [--base models/softpress-base] [--method icae] [--steps 8] [--batch 8] [--context-len 256]';
const WARMUPS = 3;

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Seconds per call of fn: median over reps timed calls after the warm-ups. */
export function timeMedian(reps: number, fn: () => void): number {
  for (let i = 0; i < WARMUPS; i++) fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    times.push((performance.now() - t0) / 1000);
  }
  return median(times);
}

function positiveInt(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got '${v}'`);
  return n;
}

export interface EngineResult {
  bench: 'engine';
  threads: number;
  matmul_gflops: number;
  op_overhead_us: number;
}

/** The engine figures: matmul GFLOP/s (fp32 n^3) and microseconds per tiny op. */
export function benchEngine(opts: { reps?: number; matmulSize?: number; batch?: number } = {}): EngineResult {
  const reps = opts.reps ?? 10;
  const n = opts.matmulSize ?? 1024;
  const batch = opts.batch ?? 1000;
  const matmulSeconds = tidy(() => {
    const a = randn([n, n]);
    const b = randn([n, n]);
    return timeMedian(reps, () => a.matmul(b).free());
  });
  const opSeconds = tidy(() => {
    const x = randn([8]);
    const y = randn([8]);
    // one repetition = a batch of calls, each result freed at once
    return (
      timeMedian(Math.max(reps, 20), () => {
        for (let i = 0; i < batch; i++) x.add(y).free();
      }) / batch
    );
  });
  return {
    bench: 'engine',
    threads: getNumThreads(),
    matmul_gflops: (2 * n * n * n) / matmulSeconds / 1e9,
    op_overhead_us: opSeconds * 1e6,
  };
}

async function runEngine(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean', default: false },
      threads: { type: 'string' },
      reps: { type: 'string' },
    },
    strict: true,
  });
  setNumThreads(positiveInt('threads', values.threads, 2));
  const reps = positiveInt('reps', values.reps, 10);
  const r = benchEngine({ reps });
  const out = process.stdout;
  out.write(`softpress bench engine (${r.threads} threads, median of ${reps} reps after ${WARMUPS} warm-ups)\n`);
  out.write(`  matmul fp32 1024x1024x1024   ${r.matmul_gflops.toFixed(1)} GFLOP/s\n`);
  out.write(`  op overhead (add, 8 elems)   ${r.op_overhead_us.toFixed(2)} us/op\n`);
  if (values.json) {
    const rounded = { ...r, matmul_gflops: Number(r.matmul_gflops.toFixed(2)), op_overhead_us: Number(r.op_overhead_us.toFixed(3)) };
    out.write(JSON.stringify(rounded) + '\n');
  }
}

export async function run(argv: string[]): Promise<void> {
  const [which, ...rest] = argv;
  switch (which) {
    case 'engine':
      return runEngine(rest);
    case 'model': {
      const m = await import('./bench-model.js');
      return m.run(rest);
    }
    case 'serve': {
      const m = await import('./bench-serve.js');
      return m.run(rest);
    }
    case 'generate': {
      const m = await import('./bench-generate.js');
      return m.run(rest);
    }
    case 'train': {
      const m = await import('./bench-train.js');
      return m.run(rest);
    }
    case undefined:
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return;
    default:
      throw new Error(`unknown benchmark '${which}'\n${USAGE}`);
  }
}
