/**
 * Evaluation metrics against hand-worked examples: SQuAD normalisation, EM and F1; corpus BLEU-4
 * (a sentence and a two-sentence corpus worked by hand, brevity penalty, smoothing, empty and
 * short hypotheses); exact prefix; ROUGE-L; perplexity and bits per byte; retention; the PNG
 * encoder's framing.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { inflateSync } from 'node:zlib';

import {
  bitsPerByte,
  corpusBleu,
  exactMatch,
  exactPrefixLength,
  f1Score,
  lcsLength,
  lmScore,
  normalizeAnswer,
  perplexity,
  retention,
  rougeL,
  sentenceBleu,
} from '../src/eval/metrics.js';
import { crc32, encodePng, linePlotPng } from '../src/eval/png.js';

const close = (a: number, b: number, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);
const words = (s: string) => s.split(' ').filter(Boolean);

test('normalizeAnswer: lower-case, punctuation, articles, whitespace', () => {
  assert.equal(normalizeAnswer('  The  Cat, sat!  '), 'cat sat');
  assert.equal(normalizeAnswer('An apple a day'), 'apple day');
  assert.equal(normalizeAnswer("Theory isn't 'the' end."), 'theory isnt end');
  assert.equal(normalizeAnswer('apple,football'), 'applefootball');
  assert.equal(normalizeAnswer('“Quoted” — text…'), 'quoted text');
  assert.equal(normalizeAnswer(''), '');
});

test('exact match and token F1 (SQuAD)', () => {
  assert.equal(exactMatch('the Kitchen.', 'kitchen'), 1);
  assert.equal(exactMatch('kitchen now', 'kitchen'), 0);
  assert.equal(exactMatch('hallway', ['kitchen', 'Hallway']), 1);
  // pred "blue big box" vs gold "the big red box": common {big, box} = 2; P = 2/3, R = 2/3.
  close(f1Score('blue big box', 'the big red box'), 2 / 3);
  // pred "a a b" vs gold "a b b" -> normalised "b" vs "b b": common 1, P 1, R 1/2, F1 2/3.
  close(f1Score('x x y', 'x y y'), (2 * ((2 / 3) * (2 / 3))) / (4 / 3));
  close(f1Score('a a b', 'a b b'), 2 / 3);
  assert.equal(f1Score('nothing', 'kitchen'), 0);
  // Both empty after normalisation -> 1; one empty -> 0.
  assert.equal(f1Score('the', 'a'), 1);
  assert.equal(f1Score('', 'kitchen'), 0);
  assert.equal(f1Score('kitchen', ['hallway', 'kitchen']), 1);
  assert.throws(() => exactMatch('x', []), /at least one gold/);
});

test('BLEU-4 of one sentence, worked by hand (brevity penalty < 1)', () => {
  // hyp a b c d e (c = 5), ref a b c d f g (r = 6).
  // p1 = 4/5 (a b c d), p2 = 3/4 (ab bc cd), p3 = 2/3 (abc bcd), p4 = 1/2 (abcd).
  // BP = exp(1 - 6/5) = exp(-0.2). BLEU = BP * (4/5 * 3/4 * 2/3 * 1/2)^(1/4) = exp(-0.2) * 0.2^0.25.
  const r = corpusBleu([words('a b c d e')], [words('a b c d f g')]);
  assert.deepEqual(r.matches, [4, 3, 2, 1]);
  assert.deepEqual(r.totals, [5, 4, 3, 2]);
  close(r.brevityPenalty, Math.exp(-0.2));
  close(r.bleu, Math.exp(-0.2) * Math.pow(0.2, 0.25));
  close(r.bleu, 0.547518, 1e-6);
  // Token ids work the same as strings.
  close(sentenceBleu([1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7]), r.bleu);
});

test('BLEU-4 with clipping, zero 4-gram precision, and +1 smoothing', () => {
  // hyp "the cat sat on the mat" vs ref "the cat is on the mat" (c = r = 6, BP = 1):
  // p1 = 5/6 (the x2 clipped to 2, cat, on, mat), p2 = 3/5 (the cat, on the, the mat),
  // p3 = 1/4 (on the mat), p4 = 0/3 -> BLEU 0 unsmoothed.
  const hyp = words('the cat sat on the mat');
  const ref = words('the cat is on the mat');
  const r = corpusBleu([hyp], [ref]);
  assert.deepEqual(r.matches, [5, 3, 1, 0]);
  assert.deepEqual(r.totals, [6, 5, 4, 3]);
  assert.equal(r.bleu, 0);
  // Smoothed (n > 1): 5/6, 4/6, 2/5, 1/4 -> (5/6 * 4/6 * 2/5 * 1/4)^(1/4).
  const s = corpusBleu([hyp], [ref], { smooth: true });
  close(s.bleu, Math.pow((5 / 6) * (4 / 6) * (2 / 5) * (1 / 4), 0.25));
  close(s.bleu, 0.485492, 1e-6);
  // Clipping: "the the the the" vs "the cat": p1 = 1/4.
  assert.deepEqual(corpusBleu([words('the the the the')], [words('the cat')]).matches.slice(0, 1), [1]);
});

test('BLEU-4 is corpus-level: counts and lengths summed before the precisions', () => {
  // Pair 1 as above (4/5, 3/4, 2/3, 1/2; c 5, r 6) + pair 2 identical "x y z w" (4/4, 3/3, 2/2, 1/1; c = r = 4).
  const r = corpusBleu([words('a b c d e'), words('x y z w')], [words('a b c d f g'), words('x y z w')]);
  assert.deepEqual(r.matches, [8, 6, 4, 2]);
  assert.deepEqual(r.totals, [9, 7, 5, 3]);
  assert.equal(r.hypothesisLength, 9);
  assert.equal(r.referenceLength, 10);
  const expected = Math.exp(1 - 10 / 9) * Math.pow((8 / 9) * (6 / 7) * (4 / 5) * (2 / 3), 0.25);
  close(r.bleu, expected);
  close(r.bleu, 0.714447, 1e-6); // 0.894839 * (384/945)^(1/4) = 0.894839 * 0.798408
  // Not the mean of sentence BLEUs.
  assert.ok(Math.abs(r.bleu - (sentenceBleu(words('a b c d e'), words('a b c d f g')) + 1) / 2) > 1e-3);
});

test('BLEU edge cases: empty hypothesis, short hypothesis, longer hypothesis (BP = 1), identical', () => {
  const e = corpusBleu([[]], [words('a b c d')]);
  assert.equal(e.bleu, 0);
  assert.equal(e.brevityPenalty, 0);
  assert.equal(corpusBleu([], []).bleu, 0);
  assert.equal(corpusBleu([[]], [words('a b c d')], { smooth: true }).bleu, 0);
  // Three tokens have no 4-gram: precision 0/0 counts as 0 without smoothing.
  assert.equal(corpusBleu([words('a b c')], [words('a b c')]).bleu, 0);
  // Hypothesis longer than the reference: BP = 1; p = 4/5, 3/4, 2/3, 1/2.
  const long = corpusBleu([words('a b c d e')], [words('a b c d')]);
  assert.equal(long.brevityPenalty, 1);
  close(long.bleu, Math.pow(0.2, 0.25));
  // Identical: 1.
  close(corpusBleu([words('a b c d e f')], [words('a b c d e f')]).bleu, 1);
  // Brevity penalty alone: a perfect prefix of half the reference -> exp(1 - 2) * 1.
  close(corpusBleu([words('a b c d')], [words('a b c d e f g h')]).bleu, Math.exp(-1));
  assert.throws(() => corpusBleu([[1]], []), /1 hypotheses for 0 references/);
});

test('exact prefix length', () => {
  assert.equal(exactPrefixLength([1, 2, 3, 9], [1, 2, 3, 4, 5]), 3);
  assert.equal(exactPrefixLength([], [1, 2]), 0);
  assert.equal(exactPrefixLength([1, 2, 3], [1, 2]), 2);
  assert.equal(exactPrefixLength([7], [1]), 0);
});

test('ROUGE-L: LCS-based F-measure', () => {
  // hyp "police killed the gunman", ref "police kill the gunman": LCS = police the gunman = 3.
  assert.equal(lcsLength(words('police killed the gunman'), words('police kill the gunman')), 3);
  const r = rougeL(words('police killed the gunman'), words('police kill the gunman'));
  close(r.precision, 3 / 4);
  close(r.recall, 3 / 4);
  close(r.f, 3 / 4);
  // hyp "a b" vs ref "a x b y": LCS 2, P = 1, R = 1/2, F1 = 2/3.
  close(rougeL(words('a b'), words('a x b y')).f, 2 / 3);
  // beta weights recall: F = (1 + b^2) P R / (R + b^2 P) with b = 2: 5 * 0.5 / (0.5 + 4) = 5/9.
  close(rougeL(words('a b'), words('a x b y'), 2).f, 5 / 9);
  assert.deepEqual(rougeL([], [1, 2]), { precision: 0, recall: 0, f: 0 });
  close(rougeL([1, 2, 3], [1, 2, 3]).f, 1);
});

test('perplexity and bits per byte from nats, tokens, bytes', () => {
  // 100 tokens at ln 4 nats each: ppl 4; over 50 bytes: 100 * 2 bits / 50 = 4 bits per byte.
  close(perplexity(100 * Math.log(4), 100), 4);
  close(bitsPerByte(100 * Math.log(4), 50), 4);
  const s = lmScore(100 * Math.log(4), 100, 200);
  close(s.nll, Math.log(4));
  close(s.ppl, 4);
  close(s.bpb!, 1);
  assert.throws(() => perplexity(1, 0), /tokens must be > 0/);
  assert.throws(() => bitsPerByte(1, 0), /bytes must be > 0/);
});

test('retention between none and full (both directions)', () => {
  close(retention(0.6, 0.2, 1.0)!, 0.5);
  close(retention(1.0, 0.2, 1.0)!, 1);
  // Perplexity: none 100, full 20, method 40 -> (40 - 100) / (20 - 100) = 0.75.
  close(retention(40, 100, 20)!, 0.75);
  assert.equal(retention(0.5, 0.3, 0.3), null);
  assert.equal(retention(NaN, 0, 1), null);
});

test('PNG: valid framing, CRCs and pixel data; a plot renders', () => {
  // CRC-32 of "123456789" is 0xCBF43926 (the standard check value).
  assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
  const rgb = new Uint8Array([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
  const png = encodePng(2, 2, rgb);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  // Walk the chunks, checking each CRC; inflate IDAT and compare the rows.
  let o = 8;
  const types: string[] = [];
  let idat = Buffer.alloc(0);
  while (o < png.length) {
    const len = png.readUInt32BE(o);
    const type = png.toString('ascii', o + 4, o + 8);
    types.push(type);
    assert.equal(png.readUInt32BE(o + 8 + len), crc32(png.subarray(o + 4, o + 8 + len)), `${type} CRC`);
    if (type === 'IDAT') idat = Buffer.concat([idat, png.subarray(o + 8, o + 8 + len)]);
    o += 12 + len;
  }
  assert.deepEqual(types, ['IHDR', 'IDAT', 'IEND']);
  assert.deepEqual([...inflateSync(idat)], [0, 255, 0, 0, 0, 255, 0, 0, 0, 0, 255, 255, 255, 255]);
  const plot = linePlotPng(
    [
      {
        name: 'a',
        points: [
          [4, 0.5],
          [8, 0.3],
        ],
      },
      {
        name: 'full',
        points: [
          [4, 0.9],
          [8, 0.9],
        ],
        dashed: true,
      },
    ],
    { title: 'EM vs ratio', xLabel: 'ratio', yLabel: 'EM' },
  );
  assert.equal(plot.readUInt32BE(16), 720);
  assert.equal(plot.readUInt32BE(20), 420);
});
