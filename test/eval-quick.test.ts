/**
 * The evaluation harness end to end on a tiny random model (saved to a temp folder with the
 * base model's tokenizer.json): the quick suite writes its report files with the expected result
 * keys; `--task babi --data <fixture file> --methods full,none --json` prints EM per task; the
 * task generators are deterministic and draw only from the test split; perplexity runs.
 * A CI smoke test: the quick suite must stay well under 3 minutes.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';

import { noGrad, tensor, tidy } from '../src/tensor/index.js';
import { loadModel, saveModel } from '../src/models/load.js';
import { createCompressor, saveCompressor } from '../src/compress/index.js';
import {
  answerText,
  babiFiles,
  buildTasks,
  documentPerplexity,
  evalDocuments,
  makeBabiTask,
  newlineTokens,
  ratiosFor,
  runEvaluation,
} from '../src/eval/index.js';
import { tinyBase as tinyBaseModel } from './helpers/tiny.js';

const TOKENIZER = resolve('models/softpress-base/tokenizer.json');
const BABI_FILE = resolve('../shared/fixtures/babi/en-10k/qa1_single-supporting-fact_train.txt');
const HAVE_TOKENIZER = existsSync(TOKENIZER);
const skip = HAVE_TOKENIZER ? false : 'needs models/softpress-base/tokenizer.json';

let dir: string | undefined;
/** A folder holding the tiny base (model and tokenizer). */
function tinyBase(): string {
  if (dir) return dir;
  dir = mkdtempSync(join(tmpdir(), 'softpress-eval-'));
  // The tiny base of the compressor tests with a window of 1,024 positions, as a model folder.
  saveModel(tinyBaseModel({ seed: 1, positions: 1024, embedStd: 0.5 }).model, join(dir, 'base'));
  copyFileSync(TOKENIZER, join(dir, 'base', 'tokenizer.json'));
  return dir;
}

test.after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function cli(args: string[]): { stdout: string; stderr: string; status: number | null; seconds: number } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['bin/softpress.js', 'eval', ...args], {
    encoding: 'utf8',
    timeout: 180_000,
    env: { ...process.env, SOFTPRESS_THREADS: '2' },
  });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status, seconds: (performance.now() - t0) / 1000 };
}

const RESULT_KEYS = ['task', 'method', 'ratio', 'metric', 'group', 'value', 'n', 'retention'];

test('softpress eval --suite quick writes report.md, results.json and plots (< 3 min)', { skip }, () => {
  const d = tinyBase();
  const out = join(d, 'quick');
  const r = cli(['--suite', 'quick', '--base', join(d, 'base'), '--out', out]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.seconds < 180, `quick suite took ${r.seconds.toFixed(0)} s`);
  for (const f of ['report.md', 'results.json', 'predictions.jsonl']) assert.ok(existsSync(join(out, f)), `${f} missing`);
  const plots = readdirSync(join(out, 'plots'));
  assert.ok(plots.includes('quality-needle.svg') && plots.includes('latency-vs-length.svg'), plots.join(', '));
  assert.ok(plots.some((p) => p.endsWith('.png')));
  const rep = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
  assert.deepEqual(Object.keys(rep).sort(), ['errors', 'latency', 'meta', 'plots', 'results']);
  assert.deepEqual(rep.errors, []);
  for (const row of rep.results) assert.deepEqual(Object.keys(row).sort(), [...RESULT_KEYS].sort());
  const tasks = new Set(rep.results.map((x: { task: string }) => x.task));
  for (const t of [
    'reconstruct',
    'continue',
    'needle',
    'cloze',
    ...(existsSync(BABI_FILE) ? ['babi'] : []),
    ...(existsSync('data/qa/prose-test.json') ? ['qa'] : []),
  ])
    assert.ok(tasks.has(t), `no results for ${t}`);
  const methods = new Set(rep.results.map((x: { method: string; ratio: number | null }) => `${x.method}@${x.ratio}`));
  assert.deepEqual([...methods].sort(), ['full@null', 'none@null', 'truncate@4', 'truncate@8']);
  // Retention is 1 for full and 0 for none wherever it is defined.
  for (const row of rep.results) if (row.method === 'full' && row.retention !== null) assert.ok(Math.abs(row.retention - 1) < 1e-9);
  for (const l of rep.latency) {
    for (const k of ['compressMs', 'prefillMs', 'generateMs', 'endToEndMs', 'contextKvBytes', 'kvBytes'])
      assert.ok(Number.isFinite(l[k]) && l[k] >= 0, `${k} of ${JSON.stringify(l)}`);
  }
  // KV bytes of the soft-token context: 2 * layers * kvHeads * headDim * 4 bytes * (1 + k) = 256 * (1 + k).
  const cont = rep.latency.find((l: { task: string; method: string; group: string }) => l.task === 'continue' && l.method === 'full' && l.group === 'all');
  assert.equal(cont.contextKvBytes, 256 * (1 + 512));
  const md = readFileSync(join(out, 'report.md'), 'utf8');
  assert.match(md, /## Summary/);
  assert.match(md, /## Latency and memory/);
  assert.match(md, /\| truncate \| 4 \|/);
  assert.match(md, /Passages come only from the test split/);
  assert.equal(rep.meta.split, 'test');
});

test(
  'softpress eval --task babi --data <file> --methods full,none --json prints EM per task',
  { skip: skip || (!existsSync(BABI_FILE) && 'needs the bAbI fixtures') },
  () => {
    const d = tinyBase();
    const r = cli(['--task', 'babi', '--data', BABI_FILE, '--methods', 'full,none', '--base', join(d, 'base'), '--n', '6', '--json', '--quiet']);
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    for (const row of rows) assert.deepEqual(Object.keys(row).sort(), [...RESULT_KEYS].sort());
    for (const method of ['full', 'none']) {
      const em = rows.find((x) => x.method === method && x.metric === 'em' && x.group === 'task=qa1');
      assert.ok(em, `no EM for qa1 (${method})`);
      assert.equal(em.task, 'babi');
      assert.equal(em.n, 6);
      assert.ok(em.value >= 0 && em.value <= 1);
    }
  },
);

test(
  '--resume reuses the (method, ratio, task) results an earlier run kept, and only those that match',
  { skip: skip || (!existsSync(BABI_FILE) && 'needs the bAbI fixtures') },
  () => {
    const d = tinyBase();
    const out = join(d, 'resume-report');
    const args = ['--task', 'babi', '--data', BABI_FILE, '--base', join(d, 'base'), '--n', '2', '--json', '--out', out, '--no-png'];
    const first = cli([...args, '--methods', 'full,none', '--threads', '2']);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(readdirSync(join(out, 'plans')).filter((f) => f.endsWith('.json')).length, 2);
    // Again with one more method: full and none come back from the kept results, truncate runs.
    const second = cli([...args, '--methods', 'full,none,truncate', '--ratios', '4', '--resume', '--threads', '1']);
    assert.equal(second.status, 0, second.stderr);
    assert.equal((second.stderr.match(/results of an earlier run reused/g) ?? []).length, 2);
    assert.match(second.stderr, /truncate@4 · babi \(/);
    const rows = (o: string, method: string) =>
      o
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .filter((x) => x.method === method)
        .map((x) => ({ ...x, retention: null }));
    for (const m of ['full', 'none']) assert.deepEqual(rows(second.stdout, m), rows(first.stdout, m));
    assert.ok(rows(second.stdout, 'truncate').length > 0);
    // Reused latency keeps the thread count it was measured with, and the report says so.
    const rep = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    const threadsOf = (method: string) => [
      ...new Set(rep.latency.filter((l: { method: string }) => l.method === method).map((l: { threads: number }) => l.threads)),
    ];
    assert.deepEqual(threadsOf('full'), [2]);
    assert.deepEqual(threadsOf('truncate'), [1]);
    const md = readFileSync(join(out, 'report.md'), 'utf8');
    assert.match(md, /1 threads \(this run; latency rows reused from earlier runs give their own\)/);
    assert.match(md, /\| KV with tail \| threads \|/);
    // Other examples (another seed) are not the kept ones: nothing is reused.
    const third = cli([...args, '--methods', 'full,none', '--seed', '1', '--resume']);
    assert.equal(third.status, 0, third.stderr);
    assert.doesNotMatch(third.stderr, /reused/);
  },
);

test(
  'compressors from folders: by --methods DIR, and found beside the base model',
  { skip: skip || (!existsSync(BABI_FILE) && 'needs the bAbI fixtures') },
  () => {
    const d = tinyBase();
    // A (untrained) mean-pool compressor saved beside a copy of the base model.
    const home = join(d, 'models');
    mkdirSync(join(home, 'base'), { recursive: true });
    for (const f of readdirSync(join(d, 'base'))) copyFileSync(join(d, 'base', f), join(home, 'base', f));
    const { model } = loadModel(join(home, 'base'));
    saveCompressor(createCompressor('meanpool', model), join(home, 'softpress-meanpool'));
    const args = ['--task', 'babi', '--data', BABI_FILE, '--base', join(home, 'base'), '--n', '2', '--json', '--quiet'];
    const explicit = cli([...args, '--methods', `none,${join(home, 'softpress-meanpool')}`, '--ratios', '4']);
    assert.equal(explicit.status, 0, explicit.stderr);
    const keys = (out: string) =>
      [
        ...new Set(
          out
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l))
            .map((x) => `${x.method}@${x.ratio}`),
        ),
      ].sort();
    assert.deepEqual(keys(explicit.stdout), ['meanpool@4', 'none@null']);
    const found = cli(args);
    assert.equal(found.status, 0, found.stderr);
    assert.deepEqual(keys(found.stdout), ['full@null', 'meanpool@4', 'meanpool@8', 'none@null', 'truncate@4', 'truncate@8']);
  },
);

test('tasks: deterministic by seed, test split only, lengths as asked', { skip }, () => {
  const { tokenizer } = loadModel(join(tinyBase(), 'base'));
  const tok = tokenizer!;
  const test = new Set(evalDocuments('test').map((d) => d.id));
  const a = buildTasks(tok, { suite: 'quick', tasks: ['reconstruct', 'continue', 'needle', 'cloze'], seed: 3 });
  const b = buildTasks(tok, { suite: 'quick', tasks: ['reconstruct', 'continue', 'needle', 'cloze'], seed: 3 });
  const c = buildTasks(tok, { suite: 'quick', tasks: ['reconstruct'], seed: 4 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(
    a[0]!.examples.map((e) => e.context),
    c[0]!.examples.map((e) => e.context),
  );
  for (const t of a)
    for (const ex of t.examples) for (const id of ex.docIds ?? []) assert.ok(test.has(id), `${t.name} ${ex.id} drew from ${id}, not a test document`);
  const [rec, cont, needle] = a;
  assert.deepEqual([rec!.lead, rec!.objective, rec!.stopIds], [[tok.bos], 'ae', [tok.eos]]);
  for (const ex of rec!.examples) {
    assert.equal(ex.context.length, 128);
    // The restate prompt of training (prompts.ts), text only: no special token of our tokenizer.
    assert.equal(tok.decode(ex.tail), '\nRestate the aforementioned text.\n');
    assert.equal(ex.maxTokens, 136);
  }
  for (const ex of cont!.examples) assert.deepEqual([ex.context.length, ex.tail.length], [512, 128]);
  for (const ex of needle!.examples) {
    const len = Number(ex.groups.len);
    assert.ok(ex.context.length <= len && ex.context.length >= len - 16, `needle of ${ex.context.length} tokens for ${len}`);
    assert.equal(tok.decode(ex.tail), tok.decode(tok.encode(`\nQuestion: ${tok.decode(ex.tail).split('Question: ')[1]!.split('\n')[0]}\nAnswer:`)));
    assert.match(tok.decode(ex.context), new RegExp(ex.answer!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  }
  assert.deepEqual(needle!.groupOrder!.depth, ['0-25%', '25-50%', '50-75%', '75-100%']);
  // A folder with a task's train and test files: the test file is used, whole.
  const bd = join(tinyBase(), 'babi');
  mkdirSync(bd, { recursive: true });
  const story = (who: string, where: string) => `1 ${who} moved to the ${where}.\n2 John went to the hallway.\n3 Where is ${who}?\t${where}\t1\n`;
  writeFileSync(join(bd, 'qa1_single-supporting-fact_train.txt'), story('Mary', 'garden') + story('Sandra', 'office') + story('Daniel', 'kitchen'));
  writeFileSync(join(bd, 'qa1_single-supporting-fact_test.txt'), story('Mary', 'bathroom') + story('Sandra', 'cellar'));
  writeFileSync(join(bd, 'qa2_two-supporting-facts_train.txt'), story('Mary', 'garden') + story('Sandra', 'office') + story('Daniel', 'kitchen'));
  assert.deepEqual(
    babiFiles(bd).map((f) => f.slice(bd.length + 1)),
    ['qa1_single-supporting-fact_test.txt', 'qa2_two-supporting-facts_train.txt'],
  );
  const small = makeBabiTask(bd, tok, { n: 10 });
  assert.deepEqual(small.examples.map((e) => [e.groups.task, e.answer]).sort(), [
    ['qa1', 'bathroom'],
    ['qa1', 'cellar'],
    ['qa2', 'kitchen'],
  ]);
  assert.equal(tok.decode(small.examples.find((e) => e.answer === 'kitchen')!.context), 'Daniel moved to the kitchen.\nJohn went to the hallway.');
  // Model-free references: qa1's test file knows its own two answers (1/2 each; 'bathroom', the
  // first most frequent, is right once); qa2's held-out 'kitchen' is no training answer (0, 0).
  assert.match(small.about, /uniform guess among each task's answers scores 0\.333, its most frequent answer 0\.333/);
  if (existsSync(BABI_FILE)) {
    const babi = makeBabiTask(BABI_FILE, tok, { n: 5, seed: 0 });
    assert.equal(babi.examples.length, 5);
    // The fixture is a train file: questions come from its held-out (last) stories.
    for (const ex of babi.examples) assert.match(ex.id, /^babi\/qa1\/\d+\/\d+$/);
  }
});

test('harness in-process: full equals the plain decoder on continue; perplexity runs', { skip }, () => {
  const { model, tokenizer } = loadModel(join(tinyBase(), 'base'));
  const tok = tokenizer!;
  const tasks = buildTasks(tok, { suite: 'quick', tasks: ['continue'], n: 2 });
  const methods = ['full', 'none', 'truncate'].map((m) => ({ label: m, compressor: createCompressor(m, model), ratios: m === 'truncate' ? [4] : [null] }));
  const run = runEvaluation({ model, tokenizer: tok, methods, tasks, batchSize: 2 });
  assert.deepEqual(run.errors, []);
  const ppl = (m: string) => run.rows.find((r) => r.method === m && r.metric === 'ppl' && r.group === 'all')!.value;
  // full: [BOS] context continuation, the same as documentPerplexity's scoring of that text
  // only for its continuation; check against a direct computation.
  const ex = tasks[0]!.examples;
  let nats = 0;
  let count = 0;
  for (const e of ex) {
    const ids = [tok.bos, ...e.context, ...e.tail];
    const v = model.config.vocabSize;
    const rows = noGrad(() =>
      tidy(
        () =>
          model
            .forward({ ids: tensor(ids, [1, ids.length], { dtype: 'int64' }) })
            .logits!.reshape(ids.length, -1)
            .logSoftmax(-1)
            .toArray() as Float32Array,
      ),
    );
    for (let j = 1 + e.context.length; j < ids.length; j++) {
      nats -= rows[(j - 1) * v + ids[j]!]!;
      count++;
    }
  }
  assert.ok(Math.abs(Math.log(ppl('full')) - nats / count) < 1e-4, `${ppl('full')} vs ${Math.exp(nats / count)}`);
  assert.ok(Math.abs(Math.log(ppl('none')) - nats / count) > 1e-3, 'none should differ from full');
  assert.ok(Number.isFinite(ppl('none')) && Number.isFinite(ppl('truncate')));
  const docs = evalDocuments('test')
    .slice(0, 2)
    .map((d) => d.text.slice(0, 3000));
  const p = documentPerplexity(model, tok, docs, { window: 256 });
  assert.equal(
    p.bytes,
    docs.reduce((a, t) => a + Buffer.byteLength(t), 0),
  );
  assert.equal(
    p.tokens,
    docs.reduce((a, t) => a + tok.encode(t).length + 1, 0),
  );
  assert.ok(Math.abs(p.bpb - p.nats / Math.LN2 / p.bytes) < 1e-12);
  // Window size does not change the token count, only the context each token sees.
  assert.equal(documentPerplexity(model, tok, docs, { window: 97 }).tokens, p.tokens);
});

test('harness: answers cut at a newline; ragged batches of a memory-KV method (CCF) run per length', { skip }, () => {
  const { model, tokenizer } = loadModel(join(tinyBase(), 'base'));
  const tok = tokenizer!;
  const nl = newlineTokens(tok);
  assert.ok(nl.length > 0 && nl.every((id) => tok.decode([id]).includes('\n')));
  assert.equal(answerText(tok, [...tok.encode(' the kitchen\nQuestion: x'), tok.eos]), 'the kitchen');
  assert.equal(answerText(tok, [...tok.encode(' Lisbon'), tok.eos]), 'Lisbon');
  const ccf = createCompressor('ccf', model);
  assert.deepEqual(ratiosFor(ccf), [4, 8, 16, 32]);
  assert.deepEqual(ratiosFor(ccf, [4, 5]), [4]);
  assert.deepEqual(ratiosFor(createCompressor('full', model)), [null]);
  // Needle contexts differ in length by a few tokens: CCF refuses a ragged batch, so the
  // harness compresses each length on its own and still scores every example.
  const tasks = buildTasks(tok, { suite: 'quick', tasks: ['needle', 'continue'], n: 2 });
  const run = runEvaluation({ model, tokenizer: tok, methods: [{ label: 'ccf', compressor: ccf, ratios: [8] }], tasks, batchSize: 4 });
  assert.deepEqual(run.errors, []);
  const em = run.rows.find((r) => r.task === 'needle' && r.metric === 'em' && r.group === 'all')!;
  assert.equal(em.n, 4);
  const lat = run.latency.find((l) => l.task === 'continue' && l.group === 'all')!;
  // 512 tokens at ratio 8: 64 memory slots per layer, each holding k and v of 2 kv heads x 8 dims
  // in float32 (2 layers), plus the [BOS] row: 64 * 2 * (2 * 2 * 8 * 4) + 256 bytes.
  assert.equal(lat.softTokens, 64);
  assert.equal(lat.contextKvBytes, 64 * 2 * (2 * 2 * 8 * 4) + 256);
});
