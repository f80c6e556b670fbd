// A bounded fuzz run of every parser a user can feed (src/cli/fuzz/): each case in a worker
// process under a time limit. No case may crash a worker, hang, or be refused with anything but
// the parser's own named error naming the file (for the server: a 4xx in the OpenAI error shape).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { TARGETS, isNamedErrorWith } from '../src/cli/fuzz/target.js';
import { runTarget } from '../src/cli/fuzz/runner.js';
import { Rng, caseSeed } from '../src/cli/fuzz/mutate.js';
import { SafetensorsError } from '../src/io/safetensors.js';

/** Cases per parser: a few seconds each on two cores. */
const CASES: Record<string, number> = { 'server-json': 60, 'tokenizer-json-hf': 100, 'gguf-tokenizer': 100 };

test('a clean rejection is a named error class naming the file; built-in errors and context-free messages are not', () => {
  assert.ok(isNamedErrorWith(new SafetensorsError('x.safetensors', 'bad'), 'x.safetensors'));
  assert.ok(!isNamedErrorWith(new SafetensorsError('y.safetensors', 'bad'), 'x.safetensors'));
  assert.ok(!isNamedErrorWith(new TypeError('x.safetensors: Cannot read properties of undefined'), 'x.safetensors'));
  assert.ok(!isNamedErrorWith(new RangeError('x.safetensors: Invalid array length'), 'x.safetensors'));
  assert.ok(!isNamedErrorWith(new Error('x.safetensors: bad'), 'x.safetensors'));
});

// A target whose cases hang, kill their worker, throw a raw error, are refused or accepted,
// decided by the case's first random number: the runner must count each and name its index.
const SELFTEST = `
class Refused extends Error {}
export const target = {
  name: 'selftest',
  about: 'the runner itself',
  timeoutMs: 300,
  prepare: () => ({
    make: (rng) => rng.next(),
    run: (x) => {
      if (x < 0.02) for (;;);
      if (x < 0.04) process.exit(7);
      if (x < 0.06) throw new TypeError('raw');
      if (x < 0.5) throw new Refused('refused');
    },
    clean: (e) => e instanceof Refused,
    bytes: () => new Uint8Array(0),
  }),
};
`;

test('the runner: hangs and dead workers are counted against their own case (the worker is replaced and the batch goes on)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-selftest-'));
  try {
    const module = join(dir, 'target.mjs');
    writeFileSync(module, SELFTEST);
    const cases = 150;
    const seed = 8; // 2 hangs, 1 dead worker, 2 raw errors in 150 cases
    const kinds = Array.from({ length: cases }, (_, i) => {
      const x = new Rng(caseSeed(seed, 'selftest', i)).next();
      return x < 0.02 ? 'hang' : x < 0.04 ? 'died' : x < 0.06 ? 'raw' : x < 0.5 ? 'clean' : 'accepted';
    });
    const count = (k: string) => kinds.filter((x) => x === k).length;
    assert.ok(count('hang') >= 1 && count('died') >= 1 && count('raw') >= 1, `the seed gives every outcome: ${kinds.join(',')}`);
    // the run's temporary folders go in a folder of the test's own, which must be empty afterwards
    // (a worker killed for a hang cannot remove its own folder; the runner removes the run's)
    const scratch = join(dir, 'tmp');
    mkdirSync(scratch);
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = scratch;
    let r: Awaited<ReturnType<typeof runTarget>>;
    try {
      r = await runTarget('selftest', { cases, seed, workers: 2, timeoutMs: 300, wallFactor: 10, module: pathToFileURL(module).href });
    } finally {
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
    }
    assert.deepEqual(readdirSync(scratch), [], 'no temporary folder left behind');
    assert.deepEqual(
      { cases: r.cases, hangs: r.hangs, died: r.died, raw: r.raw_errors, crashes: r.crashes, clean: r.clean_errors, accepted: r.accepted },
      {
        cases,
        hangs: count('hang'),
        died: count('died'),
        raw: count('raw'),
        crashes: count('died') + count('raw'),
        clean: count('clean'),
        accepted: count('accepted'),
      },
    );
    assert.equal(r.workers_started, 2 + count('hang') + count('died'));
    assert.equal(r.examples.length, r.hangs + r.crashes); // at most 8 are kept
    for (const e of r.examples) {
      const m = /^#(\d+): (hang|worker died|TypeError)/.exec(e);
      assert.ok(m, e);
      assert.equal({ hang: 'hang', 'worker died': 'died', TypeError: 'raw' }[m[2]], kinds[Number(m[1])], e);
      assert.ok(e.includes(`--replay selftest:${m[1]} --seed ${seed}`), e);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const name of Object.keys(TARGETS)) {
  test(`fuzz ${name}: no crash, no hang, every rejection named with its file`, async () => {
    const target = await TARGETS[name].load();
    const r = await runTarget(name, { cases: CASES[name] ?? 150, seed: 20250101, workers: 2, timeoutMs: target.timeoutMs });
    assert.equal(r.cases, CASES[name] ?? 150);
    assert.deepEqual({ crashes: r.crashes, hangs: r.hangs, examples: r.examples }, { crashes: 0, hangs: 0, examples: [] });
    assert.equal(r.clean_errors + r.accepted, r.cases);
    // the mutations reach the parser's checks: most cases are refused
    assert.ok(r.clean_errors > r.cases / 2, `${r.clean_errors} clean errors of ${r.cases}`);
  });
}
