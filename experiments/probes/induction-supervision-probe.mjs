// Does the shipped base learn to copy from its context on synthetic copy rows, with and without
// attention supervision of an induction head (experiments/pretrain/induction.ts)?
// Trains a float32 copy of models/softpress-base on copy rows (16 x 128 ids drawn from `pool`
// random ids; loss on the copied tokens only) and prints, every 25 steps, the copy loss (chance
// ln pool), the two attention losses (previous-token head: layer 0, head 0; induction head: layer
// 1, head 0) and the copy loss on rows drawn from the whole vocabulary.
//   node experiments/probes/induction-supervision-probe.mjs [steps=400] [weight=1] [pool=256]   (after `npm run setup` and `npx tsc -p experiments/tsconfig.json`)
// weight 0 trains on the copy loss alone (the attention losses are still printed).
import { loadModel } from '../../dist/src/models/load.js';
import { crossEntropy, manualSeed, noGrad, tensor, tidy } from '../../dist/src/tensor/index.js';
import { AdamW } from '../../dist/src/nn/index.js';
import { Rng } from '../../dist/src/data/rng.js';
import { makeCopyRows } from '../../dist/experiments/pretrain/copy-task.js';
import { copyRowsLoss, inductionSupervisionLoss } from '../../dist/experiments/pretrain/induction.js';

const steps = Number(process.argv[2] ?? 400);
const weight = Number(process.argv[3] ?? 1);
const poolSize = Number(process.argv[4] ?? 256);
if (!(Number.isInteger(steps) && steps >= 0 && weight >= 0 && Number.isInteger(poolSize) && poolSize >= 2 && poolSize <= 8176)) {
  console.error('usage: node experiments/probes/induction-supervision-probe.mjs [steps >= 0] [weight >= 0] [pool 2..8176]');
  process.exit(2);
}
const len = 128,
  batch = 16;
const sup = { prevLayer: 0, inductionLayer: 1, head: 0, weight };
manualSeed(0);
const { model } = loadModel('models/softpress-base', { dtype: 'float32' });
const params = model.namedParameters().map(([, p]) => p);
for (const p of params) p.trainable = true;
const opt = new AdamW(params, { lr: 1e-3, weightDecay: 0 });
const rng = new Rng(7);
// The 8,176 non-special ids (16 specials come first), shuffled; the pool is the first poolSize.
const all = Array.from({ length: 8192 - 16 }, (_, i) => 16 + i);
for (let i = all.length - 1; i > 0; i--) {
  const j = rng.int(i + 1);
  [all[i], all[j]] = [all[j], all[i]];
}
const pool = Int32Array.from(all.slice(0, poolSize));
const everyId = Int32Array.from(all);

function losses(rows) {
  const { ids, copied } = rows;
  const n = ids.length / (len + 1);
  const x = tensor(ids, [n, len + 1]).to('int64');
  const out = model.forward({ ids: x.narrow(1, 0, len), outputAttentions: true });
  const at = tensor(copied, [copied.length]).to('int64');
  const copy = crossEntropy(
    out.logits.reshape(n * len, -1).indexSelect(0, at),
    x
      .narrow(1, 1, len)
      .reshape(n * len)
      .indexSelect(0, at),
  );
  return { copy, ...inductionSupervisionLoss(out.attentions, ids, n, len, len + 1, sup) };
}

const t0 = Date.now();
for (let step = 0; step <= steps; step++) {
  model.train();
  const [copy, prev, induction] = tidy(() => {
    const l = losses(makeCopyRows(rng, { rows: batch, len: len + 1, pool }));
    const total = weight > 0 ? l.copy.add(l.prev.add(l.induction).mul(weight)) : l.copy;
    opt.zeroGrad();
    total.backward();
    opt.step();
    return [l.copy.item(), l.prev.item(), l.induction.item()];
  });
  if (step % 25 === 0) {
    model.eval();
    const wide = noGrad(() => tidy(() => copyRowsLoss(model, makeCopyRows(new Rng('eval'), { rows: 16, len: len + 1, pool: everyId }), 16, len).item()));
    console.log(
      `step ${step}: copy ${copy.toFixed(3)} (chance ${Math.log(poolSize).toFixed(2)})  prev-token attn ${prev.toFixed(3)}  induction attn ${induction.toFixed(3)}  copy over all ids ${wide.toFixed(3)}  ${((Date.now() - t0) / 1000).toFixed(0)}s`,
    );
  }
}
