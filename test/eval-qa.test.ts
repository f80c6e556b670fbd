/**
 * The qa task: reading SQuAD v1.1 / v2.0 JSON and JSONL (both answer shapes), clear errors for
 * malformed files (the line, the JSON path, the field); SQuAD's official normalisation and
 * scoring (articles, ASCII punctuation, the best of several answers, v2.0's unanswerable
 * questions); the span-question generator and the committed set (regenerated, unchanged);
 * compress once, ask many (one compression per distinct context, counted through a stub);
 * and `softpress eval --task qa --data FILE` end to end on models/softpress-base.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';

import { tensor } from '../src/tensor/index.js';
import { createCompressor, indexSoftContext, type Compressor, type SoftContext } from '../src/compress/index.js';
import { loadQaFile, parseQaJsonl, parseQaText, parseSquad } from '../src/data/squad.js';
import { makeSpanQaSet, spanQuestions } from '../src/data/qa.js';
import type { Doc } from '../src/data/corpora.js';
import { DEFAULT_QA_SET, makeQaTask, runEvaluation, squadNormalize, squadPrediction, squadScores } from '../src/eval/index.js';
import { qaSetJson } from '../src/cli/data.js';
import { tinyBase } from './helpers/tiny.js';

const close = (a: number, b: number, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);
const HAVE_BASE = existsSync('models/softpress-base/tokenizer.json');

let tmp: string | undefined;
function tmpDir(): string {
  return (tmp ??= mkdtempSync(join(tmpdir(), 'softpress-qa-')));
}
function file(name: string, text: string): string {
  const p = join(tmpDir(), name);
  writeFileSync(p, text);
  return p;
}
test.after(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const SQUAD_V11 = {
  version: '1.1',
  data: [
    {
      title: 'Super_Bowl_50',
      paragraphs: [
        {
          context: 'Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.',
          qas: [
            {
              id: 'q1',
              question: 'Which team won Super Bowl 50?',
              answers: [
                { text: 'Denver Broncos', answer_start: 49 },
                { text: 'The Denver Broncos', answer_start: 45 },
              ],
            },
            { id: 'q2', question: 'Who lost?', answers: [{ text: 'Carolina Panthers', answer_start: 77 }] },
          ],
        },
        {
          context: 'The game was played in Santa Clara.',
          qas: [{ id: 'q3', question: 'Where was the game played?', answers: [{ text: 'Santa Clara', answer_start: 23 }] }],
        },
      ],
    },
  ],
};

const SQUAD_V20 = {
  version: 'v2.0',
  data: [
    {
      title: 'Normans',
      paragraphs: [
        {
          context: 'The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.',
          qas: [
            { id: 'a1', question: 'In what country is Normandy located?', answers: [{ text: 'France', answer_start: 105 }], is_impossible: false },
            {
              id: 'a2',
              question: 'Who gave their name to Normandy in the 1000s and 1100s',
              answers: [],
              plausible_answers: [{ text: 'Normans', answer_start: 4 }],
              is_impossible: true,
            },
          ],
        },
      ],
    },
  ],
};

test('SQuAD v1.1: records in file order, several answers, contexts counted', () => {
  const set = parseSquad(JSON.stringify(SQUAD_V11), 'v11.json');
  assert.equal(set.format, 'squad');
  assert.equal(set.version, '1.1');
  assert.equal(set.contexts, 2);
  assert.deepEqual(
    set.records.map((r) => [r.id, r.answers, r.unanswerable, r.title]),
    [
      ['q1', ['Denver Broncos', 'The Denver Broncos'], false, 'Super_Bowl_50'],
      ['q2', ['Carolina Panthers'], false, 'Super_Bowl_50'],
      ['q3', ['Santa Clara'], false, 'Super_Bowl_50'],
    ],
  );
  assert.equal(set.records[0]!.context, set.records[1]!.context);
  // By file name (.json) and by content (any other name).
  assert.deepEqual(loadQaFile(file('v11.json', JSON.stringify(SQUAD_V11))).records, set.records);
  assert.deepEqual(parseQaText(JSON.stringify(SQUAD_V11, null, 2)).records, set.records);
});

test('SQuAD v2.0: an unanswerable question has no answers (its plausible answers are not gold)', () => {
  const set = parseSquad(JSON.stringify(SQUAD_V20));
  assert.equal(set.version, 'v2.0');
  assert.deepEqual(
    set.records.map((r) => [r.id, r.answers, r.unanswerable]),
    [
      ['a1', ['France'], false],
      ['a2', [], true],
    ],
  );
});

test('JSONL: answers as strings or as SQuAD objects; ids optional; blank lines skipped', () => {
  const text = [
    JSON.stringify({ context: 'Ann lives in Oslo. Bo lives in Rome.', question: 'Where does Ann live?', answers: ['Oslo', 'in Oslo'] }),
    '',
    JSON.stringify({
      id: 'x7',
      context: 'Ann lives in Oslo. Bo lives in Rome.',
      question: 'Where does Bo live?',
      answers: [{ text: 'Rome', answer_start: 31 }],
    }),
    JSON.stringify({ id: 9, context: 'Nothing here.', question: 'Who is Cy?', answers: [] }),
  ].join('\n');
  const set = parseQaJsonl(text, 'qa.jsonl');
  assert.equal(set.format, 'jsonl');
  assert.equal(set.contexts, 2);
  assert.deepEqual(
    set.records.map((r) => [r.id, r.answers, r.unanswerable]),
    [
      ['1', ['Oslo', 'in Oslo'], false],
      ['x7', ['Rome'], false],
      ['9', [], true],
    ],
  );
  // Sniffed from the content when the name says nothing; by name (.jsonl) too.
  assert.deepEqual(parseQaText(text).records, set.records);
  assert.deepEqual(
    loadQaFile(file('qa.jsonl', text)).records.map((r) => r.id),
    ['1', 'x7', '9'],
  );
});

test('malformed files: the line (JSONL), the JSON path (SQuAD) and the field are named', () => {
  const good = JSON.stringify({ context: 'c', question: 'q?', answers: ['a'] });
  // Bad JSON on line 3 of a JSONL file.
  const bad = loadQaFile.bind(null, file('bad.jsonl', `${good}\n${good}\n{"context": "c", "question": \n`));
  assert.throws(bad, (e: Error) => /bad\.jsonl:3: not valid JSON/.test(e.message));
  // A missing field, by name, with its line.
  assert.throws(() => parseQaJsonl(`${good}\n${JSON.stringify({ context: 'c', answers: ['a'] })}`, 'f.jsonl'), /f\.jsonl:2: missing field "question"/);
  assert.throws(() => parseQaJsonl(JSON.stringify({ context: 'c', question: 'q' }), 'f.jsonl'), /f\.jsonl:1: missing field "answers"/);
  assert.throws(() => parseQaJsonl(JSON.stringify({ context: 'c', question: 'q', answers: 'a' }), 'f.jsonl'), /field "answers" must be a list .*got a string/);
  assert.throws(
    () => parseQaJsonl(JSON.stringify({ context: 'c', question: 'q', answers: [{ answer_start: 0 }] }), 'f.jsonl'),
    /f\.jsonl:1: answers\[0\]: missing field "text"/,
  );
  assert.throws(
    () => parseQaJsonl(JSON.stringify({ context: 'c', question: 'q', answers: [{ text: 'a', answer_start: -1 }] }), 'f.jsonl'),
    /"answer_start" must be a non-negative integer/,
  );
  assert.throws(() => parseQaJsonl('[1, 2]', 'f.jsonl'), /f\.jsonl:1: each line must be an object/);
  assert.throws(() => parseQaJsonl(`${good}\n${good.replace('"q?"', '""')}`, 'f.jsonl'), /f\.jsonl:2: field "question" is empty/);
  // SQuAD: the path to the broken part.
  const noQas = structuredClone(SQUAD_V11) as { data: { paragraphs: Record<string, unknown>[] }[] };
  delete noQas.data[0]!.paragraphs[1]!.qas;
  assert.throws(() => parseSquad(JSON.stringify(noQas), 's.json'), /s\.json: data\[0\]\.paragraphs\[1\]: missing field "qas"/);
  const noText = structuredClone(SQUAD_V20) as { data: { paragraphs: { qas: { answers: unknown[] }[] }[] }[] };
  noText.data[0]!.paragraphs[0]!.qas[0]!.answers = [{ answer_start: 3 }];
  assert.throws(() => parseSquad(JSON.stringify(noText), 's.json'), /data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]: missing field "text"/);
  const contradiction = structuredClone(SQUAD_V20) as { data: { paragraphs: { qas: Record<string, unknown>[] }[] }[] };
  contradiction.data[0]!.paragraphs[0]!.qas[0]!.is_impossible = true;
  assert.throws(() => parseSquad(JSON.stringify(contradiction), 's.json'), /qas\[0\]: "is_impossible" is true but "answers" has 1 answer/);
  assert.throws(() => parseSquad('{"version": "1.1"}', 's.json'), /s\.json: missing field "data"/);
  assert.throws(() => loadQaFile(file('broken.json', '{"version": "1.1",\n "data": [}\n')), /broken\.json: not valid JSON/);
  const twice = structuredClone(SQUAD_V11);
  twice.data[0]!.paragraphs[1]!.qas[0]!.id = 'q1';
  assert.throws(() => parseSquad(JSON.stringify(twice), 's.json'), /question id "q1" appears twice/);
  assert.throws(() => loadQaFile(join(tmpDir(), 'missing.json')), /cannot read .*missing\.json \(ENOENT\)/);
  assert.throws(() => parseQaText('\n\n', { source: 'e.jsonl' }), /e\.jsonl: empty file/);
});

test('SQuAD normalisation and scoring, as the official script (evaluate-v2.0.py) computes them', () => {
  // lower, remove_punc (string.punctuation), remove_articles (\b(a|an|the)\b), white_space_fix.
  assert.equal(squadNormalize('The  Quick, Brown Fox!'), 'quick brown fox');
  assert.equal(squadNormalize('An apple a day; the theory of them'), 'apple day theory of them');
  assert.equal(squadNormalize("Denver's (1958)"), 'denvers 1958');
  // Only ASCII punctuation: curly quotes and dashes stay, as in Python's string.punctuation.
  assert.equal(squadNormalize('“Paris” — France'), '“paris” — france');
  // Articles next to Unicode letters are part of a word (re.UNICODE).
  assert.equal(squadNormalize('théa a the'), 'théa');
  // Several gold answers: the best EM and the best F1.
  assert.deepEqual(squadScores('the Denver Broncos.', ['Denver Broncos', 'Broncos']), { em: 1, f1: 1, abstained: false });
  // "Broncos team" vs "Broncos": P 1/2, R 1 -> 2/3; vs "Denver Broncos": P 1/2, R 1/2 -> 1/2.
  const s = squadScores('Broncos team', ['Denver Broncos', 'Broncos']);
  assert.equal(s.em, 0);
  close(s.f1, 2 / 3);
  // Bag-of-words F1 with repeated tokens (Counter intersection): "a a b" vs "a b b" -> 2/3.
  close(squadScores('x x y', ['x y y']).f1, 2 / 3);
  assert.deepEqual(squadScores('Santa Clara, California', ['Santa Clara']).em, 0);
  close(squadScores('Santa Clara, California', ['Santa Clara']).f1, 0.8);
  // Unanswerable (no gold, or only golds that normalise to nothing): right iff the prediction
  // is empty or a no-answer phrase; an abstention on an answerable question scores 0.
  assert.deepEqual(squadScores('', []), { em: 1, f1: 1, abstained: true });
  assert.deepEqual(squadScores('Unanswerable.', []), { em: 1, f1: 1, abstained: true });
  assert.deepEqual(squadScores('No answer', ['the', '.']), { em: 1, f1: 1, abstained: true });
  assert.deepEqual(squadScores('Normans', []), { em: 0, f1: 0, abstained: false });
  assert.deepEqual(squadScores('not mentioned in the passage', ['France']), { em: 0, f1: 0, abstained: true });
  // Short answers that happen to be no-ish words are answers.
  assert.equal(squadPrediction('no'), 'no');
  assert.equal(squadPrediction('none'), 'none');
  assert.deepEqual(squadScores('no', ['No']), { em: 1, f1: 1, abstained: false });
});

test('span questions: echo questions whose answers are spans of the sentence', () => {
  const year = spanQuestions('The new tax on imports was first collected in 1932 across the whole country.');
  assert.deepEqual(
    year.map((q) => [q.pattern, q.question, q.answer, q.offset]),
    [['year', 'The new tax on imports was first collected in what year across the whole country?', '1932', 46]],
  );
  const pct = spanQuestions('Since then the cost of living has risen by 36 percent in most of the cities.');
  assert.deepEqual(
    pct.map((q) => [q.pattern, q.question, q.answer, q.alternatives.map((a) => a.text)]),
    [['percent', 'Since then the cost of living has risen by what percent in most of the cities?', '36 percent', ['36']]],
  );
  const count = spanQuestions('The harbour master counted 12 ships at anchor on the morning of the storm.');
  assert.deepEqual(
    count.map((q) => [q.pattern, q.question, q.answer]),
    [['count', 'The harbour master counted how many ships at anchor on the morning of the storm?', '12']],
  );
  const title = spanQuestions('Captain Ahab ordered the boats lowered at dawn on the second day.');
  assert.deepEqual(
    title.map((q) => [q.pattern, q.question, q.answer]),
    [['title', 'Which captain ordered the boats lowered at dawn on the second day?', 'Ahab']],
  );
  // Not from dialogue, questions, headings in capitals, or sentences too short.
  assert.deepEqual(spanQuestions('"We sailed in 1851 with the whole crew aboard," he said.'), []);
  assert.deepEqual(spanQuestions('Did they sail in 1851 with the whole crew aboard?'), []);
  assert.deepEqual(spanQuestions('They sailed in 1851.'), []);
  // A year is not a count; "the eight years" is left alone (reads badly as "the how many years").
  assert.deepEqual(
    spanQuestions('In the eight years before that the farms changed hands twice over.').map((q) => q.pattern),
    [],
  );
});

test('makeSpanQaSet: deterministic, answers at their offsets, unanswerable answers absent from the passage', () => {
  const sentence = (d: number, i: number) =>
    [
      `The mill at site ${d} was rebuilt in ${1800 + 7 * i + d} by the families of the valley.`,
      `By then the town had ${3 + i + d * 11} bakers and one small school for all of them.`,
      `Prices there rose by ${2 + i} percent during the long dry summer of that year.`,
    ][i % 3]!;
  const docs: Doc[] = Array.from({ length: 6 }, (_, d) => ({
    id: `toy/${d}`,
    source: 'toy',
    text: Array.from({ length: 30 }, (_, i) => sentence(d, i)).join(' '),
  }));
  const a = makeSpanQaSet(docs, { seed: 3, questions: 12, chars: 600 });
  assert.deepEqual(a, makeSpanQaSet(docs, { seed: 3, questions: 12, chars: 600 }));
  assert.notDeepEqual(a, makeSpanQaSet(docs, { seed: 4, questions: 12, chars: 600 }));
  const qs = a.flatMap((p) => p.qas);
  assert.equal(qs.filter((q) => !q.unanswerable).length, 12);
  assert.ok(
    qs.some((q) => q.unanswerable),
    'no unanswerable question',
  );
  for (const p of a) {
    assert.ok(p.qas.filter((q) => !q.unanswerable).length >= 2 || p === a[a.length - 1]);
    for (const q of p.qas) {
      if (q.unanswerable) assert.equal(q.answers.length, 0);
      for (const ans of q.answers) assert.equal(p.context.slice(ans.start, ans.start + ans.text.length), ans.text);
    }
  }
});

test(
  'the committed QA set is what `softpress data qa-set` makes from the test split',
  { skip: !existsSync(DEFAULT_QA_SET) && 'data/qa/prose-test.json missing' },
  () => {
    const text = readFileSync(DEFAULT_QA_SET, 'utf8');
    assert.equal(qaSetJson().text, text);
    const set = loadQaFile(DEFAULT_QA_SET);
    assert.equal(set.version, 'v2.0');
    assert.ok(set.records.length >= 30 && set.records.length <= 60, `${set.records.length} questions`);
    assert.ok(set.records.some((r) => r.unanswerable));
    assert.ok(set.contexts < set.records.length, 'contexts should have several questions');
    const json = JSON.parse(text) as {
      license: string;
      split: string;
      data: { paragraphs: { context: string; qas: { answers: { text: string; answer_start: number }[] }[] }[] }[];
    };
    assert.equal(json.split, 'test');
    assert.match(json.license, /sotu.*moby-dick.*brown/s);
    for (const art of json.data)
      for (const p of art.paragraphs)
        for (const q of p.qas) for (const a of q.answers) assert.equal(p.context.slice(a.answer_start, a.answer_start + a.text.length), a.text);
  },
);

test('indexSoftContext: items picked with repeats', () => {
  const soft = tensor(
    Array.from({ length: 2 * 3 * 4 }, (_, i) => i),
    [2, 3, 4],
  );
  const ctx: SoftContext = {
    softTokens: soft,
    mask: tensor([1, 1, 1, 0, 1, 1], [2, 3], { dtype: 'bool' }),
    meta: { method: 'x', budget: { ratio: 2 }, sourceTokens: [6, 5], softTokens: [3, 2], baseFingerprint: 'f' },
  };
  const out = indexSoftContext(ctx, [1, 0, 1]);
  assert.deepEqual(out.softTokens!.shape, [3, 3, 4]);
  const v = Array.from(out.softTokens!.toArray() as Float32Array);
  assert.deepEqual(
    v.slice(0, 12),
    Array.from({ length: 12 }, (_, i) => 12 + i),
  );
  assert.deepEqual(
    v.slice(12, 24),
    Array.from({ length: 12 }, (_, i) => i),
  );
  assert.deepEqual(out.meta.sourceTokens, [5, 6, 5]);
  assert.deepEqual(out.meta.softTokens, [2, 3, 2]);
  assert.throws(() => indexSoftContext(ctx, [2]), /item 2 outside 0\.\.1/);
});

test(
  'compress once, ask many: one compression per distinct context, questions batched with it',
  { skip: !HAVE_BASE && 'needs models/softpress-base/tokenizer.json' },
  () => {
    const { model, tokenizer: tok } = tinyBase();
    const ctx = (i: number) => `Story ${i}: Ann went to the garden. Bo went to the kitchen. Cy went to the hall number ${i}.`;
    const lines = [
      ...['Where is Ann?', 'Where is Bo?', 'Where is Cy?'].map((q, j) => ({ context: ctx(1), question: q, answers: [['garden', 'kitchen', 'hall'][j]!] })),
      ...['Where is Ann?', 'Where is Bo?'].map((q, j) => ({ context: ctx(2), question: q, answers: [['garden', 'kitchen'][j]!] })),
      { context: ctx(3), question: 'Who is Dee?', answers: [] },
    ];
    const path = file('group.jsonl', lines.map((l) => JSON.stringify(l)).join('\n'));
    const task = makeQaTask(path, tok);
    assert.equal(task.examples.length, 6);
    assert.deepEqual(task.groupOrder, { gold: ['has-answer', 'no-answer'] });
    assert.deepEqual(
      task.examples.map((e) => e.answers),
      [['garden'], ['kitchen'], ['hall'], ['garden'], ['kitchen'], []],
    );
    // A stub around each strategy that records the contexts of every compress call.
    const calls: number[][] = [];
    const counting = (c: Compressor): Compressor =>
      Object.assign(Object.create(c) as Compressor, {
        compress: (contexts: number[][], budget: { ratio?: number }) => {
          calls.push(contexts.map((x) => x.length));
          return c.compress(contexts, budget);
        },
      });
    const methods = [
      { label: 'full', compressor: counting(createCompressor('full', model)), ratios: [null] },
      { label: 'truncate', compressor: counting(createCompressor('truncate', model)), ratios: [2] },
    ];
    const run = runEvaluation({ model, tokenizer: tok, methods, tasks: [task], batchSize: 4 });
    assert.deepEqual(run.errors, []);
    // One batch per method: the three contexts, each compressed once, for six questions.
    assert.equal(calls.length, 2);
    for (const c of calls) assert.equal(c.length, 3);
    for (const method of ['full', 'truncate']) {
      const lat = run.latency.find((l) => l.method === method && l.group === 'all')!;
      assert.equal(lat.examples, 6);
      assert.equal(lat.contexts, 3);
      close(lat.compressMsPerContext, (lat.compressMs * 6) / 3, 1e-9 * Math.max(1, lat.compressMs));
      assert.equal(run.predictions.filter((p) => p.method === method).length, 6);
      const f1 = run.rows.find((r) => r.method === method && r.metric === 'f1' && r.group === 'gold=has-answer')!;
      assert.equal(f1.n, 5);
    }
    // Batches of one context: still one compression per context (and per batch).
    calls.length = 0;
    const one = runEvaluation({ model, tokenizer: tok, methods: methods.slice(0, 1), tasks: [task], batchSize: 1 });
    assert.deepEqual(one.errors, []);
    assert.deepEqual(
      calls.map((c) => c.length),
      [1, 1, 1],
    );
    assert.equal(one.latency.find((l) => l.group === 'all')!.contexts, 3);
    // --n takes whole contexts (the last may give only some of its questions).
    const four = makeQaTask(path, tok, { n: 4, seed: 1 });
    assert.equal(four.examples.length, 4);
    assert.ok(new Set(four.examples.map((e) => e.context.join())).size <= 3);
  },
);

function cli(args: string[]): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(process.execPath, ['bin/softpress.js', 'eval', ...args], {
    encoding: 'utf8',
    timeout: 180_000,
    env: { ...process.env, SOFTPRESS_THREADS: '2' },
  });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

test(
  'softpress eval --task qa --data FILE on models/softpress-base: rows, latency per context, report; malformed file',
  { skip: !existsSync(resolve('models/softpress-base/model.safetensors')) && 'needs models/softpress-base' },
  () => {
    const data = file('tiny-v2.json', JSON.stringify(SQUAD_V20));
    const v11 = file('tiny-v11.json', JSON.stringify(SQUAD_V11));
    const out = join(tmpDir(), 'out');
    const r = cli(['--task', 'qa', '--data', data, '--methods', 'full,none', '--json', '--quiet', '--no-png', '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as {
            task: string;
            method: string;
            ratio: number | null;
            metric: string;
            group: string;
            value: number;
            n: number;
            retention: number | null;
          },
      );
    for (const row of rows) assert.deepEqual(Object.keys(row).sort(), ['group', 'method', 'metric', 'n', 'ratio', 'retention', 'task', 'value']);
    for (const method of ['full', 'none']) {
      for (const [group, n] of [
        ['all', 2],
        ['gold=has-answer', 1],
        ['gold=no-answer', 1],
      ] as const) {
        for (const metric of ['em', 'f1']) {
          const row = rows.find((x) => x.method === method && x.metric === metric && x.group === group);
          assert.ok(row, `no ${metric} ${group} for ${method}`);
          assert.equal(row.task, 'qa');
          assert.equal(row.n, n);
          assert.ok(row.value >= 0 && row.value <= 1);
        }
      }
    }
    const rep = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as {
      latency: { method: string; group: string; examples: number; contexts: number }[];
      meta: { tasks: { name: string; about: string }[] };
    };
    for (const l of rep.latency.filter((x) => x.group === 'all')) assert.deepEqual([l.examples, l.contexts], [2, 1]);
    assert.match(rep.meta.tasks[0]!.about, /tiny-v2\.json \(SQuAD v2\.0\): 2 questions on 1 contexts.*1 unanswerable/);
    const md = readFileSync(join(out, 'report.md'), 'utf8');
    assert.match(md, /## qa/);
    assert.match(md, /compress ms \/ context/);
    assert.match(md, /F1 by gold:/);
    const preds = readFileSync(join(out, 'predictions.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { id: string; gold: string });
    assert.deepEqual(preds.map((p) => p.id).sort(), ['qa/a1', 'qa/a1', 'qa/a2', 'qa/a2']);
    // v1.1, --n 2: whole contexts; no has-answer / no-answer breakdown.
    const r11 = cli(['--task', 'qa', '--data', v11, '--methods', 'full,none', '--n', '2', '--json', '--quiet']);
    assert.equal(r11.status, 0, r11.stderr);
    const rows11 = r11.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { group: string; n: number });
    assert.deepEqual([...new Set(rows11.map((x) => x.group))], ['all']);
    assert.ok(rows11.every((x) => x.n === 2));
    // A malformed file: a clear error naming the line and the field, exit code 1.
    const bad = file('bad.jsonl', `${JSON.stringify({ context: 'c', question: 'q', answers: ['a'] })}\n${JSON.stringify({ context: 'c', question: 'q2' })}\n`);
    const rb = cli(['--task', 'qa', '--data', bad, '--methods', 'full,none', '--json', '--quiet']);
    assert.equal(rb.status, 1);
    assert.match(rb.stderr, /bad\.jsonl:2: missing field "answers"/);
  },
);
