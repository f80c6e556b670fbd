/**
 * Data parallelism over c10d/Gloo. The binding between processes on loopback: allreduce (sum,
 * avg, max), broadcast, barrier; a peer that dies and a peer that hangs become DistErrors naming
 * the operation and the rank, and a rendezvous nobody joins times out. Then `softpress train
 * --nproc 2` on the tiny base against one process on the same global batches (ICAE, autoencoding
 * and QA, so the shards count different numbers of tokens, two micro-batches per step): the same
 * losses, gradient norms, learning rates and final weights within float rounding; a run stopped
 * with 2 processes resumes with 1 and one stopped with 1 resumes with 2, both ending where the
 * uninterrupted run does; `pretrain --nproc 2` against one process likewise; and a killed worker
 * makes the launcher stop the other and exit non-zero.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';

import { tidy } from '../src/tensor/index.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { rawToTensor, saveModel } from '../src/models/load.js';
import { loadMobyDick } from '../src/data/corpora.js';
import { shardRange } from '../src/data/shard.js';
import { distPlan } from '../src/cli/launch.js';
import { main } from '../src/cli/main.js';
import { TOKENIZER_PATH, tinyBase } from './helpers/tiny.js';
import { maxDiff } from './helpers/close.js';
import { waitFor } from './helpers/wait.js';
import { writeConfig, writeCorpus } from './helpers/run-dir.js';

const BIN = path.resolve('bin/softpress.js');
const TENSOR = path.resolve('dist/src/tensor/index.js');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-dist-'));
const baseDir = path.join(root, 'base');
const corpus = path.join(root, 'corpus.txt');

test.before(() => {
  const { model } = tinyBase();
  saveModel(model, baseDir);
  fs.copyFileSync(TOKENIZER_PATH, path.join(baseDir, 'tokenizer.json'));
  fs.writeFileSync(
    corpus,
    loadMobyDick()
      .slice(1, 25)
      .map((d) => d.text.slice(0, 3000))
      .join('\n\f\n'),
  );
});
test.after(() => fs.rmSync(root, { recursive: true, force: true }));

// ---- the binding, between processes ---------------------------------------------------------

/** A worker of a 2-process group: joins, runs `scenario`, prints one JSON line. */
const WORKER = `
import { ProcessGroup, tensor } from ${JSON.stringify(TENSOR)};
const [rank, size, port, scenario, timeoutMs, joinTimeoutMs] = process.argv.slice(2).map((x, i) => (i === 3 ? x : Number(x)));
const out = {};
try {
  const g = ProcessGroup.init({ rank, worldSize: size, master: '127.0.0.1:' + port, timeoutMs, joinTimeoutMs });
  const x = tensor([rank + 1, 10 * (rank + 1), -rank], [3]);
  g.allreduce(x, 'sum');
  out.sum = Array.from(x.toArray());
  const y = tensor([rank + 1, 3], [2]);
  g.allreduce(y, 'avg');
  out.avg = Array.from(y.toArray());
  const z = [tensor([rank, -rank], [2], { dtype: 'int64' }), tensor([2.5 * rank], [1], { dtype: 'float64' })];
  g.allreduce(z, 'max');
  out.max = z.map((t) => Array.from(t.toArray(), Number));
  const b = tensor([100 + rank, 200 + rank], [2]);
  g.broadcast(b, 1);
  out.broadcast = Array.from(b.toArray());
  g.barrier();
  if (scenario === 'die' && rank === 1) process.exit(3);
  if (scenario === 'hang' && rank === 1) await new Promise((r) => setTimeout(r, 3 * timeoutMs));
  if (scenario !== 'ok') {
    const t0 = Date.now();
    try {
      g.allreduce(x);
    } catch (e) {
      out.error = { name: e.name, op: e.op, rank: e.rank, message: e.message, ms: Date.now() - t0 };
    }
  }
  g.destroy();
} catch (e) {
  out.error = { name: e.name, op: e.op, rank: e.rank, message: e.message };
}
console.log(JSON.stringify(out));
`;

interface WorkerOut {
  sum?: number[];
  avg?: number[];
  max?: number[][];
  broadcast?: number[];
  error?: { name: string; op: string; rank: number; message: string; ms?: number };
}

let port = 29600 + (process.pid % 300) * 2;
/** Runs `size` workers of the scenario (ranks listed in `ranks`, default all) and returns their outputs by rank. */
async function group(scenario: string, opts: { timeoutMs?: number; joinTimeoutMs?: number; size?: number; ranks?: number[] } = {}): Promise<WorkerOut[]> {
  const size = opts.size ?? 2;
  const p = port++;
  const script = path.join(root, 'worker.mjs');
  fs.writeFileSync(script, WORKER);
  const runs = (opts.ranks ?? Array.from({ length: size }, (_, r) => r)).map(
    (rank) =>
      new Promise<WorkerOut>((resolve, reject) => {
        const c = spawn(
          process.execPath,
          [script, String(rank), String(size), String(p), scenario, String(opts.timeoutMs ?? 20_000), String(opts.joinTimeoutMs ?? 30_000)],
          { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOFTPRESS_THREADS: '1' } },
        );
        let stdout = '';
        let stderr = '';
        c.stdout.on('data', (d) => (stdout += d));
        c.stderr.on('data', (d) => (stderr += d));
        c.on('exit', (code) => {
          const line = stdout.trim().split('\n').pop();
          if (line?.startsWith('{')) resolve(JSON.parse(line) as WorkerOut);
          else if (scenario === 'die' && rank === 1 && code === 3) resolve({});
          else reject(new Error(`rank ${rank} exited ${code} without a result:\n${stderr}`));
        });
      }),
  );
  return Promise.all(runs);
}

test('process group: allreduce sum/avg/max, broadcast, barrier between two processes', async () => {
  const [a, b] = await group('ok');
  for (const r of [a, b]) {
    assert.equal(r.error, undefined, r.error?.message);
    assert.deepEqual(r.sum, [3, 30, -1]);
    assert.deepEqual(r.avg, [1.5, 3]);
    assert.deepEqual(r.max, [[1, 0], [2.5]]);
    assert.deepEqual(r.broadcast, [101, 201]);
  }
});

test('process group: a peer that dies is an error naming the operation and the rank, at once', async () => {
  const [a] = await group('die');
  assert.equal(a.error?.name, 'DistError');
  assert.equal(a.error?.op, 'allreduce');
  assert.equal(a.error?.rank, 0);
  assert.match(a.error!.message, /^c10d allreduce \(rank 0 of 2\): .*(closed|reset|peer)/i);
  assert.ok(a.error!.ms! < 10_000, `noticed after ${a.error!.ms} ms`);
});

test('process group: a peer that hangs times out; a rendezvous nobody joins times out', async () => {
  const [a] = await group('hang', { timeoutMs: 1500 });
  assert.equal(a.error?.op, 'allreduce');
  assert.match(a.error!.message, /^c10d allreduce \(rank 0 of 2\): .*timed out/i);
  assert.ok(a.error!.ms! >= 1000 && a.error!.ms! < 10_000, `timed out after ${a.error!.ms} ms`);
  const [lonely] = await group('ok', { joinTimeoutMs: 1500, ranks: [1] });
  assert.equal(lonely.error?.name, 'DistError');
  assert.equal(lonely.error?.op, 'init');
  assert.match(lonely.error!.message, /^c10d init \(rank 1 of 2\): /);
});

test('shards cover every row once; the data-parallel flags are checked', () => {
  for (const n of [2, 3, 4, 7]) {
    for (const count of [1, 2, 3]) {
      if (n < count) continue;
      const rows = Array.from({ length: count }, (_, index) => shardRange(n, { index, count }));
      assert.equal(rows[0][0], 0);
      assert.equal(rows[count - 1][1], n);
      for (let i = 1; i < count; i++) assert.equal(rows[i][0], rows[i - 1][1]);
      for (const [s, e] of rows) assert.ok(e > s);
    }
  }
  assert.throws(() => shardRange(1, { index: 0, count: 2 }), /batch of 1 rows cannot be shared by 2 ranks/);
  assert.deepEqual(distPlan({}), { kind: 'single' });
  assert.deepEqual(distPlan({ nproc: '1' }), { kind: 'single' });
  assert.deepEqual(distPlan({ nproc: '3' }), { kind: 'launch', nproc: 3 });
  assert.deepEqual(distPlan({ rank: '1', 'world-size': '2', master: '10.0.0.1:29500', 'dist-timeout': '5' }), {
    kind: 'join',
    rank: 1,
    worldSize: 2,
    master: '10.0.0.1:29500',
    timeoutMs: 5000,
  });
  assert.throws(() => distPlan({ rank: '2', 'world-size': '2', master: '10.0.0.1:29500' }), /--rank must be an integer >= 0 <= 1/);
  assert.throws(() => distPlan({ rank: '0', 'world-size': '2' }), /needs all of --rank R --world-size W --master ADDR:PORT/);
  assert.throws(() => distPlan({ rank: '0', 'world-size': '2', master: 'nohost' }), /--master must be ADDR:PORT/);
  assert.throws(() => distPlan({ nproc: '2', rank: '0' }), /--nproc starts local workers itself/);
});

// ---- softpress train --nproc 2 ---------------------------------------------------------------

const TRAIN = [
  '--corpora',
  'none',
  '--batch',
  '4',
  '--accum',
  '2',
  '--context-len',
  '32',
  '--continuation-len',
  '16',
  '--lr',
  '1e-2',
  '--eval-every',
  '2',
  '--checkpoint-every',
  '2',
  '--method',
  'icae',
  '--ratio',
  '4',
  '--stage',
  'ae:0.5,qa:0.5',
  '--qa-examples',
  '16',
  '--method-option',
  'maxSlots=32',
  '--method-option',
  'loraRank=4',
  '--method-option',
  'loraDropout=0',
  '--steps',
  '4',
  '--quiet',
];
const trainArgs = (out: string, ...more: string[]) => ['train', '--base', baseDir, '--data', corpus, ...TRAIN, '--out', out, ...more];

/** softpress in a child process (the launcher must be the real entry point). */
function spawnCli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, SOFTPRESS_THREADS: '1' }, timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** One process, in this one (libtorch is loaded already). */
async function inProcess(args: string[]): Promise<number> {
  const before = process.exitCode;
  process.exitCode = 0;
  const write = process.stdout.write;
  // Text is dropped; the test runner's own reports to its parent (binary) pass on.
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: unknown[]) =>
    typeof chunk === 'string' ? true : (write as (...a: unknown[]) => boolean).call(process.stdout, chunk, ...rest)) as typeof process.stdout.write;
  try {
    await main(args);
  } finally {
    process.stdout.write = write;
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = before;
  return code;
}

type Row = Record<string, number>;
const logRows = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Row);

/** Largest difference between two runs' final weights (a file of each run folder). */
function weightsDiff(a: string, b: string, file = 'weights.safetensors'): number {
  const ta = readSafetensors(path.join(a, file)).tensors;
  const tb = readSafetensors(path.join(b, file)).tensors;
  assert.deepEqual([...ta.keys()].sort(), [...tb.keys()].sort());
  let d = 0;
  for (const [name, raw] of ta)
    d = Math.max(
      d,
      tidy(() => maxDiff(rawToTensor(raw, name), rawToTensor(tb.get(name)!, name))),
    );
  return d;
}

/** Same losses, gradient norms, learning rates and validation losses step by step (relative tolerance). */
function assertSameLog(a: Row[], b: Row[], what: string): void {
  assert.equal(a.length, b.length, `${what}: ${a.length} vs ${b.length} log rows`);
  a.forEach((ra, i) => {
    const rb = b[i];
    assert.equal(rb.step, ra.step, what);
    for (const k of ['loss', 'grad_norm', 'lr', 'valid_loss', 'valid_ae_loss', 'valid_qa_loss']) {
      if (ra[k] === undefined) continue;
      assert.ok(Math.abs(ra[k] - rb[k]) <= 1e-4 * Math.max(1, Math.abs(ra[k])), `${what}: step ${ra.step} ${k} ${ra[k]} vs ${rb[k]}`);
    }
  });
}

// Float rounding differs between one process and two (sums in other orders): a few 1e-7 after
// four AdamW steps at lr 1e-2 here; the learned values are of order 1e-2..1.
const WEIGHT_TOL = 1e-4;

test('train --nproc 2 matches one process on the same global batches; resume across world sizes', async () => {
  const one = path.join(root, 'one');
  assert.equal(await inProcess(trainArgs(one)), 0);
  const rowsOne = logRows(one);
  assert.equal(rowsOne.filter((r) => r.loss !== undefined).length, 4);
  // The run is not trivial: the weights moved and the shards saw different token counts (QA).
  assert.ok(rowsOne.every((r) => r.loss === undefined || r.grad_norm > 0));

  const two = path.join(root, 'two');
  const r2 = spawnCli([...trainArgs(two), '--nproc', '2']);
  assert.equal(r2.code, 0, r2.stderr);
  assert.match(r2.stdout, /^trained icae to step 4\/4 /m);
  assert.equal(r2.stdout.trim().split('\n').length, 1, 'rank 0 alone prints the result');
  const rowsTwo = logRows(two);
  assertSameLog(rowsOne, rowsTwo, '1 vs 2 processes');
  assert.ok(
    rowsTwo.filter((r) => r.loss !== undefined).every((r) => r.comm_s >= 0),
    'the log has the averaging time',
  );
  const d = weightsDiff(one, two);
  process.stderr.write(`# 1 vs 2 processes: max abs weight diff ${d}\n`);
  assert.ok(d <= WEIGHT_TOL, `weights of 1 vs 2 processes differ by ${d}`);
  // Rank 0 alone wrote the run folder: no second log, checkpoint or card elsewhere to compare.
  for (const f of ['compressor.json', 'README.md', 'loss.svg', 'references.json', 'checkpoint']) assert.ok(fs.existsSync(path.join(two, f)), f);

  // Stopped with 2 processes after 2 steps, resumed with 1.
  const twoThenOne = path.join(root, 'two-then-one');
  const s2 = spawnCli([...trainArgs(twoThenOne, '--stop-after', '2'), '--nproc', '2']);
  assert.equal(s2.code, 0, s2.stderr);
  assert.match(s2.stdout, /^stopped icae to step 2\/4/m);
  assert.equal(await inProcess(trainArgs(twoThenOne, '--resume')), 0);
  assertSameLog(rowsOne, logRows(twoThenOne), '2 then 1 processes');
  assert.ok(weightsDiff(one, twoThenOne) <= WEIGHT_TOL);

  // Stopped with 1 process, resumed with 2: rank 1 has no checkpoint of its own, rank 0 sends it.
  const oneThenTwo = path.join(root, 'one-then-two');
  assert.equal(await inProcess(trainArgs(oneThenTwo, '--stop-after', '2')), 0);
  const r12 = spawnCli([...trainArgs(oneThenTwo, '--resume'), '--nproc', '2']);
  assert.equal(r12.code, 0, r12.stderr);
  assertSameLog(rowsOne, logRows(oneThenTwo), '1 then 2 processes');
  assert.ok(weightsDiff(one, oneThenTwo) <= WEIGHT_TOL);
});

test('pretrain --nproc 2 matches one process', async () => {
  const dir = path.join(root, 'pretrain');
  fs.mkdirSync(dir);
  const config = writeConfig(dir, writeCorpus(dir));
  const one = path.join(dir, 'one');
  const two = path.join(dir, 'two');
  assert.equal(await inProcess(['pretrain', '--config', config, '--out', one, '--quiet']), 0);
  const r = spawnCli(['pretrain', '--config', config, '--out', two, '--quiet', '--nproc', '2']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^finished at step 8\/8/);
  assertSameLog(logRows(one), logRows(two), 'pretrain 1 vs 2 processes');
  // The checkpoint holds the fp32 weights (the exported model is fp16).
  const d = weightsDiff(one, two, 'checkpoint/params.safetensors');
  process.stderr.write(`# pretrain 1 vs 2 processes: max abs weight diff ${d}\n`);
  assert.ok(d <= WEIGHT_TOL, `pretrained weights of 1 vs 2 processes differ by ${d}`);
  assert.ok(fs.existsSync(path.join(two, 'model', 'model.safetensors')));
});

/** The pids of a process's children (Linux). */
function childPids(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
const alive = (pid: number) => fs.existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));

test('a killed worker stops the others and the launcher exits non-zero', async () => {
  const out = path.join(root, 'killed');
  const launcher = spawn(process.execPath, [BIN, ...trainArgs(out, '--steps', '400', '--eval-every', '1000'), '--nproc', '2'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, SOFTPRESS_THREADS: '1' },
  });
  let stderr = '';
  launcher.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => launcher.on('exit', (code) => resolve(code)));
  // Training has started once rank 0 logged a step.
  await waitFor(
    () => fs.existsSync(path.join(out, 'log.jsonl')) && fs.readFileSync(path.join(out, 'log.jsonl'), 'utf8').length > 0,
    () => `a first step\n${stderr}`,
    { timeoutMs: 60_000, everyMs: 50 },
  );
  const workers = childPids(launcher.pid!);
  assert.equal(workers.length, 2, `the launcher's workers: ${workers.join(', ')}`);
  const rankOf = (pid: number) => /--rank\0(\d+)\0/.exec(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'))?.[1];
  const victim = workers.find((p) => rankOf(p) === '1')!;
  const survivor = workers.find((p) => rankOf(p) === '0')!;
  const t0 = performance.now();
  process.kill(victim, 'SIGKILL');
  const code = await exited;
  const seconds = (performance.now() - t0) / 1000;
  assert.notEqual(code, 0);
  assert.ok(seconds < 15, `the launcher took ${seconds.toFixed(1)} s to stop`);
  assert.match(stderr, /rank 1 was killed by SIGKILL; the other ranks were stopped/);
  await waitFor(() => !alive(survivor), 'rank 0 to be gone', { timeoutMs: 10_000, everyMs: 50 });
});
