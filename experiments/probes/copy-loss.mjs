// How well does a model copy from its context? Mean loss on the copied tokens of 8 synthetic copy
// rows of 256 ids (experiments/pretrain/copy-task.ts; fixed seed) whose ids come from (a) the 1,024-id pool of
// the session-4 induction phases of models/softpress-base/README.md ("copyPool": 1024, seed 0), (b) all 8,176 non-special ids.
// Chance is ln of the pool size.
//   node experiments/probes/copy-loss.mjs MODEL_DIR        (after `npm run setup` and `npx tsc -p experiments/tsconfig.json`)
import { existsSync } from 'node:fs';
import { loadModel } from '../../dist/src/models/load.js';
import { noGrad, tidy } from '../../dist/src/tensor/index.js';
import { Rng } from '../../dist/src/data/rng.js';
import { makeCopyRows } from '../../dist/experiments/pretrain/copy-task.js';
import { copyPoolIds } from '../../dist/src/train/pretrain.js';
import { copyRowsLoss } from '../../dist/experiments/pretrain/induction.js';

const dir = process.argv[2];
if (!dir || !existsSync(dir)) {
  console.error('usage: node experiments/probes/copy-loss.mjs MODEL_DIR');
  process.exit(2);
}
const { model, tokenizer } = loadModel(dir, { dtype: 'float32' });
const special = new Set(tokenizer?.special?.values?.() ?? []);
const ids = Int32Array.from({ length: model.config.vocabSize }, (_, i) => i).filter((i) => !special.has(i));
const rows = 8,
  len = 256;
for (const [name, pool] of [
  ['1,024-id pool', copyPoolIds(ids, 1024, 0)],
  ['all ids', ids],
]) {
  const loss = noGrad(() => tidy(() => copyRowsLoss(model, makeCopyRows(new Rng('copy-loss'), { rows, len: len + 1, pool }), rows, len).item()));
  console.log(`${name}: copy loss ${loss.toFixed(3)} (chance ${Math.log(pool.length).toFixed(2)})`);
}
