/** The papers' claims judged on a run's figures (src/eval/claims.ts). */
import test from 'node:test';
import assert from 'node:assert/strict';
import { paperClaims } from '../src/eval/claims.js';
import type { LatencyRow, ResultRow } from '../src/eval/harness.js';

const row = (task: string, method: string, ratio: number, metric: string, value: number, group = 'all') =>
  ({ task, method, ratio, metric, group, value, n: 10, retention: null }) as unknown as ResultRow;
const latency = (task: string, method: string, ratio: number, ms: number) =>
  ({ task, method, ratio, group: 'all', examples: 10, contexts: 10, compressMs: ms, compressMsPerContext: ms }) as unknown as LatencyRow;
const methods = ['gmsa', 'icae', 'comprexit', 'meanpool'].map((m) => ({ label: m, method: m, ratios: [4, 8] }));

test('claims: held, not held (a tie or one exception is enough), and not tested without the methods', () => {
  const results = [
    // GMSA above ICAE everywhere but 8x/512, where they tie.
    ...[4, 8].flatMap((r) =>
      [128, 512].flatMap((len) => [
        row('reconstruct', 'gmsa', r, 'bleu4', r === 8 && len === 512 ? 0.2 : 0.5, `len=${len}`),
        row('reconstruct', 'icae', r, 'bleu4', 0.2, `len=${len}`),
      ]),
    ),
    // ComprExIT above both on bAbI and QA at both ratios.
    ...[4, 8].flatMap((r) => [
      row('babi', 'comprexit', r, 'em', 0.6),
      row('babi', 'icae', r, 'em', 0.5),
      row('babi', 'meanpool', r, 'em', 0.4),
      row('qa', 'comprexit', r, 'f1', 0.3),
      row('qa', 'icae', r, 'f1', 0.2),
    ]),
  ];
  const run = {
    meta: { methods },
    results,
    latency: [latency('qa', 'comprexit', 4, 100), latency('qa', 'icae', 4, 250), latency('babi', 'comprexit', 8, 100), latency('babi', 'icae', 8, 199)],
  };
  const [gmsa, qa, speed, ccf] = paperClaims(run);
  assert.equal(gmsa.verdict, 'does not hold');
  assert.match(gmsa.evidence, /8x 512 tokens: 0\.200 vs 0\.200/);
  assert.equal(qa.verdict, 'holds');
  assert.equal(speed.verdict, 'does not hold', '1.99x at babi 8x is under 2x');
  assert.match(speed.evidence, /babi 8x 1\.99x, qa 4x 2\.50x/);
  assert.equal(ccf.verdict, 'not tested here');

  const fast = paperClaims({ ...run, latency: [latency('qa', 'comprexit', 4, 100), latency('qa', 'icae', 4, 250)] });
  assert.equal(fast[2].verdict, 'holds');
  const none = paperClaims({ meta: { methods: [{ label: 'full', method: 'full', ratios: [null] }] }, results: [], latency: [] });
  assert.deepEqual(
    none.map((c) => c.verdict),
    ['not tested here', 'not tested here', 'not tested here', 'not tested here'],
  );
});
