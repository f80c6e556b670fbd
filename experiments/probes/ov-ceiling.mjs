// Can one attention head copy arbitrary tokens? Given exact attention (each query looks only at
// the token to copy), a head's output is W_O W_V x for the layer's normalised input x at the
// source, and its direct logits are that times the output embedding. On held-out text (valid
// split, fixed seed) this reports, for layer LAYER:
//   - the copy loss (cross-entropy of those logits against the source token) of every head's
//     current projections: how far each head is from copying;
//   - the same loss after fitting W_O W_V alone with AdamW for STEPS steps at LR on 80% of the
//     positions, scored on the other 20%: for RANK 0 starting from head HEAD's current weights,
//     for RANK > 0 from a random rank-RANK pair. The floor a copy loss at that layer can reach.
//   node experiments/probes/ov-ceiling.mjs MODEL_DIR [LAYER] [HEAD] [RANKS] [STEPS] [LR]
//   e.g. node experiments/probes/ov-ceiling.mjs models/softpress-base 5 2 0,32 300 1e-2
// (after `npm run setup`)
import { existsSync } from 'node:fs';
import { loadModel } from '../../dist/src/models/load.js';
import { loadDocs } from '../../dist/src/data/pretrain-mix.js';
import { splitDocuments } from '../../dist/src/data/splits.js';
import { samplePassage } from '../../dist/src/data/qa.js';
import { Rng } from '../../dist/src/data/rng.js';
import { AdamW, Parameter } from '../../dist/src/nn/index.js';
import { backward, cat, crossEntropy, linear, manualSeed, noGrad, randn, tensor, tidy } from '../../dist/src/tensor/index.js';

const [dir, layerArg = '5', headArg = '2', ranksArg = '0,32', stepsArg = '300', lrArg = '1e-2'] = process.argv.slice(2);
if (!dir || !existsSync(dir)) {
  console.error('usage: node experiments/probes/ov-ceiling.mjs MODEL_DIR [LAYER] [HEAD] [RANKS] [STEPS] [LR]');
  process.exit(2);
}
const { model, tokenizer: tok } = loadModel(dir, { dtype: 'float32' });
model.eval();
const { numLayers: L, numHeads: H, numKvHeads: KV, headDim: hd, hiddenSize: d } = model.config;
const layer = Number(layerArg);
const head = Number(headArg);
const ranks = ranksArg.split(',').map(Number);
const steps = Number(stepsArg);
const lr = Number(lrArg);
if (!(
  Number.isInteger(layer) &&
  layer >= 0 &&
  layer < L &&
  Number.isInteger(head) &&
  head >= 0 &&
  head < H &&
  ranks.every((r) => Number.isInteger(r) && r >= 0) &&
  steps >= 0 &&
  lr > 0
)) {
  console.error(`bad arguments: layer ${layerArg}, head ${headArg}, ranks ${ranksArg}, steps ${stepsArg}, lr ${lrArg}`);
  process.exit(2);
}
manualSeed(0);
const attn = model.layers[layer].selfAttn;
const valueRows = (h) => attn.vProj.weight.value.narrow(0, Math.floor(h / (H / KV)) * hd, hd); // [hd, d]
const outCols = (h) => attn.oProj.weight.value.narrow(1, h * hd, hd); // [d, hd]
const E = model.model.embedTokens.weight.value; // tied output embedding [vocab, d]
const copyLoss = (x, y, wv, wo) => crossEntropy(linear(linear(linear(x, wv), wo), E), y);

// Layer inputs at every position of 40 held-out passages, and the token at that position.
const valid = splitDocuments(loadDocs({ corpora: ['sotu', 'moby-dick', 'brown'] }), { seed: 0 }).valid;
const rng = new Rng('ov-ceiling');
const xs = [];
const ys = [];
noGrad(() => {
  for (let e = 0; e < 40; e++) {
    const ids = [tok.bos, ...tok.encode(samplePassage(valid, rng, { chars: 2400 }).text)].slice(0, model.config.maxPositions);
    const out = model.forward({ ids: tensor(Int32Array.from(ids), [1, ids.length]).to('int64'), outputAttnInputs: true });
    xs.push(
      out.attnInputs[layer]
        .reshape(ids.length, d)
        .narrow(0, 1, ids.length - 1)
        .keep(),
    );
    ys.push(...ids.slice(1));
  }
});
const N = ys.length;
const X = cat(xs, 0).keep();
const Y = tensor(Int32Array.from(ys), [N]).to('int64').keep();
const nTrain = Math.floor(N * 0.8);
const batch = Math.min(4096, nTrain);
const [Xtr, Ytr] = [X.narrow(0, 0, nTrain).keep(), Y.narrow(0, 0, nTrain).keep()];
const [Xte, Yte] = [X.narrow(0, nTrain, N - nTrain).keep(), Y.narrow(0, nTrain, N - nTrain).keep()];
console.log(`${dir}, layer ${layer}: ${nTrain} fitting / ${N - nTrain} held-out positions`);
const current = noGrad(() => Array.from({ length: H }, (_, h) => tidy(() => copyLoss(Xte, Yte, valueRows(h), outCols(h)).item())));
console.log(`  copy loss of each head's current projections, given exact attention: ${current.map((v) => v.toFixed(2)).join(' ')}`);
for (const r of ranks) {
  const wv = new Parameter(r === 0 ? valueRows(head).clone() : randn([r, d]).mul(1 / Math.sqrt(d)));
  const wo = new Parameter(r === 0 ? outCols(head).clone() : randn([d, r]).mul(1 / Math.sqrt(r)));
  const what = r === 0 ? `head ${head}'s projections` : `a random rank-${r} pair`;
  const opt = new AdamW([wv, wo], { lr, weightDecay: 0 });
  const heldOut = () => noGrad(() => tidy(() => copyLoss(Xte, Yte, wv.value, wo.value).item()));
  let line = `  fitted from ${what}: ${heldOut().toFixed(3)}`;
  for (let s = 0; s < steps; s++) {
    tidy(() => {
      const start = Math.floor(rng.next() * (nTrain - batch + 1));
      backward([copyLoss(Xtr.narrow(0, start, batch), Ytr.narrow(0, start, batch), wv.value, wo.value)]);
      opt.step();
      opt.zeroGrad();
    });
    if ((s + 1) % 100 === 0 || s + 1 === steps) line += ` -> ${heldOut().toFixed(3)} (step ${s + 1})`;
  }
  console.log(line);
  opt.freeState?.();
}
