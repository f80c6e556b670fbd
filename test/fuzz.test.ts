// A bounded fuzz run of every parser a user can feed (src/cli/fuzz/): each case in a worker
// process under a time limit. No case may crash a worker, hang, or be refused with anything but
// the parser's own named error naming the file (for the server: a 4xx in the OpenAI error shape).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TARGETS, isNamedErrorWith } from '../src/cli/fuzz/target.js';
import { runTarget } from '../src/cli/fuzz/runner.js';
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
