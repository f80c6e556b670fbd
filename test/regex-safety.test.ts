import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UnsafeRegexError, checkRegexSafety } from '../src/io/regex-safety.js';
import { TokenizerJsonError, checkTokenizerJson } from '../src/io/tokenizer-json.js';
import { HfTokenizer } from '../src/models/hf-tokenizer.js';
import { BpeTokenizer } from '../src/models/bpe.js';

// The pre-tokenizer patterns of real tokenizers (GPT-2, Llama 3, Qwen2, GPT-4o, DeepSeek).
const REAL = [
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  '\\s?[!-/:-~！-／：-～‘-‟　-。]+',
  '\\s+$',
  '[一-龥ࠀ-一가-퟿]+',
  '\\p{N}+',
  '[\\r\\n]',
];

test('regex safety: the pre-tokenizer patterns of real tokenizers pass', () => {
  for (const p of REAL) assert.doesNotThrow(() => checkRegexSafety(p), p);
});

test('regex safety: nested quantifiers, ambiguous repeated alternations, long overlapping chains and backreferences are refused with the offset', () => {
  const cases: [string, RegExp, number][] = [
    ['(a+)+$', /nested quantifiers/, 2],
    ['x(a*)*b', /empty string/, 5],
    ['(a|ab)*c', /branches 1 and 2 can start with the same character/, 1],
    ['(?:\\p{L}|\\p{Lu})+$', /same character/, 3],
    ['(?i:a|A)+', /same character/, 4],
    ['(\\w+\\s?)+$', /nested quantifiers/, 3],
    ['\\s*\\s*\\s*!', /3 unbounded repetitions/, 8],
    ['(a)\\1', /backreferences/, 3],
    ['a{100000}', /over the limit/, 1],
    ['(ab', /unclosed/, 0],
  ];
  for (const [p, msg, at] of cases) {
    assert.throws(
      () => checkRegexSafety(p),
      (e: unknown) => e instanceof UnsafeRegexError && msg.test(e.message) && e.offset === at && e.message.includes(JSON.stringify(p)),
      p,
    );
  }
  // the same shapes without the ambiguity are fine
  for (const p of ['(a|b)+$', '(?:ab)+', '\\s*[a-z]+', '(?:[a-z]{2})+']) assert.doesNotThrow(() => checkRegexSafety(p), p);
});

const tiny = () => ({
  model: { type: 'BPE', vocab: { a: 0, b: 1, ab: 2 } as Record<string, unknown>, merges: ['a b'] as unknown[] },
  added_tokens: [{ id: 3, content: '<s>', special: true }] as unknown[],
  pre_tokenizer: null as unknown,
});

test('tokenizer.json checks: vocabulary size, ids, merges, added tokens, patterns, each with the field', () => {
  assert.equal(checkTokenizerJson(tiny(), 't.json').vocabSize, 4);
  const refused = (mutate: (j: ReturnType<typeof tiny>) => void, field: string, msg: RegExp) => {
    const j = tiny();
    mutate(j);
    assert.throws(
      () => checkTokenizerJson(j, 't.json'),
      (e: unknown) => e instanceof TokenizerJsonError && e.field === field && e.message.startsWith(`t.json: ${field}: `) && msg.test(e.message),
      field,
    );
  };
  refused((j) => (j.model.vocab = {}), 'model.vocab', /is empty/);
  refused((j) => (j.model.vocab.b = 2 ** 31), 'model.vocab["b"]', /must be an integer in \[0, 2097152\)/);
  refused((j) => (j.model.vocab.b = 0.5), 'model.vocab["b"]', /must be an integer/);
  refused((j) => (j.model.vocab.b = 0), 'model.vocab["b"]', /already the id of "a"/);
  refused((j) => j.model.merges.push('a c'), 'model.merges[1]', /"c" .* is not in the vocabulary/);
  refused((j) => j.model.merges.push('b a'), 'model.merges[1]', /merged token "ba"/);
  refused((j) => j.model.merges.push('constructor toString'), 'model.merges[1]', /"constructor" .* is not in the vocabulary/);
  refused((j) => (j.added_tokens[0] = { id: -1, content: 'x' }), 'added_tokens[0].id', /must be an integer/);
  refused((j) => (j.added_tokens[0] = { id: 1, content: 'x' }), 'added_tokens[0].id', /vocabulary's id of "b"/);
  refused(
    (j) => (j.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: '(a+)+$' }, behavior: 'Isolated' }] }),
    'pre_tokenizer.pretokenizers[0].pattern.Regex',
    /refused: .*nested quantifiers/,
  );
  refused((j) => (j.pre_tokenizer = { type: 'Replace', pattern: { String: '' }, content: '$`' }), 'pre_tokenizer.content', /replacement pattern/);
});

test('both loaders refuse a freezing Split pattern by name, before any text is encoded', () => {
  const tok = BpeTokenizer.fromFile('models/softpress-base/tokenizer.json');
  const json = tok.toJSON();
  json.pre_tokenizer = {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: '(\\w+\\s?)+$' }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
  assert.throws(
    () => new HfTokenizer(json, {}, { source: 'evil.json' }),
    (e: unknown) => e instanceof TokenizerJsonError && /^evil\.json: pre_tokenizer\.pretokenizers\[0\]\.pattern\.Regex: refused/.test(e.message),
  );
  assert.throws(
    () => BpeTokenizer.fromJSON(json, 'evil.json'),
    (e: unknown) => e instanceof TokenizerJsonError && e.message.startsWith('evil.json: '),
  );
  // the shipped tokenizer still loads through both
  assert.equal(HfTokenizer.fromDir('models/softpress-base').vocabSize, tok.vocabSize);
});
