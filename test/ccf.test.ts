/**
 * CCF (src/compress/ccf.ts, src/compress/ccf-training.ts) on tiny random models:
 *   (a) the encoder's mask and positions: memory j sees exactly tokens [0, (j+1) l/c) and itself;
 *   (b) the decoder reads memories through keys/values made with the decoder LoRA (checked
 *       against a hand computation for one layer), tokens continuing after the memory;
 *   (c) the training procedure: with reservoir k >= segments its gradients equal full
 *       backpropagation through every segment; with small k they equal the specified sparse
 *       approximation (and differ from the full gradients);
 *   (d) peak memory of the procedure stays flat with k = 2 and grows with k = segments
 *       (measured in a child process, see memoryProbe below);
 *   (e) the streaming API: memory grows by c slots per layer per segment, matches compress()
 *       and scores exactly what the trainer's loss counts;
 *   (f) shapes for ratios 8 and 32 with l = 64, budgets, errors; save/load; the procedure's
 *       resume under the shared trainer.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Tensor, arange, cat, crossEntropy, linear, manualSeed, memoryStats, noGrad, randn, tensor, tidy, type DType } from '../src/tensor/index.js';
import { ropeInvFreq } from '../src/models/config.js';
import { LlamaModel, type LayerKv } from '../src/models/llama.js';
import { CcfCompressor, CcfStream, memoryWindowEnd, segmentPlan } from '../src/compress/ccf.js';
import { createCompressor, loadCompressor, saveCompressor, tailLoss } from '../src/compress/index.js';
import { ccfDocumentGradients, type CcfProbe } from '../src/compress/ccf-training.js';
import { train } from '../src/train/trainer.js';
import { warmupCosine } from '../src/nn/index.js';
import { Rng } from '../src/data/rng.js';
import { collectGarbage } from './helpers/gc.js';
import { assertClose, maxDiff } from './helpers/close.js';
import { randomModel } from './helpers/tiny.js';
import { streamEval } from '../src/eval/stream.js';
import type { Tokenizer } from '../src/models/tokenizer.js';

// ---- helpers ---------------------------------------------------------------------------------

const TINY = {
  model_type: 'llama',
  vocab_size: 61,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 3,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
};

/** A small random frozen model (float64 by default, for tight tolerances). */
function tinyModel(opts: { dtype?: DType; seed?: number; over?: Record<string, unknown> } = {}): LlamaModel {
  return randomModel({ ...TINY, ...opts.over }, { seed: opts.seed, dtype: opts.dtype ?? 'float64', freeze: true });
}

/** A CCF compressor whose LoRA B matrices are non-zero, so that both adapters matter. */
function tinyCcf(model: LlamaModel, segmentLen: number, seed = 2): CcfCompressor {
  manualSeed(seed);
  const ccf = new CcfCompressor(model, { segmentLen, rank: 4, alpha: 8 });
  noGrad(() =>
    tidy(() => {
      for (const [name, p] of ccf.net.namedParameters()) if (name.includes('lora_B')) p.value.copy_(randn(p.value.shape, { dtype: p.value.dtype }).mul(0.3));
    }),
  );
  return ccf;
}

/** Deterministic token ids in [1, vocab). */
function tokens(n: number, seed: number, vocab = TINY.vocab_size): number[] {
  const rng = new Rng(`tokens:${seed}`);
  return Array.from({ length: n }, () => 1 + rng.int(vocab - 1));
}

const ids = (rows: number[][]): Tensor => tensor(rows.flat(), [rows.length, rows[0].length], { dtype: 'int64' });

function assertDiffer(a: Tensor, b: Tensor, atLeast: number, what: string): void {
  const d = maxDiff(a, b);
  assert.ok(d >= atLeast, `${what}: max abs diff ${d} < ${atLeast} (expected a real change)`);
}

const scoped = (fn: () => void) => () => tidy(() => noGrad(fn));

/** Registers a test, except in the memory-probe child process of (d), which only measures. */
function unit(name: string, fn: () => void | Promise<void>): void {
  if (!process.env.SOFTPRESS_CCF_MEMORY_PROBE) test(name, fn);
}

// ---- (a) encoder ---------------------------------------------------------------------------------

unit('segment plan and memory windows follow (j+1) l / c', () => {
  assert.deepEqual(
    [0, 1, 2, 3].map((j) => memoryWindowEnd(j, 16, 4)),
    [4, 8, 12, 16],
  );
  assert.deepEqual(
    [0, 1, 2].map((j) => memoryWindowEnd(j, 10, 3)),
    [4, 7, 10],
  ); // ceil for a ragged split
  assert.deepEqual(segmentPlan(20, 8, 2), [
    { start: 0, length: 8, slots: 2 },
    { start: 8, length: 8, slots: 2 },
    { start: 16, length: 4, slots: 1 },
  ]);
  assert.deepEqual(segmentPlan(20, 8, 2, 'full')[2], { start: 16, length: 4, slots: 2 });
});

unit(
  '(a) encoder: memory j attends exactly tokens [0, (j+1) l/c) and itself, at position (j+1) l/c',
  scoped(() => {
    const model = tinyModel();
    const ccf = tinyCcf(model, 16);
    const l = 16;
    const c = 4;
    const seg = tokens(l, 1);
    const latents = ccf.encode(ids([seg]), c); // per layer [1, c, dim]
    assert.equal(latents.length, TINY.num_hidden_layers);
    for (const m of latents) assert.deepEqual(m.shape, [1, c, TINY.hidden_size]);

    // Reference: memory j alone after its window, under the ordinary causal mask, at position e_j.
    for (let j = 0; j < c; j++) {
      const e = ((j + 1) * l) / c;
      const embeds = cat([model.embed(ids([seg.slice(0, e)])), ccf.net.pi.value.view(1, 1, -1)], 1);
      const positionIds = tensor([...Array.from({ length: e }, (_, i) => i), e], [e + 1], { dtype: 'int64' });
      const ref = model.forward({ inputsEmbeds: embeds, positionIds, outputAttnInputs: true, logits: 'none', lora: ccf.net.encoder }).attnInputs!;
      ref.forEach((h, n) => assertClose(latents[n].narrow(1, j, 1), h.narrow(1, e, 1), 1e-10, `memory ${j} layer ${n} vs its window alone`));
    }

    // Perturbing a token changes exactly the memories whose window holds it. (Layer 0's memory is
    // the normalised pi itself, the same for every segment: its attention input precedes any mixing.)
    for (const pos of [5, 12]) {
      const other = seg.slice();
      other[pos] = (other[pos] % (TINY.vocab_size - 1)) + 1;
      const moved = ccf.encode(ids([other]), c);
      for (let j = 0; j < c; j++) {
        const inWindow = pos < ((j + 1) * l) / c;
        assert.ok(maxDiff(latents[0].narrow(1, j, 1), moved[0].narrow(1, j, 1)) === 0, 'layer 0 memory depends only on pi');
        for (let n = 1; n < latents.length; n++) {
          const d = maxDiff(latents[n].narrow(1, j, 1), moved[n].narrow(1, j, 1));
          if (inWindow) assert.ok(d > 1e-6, `token ${pos} is in memory ${j}'s window: layer ${n} should change (diff ${d})`);
          else assert.ok(d < 1e-12, `token ${pos} is outside memory ${j}'s window: layer ${n} changed by ${d}`);
        }
      }
    }
    // The encoder LoRA and pi are in the memories.
    const noLora = model.forward({
      inputsEmbeds: cat([model.embed(ids([seg])), ccf.net.pi.value.view(1, 1, -1).expand(1, c, -1)], 1),
      positionIds: ccf.encoderLayout(l, c).positions,
      attnMask: ccf.encoderLayout(l, c).mask,
      outputAttnInputs: true,
      logits: 'none',
    }).attnInputs!;
    assertDiffer(latents[1], noLora[1].narrow(1, l, c), 1e-4, 'encoder with vs without its LoRA');
  }),
);

// ---- (b) decoder -----------------------------------------------------------------------------------

/** HF-layout RoPE of x [B, h, T, hd] at positions 0..T-1, computed from scratch in float64. */
function ropeByHand(model: LlamaModel, x: Tensor): Tensor {
  const [, , t, hd] = x.shape;
  const inv = ropeInvFreq(model.config);
  const cos: number[] = [];
  const sin: number[] = [];
  for (let p = 0; p < t; p++)
    for (let j = 0; j < hd / 2; j++) {
      cos.push(Math.cos(p * inv[j]));
      sin.push(Math.sin(p * inv[j]));
    }
  const cosT = tensor(cos, [1, 1, t, hd / 2], { dtype: 'float64' });
  const sinT = tensor(sin, [1, 1, t, hd / 2], { dtype: 'float64' });
  const x1 = x.narrow(-1, 0, hd / 2);
  const x2 = x.narrow(-1, hd / 2, hd / 2);
  return cat([x1.mul(cosT).sub(x2.mul(sinT)), x2.mul(cosT).add(x1.mul(sinT))], -1);
}

unit(
  '(b) decoder: memory keys/values use the decoder LoRA; tokens read them with positions after the memory',
  scoped(() => {
    const model = tinyModel();
    const ccf = tinyCcf(model, 8);
    const { numKvHeads: kvh, headDim: hd } = model.config;
    const context = [tokens(16, 3), tokens(16, 4)];
    const ctx = ccf.compress(context, { ratio: 4 }); // 2 segments x 2 slots
    const m = 4;
    assert.equal(ctx.memoryKv!.length, TINY.num_hidden_layers);
    assert.deepEqual(ctx.memoryKv![0].k.shape, [2, kvh, m, hd]);
    assert.deepEqual(ctx.meta.softTokens, [m, m]);

    // Layer 0 by hand: latents of both segments, base k/v projections + scale * B A m, RoPE 0..m-1.
    const lat = [0, 8].map((s) => ccf.encode(ids(context.map((r) => r.slice(s, s + 8))), 2)[0]);
    const mem0 = cat(lat, 1); // [2, 4, dim]
    const attn = model.layers[0].selfAttn;
    const adapter = (target: string, x: Tensor) => {
      const p = new Map(ccf.net.decoder.namedParameters());
      const a = p.get(`0.${target}.lora_A.weight`)!.value;
      const b = p.get(`0.${target}.lora_B.weight`)!.value;
      return linear(linear(x, a), b).mul(ccf.net.decoder.scale);
    };
    const heads = (x: Tensor) => x.view(2, m, kvh, hd).transpose(1, 2);
    const kByHand = ropeByHand(model, heads(linear(mem0, attn.kProj.weight.value).add(adapter('k', mem0))));
    const vByHand = heads(linear(mem0, attn.vProj.weight.value).add(adapter('v', mem0)));
    assertClose(ctx.memoryKv![0].k, kByHand, 1e-6, 'layer 0 memory keys'); // the model's RoPE tables are float32
    assertClose(ctx.memoryKv![0].v, vByHand, 1e-10, 'layer 0 memory values');

    // Decoding: tokens at positions m.. (base projections), every memory slot visible.
    const tail = ids([tokens(5, 5), tokens(5, 6)]);
    const dec = ccf.decodeLogits(tail, ctx.memoryKv);
    const explicit = model.forward({ ids: tail, kvPrefix: ctx.memoryKv, positionIds: arange(m, m + 5) }).logits!;
    assertClose(dec, explicit, 1e-12, 'decoder positions continue after the memory');
    assertDiffer(dec, model.forward({ ids: tail }).logits!, 1e-4, 'decoding with vs without memory');
    const withoutLora: LayerKv[] = model.layers.map((_, n) =>
      model.prefixKv(
        n,
        cat(
          [0, 8].map((s) => ccf.encode(ids(context.map((r) => r.slice(s, s + 8))), 2)[n]),
          1,
        ),
        0,
      ),
    );
    assertDiffer(dec, ccf.decodeLogits(tail, withoutLora), 1e-4, 'memory keys with vs without the decoder LoRA');

    // The shared decoder path (decode.ts) reads the context too.
    const { loss } = tailLoss(model, ctx, [tokens(6, 7), tokens(6, 8)], [0, 0], { bos: 0, pad: 0 });
    assert.ok(Number.isFinite(loss.item()));
  }),
);

// ---- (c) the training procedure's gradients ------------------------------------------------------

type Grads = Map<string, Tensor>;

function gradsOf(ccf: CcfCompressor, run: () => void): Grads {
  for (const [, p] of ccf.net.namedParameters()) p.value.zeroGrad();
  run();
  const out: Grads = new Map();
  for (const [name, p] of ccf.net.namedParameters()) {
    const g = p.value.grad;
    out.set(name, g ? g.clone() : p.value.mul(0));
  }
  for (const [, p] of ccf.net.namedParameters()) p.value.zeroGrad();
  return out;
}

/** Largest relative difference over parameters, per group (pi, encoder.*, decoder.*). */
function gradDiff(a: Grads, b: Grads): { encoder: number; decoder: number; scale: number } {
  let encoder = 0;
  let decoder = 0;
  let scale = 0;
  for (const [name, ga] of a) {
    const d = maxDiff(ga, b.get(name)!);
    scale = Math.max(
      scale,
      tidy(() => b.get(name)!.abs().max().item()),
    );
    if (name.startsWith('decoder.')) decoder = Math.max(decoder, d);
    else encoder = Math.max(encoder, d);
  }
  return { encoder: encoder / scale, decoder: decoder / scale, scale };
}

/**
 * The reference: one graph over the whole document. Segment u is decoded against the latents
 * of segments s < u; latent s stays attached while `attached(s, u)`, else it is detached.
 * Returns the mean loss, after one backward.
 */
function referenceBackward(ccf: CcfCompressor, doc: number[][], ratio: number, attached: (s: number, u: number) => boolean): number {
  return tidy(() => {
    const b = doc.length;
    const total = doc[0].length - 1;
    const plan = segmentPlan(total, ccf.segmentLen, ccf.slotsForRatio(ratio));
    const all = ids(doc);
    const latents = plan.map((p) => ccf.encode(all.narrow(1, p.start, p.length), p.slots));
    const losses: Tensor[] = [];
    plan.forEach((p, u) => {
      const memory =
        u === 0
          ? undefined
          : ccf.memoryKv(
              ccf.base.layers.map((_, n) =>
                cat(
                  latents.slice(0, u).map((lat, s) => (attached(s, u) ? lat[n] : lat[n].detach())),
                  1,
                ),
              ),
            );
      const logits = ccf.decodeLogits(all.narrow(1, p.start, p.length), memory);
      losses.push(crossEntropy(logits.reshape(b * p.length, -1), all.narrow(1, p.start + 1, p.length).reshape(b * p.length), { reduction: 'sum' }));
    });
    const loss = losses.reduce((x, y) => x.add(y)).div(b * total);
    loss.backward();
    return loss.item();
  });
}

/** When each segment's graph is released under reservoir k with these draws (the procedure's rule). */
function releaseTimes(segments: number, k: number, rng: Rng): number[] {
  const at = new Array<number>(segments).fill(segments - 1); // flushed at the end
  const reservoir: number[] = [];
  for (let t = 0; t < segments; t++) {
    if (t < k) reservoir.push(t);
    else {
      const j = rng.int(t + 1);
      if (j < k) {
        at[reservoir[j]] = t;
        reservoir[j] = t;
      } else at[t] = t;
    }
  }
  return at;
}

unit('(c) reservoir k >= segments gives the gradients of full backpropagation; small k the specified sparse ones', () =>
  tidy(() => {
    const model = tinyModel();
    const ccf = tinyCcf(model, 8);
    const ratio = 4; // c = 2
    const segments = 5;
    const doc = [tokens(segments * 8 + 1, 11), tokens(segments * 8 + 1, 12)];

    let fullLoss = 0;
    const full = gradsOf(ccf, () => (fullLoss = referenceBackward(ccf, doc, ratio, () => true)));
    for (const k of [segments, segments + 3]) {
      let res: ReturnType<typeof ccfDocumentGradients> | undefined;
      const g = gradsOf(ccf, () => (res = ccfDocumentGradients(ccf, doc, { ratio, reservoir: k, rng: new Rng(5) })));
      assert.ok(Math.abs(res!.loss - fullLoss) < 1e-12, `k=${k}: loss ${res!.loss} vs full ${fullLoss}`);
      assert.equal(res!.tokens, 2 * segments * 8);
      assert.equal(res!.droppedAtOnce, 0);
      const d = gradDiff(g, full);
      assert.ok(d.encoder < 1e-10 && d.decoder < 1e-10, `k=${k}: gradients differ from full backpropagation (relative ${d.encoder}, ${d.decoder})`);
    }

    for (const [k, seed] of [
      [1, 3],
      [2, 5],
      [2, 9],
    ] as const) {
      const g = gradsOf(ccf, () => ccfDocumentGradients(ccf, doc, { ratio, reservoir: k, rng: new Rng(seed) }));
      // Sanity: the encoder side loses gradient, the decoder side never does.
      const d = gradDiff(g, full);
      assert.ok(d.encoder > 1e-4, `k=${k}: encoder gradients should differ from full backpropagation (relative ${d.encoder})`);
      assert.ok(d.decoder < 1e-10, `k=${k}: decoder LoRA gradients should be exact (relative ${d.decoder})`);
      // Exactly the approximation of ccf.md: segment s's encoder gets the gradients of the
      // segments decoded up to its release, u <= release(s); nothing from later ones.
      const at = releaseTimes(segments, k, new Rng(seed));
      const sparse = gradsOf(ccf, () => referenceBackward(ccf, doc, ratio, (s, u) => u <= at[s]));
      const e = gradDiff(g, sparse);
      assert.ok(
        e.encoder < 1e-10 && e.decoder < 1e-10,
        `k=${k} seed ${seed} (releases ${at.join(',')}): not the specified sparse gradients (relative ${e.encoder}, ${e.decoder})`,
      );
    }
  }),
);

unit('the procedure and the stream leave no native handle behind', async () => {
  const model = tinyModel();
  const ccf = tinyCcf(model, 8);
  const doc = [tokens(41, 51)];
  const once = () => {
    tidy(() => ccfDocumentGradients(ccf, doc, { ratio: 4, reservoir: 2, rng: new Rng(1) }));
    for (const [, p] of ccf.net.namedParameters()) p.value.zeroGrad();
    const stream = new CcfStream(ccf, { ratio: 4 });
    for (let s = 0; s < 40; s += 8) stream.perplexityOf(doc[0].slice(s, s + 8));
    stream.free();
  };
  once(); // builds the cached encoder layouts
  await collectGarbage();
  const before = memoryStats().liveHandles;
  once();
  assert.equal(memoryStats().liveHandles, before);
});

// ---- (d) peak memory ------------------------------------------------------------------------------

interface MemoryFigure {
  segments: number;
  k: number;
  /** Peak resident memory above the level before the document (MB). */
  peakRssMB: number;
  /** Live tensor handles at the peak, above the level after the document. */
  peakLiveHandles: number;
  maxHeldGraphs: number;
  seconds: number;
}

/**
 * One document of `segments` segments with reservoir k, measured in a fresh child process.
 * Resident memory is the measure because it sees tensors held only inside autograd graphs
 * (no handle count does); the addon keeps freed blocks in the heap (no trimming, no mmap), so
 * resident memory is the high-water mark of live native memory, and a process per
 * configuration gives each its own mark.
 */
/**
 * Ratio 32 (2 slots per 64-token segment): what k = 2 still lets grow is the memory itself (the
 * leaves and the decoding of each segment against t x c slots, by design of CCF), which a small
 * c keeps small next to one encoder graph (~7 MB here).
 */
const PROBE_RATIO = 32;
function memoryProbe(segments: number, k: number): MemoryFigure {
  const model = tinyModel({
    dtype: 'float32',
    over: { vocab_size: 128, hidden_size: 256, intermediate_size: 512, num_attention_heads: 4, num_key_value_heads: 4, max_position_embeddings: 1024 },
  });
  const ccf = new CcfCompressor(model, { segmentLen: 64, rank: 8, alpha: 16 });
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
  const doc = (n: number) => [0, 1].map((r) => tokens(n * 64 + 1, 100 + r, 128));
  // Warm-up on one segment: allocator arenas, RoPE tables, compiled code.
  tidy(() => ccfDocumentGradients(ccf, doc(1), { ratio: PROBE_RATIO, reservoir: k, rng: new Rng(1) }));
  for (const [, p] of ccf.net.namedParameters()) p.value.zeroGrad();
  const ids = doc(segments);
  gc();
  const base = process.memoryUsage.rss();
  let peak = 0;
  let handles = 0;
  let held = 0;
  const onProbe = (p: CcfProbe) => {
    peak = Math.max(peak, process.memoryUsage.rss() - base);
    handles = Math.max(handles, p.liveHandles);
    held = Math.max(held, p.heldGraphs);
  };
  const t0 = performance.now();
  tidy(() => ccfDocumentGradients(ccf, ids, { ratio: PROBE_RATIO, reservoir: k, rng: new Rng(1), onProbe }));
  const seconds = (performance.now() - t0) / 1000;
  peak = Math.max(peak, process.memoryUsage.rss() - base);
  return { segments, k, peakRssMB: peak / 2 ** 20, peakLiveHandles: handles - memoryStats().liveHandles, maxHeldGraphs: held, seconds };
}

const PROBE_ENV = 'SOFTPRESS_CCF_MEMORY_PROBE';
const PROBE = process.env[PROBE_ENV];
if (PROBE) {
  const [segments, k] = PROBE.split(':').map(Number);
  process.stdout.write(JSON.stringify(memoryProbe(segments, k)) + '\n');
}

unit('(d) peak memory: flat in document length with k = 2, growing with k = segments', () => {
  const run = (segments: number, k: number): MemoryFigure => {
    const env: Record<string, string | undefined> = { ...process.env, [PROBE_ENV]: `${segments}:${k}`, SOFTPRESS_THREADS: '1' };
    delete env.NODE_TEST_CONTEXT;
    const r = spawnSync(process.execPath, ['--expose-gc', '--max-semi-space-size=1', fileURLToPath(import.meta.url)], {
      env,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, `memory probe ${segments}:${k} failed: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as MemoryFigure;
  };
  const figures: MemoryFigure[] = [];
  for (const k of [2, 0]) for (const s of [4, 8, 16]) figures.push(run(s, k || s));
  const at = (segments: number, k: number) => figures.find((f) => f.segments === segments && f.k === k)!;
  for (const f of figures)
    console.log(
      `  ccf memory: ${f.segments} segments, k=${f.k}: peak +${f.peakRssMB.toFixed(1)} MB RSS, +${f.peakLiveHandles} live handles, ${f.maxHeldGraphs} encoder graphs held, ${f.seconds.toFixed(2)} s`,
    );
  for (const s of [4, 8, 16]) assert.ok(at(s, 2).maxHeldGraphs <= 3, `k=2 held ${at(s, 2).maxHeldGraphs} graphs`);
  assert.equal(at(16, 16).maxHeldGraphs, 16);
  // k = 2: the peak hardly grows with the document (only what reads the growing memory does);
  // k = segments: one more encoder graph per segment.
  const flat = at(16, 2).peakRssMB - at(4, 2).peakRssMB;
  const growth = at(16, 16).peakRssMB - at(4, 4).peakRssMB;
  assert.ok(growth > 10, `keeping every graph should grow the peak (4 -> 16 segments: ${growth.toFixed(1)} MB)`);
  assert.ok(flat < 0.25 * growth, `k=2 peak grew by ${flat.toFixed(1)} MB from 4 to 16 segments, k=segments by ${growth.toFixed(1)} MB`);
});

// ---- (e) streaming -----------------------------------------------------------------------------

unit(
  '(e) CcfStream: memory grows by c per layer per segment, equals compress(), scores what the trainer counts',
  scoped(() => {
    const model = tinyModel();
    const ccf = tinyCcf(model, 8);
    const doc = [tokens(33, 21), tokens(33, 22)]; // 4 segments of 8, plus the last target
    const stream = new CcfStream(ccf, { ratio: 4 });
    try {
      let bytesPerSegment = 0;
      for (let t = 0; t < 4; t++) {
        const score = stream.perplexityOf(doc.map((r) => r.slice(t * 8, t * 8 + 8)));
        assert.equal(score.tokens, t === 0 ? 2 * 7 : 2 * 8);
        assert.ok(Number.isFinite(score.loss));
        assert.equal(stream.memoryLength, 2 * (t + 1));
        for (const kv of stream.memoryKv!) assert.deepEqual(kv.k.shape, [2, TINY.num_key_value_heads, 2 * (t + 1), 8]);
        if (t === 0) bytesPerSegment = stream.memoryBytes;
        assert.equal(stream.memoryBytes, (t + 1) * bytesPerSegment);
      }
      // 3 layers x (k + v) x [2 rows, 2 kv heads, 2 slots, 8] float64
      assert.equal(bytesPerSegment, 3 * 2 * 2 * 2 * 2 * 8 * 8);
      const ctx = ccf.compress(
        doc.map((r) => r.slice(0, 32)),
        { ratio: 4 },
      );
      stream.memoryKv!.forEach((kv, n) => {
        assertClose(kv.k, ctx.memoryKv![n].k, 1e-10, `stream vs compress keys, layer ${n}`);
        assertClose(kv.v, ctx.memoryKv![n].v, 1e-10, `stream vs compress values, layer ${n}`);
      });
      // The last target (a 1-token segment): the stream has now scored all 2 x 32 predictions.
      stream.perplexityOf(doc.map((r) => r.slice(32)));
      assert.equal(stream.memoryLength, 9); // ceil(1 * 2 / 8) = 1 slot for a 1-token segment
      const res = noGrad(() => ccfDocumentGradients(ccf, doc, { ratio: 4, rng: new Rng(0) }));
      assert.equal(stream.tokens, res.tokens);
      assert.ok(Math.abs(stream.nll / stream.tokens - res.loss) < 1e-10, `stream loss ${stream.nll / stream.tokens} vs trainer ${res.loss}`);
    } finally {
      stream.free();
    }
    assert.throws(() => new CcfStream(ccf, { ratio: 3 }), /ratio 3 .*supported: 2, 4, 8/);
  }),
);

unit(
  '(e) streamEval: CCF against the full window, no memory and a window of the same memory, every token scored once',
  scoped(() => {
    const model = tinyModel();
    const ccf = tinyCcf(model, 16);
    const doc = tokens(64, 41);
    const bos = 1;
    const rows = streamEval({ model, tokenizer: { bos, pad: 0 } as Tokenizer, docs: [doc], lengths: [64], segmentLen: 16, streaming: ccf, streamRatios: [4] });
    assert.deepEqual(
      rows.map((r) => `${r.method}@${r.ratio ?? '-'}`),
      ['full (sliding window)@-', 'none (segment alone)@-', 'window (same memory)@4', 'ccf@4'],
    );
    for (const r of rows) assert.equal(r.tokens, 63, `${r.method}: every token after the first, once`);
    const kvPerToken = 2 * TINY.num_hidden_layers * TINY.num_key_value_heads * 8 * 4;
    const [full, none, window, memory] = rows;
    // Before the segment at s the window holds the last s / 4 tokens: 12 at most (s = 48), as
    // many as CCF's 4 slots for each of the 3 earlier segments (CCF counts the last one's too).
    assert.equal(window.stateBytes, 12 * kvPerToken);
    assert.equal(full.stateBytes, 64 * kvPerToken);
    assert.equal(none.stateBytes, 0);
    const held = new CcfStream(ccf, { ratio: 4 });
    try {
      for (let s = 0; s < 64; s += 16) held.perplexityOf(doc.slice(s, s + 16));
      assert.equal(memory.stateBytes, held.memoryBytes);
      assert.ok(Math.abs(Math.log(memory.ppl) - held.nll / held.tokens) < 1e-9, 'ccf row = the stream it reads');
    } finally {
      held.free();
    }
    // The window row by its definition: segment [s, s + 16) read after BOS + ids[s - s/4, s).
    let nll = 0;
    for (let s = 0; s < 64; s += 16) {
      const w0 = s - s / 4;
      const input = [bos, ...doc.slice(w0, s + 15)];
      const { logits } = model.forward({ ids: ids([input]) });
      const from = Math.max(1, s);
      nll += crossEntropy(
        logits!.reshape(input.length, -1).narrow(0, from - w0, s + 16 - from),
        tensor(doc.slice(from, s + 16), [s + 16 - from], { dtype: 'int64' }),
        { reduction: 'sum' },
      ).item();
    }
    assert.ok(Math.abs(Math.log(window.ppl) - nll / 63) < 1e-9, `window row ${Math.log(window.ppl)} vs ${nll / 63}`);
    // Holding past tokens changes the scores: the window is not the no-memory row.
    assert.notEqual(window.ppl, none.ppl);
  }),
);

// ---- (f) shapes, budgets, errors, saving, training runs ------------------------------------------

unit(
  '(f) shapes for ratios 8 and 32 with l = 64; budgets and errors',
  scoped(() => {
    const model = tinyModel({ dtype: 'float32' });
    const ccf = createCompressor('ccf', model, { segmentLen: 64 }) as CcfCompressor;
    assert.deepEqual(ccf.ratios, [2, 4, 8, 16, 32, 64]);
    const contexts = [tokens(128, 31), tokens(128, 32)];
    for (const [ratio, m] of [
      [8, 16],
      [32, 4],
    ] as const) {
      const ctx = ccf.compress(contexts, { ratio });
      assert.equal(ctx.memoryKv!.length, TINY.num_hidden_layers);
      for (const kv of ctx.memoryKv!) {
        assert.deepEqual(kv.k.shape, [2, TINY.num_key_value_heads, m, 8]);
        assert.deepEqual(kv.v.shape, [2, TINY.num_key_value_heads, m, 8]);
      }
      assert.deepEqual(ctx.meta.softTokens, [m, m]);
      assert.deepEqual(ctx.memoryMask!.shape, [2, m]);
    }
    // A partial last segment keeps the ratio: ceil(100 / 8) = 13 = 8 + ceil(36 / 8).
    assert.equal(ccf.compress([tokens(100, 33)], { ratio: 8 }).memoryKv![0].k.size(2), 13);
    // A budget of k slots: k / segments per segment.
    assert.equal(ccf.compress(contexts, { tokens: 8 }).memoryKv![0].k.size(2), 8);
    assert.equal(ccf.compress(contexts, { tokens: 0 }).memoryKv, undefined);
    // Encoding segments in several calls gives the same memory.
    const small = createCompressor('ccf', model, { segmentLen: 64, encodeBatch: 1 }) as CcfCompressor;
    small.net.loadStateDict(ccf.net.stateDict());
    assertClose(small.compress(contexts, { ratio: 8 }).memoryKv![1].k, ccf.compress(contexts, { ratio: 8 }).memoryKv![1].k, 1e-5, 'encodeBatch 1 vs 16');

    assert.throws(() => ccf.compress(contexts, { ratio: 3 }), /ratio 3 needs an integer number of memory slots .*supported: 2, 4, 8, 16, 32, 64/);
    assert.throws(() => ccf.compress(contexts, { tokens: 5 }), /5 memory slots must split evenly over the 2 segments/);
    assert.throws(() => ccf.compress([tokens(128, 1), tokens(100, 2)], { ratio: 8 }), /equal lengths \(got 128, 100\)/);
    assert.throws(() => createCompressor('ccf', model, { segmentLen: 0 }), /segmentLen' must be an integer >= 1/);
    assert.throws(() => createCompressor('ccf', model, { memTokenId: 999 }), /outside the vocabulary/);
  }),
);

unit(
  'pi starts as a token every tokenizer has (EOS), or a given one, or the mean embedding; save and load round trip',
  scoped(() => {
    const model = tinyModel();
    const withEos = tinyModel({ over: { eos_token_id: 2 } });
    const eos = new CcfCompressor(withEos, { segmentLen: 8 });
    assertClose(eos.net.pi.value, withEos.model.embedTokens.weight.value.select(0, 2), 0, 'pi from EOS');
    assert.equal(eos.config.memTokenId, 2);
    const given = new CcfCompressor(model, { segmentLen: 8, memTokenId: 6 });
    assertClose(given.net.pi.value, model.model.embedTokens.weight.value.select(0, 6), 0, 'pi from a given token');
    // memTokenId null (how models/ccf was saved) and a base without EOS: the mean embedding.
    for (const mean of [new CcfCompressor(withEos, { segmentLen: 8, memTokenId: null }), new CcfCompressor(model, { segmentLen: 8 })]) {
      assertClose(mean.net.pi.value, mean.base.model.embedTokens.weight.value.mean(0), 1e-12, 'pi from the mean embedding');
      assert.equal(mean.config.memTokenId, null);
    }

    const trained = tinyCcf(model, 8);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-ccf-'));
    try {
      saveCompressor(trained, dir);
      const back = loadCompressor(dir, model) as CcfCompressor;
      assert.equal(back.segmentLen, 8);
      const ctx = [tokens(16, 41)];
      assertClose(back.compress(ctx, { ratio: 4 }).memoryKv![1].v, trained.compress(ctx, { ratio: 4 }).memoryKv![1].v, 1e-12, 'memory after save/load');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }),
);

unit('the training procedure under the shared trainer: a short run logs and validates; interrupted + resumed run equals an uninterrupted one', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-ccf-train-'));
  // A stream with long-range structure: each document (ended by id 0) repeats an 8-token motif.
  const rng = new Rng('stream');
  const streamArr: number[] = [];
  while (streamArr.length < 3000) {
    const motif = Array.from({ length: 8 }, () => 1 + rng.int(TINY.vocab_size - 1));
    for (let i = 0; i < 5; i++) streamArr.push(...motif);
    streamArr.push(0);
  }
  const stream = Int32Array.from(streamArr);
  const run = async (outDir: string, opts: { stopAfter?: number; resume?: boolean }) => {
    const model = tinyModel({ dtype: 'float32' });
    manualSeed(3);
    const ccf = new CcfCompressor(model, { segmentLen: 8, rank: 4, alpha: 8 });
    const task = ccf.trainingProcedure({
      stages: ['lm'],
      ratios: [4],
      trainStream: stream,
      validStream: stream,
      docSeparator: 0,
      batchSize: 1,
      gradAccum: 1,
      seed: 0,
      validBatches: 2,
      docLen: 32,
    });
    assert.deepEqual(task.training, { docLen: 32, segments: 4, reservoir: 2, documents: 'inside single documents' });
    const summary = await train(task, {
      outDir,
      totalSteps: 6,
      schedule: warmupCosine({ peakLr: 3e-3, warmupSteps: 1, totalSteps: 6, minLr: 0 }),
      checkpointEvery: 2,
      evalEvery: 3,
      quiet: true,
      ...opts,
    });
    return { ccf, summary };
  };
  try {
    const a = await run(path.join(dir, 'a'), {});
    assert.equal(a.summary.steps, 6);
    assert.ok(Number.isFinite(a.summary.lastLoss));
    assert.ok(a.summary.lastValid && Number.isFinite(a.summary.lastValid.ppl));
    const rows = fs
      .readFileSync(path.join(dir, 'a', 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    assert.equal(rows.filter((r) => r.loss !== undefined).length, 6);
    const untrainedBase = tinyModel({ dtype: 'float32' });
    manualSeed(3);
    const untrained = new Map(new CcfCompressor(untrainedBase, { segmentLen: 8, rank: 4, alpha: 8 }).net.namedParameters());
    assert.ok(
      a.ccf.net.namedParameters().some(([name, p]) => maxDiff(p.value, untrained.get(name)!.value) > 0),
      'training changed the parameters',
    );

    const first = await run(path.join(dir, 'b'), { stopAfter: 4 });
    assert.equal(first.summary.steps, 4);
    const b = await run(path.join(dir, 'b'), { resume: true });
    assert.equal(b.summary.steps, 6);
    const pa = new Map(a.ccf.net.namedParameters());
    for (const [name, p] of b.ccf.net.namedParameters()) assert.equal(maxDiff(p.value, pa.get(name)!.value), 0, `${name} after resume`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- positions, long documents (issue #28) ------------------------------------------------------

unit(
  'positions: memory + segment beyond the base window is a clear error, never a silent RoPE extension',
  scoped(() => {
    const model = tinyModel({ dtype: 'float32' }); // 128 positions
    assert.throws(() => new CcfCompressor(model, { segmentLen: 128 }), /segments of 128 tokens do not fit the base model's 128 positions/);
    const ccf = new CcfCompressor(model, { segmentLen: 32, rank: 4, alpha: 8 });
    assert.equal(new CcfCompressor(model, {}).segmentLen, 32, "default: a quarter of the window (the paper's 1024 does not fit)");
    // Ratio 2: 16 slots per segment. 7 segments of memory (112) + a segment of 32 = 144 > 128.
    assert.equal(ccf.positionsNeeded(8 * 32, 2), 7 * 16 + 32);
    const stream = new CcfStream(ccf, { ratio: 2 });
    try {
      for (let t = 0; t < 7; t++) stream.perplexityOf(tokens(32, 50 + t)); // the 7th reads 96 + 32 = 128: fits
      assert.equal(stream.memoryLength, 112);
      assert.throws(
        () => stream.perplexityOf(tokens(32, 60)),
        /112 memory slots and 32 tokens need positions up to 143, beyond the base model's window of 128 positions/,
      );
    } finally {
      stream.free();
    }
    assert.throws(
      () => noGrad(() => ccfDocumentGradients(ccf, [tokens(8 * 32 + 1, 70)], { ratio: 2, rng: new Rng(0) })),
      /beyond the base model's window of 128 positions/,
    );
  }),
);

unit('long documents: chunks lie inside single documents; the default length fits the window', async () => {
  const { DocumentChunkSampler } = await import('../src/data/lm.js');
  const EOS = 0;
  // Documents of 50, 9 and 30 tokens (ids 1..), each ending with EOS.
  const docs = [50, 9, 30].map((n, d) => Array.from({ length: n }, (_, i) => 1 + d * 100 + i));
  const stream = Int32Array.from(docs.flatMap((d) => [...d, EOS]));
  const s = new DocumentChunkSampler(stream, 8, 1, EOS);
  assert.equal(s.numChunks, Math.floor(49 / 8) + Math.floor(8 / 8) + Math.floor(29 / 8));
  assert.equal(s.documents, 3);
  for (let g = 0; g < 2 * s.numChunks; g++) {
    const c = Array.from(s.chunk(g));
    assert.equal(c.length, 9);
    assert.ok(!c.includes(EOS), 'no chunk crosses a document end');
    assert.equal(new Set(c.map((id) => Math.floor((id - 1) / 100))).size, 1, 'one document per chunk');
  }
  assert.throws(() => new DocumentChunkSampler(stream, 64, 1, EOS), /no document has 65 tokens \(the longest has 50\)/);
  // 16 segments when the window holds them, fewer when not (l = 32, window 128: at ratio 2, 16
  // slots per segment, the memory of 6 segments and a 7th fit; the smallest ratio decides).
  const model = tinyModel({ dtype: 'float32' });
  const ccf = new CcfCompressor(model, { segmentLen: 32, rank: 4, alpha: 8 });
  assert.equal(ccf.defaultDocLen([8, 2]), 7 * 32);
  assert.equal(ccf.defaultDocLen([8]), 16 * 32); // (16 - 1) x 4 + 32 = 92 positions
  const wide = tinyModel({ dtype: 'float32', over: { max_position_embeddings: 4096 } });
  assert.equal(new CcfCompressor(wide, { segmentLen: 32, rank: 4, alpha: 8 }).defaultDocLen([8]), 16 * 32);
});
