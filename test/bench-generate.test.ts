/**
 * `softpress bench generate`: the benchmark's core on models/softpress-base with tiny sizes (JSON
 * shape, positive finite figures, nulls when there is no llama.cpp figure), finding and running
 * llama-bench (a fake one: a shell script printing llama-bench's JSON, or failing), and the CLI's
 * last stdout line. No speed is asserted.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

import { setNumThreads } from '../src/tensor/index.js';
import { loadModel } from '../src/models/load.js';
import { benchGenerate, benchLlamaCpp, benchPrompt, findLlamaBench, formatTable, parseLlamaBenchJson } from '../src/cli/bench-generate.js';

const BASE = path.resolve(process.cwd(), 'models/softpress-base');
const GGUF = path.resolve(process.cwd(), 'test/fixtures/gguf/tiny.gguf'); // any file with the GGUF magic
const BIN = path.resolve(process.cwd(), 'bin/softpress.js');

// What llama-bench -o json prints (fields trimmed), one pp and one tg entry.
const LLAMA_BENCH_JSON = JSON.stringify([
  {
    build_commit: 'abc',
    model_filename: 'x.gguf',
    n_threads: 2,
    n_prompt: 16,
    n_gen: 0,
    avg_ns: 1,
    stddev_ns: 0,
    avg_ts: 812.5,
    stddev_ts: 3.1,
    samples_ts: [812.5],
  },
  {
    build_commit: 'abc',
    model_filename: 'x.gguf',
    n_threads: 2,
    n_prompt: 0,
    n_gen: 4,
    avg_ns: 1,
    stddev_ns: 0,
    avg_ts: 95.25,
    stddev_ts: 1.2,
    samples_ts: [95.25],
  },
]);

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-bench-generate-'));
}

function fakeLlamaBench(dir: string, body: string): string {
  const bin = path.join(dir, 'llama-bench');
  fs.writeFileSync(bin, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return bin;
}

const positive = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x > 0;

test('bench generate core on softpress-base: JSON shape, positive finite figures, null llama.cpp figures for a folder', async () => {
  setNumThreads(2);
  const { model, tokenizer, source } = loadModel(BASE);
  const r = await benchGenerate({ name: 'softpress-base', model, tokenizer, source, promptTokens: 24, genTokens: 3, reps: 1 });
  assert.equal(r.bench, 'generate');
  assert.equal(r.model, 'softpress-base');
  assert.equal(r.threads, 2);
  assert.ok(positive(r.prefill_tok_s), `prefill_tok_s ${r.prefill_tok_s}`);
  assert.ok(positive(r.decode_tok_s), `decode_tok_s ${r.decode_tok_s}`);
  assert.equal(r.llamacpp_prefill_tok_s, null);
  assert.equal(r.llamacpp_decode_tok_s, null);
  assert.match(r.llamacpp_note, /not a GGUF file/);
  assert.equal(r.prompt, 'text');
  assert.deepEqual([r.prompt_tokens, r.gen_tokens, r.reps], [24, 3, 1]);
  const table = formatTable(r);
  assert.match(table, /prefill tok\/s/);
  assert.match(table, /decode tok\/s/);
  model.free();
});

test('bench prompt: exactly n ids of text in the tokenizer, seeded random ids without one', () => {
  const { tokenizer } = loadModel(BASE);
  const a = benchPrompt(300, 8192, tokenizer);
  assert.equal(a.source, 'text');
  assert.equal(a.ids.length, 300);
  const b = benchPrompt(10, 100);
  assert.equal(b.source, 'random');
  assert.equal(b.ids.length, 10);
  assert.ok(b.ids.every((id) => Number.isInteger(id) && id >= 0 && id < 100));
  assert.deepEqual(benchPrompt(10, 100).ids, b.ids);
});

test('llama-bench missing gives null figures with a note', async () => {
  const home = tmpDir();
  try {
    const viaEnv = await benchLlamaCpp(GGUF, {
      threads: 2,
      promptTokens: 16,
      genTokens: 4,
      env: { LLAMA_BENCH: path.join(home, 'no-such-llama-bench') },
      home,
    });
    assert.deepEqual([viaEnv.prefill_tok_s, viaEnv.decode_tok_s], [null, null]);
    assert.match(viaEnv.note, /does not exist/);
    const none = await benchLlamaCpp(GGUF, { threads: 2, promptTokens: 16, genTokens: 4, env: {}, home });
    assert.deepEqual([none.prefill_tok_s, none.decode_tok_s], [null, null]);
    assert.match(none.note, /llama-bench not found/);
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});

test('llama-bench is found under $SOFTPRESS_HOME/llama.cpp/*/bin (newest), run with the right flags, its JSON parsed', async () => {
  const home = tmpDir();
  try {
    const older = path.join(home, 'llama.cpp', '0.1.0', 'bin');
    const newer = path.join(home, 'llama.cpp', '0.2.0', 'bin');
    fs.mkdirSync(older, { recursive: true });
    fs.mkdirSync(newer, { recursive: true });
    const argsFile = path.join(home, 'args');
    const oldBin = fakeLlamaBench(older, 'exit 3');
    fs.utimesSync(oldBin, new Date(1e12), new Date(1e12));
    const jsonFile = path.join(home, 'out.json');
    fs.writeFileSync(jsonFile, LLAMA_BENCH_JSON);
    const bin = fakeLlamaBench(newer, `echo "$@" > '${argsFile}'\necho 'build: info on stderr' >&2\ncat '${jsonFile}'`);
    assert.equal(findLlamaBench({}, home).bin, bin);
    const r = await benchLlamaCpp(GGUF, { threads: 2, promptTokens: 16, genTokens: 4, env: {}, home });
    assert.equal(r.prefill_tok_s, 812.5);
    assert.equal(r.decode_tok_s, 95.25);
    assert.equal(fs.readFileSync(argsFile, 'utf8').trim(), `-m ${GGUF} -p 16 -n 4 -t 2 -o json`);
    // A build tree that was not installed (<version>/build/bin) counts too, newest first.
    const built = path.join(home, 'llama.cpp', '0.3.0', 'build', 'bin');
    fs.mkdirSync(built, { recursive: true });
    const builtBin = fakeLlamaBench(built, 'exit 3');
    fs.utimesSync(builtBin, new Date(Date.now() + 60e3), new Date(Date.now() + 60e3));
    assert.equal(findLlamaBench({}, home).bin, builtBin);
    // A folder model is never handed to llama-bench.
    const folder = await benchLlamaCpp(BASE, { threads: 2, promptTokens: 16, genTokens: 4, env: {}, home });
    assert.equal(folder.prefill_tok_s, null);
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});

test('a failing llama-bench is an error with the last line of its stderr; bad JSON too', async () => {
  const home = tmpDir();
  try {
    const failing = fakeLlamaBench(home, "echo 'loading model' >&2\necho 'error: failed to load model x.gguf' >&2\nexit 1");
    await assert.rejects(
      benchLlamaCpp(GGUF, { threads: 2, promptTokens: 16, genTokens: 4, env: { LLAMA_BENCH: failing }, home }),
      /llama-bench failed \(exit 1\): error: failed to load model x\.gguf$/,
    );
    const garbage = fakeLlamaBench(tmpDir(), 'echo not json');
    await assert.rejects(benchLlamaCpp(GGUF, { threads: 2, promptTokens: 16, genTokens: 4, env: { LLAMA_BENCH: garbage }, home }), /no JSON array/);
    fs.rmSync(path.dirname(garbage), { recursive: true, force: true });
    assert.throws(() => parseLlamaBenchJson(JSON.stringify([{ n_prompt: 16, n_gen: 0, avg_ts: 5 }])), /no generation entry/);
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});

test('softpress bench generate --json: the last stdout line is the one JSON object', () => {
  const home = tmpDir();
  try {
    const r = spawnSync(process.execPath, [BIN, 'bench', 'generate', '--model', BASE, '--json', '--prompt-tokens', '16', '--gen-tokens', '2', '--reps', '1'], {
      encoding: 'utf8',
      env: { ...process.env, SOFTPRESS_HOME: home, LLAMA_BENCH: '' },
    });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    const json = JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
    for (const k of ['bench', 'model', 'threads', 'prefill_tok_s', 'decode_tok_s', 'llamacpp_prefill_tok_s', 'llamacpp_decode_tok_s'])
      assert.ok(k in json, `missing ${k}`);
    assert.equal(json.bench, 'generate');
    assert.equal(json.threads, 2);
    assert.ok(positive(json.prefill_tok_s) && positive(json.decode_tok_s));
    assert.equal(json.llamacpp_prefill_tok_s, null);
    assert.equal(json.llamacpp_decode_tok_s, null);
    assert.equal(lines.filter((l) => l.startsWith('{')).length, 1);
    assert.match(r.stderr, /not a GGUF file/);
    const bad = spawnSync(process.execPath, [BIN, 'bench', 'generate', '--model', path.join(home, 'nope')], {
      encoding: 'utf8',
      env: { ...process.env, SOFTPRESS_HOME: home },
    });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr.trim().split('\n').pop()!, /^softpress bench: model not found: /);
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});
