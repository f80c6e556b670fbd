import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CORPUS_LICENSES,
  CORPUS_NAMES,
  brownToText,
  detokenize,
  loadBrown,
  loadCorpora,
  loadMobyDick,
  loadSotu,
  loadTextCorpus,
  type Doc,
} from '../src/data/corpora.js';
import { SPLIT_NAMES, assignSplit, splitDocuments } from '../src/data/splits.js';
import { Rng, hashToUnit } from '../src/data/rng.js';
import { babiTaskFromFileName, loadBabiFile, parseBabi, splitBabi } from '../src/data/babi.js';
import {
  formatQA,
  formatQAPrompt,
  formatRecall,
  makeClozeExamples,
  makeNeedleExamples,
  makeRecallExamples,
  qaTarget,
  samplePassage,
  splitSentences,
} from '../src/data/qa.js';

// dist/test/data.test.js -> repository root -> ../shared/fixtures
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const babiDir = process.env.SOFTPRESS_BABI_DIR ?? resolve(repoRoot, '..', 'shared', 'fixtures', 'babi', 'en-10k');
const qa1Path = join(babiDir, 'qa1_single-supporting-fact_train.txt');
const babiSkip = existsSync(qa1Path) ? false : `bAbI fixtures not found at ${babiDir} (set SOFTPRESS_BABI_DIR)`;

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'softpress-data-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// --- corpora -------------------------------------------------------------------------------

test('built-in corpora: document counts, ids, non-empty texts', () => {
  const expected: Record<string, number> = { sotu: 233, 'moby-dick': 138, brown: 500 };
  for (const name of CORPUS_NAMES) {
    const docs = loadCorpora([name]);
    assert.equal(docs.length, expected[name], `${name} document count`);
    assert.equal(new Set(docs.map((d) => d.id)).size, docs.length, `${name} ids unique`);
    for (const d of docs) {
      assert.equal(d.source, name);
      assert.ok(d.id.startsWith(`${name}/`), d.id);
      assert.ok(d.text.trim().length > 100, `${d.id} has text`);
      assert.equal(d.text, d.text.trim());
    }
    assert.ok(CORPUS_LICENSES[name].dataLicense.length > 0);
  }
  assert.equal(loadCorpora('sotu,brown').length, 733);
  assert.throws(() => loadCorpora(['nope']), /unknown corpus "nope"/);
});

test('sotu and moby-dick metadata', () => {
  const sotu = loadSotu();
  assert.equal(sotu[0]?.id, 'sotu/1790_george_washington_n');
  assert.match(sotu[0]?.title ?? '', /George Washington, 1790/);
  assert.match(sotu[0]?.text ?? '', /^Fellow-Citizens of the Senate/);
  const moby = loadMobyDick();
  const ch1 = moby.find((d) => d.id === 'moby-dick/chapter_1');
  assert.equal(ch1?.title, 'Chapter 1. Loomings.');
  assert.match(ch1?.text ?? '', /^Call me Ishmael\./);
  assert.ok(!moby.some((d) => d.id === 'moby-dick/contents'));
  assert.ok(moby.some((d) => d.id === 'moby-dick/epilogue'));
});

test('Brown: tags stripped and punctuation detokenised', () => {
  const tagged =
    "\n\n\tThe/at jury/nn said/vbd ,/, ``/`` it/pps deserves/vbz praise/nn ''/'' ./.\n\n" +
    'He/pps was/bedz (/( sadly/rb )/) won/vbn by/in Ivan/np Allen/np Jr./np ./.\n\n' +
    'Merger/nn-hl proposed/vbn-hl\n\n' +
    "\tShe/pps said/vbd ,/, '/' Don't/do* worry/vb '/' ;/. ;/.\n" +
    'Was/bedz it/pps 1-1/2/cd miles/nns ?/. ?/.\n';
  assert.equal(
    brownToText(tagged),
    'The jury said, "it deserves praise". He was (sadly) won by Ivan Allen Jr.\n\n' + 'Merger proposed\n\n' + "She said, 'Don't worry'; Was it 1-1/2 miles?",
  );
  assert.equal(detokenize(['a', '--', 'b', ',', 'c', ':', 'd', '!']), 'a--b, c: d!');
  const first = loadBrown()[0] as Doc;
  assert.ok(
    first.text.startsWith(
      'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.',
    ),
    first.text.slice(0, 200),
  );
  for (const d of loadBrown()) {
    assert.doesNotMatch(d.text, /[A-Za-z]\/(nn|np|at|in|vbd|jj|nns)(?=[\s,;]|$)/, `${d.id} still has tags`);
    // (A lone '' inside a word is real text, e.g. 4' 10'' tall.)
    assert.doesNotMatch(d.text, /(^|\s)(``|'')(?=\s|$)| [,.;:?!](?=\s|$)/, `${d.id} has Penn-style punctuation`);
  }
});

// --- user corpora --------------------------------------------------------------------------

test('loadTextCorpus: txt with form feeds, directory, jsonl with ids', (t) => {
  const dir = tempDir(t);
  const txt = join(dir, 'book.txt');
  writeFileSync(txt, 'First document.\r\nSecond line.\n\n\f\n\nSecond document.\n\f\n   \n');
  const docs = loadTextCorpus(txt);
  assert.deepEqual(
    docs.map((d) => [d.id, d.text]),
    [
      ['user:book/book.txt#0', 'First document.\nSecond line.'],
      ['user:book/book.txt#1', 'Second document.'],
    ],
  );
  const sub = join(dir, 'corpus');
  mkdirSync(join(sub, 'nested'), { recursive: true });
  writeFileSync(join(sub, 'b.txt'), 'Bee.');
  writeFileSync(join(sub, 'nested', 'a.txt'), 'Ay.');
  writeFileSync(join(sub, 'ignored.csv'), 'x,y');
  writeFileSync(join(sub, 'c.jsonl'), '{"id": 7, "text": "Sea.", "title": "C"}\n\n{"text": "Dee."}\n');
  const fromDir = loadTextCorpus(sub, { source: 'mine' });
  assert.deepEqual(
    fromDir.map((d) => [d.id, d.text, d.title]),
    [
      ['mine/b.txt', 'Bee.', undefined],
      ['mine/7', 'Sea.', 'C'],
      ['mine/c.jsonl:3', 'Dee.', undefined],
      ['mine/nested/a.txt', 'Ay.', undefined],
    ],
  );
  assert.throws(() => loadTextCorpus(join(dir, 'missing.txt')), /does not exist/);
});

test('loadTextCorpus: JSONL errors name the file and line', (t) => {
  const dir = tempDir(t);
  const bad = join(dir, 'bad.jsonl');
  writeFileSync(bad, '{"text": "ok"}\n{"text": "broken"\n');
  assert.throws(
    () => loadTextCorpus(bad),
    (err: Error) => err.message.includes(`${bad}:2: invalid JSON`),
  );
  const noText = join(dir, 'notext.jsonl');
  writeFileSync(noText, '{"text": "ok"}\n\n{"body": "x"}\n');
  assert.throws(
    () => loadTextCorpus(noText),
    (err: Error) => err.message.includes(`${noText}:3: missing string field "text"`),
  );
  const arr = join(dir, 'arr.jsonl');
  writeFileSync(arr, '["text"]\n');
  assert.throws(() => loadTextCorpus(arr), /arr\.jsonl:1: expected a JSON object/);
  const dup = join(dir, 'dup.jsonl');
  writeFileSync(dup, '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n');
  assert.throws(() => loadTextCorpus(dup), /duplicate document id/);
});

// --- rng and splits ------------------------------------------------------------------------

test('Rng: deterministic streams, forks, ranges', () => {
  const a = new Rng(42);
  const b = new Rng(42);
  const xs = Array.from({ length: 100 }, () => a.next());
  assert.deepEqual(
    xs,
    Array.from({ length: 100 }, () => b.next()),
  );
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const other = new Rng(43);
  assert.notDeepEqual(
    xs.slice(0, 5),
    Array.from({ length: 5 }, () => other.next()),
  );
  const r = new Rng('seed');
  for (let i = 0; i < 1000; i++) {
    const k = r.intBetween(-3, 3);
    assert.ok(Number.isInteger(k) && k >= -3 && k <= 3);
  }
  // A fork does not advance its parent and depends only on (parent state, label).
  const p1 = new Rng(7);
  const p2 = new Rng(7);
  assert.equal(p1.fork('x').next(), p2.fork('x').next());
  assert.equal(p1.next(), p2.next());
  assert.notEqual(new Rng(7).fork('x').next(), new Rng(7).fork('y').next());
  assert.deepEqual(new Rng(1).shuffle([1, 2, 3, 4, 5]).sort(), [1, 2, 3, 4, 5]);
  assert.equal(hashToUnit('doc', 1), hashToUnit('doc', 1));
  assert.notEqual(hashToUnit('doc', 1), hashToUnit('doc', 2));
});

test('splits: deterministic, disjoint, covering, non-empty per corpus', () => {
  const docs = loadCorpora(CORPUS_NAMES);
  const s0 = splitDocuments(docs, { seed: 0 });
  const again = splitDocuments(docs, { seed: 0 });
  const s1 = splitDocuments(docs, { seed: 1 });
  const ids = (xs: readonly Doc[]) => xs.map((d) => d.id);
  for (const name of SPLIT_NAMES) assert.deepEqual(ids(s0[name]), ids(again[name]));
  assert.notDeepEqual(ids(s0.valid), ids(s1.valid));
  const all = [...ids(s0.train), ...ids(s0.valid), ...ids(s0.test)];
  assert.equal(all.length, docs.length);
  assert.equal(new Set(all).size, docs.length);
  for (const source of CORPUS_NAMES) {
    for (const name of SPLIT_NAMES) {
      assert.ok(
        s0[name].some((d) => d.source === source),
        `${source} has ${name} documents`,
      );
    }
  }
  const trainShare = s0.train.length / docs.length;
  assert.ok(trainShare > 0.85 && trainShare < 0.95, `train share ${trainShare}`);
  // Custom fractions, and the per-corpus repair on a tiny corpus.
  const tiny = [0, 1, 2].map((i) => ({ id: `t/${i}`, source: 't' }));
  for (let seed = 0; seed < 20; seed++) {
    const s = splitDocuments(tiny, { seed });
    assert.deepEqual([s.train.length, s.valid.length, s.test.length], [1, 1, 1]);
  }
  const half = splitDocuments(docs, { seed: 3, fractions: { train: 0.5, valid: 0.5, test: 0 } });
  assert.equal(half.test.length, 0);
  assert.ok(Math.abs(half.train.length / docs.length - 0.5) < 0.06);
  assert.throws(() => splitDocuments(docs, { fractions: { train: 0.9, valid: 0.2 } }), /sum to 1/);
  assert.equal(assignSplit('x', { seed: 5 }), assignSplit('x', { seed: 5 }));
});

// --- bAbI ----------------------------------------------------------------------------------

test('bAbI: parse an inline example', () => {
  const text = [
    '1 Mary moved to the bathroom.',
    '2 John went to the hallway.',
    '3 Where is Mary? \tbathroom\t1',
    '4 Daniel went back to the hallway.',
    '5 Where is Daniel? \thallway\t4',
    '1 Sandra travelled to the office.',
    '2 Where is Sandra? \toffice\t1',
    '',
  ].join('\n');
  const ex = parseBabi(text, { task: 1 });
  assert.equal(ex.length, 3);
  assert.deepEqual(ex[0], {
    task: 1,
    storyIndex: 0,
    id: 'qa1/0/3',
    story: 'Mary moved to the bathroom.\nJohn went to the hallway.',
    question: 'Where is Mary?',
    answer: 'bathroom',
    supporting: ['Mary moved to the bathroom.'],
  });
  assert.equal(ex[1]?.story, 'Mary moved to the bathroom.\nJohn went to the hallway.\nDaniel went back to the hallway.');
  assert.equal(ex[2]?.story, 'Sandra travelled to the office.');
  assert.equal(ex[2]?.storyIndex, 1);
  assert.equal(parseBabi(text, { task: 1, joiner: ' ' })[1]?.story.includes('\n'), false);
  assert.throws(() => parseBabi('1 A.\n3 B? \tx\t9\n', { task: 2, source: 'f.txt' }), /f\.txt:2: supporting fact 9/);
  assert.throws(() => parseBabi('2 A.\n', { task: 2, source: 'f.txt' }), /f\.txt:1: the first story must start/);
  assert.throws(() => parseBabi('1 A.\nB?\n', { task: 2, source: 'f.txt' }), /f\.txt:2: expected "<number> <text>"/);
  assert.equal(babiTaskFromFileName('/x/qa19_path-finding_train.txt'), 19);
  assert.equal(babiTaskFromFileName('/x/other.txt'), undefined);
  const parts = splitBabi(ex, 0.1);
  assert.deepEqual([parts.train.length, parts.valid.length], [2, 1]);
});

test('bAbI: qa1 file, train/valid by story', { skip: babiSkip }, () => {
  const all = loadBabiFile(qa1Path, { split: 'all' });
  assert.equal(all.length, 10000);
  assert.ok(all.every((e) => e.task === 1 && e.story.length > 0 && e.answer.length > 0 && e.question.endsWith('?')));
  assert.ok(all.every((e) => e.supporting.every((s) => e.story.includes(s))));
  const train = loadBabiFile(qa1Path);
  const valid = loadBabiFile(qa1Path, { split: 'valid' });
  assert.equal(train.length + valid.length, all.length);
  const trainStories = new Set(train.map((e) => e.storyIndex));
  assert.ok(valid.every((e) => !trainStories.has(e.storyIndex)));
  assert.ok(Math.min(...valid.map((e) => e.storyIndex)) > Math.max(...trainStories));
  assert.ok(valid.length >= 900 && valid.length <= 1100, `valid ${valid.length}`);
  assert.deepEqual(loadBabiFile(qa1Path, { split: 'valid' }), valid);
  const path19 = join(babiDir, 'qa19_path-finding_train.txt');
  if (existsSync(path19)) assert.match(loadBabiFile(path19)[0]?.answer ?? '', /^[nsew],[nsew]$/);
});

// --- generated QA --------------------------------------------------------------------------

test('needles: deterministic by seed, answer planted in the context, length kept', () => {
  const { valid } = splitDocuments(loadCorpora(CORPUS_NAMES), { seed: 0 });
  const a = makeNeedleExamples(valid, { seed: 11, count: 40, chars: 1500 });
  const b = makeNeedleExamples(valid, { seed: 11, count: 40, chars: 1500 });
  const c = makeNeedleExamples(valid, { seed: 12, count: 40, chars: 1500 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.deepEqual(makeNeedleExamples(valid, { seed: 11, count: 10, chars: 1500 }), a.slice(0, 10));
  const validIds = new Set(valid.map((d) => d.id));
  for (const ex of a) {
    assert.ok(ex.context.length <= 1500, `${ex.id} ${ex.context.length} chars`);
    assert.ok(ex.context.length > 200, `${ex.id} is too short`);
    assert.ok(ex.context.includes(ex.answer), `${ex.id} answer in context`);
    assert.ok(ex.question.endsWith('?'));
    assert.ok(ex.docIds.every((id) => validIds.has(id)));
    assert.ok(ex.depth !== undefined && ex.depth >= 0 && ex.depth <= 1);
  }
  assert.ok(new Set(a.map((e) => e.template)).size >= 4, 'several templates used');
  // Fixed depth, and a token budget through a callback (here: whitespace words).
  const words = (s: string) => s.split(/\s+/).filter((w) => w !== '').length;
  const deep = makeNeedleExamples(valid, { seed: 1, count: 20, tokens: 120, countTokens: words, depth: 1, templates: ['secret-code'] });
  for (const ex of deep) {
    assert.ok(words(ex.context) <= 120, `${words(ex.context)} words`);
    assert.ok(ex.context.endsWith(`is ${ex.answer}.`), ex.context.slice(-60));
    assert.match(ex.question, /^What is the secret code of the \w+ \w+\?$/);
  }
  const first = makeNeedleExamples(valid, { seed: 1, count: 5, depth: 0 });
  for (const ex of first) assert.ok(splitSentences(ex.context)[0]?.includes(ex.answer), ex.context.slice(0, 80));
  assert.throws(() => makeNeedleExamples(valid, { count: 1, tokens: 100 }), /countTokens/);
  assert.throws(() => makeNeedleExamples(valid, { count: 1, templates: ['nope'] }), /unknown needle template/);
});

test('recall: several distinct facts per passage, each asked back once, in the QA format', () => {
  const { valid } = splitDocuments(loadCorpora(CORPUS_NAMES), { seed: 0 });
  const a = makeRecallExamples(valid, { seed: 3, count: 30, chars: 1200, facts: 6 });
  assert.deepEqual(a, makeRecallExamples(valid, { seed: 3, count: 30, chars: 1200, facts: 6 }));
  assert.notDeepEqual(a, makeRecallExamples(valid, { seed: 4, count: 30, chars: 1200, facts: 6 }));
  const validIds = new Set(valid.map((d) => d.id));
  let shuffledOrder = 0;
  for (const ex of a) {
    assert.equal(ex.qas.length, 6);
    assert.ok(ex.context.length <= 1200 && ex.context.length > 600, `${ex.id}: ${ex.context.length} chars`);
    assert.equal(new Set(ex.qas.map((q) => q.question)).size, 6, 'questions are distinct');
    const where: number[] = [];
    for (const qa of ex.qas) {
      // Each fact is in the context, its answer ending a sentence.
      const at = ex.context.search(new RegExp(`(^|\\s)(The|Room|[A-Z][a-z]+'s|[A-Z][a-z]+ was) [^.?!]*\\b${qa.answer}\\.`));
      assert.ok(at >= 0, `${ex.id}: fact for "${qa.question}" (${qa.answer}) not found`);
      where.push(at);
    }
    if (where.some((w, i) => i > 0 && w < (where[i - 1] as number))) shuffledOrder++;
    assert.ok(ex.docIds.length > 0 && ex.docIds.every((id) => validIds.has(id)));
    const text = formatRecall(ex);
    assert.ok(text.startsWith(ex.context));
    assert.equal((text.match(/\nQuestion: /g) ?? []).length, 6);
    // One fact asked alone is exactly the single-question format.
    assert.equal(formatRecall({ ...ex, qas: ex.qas.slice(0, 1) }), formatQA({ context: ex.context, ...ex.qas[0]! }));
  }
  assert.ok(shuffledOrder > 20, `questions are not asked in the order of the facts (${shuffledOrder}/30)`);
  assert.throws(() => makeRecallExamples(valid, { count: 1, chars: 120, facts: 8 }), /no room/);
  assert.throws(() => makeRecallExamples(valid, { count: 1, facts: 0 }), /facts must be/);
});

test('cloze: deterministic by seed, blanked word present in the context', () => {
  const { test: testDocs } = splitDocuments(loadCorpora(CORPUS_NAMES), { seed: 0 });
  const a = makeClozeExamples(testDocs, { seed: 5, count: 40, chars: 800 });
  assert.deepEqual(a, makeClozeExamples(testDocs, { seed: 5, count: 40, chars: 800 }));
  assert.notDeepEqual(a, makeClozeExamples(testDocs, { seed: 6, count: 40, chars: 800 }));
  for (const ex of a) {
    assert.equal(ex.question.split('____').length, 2, ex.question);
    assert.ok(ex.context.includes(ex.question.replace('____', ex.answer)), `${ex.id}: sentence in context`);
    assert.match(ex.answer, /^[A-Za-z]+$/);
    assert.ok(!['the', 'and', 'which', 'would', 'their'].includes(ex.answer.toLowerCase()));
    assert.ok(ex.context.length <= 800);
  }
});

test('formatQA and passages', () => {
  const ex = { context: 'Ctx.', question: 'Q?', answer: 'A' };
  assert.equal(formatQA(ex), 'Ctx.\nQuestion: Q?\nAnswer: A');
  assert.equal(formatQAPrompt(ex), 'Ctx.\nQuestion: Q?\nAnswer:');
  assert.equal(formatQAPrompt(ex) + qaTarget(ex), formatQA(ex));
  assert.deepEqual(splitSentences('Mr. Smith went to Washington. He said "Yes." Then   he left! Did he? 42 left.'), [
    'Mr. Smith went to Washington.',
    'He said "Yes."',
    'Then he left!',
    'Did he?',
    '42 left.',
  ]);
  const docs = loadSotu().slice(0, 5);
  const p1 = samplePassage(docs, new Rng(3), { chars: 500 });
  const p2 = samplePassage(docs, new Rng(3), { chars: 500 });
  assert.deepEqual(p1, p2);
  assert.ok(p1.text.length <= 500 && p1.text.length > 100);
});
