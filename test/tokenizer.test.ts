import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CORPUS_NAMES, loadCorpora, loadSotu } from '../src/data/corpora.js';
import { Rng } from '../src/data/rng.js';
import { BYTE_TO_CHAR, BpeTokenizer, SOFTPRESS_SPECIAL_TOKENS, preTokenize, toByteLevel, trainBpe } from '../src/models/bpe.js';
import { run } from '../src/cli/tokenizer.js';

// One small tokenizer for the whole file: a few State of the Union addresses, vocab 600.
const trainTexts = loadSotu()
  .slice(0, 12)
  .map((d) => d.text);
const trainStart = Date.now();
const tok = trainBpe(trainTexts, { vocabSize: 600 });
const trainMs = Date.now() - trainStart;

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'softpress-tok-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const EDGE_CASES = [
  '',
  ' ',
  '\n',
  '   leading and trailing   ',
  'two  spaces,\ttabs\t\tand\n\nnewlines\r\n',
  "Don't, can't, we'll, I'm, they've, she'd, it's -- 'quoted' \"double\"",
  'Numbers: 3.14159, 1,000,000 and 2024-01-01; 00042!',
  'Unicode: café naïve Ærøskøbing, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어',
  'Emoji 🎉🎉 👩‍👩‍👧‍👦 🇫🇷 and combining e\u0301 a\u0308',
  '\uFEFFstarts with a byte-order mark',
  'NUL \u0000 and DEL \u007f and C1 \u0085 controls, nbsp\u00a0here, zero\u200bwidth',
  '<|bos|> special-looking text <|eos|><|pad|>',
  'a'.repeat(300),
  '!'.repeat(120) + ' ' + '9'.repeat(200) + ' '.repeat(70) + 'x',
  `${'word '.repeat(50)}\n${'\t'.repeat(10)}end`,
];

/** Random well-formed strings: ASCII-heavy with some multi-byte and astral code points. */
function randomStrings(seed: number, n: number): string[] {
  const rng = new Rng(seed);
  const pools = [
    () => String.fromCharCode(rng.intBetween(0x20, 0x7e)),
    () => rng.pick([' ', ' ', '\n', '\t', '  ', '\r\n']),
    () => String.fromCodePoint(rng.intBetween(0xa0, 0x7ff)),
    () => String.fromCodePoint(rng.intBetween(0x800, 0xd7ff)),
    () => String.fromCodePoint(rng.intBetween(0x1f300, 0x1faff)),
    () => String.fromCodePoint(rng.intBetween(0, 0x1f)),
  ];
  return Array.from({ length: n }, () => {
    let s = '';
    const len = rng.int(80);
    for (let i = 0; i < len; i++) s += (rng.chance(0.6) ? pools[0]! : rng.pick(pools))();
    return s;
  });
}

test('training is quick, deterministic and fills the vocab', () => {
  assert.ok(trainMs < 10000, `trained in ${trainMs} ms`);
  assert.equal(tok.vocabSize, 600);
  assert.equal(tok.merges.length, 600 - SOFTPRESS_SPECIAL_TOKENS.length - 256);
  const again = trainBpe(trainTexts, { vocabSize: 600 });
  assert.deepEqual(again.merges, tok.merges);
  // Frequent English pieces became single tokens.
  assert.equal(tok.encode(' the').length, 1);
  assert.throws(() => trainBpe(['x'], { vocabSize: 100 }), /vocabSize must be/);
  // With little text, training stops when no pair is frequent enough.
  assert.ok(trainBpe(['abab abab'], { vocabSize: 1000 }).vocabSize < 1000);
});

test('special tokens have the reserved ids and are plain text unless allowed', () => {
  assert.equal(tok.bos, 0);
  assert.equal(tok.eos, 1);
  assert.equal(tok.pad, 2);
  const names = ['<|restate|>', '<|question|>', '<|answer|>', '<|mem|>', '<|sep|>'];
  names.forEach((n, i) => assert.equal(tok.special.get(n), 3 + i));
  for (let i = 0; i < 8; i++) assert.equal(tok.special.get(`<|reserved_${i}|>`), 8 + i);
  assert.equal(tok.special.size, 16);
  const text = 'Q<|question|>A';
  const plain = tok.encode(text);
  assert.ok(
    plain.every((id) => id >= 16),
    'no special ids without allowSpecial',
  );
  assert.equal(tok.decode(plain), text);
  const parsed = tok.encode(text, { allowSpecial: true });
  assert.equal(parsed.filter((id) => id === 4).length, 1);
  assert.equal(tok.decode(parsed), 'QA');
  assert.equal(tok.decode(parsed, { keepSpecial: true }), text);
  const withEnds = tok.encode('hi', { bos: true, eos: true });
  assert.equal(withEnds[0], 0);
  assert.equal(withEnds[withEnds.length - 1], 1);
  assert.equal(tok.decode(withEnds), 'hi');
  assert.equal(tok.decode(withEnds, { keepSpecial: true }), '<|bos|>hi<|eos|>');
  assert.throws(() => tok.decode([600]), /id 600 at position 0 is not in the vocabulary/);
});

test('exact round trip on edge cases and random strings', () => {
  for (const s of [...EDGE_CASES, ...randomStrings(1, 300)]) {
    const ids = tok.encode(s);
    assert.equal(tok.decode(ids), s, JSON.stringify(s));
    assert.equal(preTokenize(s).join(''), s);
  }
  // Every byte is a token, so ids never fall back to anything lossy.
  assert.equal(BYTE_TO_CHAR.length, 256);
  assert.equal(new Set(BYTE_TO_CHAR).size, 256);
  assert.equal(toByteLevel(' hello'), 'Ġhello');
});

test('exact round trip on every document of all corpora', () => {
  const docs = loadCorpora(CORPUS_NAMES);
  let chars = 0;
  let tokens = 0;
  for (const d of docs) {
    const ids = tok.encode(d.text);
    tokens += ids.length;
    chars += d.text.length;
    if (tok.decode(ids) !== d.text) assert.fail(`round trip failed for ${d.id}`);
  }
  assert.equal(docs.length, 871);
  assert.ok(chars / tokens > 2, `chars/token ${chars / tokens}`);
});

test('save / load keeps the tokenizer identical', (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'sub', 'tokenizer.json');
  tok.save(path);
  const json = JSON.parse(readFileSync(path, 'utf8'));
  assert.equal(json.model.type, 'BPE');
  assert.equal(json.pre_tokenizer.type, 'ByteLevel');
  assert.equal(json.decoder.type, 'ByteLevel');
  assert.equal(Object.keys(json.model.vocab).length, 600);
  assert.equal(json.added_tokens.length, 16);
  assert.deepEqual(json.added_tokens[0], {
    id: 0,
    content: '<|bos|>',
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const loaded = BpeTokenizer.fromFile(path);
  assert.equal(loaded.vocabSize, tok.vocabSize);
  assert.deepEqual([...loaded.special], [...tok.special]);
  assert.deepEqual([loaded.bos, loaded.eos, loaded.pad], [tok.bos, tok.eos, tok.pad]);
  assert.deepEqual(loaded.toJSON(), tok.toJSON());
  for (const s of [
    ...EDGE_CASES,
    ...loadSotu()
      .slice(100, 110)
      .map((d) => d.text),
  ]) {
    assert.deepEqual(loaded.encode(s), tok.encode(s));
  }
  // Merges written as ["a", "b"] pairs (newer tokenizers format) load the same.
  json.model.merges = json.model.merges.map((m: string) => m.split(' '));
  assert.deepEqual(BpeTokenizer.fromJSON(json).encode(EDGE_CASES[5] as string), tok.encode(EDGE_CASES[5] as string));
});

test('tokenizer.json validation errors are explicit', () => {
  const good = tok.toJSON() as { model: { vocab: Record<string, number>; merges: string[] } } & Record<string, unknown>;
  const clone = () => JSON.parse(JSON.stringify(good));
  const noByte = clone();
  delete noByte.model.vocab[BYTE_TO_CHAR[0x41] as string];
  assert.throws(() => BpeTokenizer.fromJSON(noByte, 'x.json'), /x\.json: .*(lacks the byte token for 0x41|not in the vocab)/);
  const norm = clone();
  norm.normalizer = { type: 'NFC' };
  assert.throws(() => BpeTokenizer.fromJSON(norm, 'x.json'), /normalizer "NFC" is not supported/);
  const wordPiece = clone();
  wordPiece.model.type = 'WordPiece';
  assert.throws(() => BpeTokenizer.fromJSON(wordPiece), /only "BPE"/);
  const badMerge = clone();
  badMerge.model.merges.push('Ġzz qq');
  assert.throws(() => BpeTokenizer.fromJSON(badMerge), /merge #\d+ .* is not in the vocab/);
  assert.throws(() => BpeTokenizer.fromFile('/nonexistent/tokenizer.json'), /cannot read tokenizer/);
});

// @huggingface/tokenizers reads our tokenizer.json and must tokenise identically.
type HfTokenizer = {
  encode(text: string): { ids: number[] };
  decode(ids: number[], opts?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean }): string;
};
let hfCtor: (new (json: object, config: object) => HfTokenizer) | undefined;
try {
  hfCtor = ((await import('@huggingface/tokenizers')) as unknown as { Tokenizer: new (json: object, config: object) => HfTokenizer }).Tokenizer;
} catch {
  hfCtor = undefined;
}

test('@huggingface/tokenizers loads our tokenizer.json and gives the same ids', { skip: hfCtor ? false : '@huggingface/tokenizers is not installed' }, (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'tokenizer.json');
  tok.save(path);
  const hf = new hfCtor!(JSON.parse(readFileSync(path, 'utf8')), tok.tokenizerConfig());
  const texts = [
    ...EDGE_CASES.filter((s) => s !== '' && !s.includes('<|')), // HF always parses added tokens
    ...randomStrings(2, 200).filter((s) => s !== ''),
    ...loadCorpora(CORPUS_NAMES)
      .filter((_, i) => i % 29 === 0)
      .map((d) => d.text),
  ];
  for (const s of texts) {
    const ours = tok.encode(s);
    assert.deepEqual(hf.encode(s).ids, ours, JSON.stringify(s.slice(0, 80)));
    assert.equal(hf.decode(ours, { clean_up_tokenization_spaces: false }), s);
  }
  // Specials: HF splits them out of the text, like our allowSpecial mode.
  const special = 'x <|mem|><|sep|> y';
  assert.deepEqual(hf.encode(special).ids, tok.encode(special, { allowSpecial: true }));
  assert.equal(
    hf.decode(tok.encode(special, { allowSpecial: true }), { skip_special_tokens: true, clean_up_tokenization_spaces: false }),
    tok.decode(tok.encode(special, { allowSpecial: true })),
  );
});

test('CLI: train on a user corpus, write tokenizer.json, reject bad flags', async (t) => {
  const dir = tempDir(t);
  const data = join(dir, 'data.jsonl');
  writeFileSync(data, trainTexts.map((text, i) => JSON.stringify({ id: i, text: text.slice(0, 4000) })).join('\n'));
  const out = join(dir, 'out');
  const write = process.stdout.write;
  const errWrite = process.stderr.write;
  let stdout = '';
  process.stdout.write = ((chunk: string) => {
    stdout += chunk;
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    await run(['train', '--out', out, '--vocab', '400', '--data', data, '--seed', '3', '--hf-config']);
  } finally {
    process.stdout.write = write;
    process.stderr.write = errWrite;
  }
  assert.ok(existsSync(join(out, 'tokenizer.json')));
  assert.ok(existsSync(join(out, 'tokenizer_config.json')));
  assert.equal(BpeTokenizer.fromFile(join(out, 'tokenizer.json')).vocabSize, 400);
  assert.match(stdout, /vocab 400 .*\n.*chars\/token/);
  await assert.rejects(run(['train', '--out', out, '--bogus']), /Unknown option '--bogus'/);
  await assert.rejects(run(['train', '--vocab', '100']), /--out DIR is required/);
  await assert.rejects(run(['train', '--out', out, '--vocab', 'lots']), /--vocab must be an integer/);
  await assert.rejects(run(['train', '--out', out, '--corpora', 'sotu,nope']), /unknown corpus "nope"/);
  await assert.rejects(run(['fly']), /unknown action "fly"/);
});
