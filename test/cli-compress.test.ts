/**
 * The compressor commands end to end, through bin/softpress.js on the tiny test base saved as a
 * Hugging Face folder: `train` (meanpool, ae+lm, 20 steps; icae with a QA stage and --init),
 * `compress` (.softctx), `ask` (from text and from .softctx, several questions), their errors;
 * and, in process, that a compressor which alters the base model is caught before saving.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

import { noGrad, tidy } from '../src/tensor/index.js';
import { saveModel, loadModel } from '../src/models/load.js';
import { loadMobyDick } from '../src/data/corpora.js';
import { loadSoftContext, freeSoftContext, registerCompressor, createCompressor, type Compressor } from '../src/compress/index.js';
import { trainCompressor, TRAIN_DEFAULTS, parseStages } from '../src/train/train-compressor.js';
import { main } from '../src/cli/main.js';
import { TOKENIZER_PATH, tinyBase } from './helpers/tiny.js';

const BIN = path.resolve(process.cwd(), 'bin/softpress.js');
const BABI = path.resolve(process.cwd(), '../shared/fixtures/babi/en-10k');

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-cli-'));
const baseDir = path.join(root, 'base');
const corpus = path.join(root, 'corpus.txt');
const contextFile = path.join(root, 'context.txt');

test.before(() => {
  const { model } = tinyBase();
  saveModel(model, baseDir);
  fs.copyFileSync(TOKENIZER_PATH, path.join(baseDir, 'tokenizer.json'));
  // 24 documents (form-feed separated) of Moby-Dick: enough for train / valid / test splits.
  fs.writeFileSync(
    corpus,
    loadMobyDick()
      .slice(1, 25)
      .map((d) => d.text.slice(0, 3000))
      .join('\n\f\n'),
  );
  fs.writeFileSync(
    contextFile,
    'The secret code of the blue box is 4817. Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little and see the watery part of the world.\n',
  );
});
test.after(() => fs.rmSync(root, { recursive: true, force: true }));

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** bin/softpress.js in a child process (the real entry point). */
function spawnCli(...args: string[]): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The same command in this process (main() of src/cli/main.ts with stdout/stderr captured):
 * libtorch is loaded once, which keeps the file fast.
 */
async function cli(...args: string[]): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  const write = { out: process.stdout.write, err: process.stderr.write };
  // Only text is captured: the test runner's own reports to its parent are binary and pass on.
  const capture = (sink: string[], original: typeof process.stdout.write, stream: NodeJS.WriteStream) =>
    ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      if (typeof chunk === 'string') {
        sink.push(chunk);
        return true;
      }
      return (original as (...a: unknown[]) => boolean).call(stream, chunk, ...rest);
    }) as typeof process.stdout.write;
  process.stdout.write = capture(out, write.out, process.stdout);
  process.stderr.write = capture(err, write.err, process.stderr);
  const before = process.exitCode;
  process.exitCode = 0;
  try {
    await main(args);
  } finally {
    process.stdout.write = write.out;
    process.stderr.write = write.err;
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = before;
  return { code, stdout: out.join(''), stderr: err.join('') };
}

function ok(r: CliResult, what: string): void {
  assert.equal(r.code, 0, `${what} failed:\n${r.stderr}`);
}

const COMMON = [
  '--base',
  baseDir,
  '--corpora',
  'none',
  '--data',
  corpus,
  '--batch',
  '4',
  '--context-len',
  '32',
  '--continuation-len',
  '16',
  '--lr',
  '1e-2',
  '--eval-every',
  '10',
  '--quiet',
];

test('train meanpool (ae+lm, 20 steps) -> compress -> ask', async () => {
  const out = path.join(root, 'meanpool');
  const t = await cli('train', ...COMMON, '--method', 'meanpool', '--ratio', '4', '--stage', 'ae+lm', '--steps', '20', '--out', out);
  ok(t, 'train');
  assert.match(t.stdout, /trained meanpool to step 20\/20 .* valid .*ae_loss/);
  const saved = JSON.parse(fs.readFileSync(path.join(out, 'compressor.json'), 'utf8'));
  assert.equal(saved.method, 'meanpool');
  assert.equal(saved.baseFingerprint, loadModel(baseDir).model.fingerprint());
  assert.deepEqual(saved.training.ratios, [4]);
  assert.ok(fs.existsSync(path.join(out, 'weights.safetensors')));
  const log = fs
    .readFileSync(path.join(out, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.equal(log.filter((r) => r.loss !== undefined).length, 20);
  assert.deepEqual(
    log.filter((r) => r.valid_loss !== undefined).map((r) => r.step),
    [10, 20],
  );
  assert.ok(log.some((r) => r.valid_ae_loss !== undefined && r.valid_lm_loss !== undefined));
  // The references on the same validation batches: in the card and on the plot.
  const refs = saved.training.validReferences as Record<string, number>;
  assert.deepEqual(Object.keys(refs).sort(), ['full', 'none']);
  for (const v of Object.values(refs)) assert.ok(Number.isFinite(v) && v > 0);
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'references.json'), 'utf8')), refs);
  assert.match(
    fs.readFileSync(path.join(out, 'README.md'), 'utf8'),
    /Validation loss \d+\.\d{4} nats\/token after 20 steps in [\d.]+ h \(on the same batches: full context \d+\.\d{4}, no context \d+\.\d{4}\)/,
  );
  assert.match(fs.readFileSync(path.join(out, 'loss.svg'), 'utf8'), /valid, full[\s\S]*valid, none/);

  // A finished run is not silently overwritten.
  const again = await cli('train', ...COMMON, '--method', 'meanpool', '--ratio', '4', '--stage', 'ae', '--steps', '20', '--out', out);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /already holds a training run; pass --resume/);

  // compress (the default budget is the trained ratio)
  const softctx = path.join(root, 'context.softctx');
  const c = await cli('compress', '--base', baseDir, '--compressor', out, '--in', contextFile, '--out', softctx);
  ok(c, 'compress');
  const m = /ratio 4: (\d+) source tokens -> (\d+) soft tokens in [\d.]+ ms/.exec(c.stdout);
  assert.ok(m, c.stdout);
  assert.equal(Number(m[2]), Math.ceil(Number(m[1]) / 4));
  const { model } = loadModel(baseDir);
  tidy(() => {
    const ctx = loadSoftContext(softctx, model);
    assert.equal(ctx.meta.method, 'meanpool');
    assert.deepEqual(ctx.meta.softTokens, [Number(m[2])]);
    freeSoftContext(ctx);
  });

  // ask: from the stored context and from the text, several questions in one batch
  const q = ['--question', 'What is the secret code of the blue box?', '--question', 'Who is speaking?', '--max-tokens', '6'];
  const a1 = spawnCli('ask', '--base', baseDir, '--compressor', out, '--context', softctx, ...q); // through bin/softpress.js
  ok(a1, 'ask .softctx');
  assert.equal(a1.stdout.split('\n').length, 3, `two answer lines:\n${a1.stdout}`);
  assert.match(a1.stderr, /answer 2 question\(s\): prefill \d+ ms, decode \d+ ms/);
  const a2 = await cli('ask', '--base', baseDir, '--compressor', out, '--context', contextFile, '--json', ...q);
  ok(a2, 'ask text');
  const answers = JSON.parse(a2.stdout) as { question: string; answer: string; tokens: number }[];
  assert.equal(answers.length, 2);
  for (const x of answers) assert.ok(x.tokens >= 1 && x.tokens <= 6);
  // Same compressor, same context: the stored and the fresh soft context answer alike.
  assert.deepEqual(
    answers.map((x) => x.answer),
    a1.stdout.split('\n').slice(0, 2),
  );
  const a3 = await cli('ask', '--base', baseDir, '--method', 'truncate', '--ratio', '4', '--context', contextFile, ...q);
  ok(a3, 'ask truncate');
});

test('train icae with a QA stage, then continue from it with --init', async () => {
  const out = path.join(root, 'icae');
  const babi = fs.existsSync(BABI) ? ['--babi', BABI] : [];
  const t = await cli(
    'train',
    ...COMMON,
    '--method',
    'icae',
    '--ratio',
    '4,8',
    '--stage',
    'ae:0.5,qa:0.5',
    '--steps',
    '10',
    '--qa-examples',
    '16',
    '--method-option',
    'maxSlots=32',
    '--method-option',
    'loraRank=4',
    ...babi,
    '--out',
    out,
  );
  ok(t, 'train icae');
  const saved = JSON.parse(fs.readFileSync(path.join(out, 'compressor.json'), 'utf8'));
  assert.equal(saved.maxSlots, 32);
  assert.equal(saved.loraRank, 4);
  // The card: what was used and where it came from; the flag that overrides the official rank is a deviation.
  assert.deepEqual(saved.recipe.settings['options.loraRank'], { value: 4, from: 'flag', paper: 128 });
  assert.deepEqual(saved.recipe.settings.lr, { value: 0.01, from: 'flag' });
  assert.ok(saved.recipe.deviations.some((d: { key: string; why: string }) => d.key === 'options.loraRank' && d.why === 'given by flag'));
  assert.match(fs.readFileSync(path.join(out, 'README.md'), 'utf8'), /# icae compressor[\s\S]*\| options\.loraRank \| 4 \| flag \| 128 \|/);
  const log = fs.readFileSync(path.join(out, 'log.jsonl'), 'utf8');
  assert.match(log, /valid_qa_loss/);
  const stage2 = path.join(root, 'icae-qa');
  const t2 = await cli(
    'train',
    ...COMMON,
    '--method',
    'icae',
    '--init',
    out,
    '--ratio',
    '4',
    '--stage',
    'qa',
    '--steps',
    '3',
    '--qa-examples',
    '8',
    '--out',
    stage2,
  );
  ok(t2, 'train --init');
  assert.equal(JSON.parse(fs.readFileSync(path.join(stage2, 'compressor.json'), 'utf8')).training.init, out);
  // ship carries both stages: their records, a table in the card, and each stage's loss plot.
  const shipped = path.join(root, 'icae-shipped');
  ok(await cli('ship', '--base', baseDir, '--compressor', stage2, '--out', shipped), 'ship stages');
  const stage1Training = JSON.parse(fs.readFileSync(path.join(out, 'compressor.json'), 'utf8')).training;
  const shippedCfg = JSON.parse(fs.readFileSync(path.join(shipped, 'compressor.json'), 'utf8'));
  assert.deepEqual(shippedCfg.earlierStages, [stage1Training]);
  for (const f of ['loss-stage1.svg', 'loss-stage2.svg']) assert.ok(fs.existsSync(path.join(shipped, f)), f);
  const card = fs.readFileSync(path.join(shipped, 'README.md'), 'utf8');
  assert.match(card, /## Training stages[\s\S]*\| 1 \| ae\+qa \| 10 \|[\s\S]*\| 2 \| qa \| 3 \|/);
  // Shipping the shipped folder again keeps the stages (the run folders are not needed).
  const again = path.join(root, 'icae-shipped-again');
  ok(await cli('ship', '--base', baseDir, '--compressor', shipped, '--out', again), 'ship again');
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(again, 'compressor.json'), 'utf8')).earlierStages, [stage1Training]);
  // ... and their plots, each under its own stage's caption.
  for (const f of ['loss-stage1.svg', 'loss-stage2.svg']) assert.ok(fs.existsSync(path.join(again, f)), `reshipped ${f}`);
  assert.match(fs.readFileSync(path.join(again, 'README.md'), 'utf8'), /!\[loss of stage 1\]\(loss-stage1\.svg\)\n!\[loss of stage 2\]\(loss-stage2\.svg\)/);
  // A third stage trained from the shipped folder: its two stages come before it, with their plots.
  const stage3 = path.join(root, 'icae-qa-more');
  ok(
    await cli(
      'train',
      ...COMMON,
      '--method',
      'icae',
      '--init',
      shipped,
      '--ratio',
      '4',
      '--stage',
      'qa',
      '--steps',
      '2',
      '--qa-examples',
      '8',
      '--out',
      stage3,
    ),
    'train --init shipped',
  );
  const third = path.join(root, 'icae-shipped-third');
  ok(await cli('ship', '--base', baseDir, '--compressor', stage3, '--out', third), 'ship three stages');
  const stage2Training = JSON.parse(fs.readFileSync(path.join(stage2, 'compressor.json'), 'utf8')).training;
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(third, 'compressor.json'), 'utf8')).earlierStages, [stage1Training, stage2Training]);
  for (const f of ['loss-stage1.svg', 'loss-stage2.svg', 'loss-stage3.svg']) assert.ok(fs.existsSync(path.join(third, f)), `third ${f}`);
  assert.match(fs.readFileSync(path.join(third, 'README.md'), 'utf8'), /\| 1 \| ae\+qa \| 10 \|[\s\S]*\| 2 \| qa \| 3 \|[\s\S]*\| 3 \| qa \| 2 \|/);
  const wrong = await cli(
    'train',
    ...COMMON,
    '--method',
    'meanpool',
    '--init',
    out,
    '--ratio',
    '4',
    '--stage',
    'qa',
    '--steps',
    '3',
    '--out',
    path.join(root, 'wrong'),
  );
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /holds a 'icae' compressor, not 'meanpool'/);
});

test("train takes the method's recipe for every flag not given, and the card records it", async () => {
  // GMSA without --ratio, --lr, --warmup, --clip, --weight-decay: the paper's (papers/gmsa.md).
  const base = [
    '--base',
    baseDir,
    '--corpora',
    'none',
    '--data',
    corpus,
    '--batch',
    '2',
    '--context-len',
    '32',
    '--continuation-len',
    '16',
    '--eval-every',
    '10',
    '--quiet',
  ];
  const out = path.join(root, 'gmsa-recipe');
  const t = await cli('train', ...base, '--method', 'gmsa', '--stage', 'ae', '--steps', '10', '--method-option', 'loraRank=4', '--out', out);
  ok(t, 'train gmsa');
  const saved = JSON.parse(fs.readFileSync(path.join(out, 'compressor.json'), 'utf8'));
  const used = (k: string) => saved.recipe.settings[k];
  assert.deepEqual(used('lr'), { value: 1e-4, from: 'paper', paper: 1e-4 });
  assert.deepEqual(used('warmup'), { value: 1, from: 'paper', paper: 1 }); // 10% of 10 steps
  assert.deepEqual(used('clip'), { value: 2, from: 'paper', paper: 2 });
  assert.deepEqual(used('weightDecay'), { value: 0.01, from: 'paper', paper: 0.01 });
  assert.deepEqual(used('minLr'), { value: 0, from: 'paper', paper: 0 });
  assert.deepEqual(used('betas'), { value: [0.9, 0.95], from: 'not stated' });
  assert.deepEqual(used('ratios'), { value: [4, 8], from: 'paper', paper: [4, 8] });
  assert.deepEqual(saved.training.ratios, [4, 8]);
  assert.equal(saved.recipe.stage, 'ae');
  // The tiny base has 2 layers: encoderLayers 1 instead of 8 is a deviation, with its reason.
  assert.deepEqual(used('options.encoderLayers'), { value: 1, from: 'paper', paper: 8 });
  assert.ok(saved.recipe.deviations.some((d: { key: string; why: string }) => d.key === 'options.encoderLayers' && /15\+ layers/.test(d.why)));
  const card = fs.readFileSync(path.join(out, 'README.md'), 'utf8');
  assert.match(card, /## Differences from the paper/);
  assert.match(card, /\*\*gmsa\*\* — arXiv 2505\.12215/);
  // The run really used them: the logged learning rate peaks at 1e-4.
  const log = fs
    .readFileSync(path.join(out, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
    .filter((r) => r.lr !== undefined);
  assert.ok(Math.abs(Math.max(...log.map((r) => r.lr)) - 1e-4) < 1e-12, `peak lr ${Math.max(...log.map((r) => r.lr))}`);
  // ship keeps the card.
  const shipped = path.join(root, 'gmsa-shipped');
  ok(await cli('ship', '--base', baseDir, '--compressor', out, '--out', shipped), 'ship');
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(shipped, 'compressor.json'), 'utf8')).recipe, saved.recipe);
  assert.ok(fs.existsSync(path.join(shipped, 'README.md')));
});

test('train ccf: long documents of many segments from inside single documents, checked against the position window', async () => {
  const out = path.join(root, 'ccf-recipe');
  // The tiny base has 256 positions: segments of min(1024, 256 / 4) = 64 tokens.
  const t = await cli('train', ...COMMON, '--method', 'ccf', '--stage', 'lm', '--steps', '2', '--doc-len', '256', '--method-option', 'rank=4', '--out', out);
  ok(t, 'train ccf');
  const saved = JSON.parse(fs.readFileSync(path.join(out, 'compressor.json'), 'utf8'));
  assert.equal(saved.segmentLen, 64);
  assert.deepEqual(saved.training.ratios, [8]); // the recipe's
  assert.equal(saved.training.segments, 4);
  const used = (k: string) => saved.recipe.settings[k];
  assert.deepEqual(used('weightDecay'), { value: 0.1, from: 'paper', paper: 0.1 });
  assert.deepEqual(used('betas'), { value: [0.9, 0.95], from: 'paper', paper: [0.9, 0.95] });
  assert.deepEqual(used('clip'), { value: 1, from: 'paper', paper: 1 });
  assert.deepEqual(used('reservoir'), { value: 2, from: 'code', paper: 2 });
  assert.deepEqual(used('docLen'), { value: 256, from: 'flag' });
  assert.deepEqual(used('options.alpha'), { value: 512, from: 'code', paper: 512 });
  assert.equal(saved.training.documents, 'inside single documents');
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, 'train-config.json'), 'utf8')).weightDecay, 0.1); // not the CLI's old 0.01
  // A document whose memory and last segment do not fit the window is refused, clearly.
  const far = await cli(
    'train',
    ...COMMON,
    '--method',
    'ccf',
    '--stage',
    'lm',
    '--steps',
    '2',
    '--ratio',
    '2',
    '--doc-len',
    '512',
    '--method-option',
    'rank=4',
    '--out',
    path.join(root, 'ccf-far'),
  );
  assert.equal(far.code, 1);
  assert.match(far.stderr, /a document of 512 tokens at ratio 2 needs 288 positions .* beyond the base model's window of 256/);
});

test('clear errors', async () => {
  const cases: [string[], RegExp][] = [
    [['train', '--base', baseDir, '--method', 'meanpool', '--stage', 'ae', '--out', path.join(root, 'e1')], /give --ratio R\[,R2...\] or --budget K/],
    [
      ['train', ...COMMON, '--method', 'meanpool', '--ratio', '4', '--stage', 'ae', '--out', path.join(root, 'e2'), '--method-option', 'colour=red'],
      /meanpool: unknown option\(s\) colour \(known: source, bos\)/,
    ],
    [
      ['train', ...COMMON, '--method', 'truncate', '--ratio', '4', '--stage', 'ae', '--out', path.join(root, 'e3')],
      /'truncate' is a strategy with nothing to train/,
    ],
    [['train', ...COMMON, '--method', 'meanpool', '--ratio', '0.5', '--stage', 'ae', '--out', path.join(root, 'e4')], /--ratio must be a number >= 1/],
    [['train', ...COMMON, '--method', 'meanpool', '--ratio', '4', '--stage', 'ae+xx', '--out', path.join(root, 'e5')], /unknown stage 'xx'/],
    [['train', '--bogus'], /^softpress train: Unknown option '--bogus'/],
    [
      ['compress', '--base', baseDir, '--method', 'meanpool', '--ratio', '4', '--in', contextFile, '--out', path.join(root, 'x.softctx')],
      /'meanpool' is a learned method: give --compressor DIR/,
    ],
    [['compress', '--base', baseDir, '--method', 'truncate', '--in', contextFile, '--out', path.join(root, 'x.softctx')], /give --ratio R .* or --budget K/],
    [
      ['compress', '--base', baseDir, '--method', 'truncate', '--ratio', '4', '--in', path.join(root, 'missing.txt'), '--out', path.join(root, 'x.softctx')],
      /file not found/,
    ],
    [['ask', '--base', baseDir, '--method', 'full', '--context', contextFile], /at least one --question/],
    [['ask', '--base', baseDir, '--method', 'none', '--context', contextFile, '--question', 'q', '--max-tokens', '0'], /--max-tokens must be an integer >= 1/],
  ];
  for (const [args, pattern] of cases) {
    const r = await cli(...args);
    assert.equal(r.code, 1, `${args.join(' ')} should fail`);
    assert.match(r.stderr, pattern, `${args.join(' ')}:\n${r.stderr}`);
  }
});

test('a compressor that changes the base model is caught and nothing is saved', async () => {
  // A deliberately broken method: its compress() writes into the base's final norm.
  registerCompressor('rogue-test', 'test only: alters the base', true, (base, options) => {
    const inner = createCompressor('meanpool', base, options);
    const rogue: Compressor = {
      ...inner,
      method: 'rogue-test',
      config: { ...inner.config, method: 'rogue-test' },
      trainable: (s) => inner.trainable(s),
      setTraining: (on) => inner.setTraining(on),
      compress(contexts, budget) {
        noGrad(() => base.model.norm.weight.value.mul_(1.0001));
        return inner.compress(contexts, budget);
      },
    };
    return rogue;
  });
  const out = path.join(root, 'rogue');
  const cfg = {
    ...TRAIN_DEFAULTS,
    base: baseDir,
    method: 'rogue-test',
    methodOptions: {},
    stages: parseStages('ae'),
    ratios: [4],
    steps: 3,
    batch: 2,
    contextLen: 32,
    continuationLen: 0,
    corpora: [],
    data: corpus,
    evalEvery: 100,
    warmup: 1,
  };
  await assert.rejects(trainCompressor(cfg, out, { quiet: true }), /the base model's weights changed during training .* nothing was saved/);
  assert.ok(!fs.existsSync(path.join(out, 'compressor.json')));
});

test('stream-eval --out writes a file that says what it measured: base, documents, and the rows', async () => {
  const out = path.join(root, 'stream.md');
  const r = await cli('stream-eval', '--base', baseDir, '--lengths', '64', '--docs', '1', '--out', out);
  ok(r, 'stream-eval');
  const md = fs.readFileSync(out, 'utf8');
  assert.match(md, /^# Streaming perplexity\n/);
  assert.ok(md.includes(`- Base \`${baseDir}\`; segments of 64 tokens;`), md);
  assert.match(md, /- Documents \(the first 1 of the test split with >= 64 tokens, each read from its start up to the row's length\): .+ \(\d+ tokens\)\n/);
  assert.match(md, /\| full \(sliding window\) \| - \| 64 \| 1 \| [\d.]+ \|/);
  assert.match(md, /\| none \(segment alone\) \| - \| 64 \| 1 \| [\d.]+ \|/);
  // The table alone goes to stdout.
  assert.match(r.stdout, /^\| method \| ratio \| tokens per doc \|/);
  const bad = await cli('stream-eval', '--base', baseDir, '--lengths', '0');
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--lengths takes positive integers, got '0'/);
});
