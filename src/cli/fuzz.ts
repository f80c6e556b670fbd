/**
 * softpress fuzz [--cases N] [--parsers a,b] [--seed S] [--workers 2] [--timeout-ms MS] [--save DIR] [--json]
 * softpress fuzz --replay NAME:INDEX [--seed S]
 *
 * Seeded mutations of real small files fed to every parser a user can feed (src/cli/fuzz/):
 * safetensors, GGUF and a GGUF's tokenizer, llama2.c checkpoints and tokenizers, tokenizer.json
 * through both loaders, .softctx (alone and against the base it names), chat templates, the
 * server's JSON bodies. N cases per parser, run in long-lived worker processes in batches, each
 * case under a limit of its worker's CPU time (runner.ts): a case that does not finish in time is
 * a hang (its worker is replaced), a worker that dies
 * or a parser that throws a raw error (TypeError & co., or an error that does not name the file)
 * is a crash. Prints a table (cases, clean errors, accepted, crashes, hangs, peak memory); with
 * --json the last line is {"parsers":{"<name>":{"cases","clean_errors","accepted","crashes","hangs","peak_mb","seconds"}}}.
 * --replay runs one case in this process and prints what happened (the same input as in the run
 * with the same seed); --save DIR writes the inputs of crashing cases there.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { numberOpt } from './args.js';
import { TARGETS } from './fuzz/target.js';
import { runTarget, type TargetResult } from './fuzz/runner.js';

const USAGE =
  'usage: softpress fuzz [--cases 200] [--parsers NAME,..] [--seed 1] [--workers 2] [--timeout-ms MS] [--save DIR] [--json]\n' +
  '       softpress fuzz --replay NAME:INDEX [--seed 1] [--save DIR]\n' +
  `parsers: ${Object.keys(TARGETS).join(', ')}`;

async function replay(spec: string, seed: number, save: string | undefined): Promise<void> {
  const [name, idx] = spec.split(':');
  if (!TARGETS[name] || !/^\d+$/.test(idx ?? ''))
    throw new Error(`--replay must be NAME:INDEX with NAME one of ${Object.keys(TARGETS).join(', ')}, got '${spec}'`);
  const { runCase } = await import('./fuzz/worker.js');
  const tmp = mkdtempSync(join(tmpdir(), 'softpress-fuzz-'));
  try {
    const target = await TARGETS[name].load();
    const p = await target.prepare(tmp);
    const t0 = performance.now();
    const r = await runCase(p, name, seed, Number(idx));
    process.stdout.write(`${name} #${idx} (seed ${seed}): ${r.outcome} in ${Math.round(performance.now() - t0)} ms${r.detail ? `\n  ${r.detail}` : ''}\n`);
    if (save && r.input !== undefined) {
      mkdirSync(save, { recursive: true });
      const file = join(save, `${name}-${seed}-${idx}.bin`);
      writeFileSync(file, p.bytes(r.input));
      process.stdout.write(`input written to ${file}\n`);
    }
    await p.close?.();
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      cases: { type: 'string' },
      parsers: { type: 'string' },
      seed: { type: 'string' },
      workers: { type: 'string' },
      'timeout-ms': { type: 'string' },
      save: { type: 'string' },
      replay: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const seed = numberOpt('seed', values.seed, { integer: true, min: 0 }) ?? 1;
  if (values.replay) return replay(values.replay, seed, values.save);
  const cases = numberOpt('cases', values.cases, { integer: true, min: 1 }) ?? 200;
  const workers = numberOpt('workers', values.workers, { integer: true, min: 1, max: 64 }) ?? 2;
  const timeoutOverride = numberOpt('timeout-ms', values['timeout-ms'], { integer: true, min: 100 });
  const names = values.parsers ? values.parsers.split(',').map((s) => s.trim()) : Object.keys(TARGETS);
  for (const n of names) if (!TARGETS[n]) throw new Error(`unknown parser '${n}'\n${USAGE}`);
  if (values.save) mkdirSync(values.save, { recursive: true });

  const say = (line: string) => process.stderr.write(`fuzz: ${line}\n`);
  const results: TargetResult[] = [];
  for (const name of names) {
    const target = await TARGETS[name].load();
    const timeoutMs = timeoutOverride ?? target.timeoutMs;
    let last = performance.now();
    const r = await runTarget(name, {
      cases,
      seed,
      workers,
      timeoutMs,
      save: values.save,
      onProgress: (done, p) => {
        if (performance.now() - last > 10_000) {
          last = performance.now();
          say(`${name}: ${done}/${cases} (${p.crashes} crashes, ${p.hangs} hangs)`);
        }
      },
    });
    results.push(r);
    say(
      `${name}: ${r.cases} cases in ${r.seconds} s: ${r.clean_errors} clean errors, ${r.accepted} accepted, ${r.crashes} crashes, ${r.hangs} hangs, peak ${r.peak_mb} MiB`,
    );
    for (const e of r.examples) say(`  ${name} ${e}`);
  }

  const out = process.stdout;
  out.write(`softpress fuzz (seed ${seed}, ${cases} cases per parser, ${workers} workers)\n`);
  const head = ['parser', 'cases', 'clean errors', 'accepted', 'crashes', 'hangs', 'peak MiB', 'seconds'];
  const rows = results.map((r) => [r.name, r.cases, r.clean_errors, r.accepted, r.crashes, r.hangs, r.peak_mb, r.seconds].map(String));
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => `  ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')}\n`;
  out.write(line(head));
  for (const row of rows) out.write(line(row));
  if (values.json) {
    const parsers: Record<string, { cases: number; clean_errors: number; accepted: number; crashes: number; hangs: number; peak_mb: number; seconds: number }> =
      {};
    for (const r of results)
      parsers[r.name] = {
        cases: r.cases,
        clean_errors: r.clean_errors,
        accepted: r.accepted,
        crashes: r.crashes,
        hangs: r.hangs,
        peak_mb: r.peak_mb,
        seconds: r.seconds,
      };
    out.write(JSON.stringify({ parsers }) + '\n');
  }
  if (results.some((r) => r.crashes > 0 || r.hangs > 0)) process.exitCode = 1;
}
