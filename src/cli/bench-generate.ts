/**
 * softpress bench generate --model NAME|PATH [--json] [--threads 2] [--prompt-tokens 512]
 *   [--gen-tokens 128] [--reps 3] [--profile]
 *
 * Prefill and batch-1 decode speed of a real model (../shared/bench-spec.md, "The real model:
 * llama.cpp as the anchor"), next to llama.cpp's `llama-bench` on the same file with the same
 * threads when llama-bench is found and the model is a GGUF file.
 *
 * The prompt is real English text (a fixed paragraph, repeated) in the model's own tokenizer,
 * cut to exactly --prompt-tokens ids; a model without a tokenizer gets seeded random ids (the
 * JSON says which in `prompt`). Each repetition is one `generate()` call (src/models/generate.ts),
 * batch 1, greedy, with a KV cache:
 * - prefill: the no-grad forward of the whole prompt filling the cache (logits of the last
 *   position only, as llama-bench's pp test), tokens/s = prompt tokens / prefill time;
 * - decode: then --gen-tokens single-token forward passes with the cache, each giving one greedy
 *   token (the first new token comes from the prefill's logits and is not counted), timed apart
 *   from the prefill, tokens/s = decode steps / decode time.
 * Figures are medians of --reps repetitions after 3 warm-ups.
 *
 * llama-bench: $LLAMA_BENCH, else the newest $SOFTPRESS_HOME/llama.cpp/<version>/bin/llama-bench
 * (or .../<version>/build/bin/llama-bench; SOFTPRESS_HOME defaults to ~/.cache/softpress), run as
 * `llama-bench -m FILE -p P -n N -t T -o json`; its pp entry (n_prompt > 0) is prefill, its tg
 * entry (n_gen > 0) decode, avg_ts tokens/s (llama-bench's own defaults: 5 repetitions after a
 * warm-up run, mean). Note that llama-bench's tg test decodes from an empty context, where ours
 * decodes after the prompt (attention over P..P+N keys instead of 0..N); for a 512-token prompt
 * on a small model that costs little, but it is not nothing.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KVCache, type LlamaModel } from '../models/llama.js';
import { generate } from '../models/generate.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { isGgufPath } from '../models/gguf.js';
import { softpressHome } from '../io/model-source.js';
import { getNumThreads, manualSeed, noGrad, profile, randint, setNumThreads, tensor, tidy } from '../tensor/index.js';
import { median } from './bench.js';

const WARMUPS = 3;

const USAGE = 'usage: softpress bench generate --model NAME|PATH [--json] [--threads 2] [--prompt-tokens 512] [--gen-tokens 128] [--reps 3] [--profile]';

/** Fixed English text for the prompt (Melville, "Moby Dick", ch. 1; public domain), repeated as needed. */
export const PROMPT_TEXT =
  'Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse, ' +
  'and nothing particular to interest me on shore, I thought I would sail about a little and see the ' +
  'watery part of the world. It is a way I have of driving off the spleen and regulating the circulation. ' +
  'Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul; ' +
  'whenever I find myself involuntarily pausing before coffin warehouses, and bringing up the rear of every ' +
  'funeral I meet; and especially whenever my hypos get such an upper hand of me, that it requires a strong ' +
  'moral principle to prevent me from deliberately stepping into the street, and methodically knocking ' +
  "people's hats off—then, I account it high time to get to sea as soon as I can. ";

export type PromptSource = 'text' | 'random';

/** Exactly n prompt ids: PROMPT_TEXT (repeated) in the tokenizer, else seeded random ids. */
export function benchPrompt(n: number, vocabSize: number, tokenizer?: Tokenizer): { ids: number[]; source: PromptSource } {
  if (tokenizer) {
    const once = tokenizer.encode(PROMPT_TEXT, { bos: true }).length;
    if (once > 0) {
      let copies = Math.ceil(n / once) + 1;
      let ids = tokenizer.encode(PROMPT_TEXT.repeat(copies), { bos: true });
      while (ids.length < n) ids = tokenizer.encode(PROMPT_TEXT.repeat((copies *= 2)), { bos: true });
      return { ids: ids.slice(0, n), source: 'text' };
    }
  }
  manualSeed(0);
  // Random ids away from the special tokens at the start of most vocabularies.
  const lo = Math.min(256, vocabSize - 1);
  return { ids: randint(lo, vocabSize, [n]).toNumbers(), source: 'random' };
}

export interface SoftpressFigures {
  prefill_tok_s: number;
  decode_tok_s: number;
}

/**
 * softpress's own figures: `warmups + reps` generate() runs of one prompt, batch 1, greedy;
 * medians of the timed runs. genTokens decode steps follow the prefill (see the file comment).
 */
export function benchSoftpress(
  model: LlamaModel,
  prompt: number[],
  opts: { genTokens: number; reps: number; warmups?: number; log?: (s: string) => void },
): SoftpressFigures {
  const warmups = opts.warmups ?? WARMUPS;
  const log = opts.log ?? (() => {});
  const prefill: number[] = [];
  const decode: number[] = [];
  for (let i = 0; i < warmups + opts.reps; i++) {
    const r = generate(model, [prompt], { maxTokens: opts.genTokens + 1, temperature: 0 });
    if (r.tokens[0].length !== opts.genTokens + 1) throw new Error(`generate stopped after ${r.tokens[0].length} tokens, expected ${opts.genTokens + 1}`);
    const p = prompt.length / (r.prefillMs / 1000);
    const d = opts.genTokens / (r.decodeMs / 1000);
    const what = i < warmups ? `warm-up ${i + 1}/${warmups}` : `rep ${i - warmups + 1}/${opts.reps}`;
    log(`  ${what}: prefill ${r.prefillMs.toFixed(0)} ms (${p.toFixed(1)} tok/s), decode ${r.decodeMs.toFixed(0)} ms (${d.toFixed(2)} tok/s)`);
    if (i >= warmups) {
      prefill.push(r.prefillMs / 1000);
      decode.push(r.decodeMs / 1000);
    }
  }
  return { prefill_tok_s: prompt.length / median(prefill), decode_tok_s: opts.genTokens / median(decode) };
}

/**
 * Where decode time goes: prefills the prompt into a cache, then runs `steps` single-token
 * forward passes (after 3 untimed ones) under libtorch's profiler. Self time per operator.
 */
export function profileDecode(model: LlamaModel, prompt: number[], steps: number, log: (s: string) => void, top = 20): void {
  const cache = new KVCache(model.config.numLayers);
  try {
    noGrad(() => {
      let next = tidy(() => {
        const { logits } = model.forward({ ids: tensor(prompt, [1, prompt.length], { dtype: 'int64' }), cache, logits: 'last' });
        return logits!.reshape(-1).argmax(0).keep();
      });
      const step = () => {
        const id = next.item();
        next.free();
        next = tidy(() => {
          const { logits } = model.forward({ ids: tensor([id], [1, 1], { dtype: 'int64' }), cache, logits: 'last' });
          return logits!.reshape(-1).argmax(0).keep();
        });
      };
      for (let i = 0; i < 3; i++) step();
      const t0 = performance.now();
      const { ops, totalMs } = profile(() => {
        for (let i = 0; i < steps; i++) step();
      });
      const wall = performance.now() - t0;
      next.free();
      log(
        `profile of ${steps} decode steps after a ${prompt.length}-token prompt (self time per operator; ${totalMs.toFixed(0)} ms in ops, ${wall.toFixed(0)} ms wall with the profiler on):`,
      );
      for (const o of ops.slice(0, top)) {
        log(
          `  ${o.name.padEnd(34)} ${String(o.calls).padStart(7)} calls ${(o.calls / steps).toFixed(0).padStart(5)}/step ${o.selfMs.toFixed(1).padStart(9)} ms ${((1000 * o.selfMs) / o.calls).toFixed(1).padStart(8)} us/call ${((100 * o.selfMs) / totalMs).toFixed(1).padStart(5)}%`,
        );
      }
    });
  } finally {
    cache.free();
  }
}

export interface LlamaCppFigures {
  prefill_tok_s: number | null;
  decode_tok_s: number | null;
  /** Why the figures are null, or which binary gave them. */
  note: string;
  bin?: string;
}

/**
 * $LLAMA_BENCH, else the newest (by modification time) $SOFTPRESS_HOME/llama.cpp/<version>/bin/llama-bench
 * (or <version>/build/bin/llama-bench when llama.cpp was built there but not installed).
 */
export function findLlamaBench(env: NodeJS.ProcessEnv = process.env, home = softpressHome()): { bin?: string; note: string } {
  if (env.LLAMA_BENCH) {
    if (!existsSync(env.LLAMA_BENCH) || !statSync(env.LLAMA_BENCH).isFile()) return { note: `LLAMA_BENCH=${env.LLAMA_BENCH} does not exist` };
    return { bin: env.LLAMA_BENCH, note: `llama-bench from $LLAMA_BENCH (${env.LLAMA_BENCH})` };
  }
  const root = join(home, 'llama.cpp');
  let found: { bin: string; mtime: number } | undefined;
  if (existsSync(root)) {
    for (const version of readdirSync(root)) {
      // An installed tree (<version>/bin), else the build tree itself (<version>/build/bin).
      for (const bin of [join(root, version, 'bin', 'llama-bench'), join(root, version, 'build', 'bin', 'llama-bench')]) {
        if (!existsSync(bin) || !statSync(bin).isFile()) continue;
        const mtime = statSync(bin).mtimeMs;
        if (!found || mtime > found.mtime) found = { bin, mtime };
        break;
      }
    }
  }
  if (!found) return { note: `llama-bench not found (set LLAMA_BENCH, or build llama.cpp into ${root}/<version>/bin/)` };
  return { bin: found.bin, note: `llama-bench ${found.bin}` };
}

interface LlamaBenchEntry {
  n_prompt?: number;
  n_gen?: number;
  n_threads?: number;
  avg_ts?: number;
}

/** The prefill (n_prompt > 0, n_gen 0) and decode (n_gen > 0, n_prompt 0) tokens/s of `llama-bench -o json`. */
export function parseLlamaBenchJson(stdout: string): { prefill_tok_s: number; decode_tok_s: number } {
  const start = stdout.indexOf('[');
  let entries: LlamaBenchEntry[];
  try {
    entries = JSON.parse(stdout.slice(start < 0 ? 0 : start)) as LlamaBenchEntry[];
  } catch (e) {
    throw new Error(`llama-bench printed no JSON array (${(e as Error).message})`);
  }
  if (!Array.isArray(entries)) throw new Error('llama-bench printed no JSON array');
  const pp = entries.find((e) => (e.n_prompt ?? 0) > 0 && !(e.n_gen ?? 0));
  const tg = entries.find((e) => (e.n_gen ?? 0) > 0 && !(e.n_prompt ?? 0));
  const ok = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x > 0;
  if (!pp || !ok(pp.avg_ts)) throw new Error('llama-bench JSON has no prompt-processing entry (n_prompt > 0) with avg_ts');
  if (!tg || !ok(tg.avg_ts)) throw new Error('llama-bench JSON has no generation entry (n_gen > 0) with avg_ts');
  return { prefill_tok_s: pp.avg_ts, decode_tok_s: tg.avg_ts };
}

function lastLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .pop() ?? ''
  );
}

/**
 * llama.cpp's figures for a model file, or nulls with the reason (not a GGUF file, no
 * llama-bench). A llama-bench that fails is an error carrying the last line of its stderr.
 */
export async function benchLlamaCpp(
  modelPath: string,
  opts: { threads: number; promptTokens: number; genTokens: number; env?: NodeJS.ProcessEnv; home?: string; log?: (s: string) => void },
): Promise<LlamaCppFigures> {
  if (!isGgufPath(modelPath)) return { prefill_tok_s: null, decode_tok_s: null, note: `llama.cpp figures skipped: ${modelPath} is not a GGUF file` };
  const { bin, note } = findLlamaBench(opts.env ?? process.env, opts.home);
  if (!bin) return { prefill_tok_s: null, decode_tok_s: null, note: `llama.cpp figures skipped: ${note}` };
  const args = ['-m', modelPath, '-p', String(opts.promptTokens), '-n', String(opts.genTokens), '-t', String(opts.threads), '-o', 'json'];
  opts.log?.(`running ${bin} ${args.join(' ')}`);
  const { code, signal, stdout, stderr } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((done) => {
    let out = '';
    let err = '';
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-16000)));
    child.on('error', (e) => done({ code: -1, signal: null, stdout: out, stderr: e.message }));
    child.on('close', (c, s) => done({ code: c, signal: s, stdout: out, stderr: err }));
  });
  if (code !== 0) throw new Error(`llama-bench failed (${signal ? `signal ${signal}` : `exit ${code}`}): ${lastLine(stderr) || 'no message'}`);
  try {
    return { ...parseLlamaBenchJson(stdout), note, bin };
  } catch (e) {
    throw new Error(`${(e as Error).message}${lastLine(stderr) ? `; its stderr ends: ${lastLine(stderr)}` : ''}`);
  }
}

export interface GenerateBenchResult {
  bench: 'generate';
  model: string;
  threads: number;
  prefill_tok_s: number;
  decode_tok_s: number;
  llamacpp_prefill_tok_s: number | null;
  llamacpp_decode_tok_s: number | null;
  prompt_tokens: number;
  gen_tokens: number;
  reps: number;
  prompt: PromptSource;
}

const round2 = (x: number | null) => (x === null ? null : Math.round(x * 100) / 100);

/** The whole benchmark on a loaded model (its file at `source` is what llama-bench reads). */
export async function benchGenerate(opts: {
  name: string;
  model: LlamaModel;
  tokenizer?: Tokenizer;
  source: string;
  promptTokens: number;
  genTokens: number;
  reps: number;
  warmups?: number;
  env?: NodeJS.ProcessEnv;
  home?: string;
  log?: (s: string) => void;
}): Promise<GenerateBenchResult & { llamacpp_note: string }> {
  const log = opts.log ?? (() => {});
  const threads = getNumThreads();
  // llama.cpp first: a failing llama-bench then costs no softpress time.
  const cpp = await benchLlamaCpp(opts.source, { threads, promptTokens: opts.promptTokens, genTokens: opts.genTokens, env: opts.env, home: opts.home, log });
  if (cpp.prefill_tok_s === null) log(cpp.note);
  else log(`llama.cpp: prefill ${cpp.prefill_tok_s.toFixed(1)} tok/s, decode ${cpp.decode_tok_s!.toFixed(2)} tok/s`);
  const { ids, source } = benchPrompt(opts.promptTokens, opts.model.config.vocabSize, opts.tokenizer);
  log(
    `softpress: ${opts.promptTokens}-token prompt (${source === 'text' ? 'English text in the model tokenizer' : 'random ids: the model has no tokenizer'}), ${opts.genTokens} greedy tokens, ${opts.warmups ?? WARMUPS} warm-ups + ${opts.reps} reps`,
  );
  const sp = benchSoftpress(opts.model, ids, { genTokens: opts.genTokens, reps: opts.reps, warmups: opts.warmups, log });
  return {
    bench: 'generate',
    model: opts.name,
    threads,
    prefill_tok_s: round2(sp.prefill_tok_s)!,
    decode_tok_s: round2(sp.decode_tok_s)!,
    llamacpp_prefill_tok_s: round2(cpp.prefill_tok_s),
    llamacpp_decode_tok_s: round2(cpp.decode_tok_s),
    prompt_tokens: opts.promptTokens,
    gen_tokens: opts.genTokens,
    reps: opts.reps,
    prompt: source,
    llamacpp_note: cpp.note,
  };
}

/** The human-readable table: softpress vs llama.cpp and their ratio. */
export function formatTable(r: GenerateBenchResult): string {
  const f = (x: number | null, d: number) => (x === null ? '-' : x.toFixed(d));
  const ratio = (a: number, b: number | null) => (b === null ? '-' : `${(a / b).toFixed(2)}x`);
  const rows = [
    ['', 'softpress', 'llama.cpp', 'softpress/llama.cpp'],
    [
      `prefill tok/s (${r.prompt_tokens}-token prompt)`,
      f(r.prefill_tok_s, 1),
      f(r.llamacpp_prefill_tok_s, 1),
      ratio(r.prefill_tok_s, r.llamacpp_prefill_tok_s),
    ],
    [`decode tok/s (batch 1, ${r.gen_tokens} tokens)`, f(r.decode_tok_s, 2), f(r.llamacpp_decode_tok_s, 2), ratio(r.decode_tok_s, r.llamacpp_decode_tok_s)],
  ];
  const w = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const lines = rows.map((row) => '  ' + row.map((cell, c) => (c === 0 ? cell.padEnd(w[c]) : cell.padStart(w[c]))).join('   '));
  return `softpress bench generate: ${r.model} (${r.threads} threads, median of ${r.reps} after ${WARMUPS} warm-ups)\n${lines.join('\n')}\n`;
}

function positiveInt(name: string, v: string | undefined): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got '${v}'`);
  return n;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      json: { type: 'boolean', default: false },
      threads: { type: 'string', default: '2' },
      'prompt-tokens': { type: 'string', default: '512' },
      'gen-tokens': { type: 'string', default: '128' },
      reps: { type: 'string', default: '3' },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  if (!values.model) throw new Error(`--model is required (a model name such as smollm2-135m-instruct, a GGUF file or a Hugging Face folder; see --help)`);
  const threads = positiveInt('threads', values.threads);
  const promptTokens = positiveInt('prompt-tokens', values['prompt-tokens']);
  const genTokens = positiveInt('gen-tokens', values['gen-tokens']);
  const reps = positiveInt('reps', values.reps);
  setNumThreads(threads);
  const log = (s: string) => process.stderr.write(s + '\n');
  log(`bench generate --model ${values.model}: loading`);
  const t0 = performance.now();
  const { loadModel } = await import('../models/load.js');
  const loaded = loadModel(values.model);
  const c = loaded.model.config;
  log(
    `loaded ${loaded.source} in ${((performance.now() - t0) / 1000).toFixed(1)} s (${c.numLayers} layers, dim ${c.hiddenSize}, vocab ${c.vocabSize}, ${loaded.model.dtype})`,
  );
  const result = await benchGenerate({
    name: values.model,
    model: loaded.model,
    tokenizer: loaded.tokenizer,
    source: loaded.source,
    promptTokens,
    genTokens,
    reps,
    log,
  });
  if (values.profile) {
    const { ids } = benchPrompt(promptTokens, c.vocabSize, loaded.tokenizer);
    profileDecode(loaded.model, ids, Math.min(genTokens, 32), log);
  }
  const { llamacpp_note: _note, ...json } = result;
  process.stdout.write(formatTable(json));
  if (values.json) process.stdout.write(JSON.stringify(json) + '\n');
}
