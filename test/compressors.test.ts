/**
 * The shared compressor suite: every learned method in the registry (compressorNames({learnedOnly:
 * true})) runs the same checks on a tiny random base model (test/helpers/tiny.ts):
 *   shapes and masks of ragged batches at several ratios and a token budget; the budget
 *   honoured; batching does not change an item's soft context; bit-identical in eval mode;
 *   gradients reach every trainable parameter of every stage and never the base model;
 *   save/load round trip (and refusal over another base); .softctx round trip (and refusal);
 *   the decoder reads the context (tailLoss, generateWithContext); a short end-to-end training
 *   run through train() whose held-out autoencoding loss falls well below the 'none' loss (and
 *   below the untrained compressor's), with the base weights bit-identical afterwards.
 * Plus the strategies full / none / truncate.
 *
 * About the training check: the tiny base is random, so it cannot reconstruct any context (even
 * `full` is no better than `none` through it). What the check proves is that the whole loop
 * works for the method: gradients from the frozen decoder's loss reach its parameters, the
 * optimiser moves them, the decoder's predictions follow the soft context, and the base stays
 * untouched. Reconstruction quality is measured on the pretrained base (softpress eval).
 *
 * A new method needs nothing here unless the defaults do not fit it: then one line in
 * METHOD_TEST_OPTIONS.
 */
import test, { describe } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Tensor, crossEntropy, noGrad, randn, tensor, tidy } from '../src/tensor/index.js';
import { warmupCosine } from '../src/nn/index.js';
import {
  compressorNames,
  createCompressor,
  freeSoftContext,
  generateWithContext,
  loadCompressor,
  loadSoftContext,
  saveCompressor,
  saveSoftContext,
  softCount,
  restateFormat,
  restateTail,
  tailLoss,
  withTaskEmbeddings,
  type Budget,
  type Compressor,
  type SoftContext,
  type Stage,
} from '../src/compress/index.js';
import { ObjectiveSampler, batchLoss, compressorTask } from '../src/train/objectives.js';
import { train } from '../src/train/trainer.js';
import { tokenizeStream } from '../src/data/lm.js';
import { loadMobyDick } from '../src/data/corpora.js';
import { snapshotBytes, tinyBase } from './helpers/tiny.js';
import { maxDiff } from './helpers/close.js';

// ---- per-method options (one line per method that needs them) ------------------------------

interface MethodTestOptions {
  /** Factory options for the method. */
  options?: Record<string, unknown>;
  /** Ratios checked (default [4, 8], or the method's own `ratios`). */
  ratios?: number[];
  /** Token budget checked (default 5); null when the method has no token budgets. */
  budgetTokens?: number | null;
  /** Context lengths of the ragged batch (default [7, 32, 50]). */
  lengths?: number[];
  /** Soft tokens per item for a context of T tokens (default softCount(T, budget)). */
  expectCount?: (T: number, budget: Budget) => number;
  /** An item's soft context does not depend on the rest of its batch (default true). */
  batchInvariant?: boolean;
  /**
   * The end-to-end training check (defaults: 80 steps, peak lr 1e-2, the held-out loss must end
   * minDrop = 2 nats below 'none' and 0.5 below the untrained compressor); false skips it (say
   * why in a comment).
   */
  train?: { steps?: number; lr?: number; minDrop?: number } | false;
}

const METHOD_TEST_OPTIONS: Record<string, MethodTestOptions> = {
  icae: { options: { maxSlots: 32 } },
  ccf: { lengths: [32, 32, 32] }, // memory KV slots are not padded: one batch holds equal lengths
};

// ---- shared fixtures ----------------------------------------------------------------------------

const { model: base, tokenizer: tok } = tinyBase();
const { model: otherBase } = tinyBase({ seed: 99 });

let streamCache: Int32Array | undefined;
/** ~5k tokens of Moby-Dick (three chapters), tokenized with the real tokenizer. */
function stream(): Int32Array {
  if (!streamCache)
    streamCache = tokenizeStream(
      loadMobyDick()
        .slice(1, 4)
        .map((d) => d.text.slice(0, 6000)),
      tok,
    );
  return streamCache;
}

/** Contexts of the given lengths cut from the stream (no BOS/EOS inside). */
function contextsOf(lengths: number[], offset = 0): number[][] {
  const s = Array.from(stream()).filter((id) => id !== tok.bos && id !== tok.eos);
  let at = offset;
  return lengths.map((n) => {
    const c = s.slice(at, at + n);
    at += n + 3;
    return c;
  });
}

function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `softpress-${tag}-`));
}

const bytes = (t: Tensor): Buffer => Buffer.from(tidy(() => t.detach().contiguous().toBytes()));

/** The soft context's tensors as bytes, for bit-identity checks. */
function ctxBytes(ctx: SoftContext): Buffer[] {
  const out: Buffer[] = [];
  if (ctx.softTokens) out.push(bytes(ctx.softTokens));
  if (ctx.mask) out.push(bytes(ctx.mask));
  for (const kv of ctx.memoryKv ?? []) out.push(bytes(kv.k), bytes(kv.v));
  if (ctx.memoryMask) out.push(bytes(ctx.memoryMask));
  return out;
}

/** Autoencoding tails for contexts in the restate format (prompts.ts): prompt ctx EOS, loss from the ctx. */
function aeTails(contexts: number[][]): { tails: number[][]; lossFrom: number[] } {
  const f = restateFormat(tok);
  const rows = contexts.map((c) => restateTail(f, c));
  return { tails: rows.map((r) => r.tail), lossFrom: rows.map((r) => r.lossFrom) };
}

function budgetsFor(c: Compressor, o: MethodTestOptions): Budget[] {
  const ratios = o.ratios ?? (c.ratios ? [...c.ratios] : [4, 8]);
  const out: Budget[] = ratios.map((ratio) => ({ ratio }));
  const k = o.budgetTokens === undefined ? 5 : o.budgetTokens;
  if (k !== null) out.push({ tokens: k });
  return out;
}

/** Checks one soft context against the contexts and budget it was made from. */
function checkShapes(c: Compressor, ctx: SoftContext, contexts: number[][], budget: Budget, o: MethodTestOptions, what: string): void {
  const b = contexts.length;
  const want = contexts.map((x) => (o.expectCount ?? softCount)(x.length, budget));
  assert.equal(ctx.meta.method, c.method, `${what}: meta.method`);
  assert.deepEqual(
    ctx.meta.sourceTokens,
    contexts.map((x) => x.length),
    `${what}: meta.sourceTokens`,
  );
  assert.deepEqual(ctx.meta.softTokens, want, `${what}: meta.softTokens (budget honoured)`);
  assert.deepEqual(ctx.meta.budget, budget, `${what}: meta.budget`);
  assert.equal(ctx.meta.baseFingerprint, base.fingerprint(), `${what}: meta.baseFingerprint`);
  assert.ok(ctx.softTokens || ctx.memoryKv, `${what}: neither soft tokens nor memory`);
  const k = Math.max(0, ...want);
  // Right padding: item i's real slots are its first want[i].
  const expectMask = want.flatMap((n) => Array.from({ length: k }, (_, j) => (j < n ? 1 : 0)));
  if (ctx.softTokens) {
    assert.deepEqual(ctx.softTokens.shape, [b, k, base.dim], `${what}: softTokens shape`);
    assert.ok(
      tidy(() => ctx.softTokens!.isFloatingPoint && (ctx.softTokens!.numel === 0 || ctx.softTokens!.abs().max().item() < Infinity)),
      `${what}: soft tokens are finite`,
    );
    assert.ok(ctx.mask, `${what}: a learned method returns a mask with its soft tokens`);
  }
  if (ctx.mask) {
    assert.equal(ctx.mask.dtype, 'bool', `${what}: mask dtype`);
    assert.deepEqual(ctx.mask.shape, [b, k], `${what}: mask shape`);
    assert.deepEqual(ctx.mask.toNumbers(), expectMask, `${what}: mask marks each item's first n slots`);
  }
  if (ctx.memoryKv) {
    const { numKvHeads, headDim, numLayers } = base.config;
    assert.equal(ctx.memoryKv.length, numLayers, `${what}: memoryKv layers`);
    for (const kv of ctx.memoryKv) {
      assert.deepEqual(kv.k.shape, [b, numKvHeads, k, headDim], `${what}: memory k shape`);
      assert.deepEqual(kv.v.shape, [b, numKvHeads, k, headDim], `${what}: memory v shape`);
    }
    if (ctx.memoryMask) {
      assert.deepEqual(ctx.memoryMask.shape, [b, k], `${what}: memoryMask shape`);
      assert.deepEqual(ctx.memoryMask.toNumbers(), expectMask, `${what}: memoryMask`);
    }
  }
}

/** Adds noise to every parameter of the compressor, so a round trip of its weights means something. */
function perturb(c: Compressor): void {
  tidy(() =>
    noGrad(() => {
      for (const m of [c.module, c.decoderLora])
        for (const [, p] of m?.namedParameters() ?? []) if (p.value.isFloatingPoint) p.value.add_(randn(p.value.shape).mul(0.05).to(p.value.dtype));
    }),
  );
}

// ---- the suite, for every learned method -------------------------------------------------------

test('objectives: autoencoding lengths drawn per micro-batch from aeLengths', () => {
  const restate = restateFormat(tok);
  const cfg = { stages: { ae: 1, lm: 1 }, ratios: [4], contextLen: 16, continuationLen: 8, batchSize: 2, seed: 3 };
  const plain = new ObjectiveSampler(cfg, { tokenizer: tok, stream: stream() });
  const varied = new ObjectiveSampler({ ...cfg, aeLengths: [8, 24] }, { tokenizer: tok, stream: stream() });
  const seen = new Set<number>();
  for (let step = 0; step < 24; step++) {
    const a = plain.batch(step, 0);
    const b = varied.batch(step, 0);
    assert.equal(a.stage, b.stage, 'the stage draw is unchanged by aeLengths');
    for (const c of a.contexts) assert.equal(c.length, 16);
    if (b.stage === 'lm') {
      assert.deepEqual(b.contexts, a.contexts, 'lm batches are unchanged');
      continue;
    }
    const len = b.contexts[0].length;
    assert.ok([8, 24].includes(len), `ae length ${len}`);
    seen.add(len);
    for (let r = 0; r < b.contexts.length; r++) {
      assert.equal(b.contexts[r].length, len, 'one length per micro-batch');
      assert.deepEqual(b.tails[r], [...restate.prompt, ...b.contexts[r], tok.eos]);
      assert.equal(b.lossFrom[r], restate.prompt.length);
      assert.deepEqual(b.lead, restate.lead);
      // The same chunk: the longer context starts with the shorter one.
      const short = Math.min(len, 16);
      assert.deepEqual(b.contexts[r].slice(0, short), a.contexts[r].slice(0, short));
    }
  }
  assert.deepEqual(
    [...seen].sort((x, y) => x - y),
    [8, 24],
    'both lengths occur',
  );
  assert.throws(() => new ObjectiveSampler({ ...cfg, aeLengths: [25] }, { tokenizer: tok, stream: stream() }), /ae length 25/);
});

const learned = compressorNames({ learnedOnly: true });

test('the registry lists the learned baselines', () => {
  for (const m of ['meanpool', 'icae']) assert.ok(learned.includes(m), `${m} is registered as learned (have ${learned.join(', ')})`);
  for (const m of ['full', 'none', 'truncate']) assert.ok(compressorNames().includes(m) && !learned.includes(m));
});

for (const method of learned) {
  const o = METHOD_TEST_OPTIONS[method] ?? {};
  const make = () => createCompressor(method, base, o.options ?? {});

  describe(`compressor ${method}`, () => {
    const lengths = o.lengths ?? [7, 32, 50];
    const contexts = contextsOf(lengths);

    test('shapes, masks and budgets of a ragged batch; eval mode is bit-identical; batching changes nothing', () => {
      const c = make();
      c.setTraining(false);
      assert.equal(c.method, method);
      assert.equal(c.base, base);
      assert.equal(c.config.method, method);
      assert.ok(c.module, 'a learned method has a module of its own parameters');
      for (const budget of budgetsFor(c, o)) {
        const what = `${method} ${JSON.stringify(budget)}`;
        tidy(() =>
          noGrad(() => {
            const a = c.compress(contexts, budget);
            checkShapes(c, a, contexts, budget, o, what);
            const again = c.compress(contexts, budget);
            assert.deepEqual(ctxBytes(again), ctxBytes(a), `${what}: two eval-mode calls are bit-identical`);
            if (o.batchInvariant !== false) {
              contexts.forEach((ctxIds, i) => {
                const alone = c.compress([ctxIds], budget);
                const n = alone.meta.softTokens[0];
                if (a.softTokens && alone.softTokens) {
                  const d = maxDiff(a.softTokens.narrow(0, i, 1).narrow(1, 0, n), alone.softTokens.narrow(1, 0, n));
                  assert.ok(d < 1e-4, `${what}: item ${i} alone vs in the batch differ by ${d}`);
                }
                (a.memoryKv ?? []).forEach((kv, l) => {
                  const d = maxDiff(kv.k.narrow(0, i, 1).narrow(2, 0, n), alone.memoryKv![l].k.narrow(2, 0, n));
                  assert.ok(d < 1e-4, `${what}: memory k of item ${i}, layer ${l}, alone vs in the batch differ by ${d}`);
                });
              });
            }
          }),
        );
      }
    });

    test('gradients reach every trainable parameter of every stage and no base parameter', () => {
      const c = make();
      c.setTraining(true);
      const { tails, lossFrom } = aeTails(contexts);
      const budget = budgetsFor(c, o)[0];
      const allTrainable = new Set<string>();
      for (const stage of ['ae', 'lm', 'qa'] as Stage[]) {
        const params = c.trainable(stage);
        if (params.length === 0) continue;
        for (const [n] of params) allTrainable.add(n);
        tidy(() => {
          for (const m of [c.module, c.decoderLora]) m?.zeroGrad();
          // The stage's task embeddings (ICAE's [AE] / [LM]) follow the soft tokens, as in training.
          const ctx = withTaskEmbeddings(c, c.compress(contexts, budget), stage);
          const { loss } = tailLoss(base, ctx, tails, lossFrom, { bos: tok.bos, pad: tok.pad, lora: c.decoderLora });
          assert.ok(Number.isFinite(loss.item()), `${stage}: loss is finite`);
          loss.backward();
          let total = 0;
          for (const [name, p] of params) {
            const g = p.value.grad;
            assert.ok(g !== null, `${method} ${stage}: no gradient reached '${name}'`);
            const norm = g.norm().item();
            assert.ok(Number.isFinite(norm), `${method} ${stage}: gradient of '${name}' is not finite`);
            total += norm;
          }
          assert.ok(total > 0, `${method} ${stage}: all gradients are zero`);
          for (const [name, p] of base.namedParameters()) assert.equal(p.value.grad, null, `${method} ${stage}: gradient reached base parameter '${name}'`);
        });
      }
      assert.ok(allTrainable.size > 0, 'some stage trains something');
      // Trainable parameters are the compressor's own (saved with it).
      const own = new Set([...(c.module?.namedParameters() ?? []), ...(c.decoderLora?.namedParameters() ?? [])].map(([, p]) => p));
      for (const stage of ['ae', 'lm', 'qa'] as Stage[])
        for (const [n, p] of c.trainable(stage)) assert.ok(own.has(p), `trainable '${n}' at ${stage} is not part of the compressor's modules`);
      for (const m of [c.module, c.decoderLora]) m?.zeroGrad();
      c.setTraining(false);
    });

    test('save/load round trip gives identical soft contexts; another base is refused', () => {
      const c = make();
      perturb(c);
      c.setTraining(false);
      const dir = tmpDir(`${method}-save`);
      try {
        saveCompressor(c, dir);
        assert.ok(fs.existsSync(path.join(dir, 'compressor.json')) && fs.existsSync(path.join(dir, 'weights.safetensors')));
        const loaded = loadCompressor(dir, base);
        assert.equal(loaded.method, method);
        for (const budget of budgetsFor(c, o)) {
          tidy(() =>
            noGrad(() =>
              assert.deepEqual(ctxBytes(loaded.compress(contexts, budget)), ctxBytes(c.compress(contexts, budget)), `round trip at ${JSON.stringify(budget)}`),
            ),
          );
        }
        assert.throws(() => loadCompressor(dir, otherBase), /trained for base model/);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('.softctx round trip; refused for another base', () => {
      const c = make();
      perturb(c);
      c.setTraining(false);
      const dir = tmpDir(`${method}-softctx`);
      try {
        tidy(() =>
          noGrad(() => {
            const budget = budgetsFor(c, o)[0];
            const ctx = c.compress(contexts, budget);
            const file = path.join(dir, 'ctx.softctx');
            saveSoftContext(file, ctx);
            const back = loadSoftContext(file, base);
            try {
              assert.deepEqual(back.meta, ctx.meta);
              assert.deepEqual(ctxBytes(back), ctxBytes(ctx));
              const { tails, lossFrom } = aeTails(contexts);
              const opts = { bos: tok.bos, pad: tok.pad, lora: c.decoderLora };
              assert.equal(tailLoss(base, back, tails, lossFrom, opts).loss.item(), tailLoss(base, ctx, tails, lossFrom, opts).loss.item());
            } finally {
              freeSoftContext(back);
            }
            assert.throws(() => loadSoftContext(file, otherBase), /made for base model/);
          }),
        );
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('the decoder reads the context: tailLoss is finite, generateWithContext answers every item', () => {
      const c = make();
      c.setTraining(false);
      tidy(() =>
        noGrad(() => {
          for (const budget of budgetsFor(c, o)) {
            const ctx = c.compress(contexts, budget);
            const { tails, lossFrom } = aeTails(contexts);
            const r = tailLoss(base, ctx, tails, lossFrom, { bos: tok.bos, pad: tok.pad, lora: c.decoderLora });
            assert.ok(Number.isFinite(r.loss.item()) && r.loss.item() > 0, `tailLoss at ${JSON.stringify(budget)}`);
            assert.equal(
              r.tokens,
              contexts.reduce((a, x) => a + x.length + 1, 0),
            );
            const prompts = contexts.map(() => tok.encode('\nQuestion: what?\nAnswer:'));
            const g = generateWithContext(base, ctx, prompts, tok.bos, { maxTokens: 4, lora: c.decoderLora });
            assert.equal(g.tokens.length, contexts.length);
            for (const t of g.tokens) {
              assert.equal(t.length, 4);
              for (const id of t) assert.ok(Number.isInteger(id) && id >= 0 && id < base.config.vocabSize);
            }
          }
        }),
      );
    });

    const trainOpts = o.train === false ? undefined : (o.train ?? {});
    test(
      'end to end: train() on autoencoding lowers the loss well below no context; the base is untouched',
      { skip: o.train === false ? `${method} opts out of the training check` : false },
      async (t) => {
        const steps = trainOpts?.steps ?? 80;
        const lr = trainOpts?.lr ?? 1e-2;
        const minDrop = trainOpts?.minDrop ?? 2;
        const c = make();
        const sampler = new ObjectiveSampler(
          { stages: { ae: 1 }, ratios: [4], contextLen: 24, continuationLen: 0, batchSize: 4, seed: 1 },
          { tokenizer: tok, stream: stream() },
        );
        const none = createCompressor('none', base);
        const held = [0, 1, 2].map((i) => sampler.batch(100000 + i, 0)); // never drawn while training
        const evalLoss = (comp: Compressor) => {
          comp.setTraining(false);
          return noGrad(() => held.reduce((a, bt) => a + tidy(() => batchLoss(comp, bt, tok).loss.item()), 0) / held.length);
        };
        const noneLoss = evalLoss(none);
        const before = evalLoss(c);
        const snapshot = snapshotBytes(base);
        const fingerprint = base.fingerprint();
        const dir = tmpDir(`${method}-train`);
        const t0 = performance.now();
        try {
          const summary = await train(compressorTask(c, sampler, 'ae'), {
            outDir: dir,
            totalSteps: steps,
            schedule: warmupCosine({ peakLr: lr, warmupSteps: 5, totalSteps: steps, minLr: lr / 10 }),
            clip: 1,
            weightDecay: 0,
            quiet: true,
          });
          assert.equal(summary.steps, steps);
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
        const secs = (performance.now() - t0) / 1000;
        const after = evalLoss(c);
        const note = `${method}: held-out AE loss none ${noneLoss.toFixed(3)}, untrained ${before.toFixed(3)}, after ${steps} steps ${after.toFixed(3)} (${secs.toFixed(1)} s)`;
        t.diagnostic(note);
        assert.ok(after < noneLoss - minDrop, `${note}: not ${minDrop} nats below no context`);
        assert.ok(after < before - 0.5, `${note}: not 0.5 nats below the untrained compressor`);
        const now = snapshotBytes(base);
        for (const [name, b] of snapshot) assert.ok(b.equals(now.get(name)!), `base parameter '${name}' changed during training`);
        base.invalidateFingerprint();
        assert.equal(base.fingerprint(), fingerprint);
      },
    );
  });
}

// ---- strategies ----------------------------------------------------------------------------------

describe('strategies full / none / truncate', () => {
  const contexts = contextsOf([7, 32, 50], 500);

  test('shapes and counts', () => {
    tidy(() =>
      noGrad(() => {
        for (const budget of [{ ratio: 4 }, { ratio: 8 }, { tokens: 5 }] as Budget[]) {
          const full = createCompressor('full', base).compress(contexts, budget);
          assert.deepEqual(full.meta.softTokens, [7, 32, 50]);
          assert.deepEqual(full.softTokens!.shape, [3, 50, base.dim]);
          const none = createCompressor('none', base).compress(contexts, budget);
          assert.deepEqual(none.meta.softTokens, [0, 0, 0]);
          assert.deepEqual(none.softTokens!.shape, [3, 0, base.dim]);
          const trunc = createCompressor('truncate', base).compress(contexts, budget);
          const want = contexts.map((x) => Math.min(x.length, softCount(x.length, budget)));
          assert.deepEqual(trunc.meta.softTokens, want);
          assert.deepEqual(trunc.softTokens!.shape, [3, Math.max(...want), base.dim]);
          // truncate keeps the last tokens: its soft tokens are their embeddings.
          contexts.forEach((x, i) => {
            const last = x.slice(x.length - want[i]);
            const emb = base.embed(tensor(last, [1, last.length], { dtype: 'int64' }));
            assert.equal(maxDiff(trunc.softTokens!.narrow(0, i, 1).narrow(1, 0, want[i]), emb), 0);
          });
        }
      }),
    );
  });

  test('full through tailLoss equals the plain-token loss of [BOS] context tail', () => {
    tidy(() =>
      noGrad(() => {
        const { tails, lossFrom } = aeTails(contexts);
        const ctx = createCompressor('full', base).compress(contexts, { ratio: 1 });
        const viaCtx = tailLoss(base, ctx, tails, lossFrom, { bos: tok.bos, pad: tok.pad });
        let nats = 0;
        let count = 0;
        contexts.forEach((c, i) => {
          const seq = [tok.bos, ...c, ...tails[i]];
          const ids = tensor(seq, [1, seq.length], { dtype: 'int64' });
          const { logits } = base.forward({ ids });
          const p = 1 + c.length; // position of the first tail token
          const from = lossFrom[i];
          const n = tails[i].length - from;
          const lg = logits!.narrow(1, p - 1 + from, n).reshape(n, -1);
          nats += crossEntropy(lg, tensor(tails[i].slice(from), [n], { dtype: 'int64' }), { reduction: 'sum' }).item();
          count += n;
        });
        assert.equal(viaCtx.tokens, count);
        const plain = nats / count;
        assert.ok(Math.abs(viaCtx.loss.item() - plain) < 1e-4 * Math.max(1, plain), `full ${viaCtx.loss.item()} vs plain ${plain}`);
      }),
    );
  });
});
