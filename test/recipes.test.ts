/**
 * Each method's training recipe (compress/<method>.ts, `<METHOD>_RECIPE`) against its paper's
 * table, written out here from papers/*.md (and, where the summary is silent, the official code
 * as issue #28 reads it), so that a later change to a default is visible: every value marked
 * 'paper' or 'code' must equal the table, every table value must be in the recipe with that
 * source, and what the summaries do not state is listed by name. Then: the constructors default
 * to the recipe on a base wide enough for it; `softpress train`'s resolution (applyRecipe) takes
 * the recipe for every flag not given; the card records the deviations; trainable parameters
 * stay float32 over a bfloat16 base.
 */
import test from 'node:test';
import assert from 'node:assert/strict';

import { manualSeed, noGrad, tensor, tidy } from '../src/tensor/index.js';
import { AdamW } from '../src/nn/index.js';
import { configFromHf } from '../src/models/config.js';
import { LlamaModel } from '../src/models/llama.js';
import { compressorNames, compressorRecipe, createCompressor, type MethodRecipe, type Stage } from '../src/compress/index.js';
import { COMPREXIT_RECIPE, type ComprExIT } from '../src/compress/comprexit.js';
import { GMSA_RECIPE, type GmsaCompressor } from '../src/compress/gmsa.js';
import { CCF_RECIPE, type CcfCompressor } from '../src/compress/ccf.js';
import { ICAE_RECIPE, type IcaeCompressor } from '../src/compress/icae.js';
import { MEANPOOL_RECIPE } from '../src/compress/meanpool.js';
import { applyRecipe, recordOptions } from '../src/train/train-compressor.js';

// ---- the papers' tables (papers/*.md; 'code': official code per issue #28) ------------------------

interface PaperTable {
  /** Values the paper states. */
  paper: Record<string, unknown>;
  /** Values only the official code gives. */
  code?: Record<string, unknown>;
  /** Settings neither states: softpress's own (listed so that adding one is a visible change). */
  notStated: string[];
}

const TABLES: Record<string, PaperTable> = {
  comprexit: {
    paper: {
      'options.window': 128,
      'options.keyDim': 256,
      'options.depthTau': 0.7,
      'options.costDim': 256,
      'options.epsilon': 0.1,
      'options.iterations': 30,
      'options.uniformMix': 0.05,
      'options.sourceTau': 1,
      'lm.lr': 1e-4,
      'lm.warmupFraction': 0.05,
      'lm.clip': 20,
      'train.ratios': [4],
      'train.contextLen': 512,
      'train.continuationLen': 128,
    },
    code: { 'options.separateNorms': true, 'options.bias': true, 'options.bos': true },
    notStated: [
      'lm.minLrFraction',
      'lm.schedule',
      'lm.weightDecay',
      'lm.betas',
      'qa.lr',
      'qa.minLrFraction',
      'qa.warmupFraction',
      'qa.schedule',
      'qa.weightDecay',
      'qa.betas',
      'qa.clip',
    ],
  },
  gmsa: {
    paper: {
      'options.encoderLayers': 8,
      'options.loraRank': 128,
      'options.loraAlpha': 32,
      'options.loraDropout': 0.05,
      'options.merge': 'mean',
      'options.lsa': true,
      'ae.lr': 1e-4,
      'ae.minLrFraction': 0,
      'ae.warmupFraction': 0.1,
      'ae.schedule': 'cosine',
      'ae.weightDecay': 0.01,
      'ae.clip': 2,
      'qa.lr': 1e-5,
      'qa.minLrFraction': 0,
      'qa.warmupFraction': 0.1,
      'qa.schedule': 'cosine',
      'qa.weightDecay': 0.01,
      'qa.clip': 2,
      'train.ratios': [4, 8],
    },
    notStated: ['ae.betas', 'qa.betas'],
  },
  ccf: {
    paper: {
      'options.segmentLen': 1024,
      'options.memInit': 'token',
      'lm.lr': 1e-4,
      'lm.minLrFraction': 0,
      'lm.warmupFraction': 0.01,
      'lm.schedule': 'cosine',
      'lm.weightDecay': 0.1,
      'lm.betas': [0.9, 0.95],
      'lm.clip': 1,
      'train.ratios': [8],
    },
    code: { 'options.rank': 128, 'options.alpha': 512, 'train.reservoir': 2 },
    notStated: ['train.docSegments'],
  },
  icae: {
    paper: {},
    code: {
      'options.loraRank': 128,
      'options.loraAlpha': 32,
      'options.loraDropout': 0.05,
      'options.loraTargets': ['q', 'v'],
      'options.memInit': 'random',
      'options.aeToken': true,
      'options.lmToken': false,
    },
    notStated: [
      'options.maxSlots',
      ...['ae', 'lm', 'qa'].flatMap((s) => ['lr', 'minLrFraction', 'warmupFraction', 'schedule', 'weightDecay', 'betas', 'clip'].map((k) => `${s}.${k}`)),
    ],
  },
  meanpool: {
    paper: { 'options.source': 'embeddings' },
    notStated: ['ae', 'lm', 'qa'].flatMap((s) => ['lr', 'minLrFraction', 'warmupFraction', 'schedule', 'weightDecay', 'betas', 'clip'].map((k) => `${s}.${k}`)),
  },
};

/** A recipe's entries flattened to "options.k", "<stage>.k", "train.k". */
function entries(r: MethodRecipe): Map<string, { value: unknown; source: string }> {
  const out = new Map<string, { value: unknown; source: string }>();
  for (const [k, v] of Object.entries(r.options)) out.set(`options.${k}`, v);
  for (const [s, rec] of Object.entries(r.stages)) for (const [k, v] of Object.entries(rec)) out.set(`${s}.${k}`, v as { value: unknown; source: string });
  for (const [k, v] of Object.entries(r.train)) out.set(`train.${k}`, v);
  return out;
}

const RECIPES: Record<string, MethodRecipe> = { comprexit: COMPREXIT_RECIPE, gmsa: GMSA_RECIPE, ccf: CCF_RECIPE, icae: ICAE_RECIPE, meanpool: MEANPOOL_RECIPE };

for (const [method, table] of Object.entries(TABLES)) {
  test(`${method}: the recipe equals the paper's table`, () => {
    const r = RECIPES[method]!;
    assert.equal(r.method, method);
    assert.equal(compressorRecipe(method), r, 'the registry serves the same recipe');
    const got = entries(r);
    for (const [source, want] of [
      ['paper', table.paper],
      ['code', table.code ?? {}],
    ] as const) {
      for (const [k, v] of Object.entries(want)) {
        const e = got.get(k);
        assert.ok(e, `${method}: ${k} is missing from the recipe`);
        assert.deepEqual(e.value, v, `${method}: ${k}`);
        assert.equal(e.source, source, `${method}: ${k} comes from the ${source}`);
      }
    }
    const stated = new Set([...Object.keys(table.paper), ...Object.keys(table.code ?? {})]);
    for (const [k, e] of got) {
      if (e.source === 'not stated')
        assert.ok(table.notStated.includes(k), `${method}: ${k} (${JSON.stringify(e.value)}) is 'not stated' in the recipe but not in the table's list`);
      else assert.ok(stated.has(k), `${method}: ${k} = ${JSON.stringify(e.value)} claims the ${e.source} but is not in the table`);
    }
    for (const k of table.notStated) assert.equal(got.get(k)?.source, 'not stated', `${method}: ${k} should be listed as not stated`);
  });
}

test('every learned method has a recipe', () => {
  for (const m of compressorNames({ learnedOnly: true })) assert.ok(compressorRecipe(m), `${m} has no recipe`);
});

// ---- constructors default to the recipe -----------------------------------------------------------

/** A random base wide and deep enough for every recipe: hidden 128, 16 layers, 8,192 positions. */
function wideBase(dtype: 'float32' | 'bfloat16' = 'float32'): LlamaModel {
  manualSeed(5);
  const m = noGrad(
    () =>
      new LlamaModel(
        configFromHf({
          model_type: 'llama',
          vocab_size: 96,
          hidden_size: 128,
          intermediate_size: 128,
          num_hidden_layers: 16,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          max_position_embeddings: 8192,
          rms_norm_eps: 1e-5,
          tie_word_embeddings: true,
          bos_token_id: 1,
          eos_token_id: 2,
        }),
      ),
  );
  if (dtype !== 'float32') m.toDtype(dtype);
  return m.freeze().eval();
}

test('constructors default to the recipe on a base wide enough for it', () => {
  const base = wideBase();
  const g = createCompressor('gmsa', base) as GmsaCompressor;
  assert.deepEqual(
    [g.config.encoderLayers, g.config.loraRank, g.config.loraAlpha, g.config.loraDropout, g.config.merge, g.config.lsa],
    [8, 128, 32, 0.05, 'mean', true],
  );
  const c = createCompressor('ccf', base) as CcfCompressor;
  assert.deepEqual([c.config.segmentLen, c.config.rank, c.config.alpha, c.config.memTokenId], [1024, 128, 512, 2]);
  const i = createCompressor('icae', base) as IcaeCompressor;
  assert.deepEqual(
    [i.config.loraRank, i.config.loraAlpha, i.config.loraDropout, i.config.loraTargets, i.config.aeToken, i.config.lmToken, i.config.memTokenId],
    [128, 32, 0.05, ['q', 'v'], true, false, null],
  );
  const x = createCompressor('comprexit', base) as ComprExIT;
  assert.deepEqual([x.separateNorms, x.bias, x.bos], [true, true, true]);
  assert.equal(createCompressor('meanpool', base).config.source, 'embeddings');
});

// ---- softpress train's resolution -----------------------------------------------------------------

test('applyRecipe: the recipe for every setting not given, the flag where given; the record says which', () => {
  const ccf = applyRecipe('ccf', { lm: 1 }, 1000, {});
  assert.deepEqual(
    [ccf.lr, ccf.minLr, ccf.warmup, ccf.weightDecay, ccf.clip, ccf.betas, ccf.schedule, ccf.ratios, ccf.reservoir],
    [1e-4, 0, 10, 0.1, 1, [0.9, 0.95], 'cosine', [8], 2],
  );
  assert.equal(ccf.recipe.settings.weightDecay.from, 'paper');
  assert.equal(ccf.recipe.settings.reservoir.from, 'code');
  const flagged = applyRecipe('ccf', { lm: 1 }, 1000, { lr: 3e-4, weightDecay: 0.02 });
  assert.deepEqual([flagged.lr, flagged.minLr, flagged.weightDecay], [3e-4, 0, 0.02]);
  assert.deepEqual(flagged.recipe.settings.lr, { value: 3e-4, from: 'flag', paper: 1e-4 });
  const cx = applyRecipe('comprexit', { lm: 1 }, 200, {});
  assert.deepEqual([cx.lr, cx.warmup, cx.clip, cx.ratios, cx.contextLen, cx.continuationLen], [1e-4, 10, 20, [4], 512, 128]);
  assert.equal(cx.recipe.settings.weightDecay.from, 'not stated');
  const g2 = applyRecipe('gmsa', { qa: 1 }, 100, { ratios: [4] });
  assert.deepEqual([g2.lr, g2.warmup, g2.clip, g2.ratios, g2.recipe.stage], [1e-5, 10, 2, [4], 'qa']);
  // No recipe (a method without one): softpress's defaults.
  const none = applyRecipe('no-such-method', { ae: 1 }, 100, { ratios: [4] }, undefined);
  assert.deepEqual([none.lr, none.minLr, none.warmup, none.clip, none.recipe.settings.lr.from], [1e-3, 1e-4, 5, 1, 'softpress']);
});

test('recordOptions: options against the recipe; deviations forced by the base carry their reason', () => {
  const small = createCompressor('gmsa', wideBase(), { encoderLayers: 3 }).config;
  const rec = recordOptions(applyRecipe('gmsa', { ae: 1 }, 100, {}).recipe, small, { encoderLayers: 3 });
  assert.deepEqual(rec.settings['options.encoderLayers'], { value: 3, from: 'flag', paper: 8 });
  assert.ok(rec.deviations.some((d) => d.key === 'options.encoderLayers' && d.why === 'given by flag'));
  assert.ok(!rec.deviations.some((d) => d.key === 'options.loraRank'), "rank 128 is the paper's: the standing deviation does not apply");
  // CCF's standing deviation (documents far shorter than the paper's) is always recorded.
  const ccf = recordOptions(applyRecipe('ccf', { lm: 1 }, 100, {}).recipe, createCompressor('ccf', wideBase()).config, {});
  assert.ok(ccf.deviations.some((d) => d.key === 'train.docSegments'));
  assert.ok(!ccf.deviations.some((d) => d.key === 'options.segmentLen'), 'l = 1024 on an 8,192-position base');
});

// ---- precision ----------------------------------------------------------------------------------

test('trainable parameters stay float32 over a bfloat16 base, and small AdamW updates survive', () => {
  const base = wideBase('bfloat16');
  const ctx = [Array.from({ length: 24 }, (_, i) => 3 + ((i * 7) % 90))];
  for (const method of ['gmsa', 'ccf', 'icae', 'comprexit', 'meanpool']) {
    const opts: Record<string, Record<string, unknown>> = {
      gmsa: { encoderLayers: 2, loraRank: 8 },
      ccf: { segmentLen: 8, rank: 8 },
      icae: { loraRank: 8, maxSlots: 16 },
    };
    const c = createCompressor(method, base, opts[method] ?? {});
    const stage: Stage = method === 'ccf' ? 'lm' : 'ae';
    const params = c.trainable(stage);
    for (const [n, p] of params) assert.equal(p.value.dtype, 'float32', `${method}: ${n} is ${p.value.dtype}`);
    c.setTraining(true);
    tidy(() => {
      const out = c.compress(ctx, { ratio: 4 });
      const t = out.softTokens ?? out.memoryKv![1].v;
      assert.equal(t.dtype, 'bfloat16', `${method}: the soft context is in the base's dtype`);
      t.to('float32').square().mean().backward();
    });
    const moved = params.filter(([, p]) => p.value.grad !== null);
    assert.ok(moved.length > 0, `${method}: gradients reach the float32 parameters`);
    // One step of lr 1e-6: a bfloat16 parameter (8 bits of mantissa) would not change at all.
    const before = moved.map(([, p]) => Buffer.from(p.value.toBytes()));
    const opt = new AdamW(
      moved.map(([, p]) => p),
      { lr: 1e-6, weightDecay: 0 },
    );
    opt.step();
    assert.ok(
      moved.some(([, p], i) => !Buffer.from(p.value.toBytes()).equals(before[i]!)),
      `${method}: a 1e-6 step changed nothing`,
    );
    c.setTraining(false);
  }
  // Unchanged inputs for the ICAE memory and CCF pi: the base dtype only where they meet the base.
  tidy(() =>
    noGrad(() => assert.equal((createCompressor('icae', base, { loraRank: 8, maxSlots: 8 }) as IcaeCompressor).taskEmbeddings('ae')!.dtype, 'bfloat16')),
  );
  void tensor;
});

test('results/recipes.md is the report of the current recipes (node scripts/recipes-table.mjs)', async () => {
  const { readFileSync } = await import('node:fs');
  const { recipeReport } = await import('../src/compress/index.js');
  const recipes = compressorNames({ learnedOnly: true }).map((m) => compressorRecipe(m)!);
  const file = readFileSync('results/recipes.md', 'utf8');
  assert.ok(file.startsWith(recipeReport(recipes)), 'results/recipes.md is stale: run npm run build:ts && node scripts/recipes-table.mjs');
});
