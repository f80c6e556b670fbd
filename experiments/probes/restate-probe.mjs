// How does a model restate a passage from its context? On N held-out passages (valid split,
// ~CHARS characters each; fixed seed) it feeds "<BOS>passage<|restate|>passage" and reports:
// the teacher-forced loss and argmax accuracy on the restated tokens, by position in the passage;
// for every head, the mean attention a restating query puts on its source token (the aligned
// passage token it should copy) and, on the passage itself, on the previous token.
//   node experiments/probes/restate-probe.mjs MODEL_DIR|RUN_DIR [N] [CHARS]
// (after `npm run setup`)
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel } from '../../dist/src/models/load.js';
import { loadCheckpointParams } from '../../dist/src/train/trainer.js';
import { loadDocs } from '../../dist/src/data/pretrain-mix.js';
import { splitDocuments } from '../../dist/src/data/splits.js';
import { samplePassage } from '../../dist/src/data/qa.js';
import { Rng } from '../../dist/src/data/rng.js';
import { noGrad, tensor, tidy } from '../../dist/src/tensor/index.js';

const [dir, nArg = '16', charsArg = '1200'] = process.argv.slice(2);
if (!dir || !existsSync(dir)) {
  console.error('usage: node experiments/probes/restate-probe.mjs MODEL_DIR|RUN_DIR [N] [CHARS]');
  process.exit(2);
}
const isModel = existsSync(join(dir, 'model.safetensors'));
const { model, tokenizer: tok } = loadModel(isModel ? dir : 'models/softpress-base', { dtype: 'float32' });
if (!isModel) console.log(`checkpoint of ${dir} at step ${loadCheckpointParams(dir, model.namedParameters()).step}`);
const n = Number(nArg);
const chars = Number(charsArg);
if (!(Number.isInteger(n) && n >= 1 && chars >= 50)) {
  console.error(`bad N/CHARS: ${nArg}/${charsArg}`);
  process.exit(2);
}
model.eval();
const restateId = tok.special.get('<|restate|>');
const valid = splitDocuments(loadDocs({ corpora: ['sotu', 'moby-dick', 'brown'] }), { seed: 0 }).valid;
const rng = new Rng('restate-probe');
const { numLayers: L, numHeads: H } = model.config;
const toSource = new Float64Array(L * H);
const toPrev = new Float64Array(L * H);
let queries = 0;
let prevQueries = 0;
const buckets = [8, 32, 128, 512, Infinity];
const lossBy = buckets.map(() => ({ loss: 0, right: 0, count: 0 }));
noGrad(() => {
  for (let e = 0; e < n; e++) {
    const passage = tok.encode(samplePassage(valid, rng, { chars }).text);
    const ids = [tok.bos, ...passage, restateId, ...passage];
    if (ids.length > model.config.maxPositions) throw new Error(`passage of ${passage.length} tokens too long`);
    const T = ids.length;
    const m = passage.length + 1; // position of the marker
    tidy(() => {
      const out = model.forward({ ids: tensor(Int32Array.from(ids), [1, T]).to('int64'), outputAttentions: true });
      const logp = out.logits.reshape(T, -1).logSoftmax(-1);
      const lp = logp.toArray();
      const V = lp.length / T;
      for (let k = 0; k < passage.length; k++) {
        const q = m + k; // predicts passage[k]
        const row = lp.subarray(q * V, (q + 1) * V);
        let best = 0;
        for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
        const b = buckets.findIndex((x) => k < x);
        lossBy[b].loss -= row[passage[k]];
        lossBy[b].right += best === passage[k] ? 1 : 0;
        lossBy[b].count++;
      }
      for (let l = 0; l < L; l++) {
        const a = out.attentions[l].reshape(H, T, T).toArray();
        for (let h = 0; h < H; h++) {
          for (let k = 0; k < passage.length; k++) toSource[l * H + h] += a[h * T * T + (m + k) * T + 1 + k];
          for (let i = 2; i < m; i++) toPrev[l * H + h] += a[h * T * T + i * T + i - 1];
        }
      }
      queries += passage.length;
      prevQueries += m - 2;
    });
  }
});
console.log(`${dir}: ${n} passages of ~${chars} characters, ${queries} restated tokens`);
let lo = 0;
for (let b = 0; b < buckets.length; b++) {
  const s = lossBy[b];
  if (s.count)
    console.log(
      `  restated tokens ${lo}-${buckets[b] === Infinity ? '' : buckets[b] - 1}: loss ${(s.loss / s.count).toFixed(3)}, argmax right ${(s.right / s.count).toFixed(3)} (${s.count})`,
    );
  lo = buckets[b];
}
const fmt = (arr, div) =>
  Array.from({ length: L }, (_, l) => `  layer ${l}: ${Array.from({ length: H }, (_, h) => (arr[l * H + h] / div).toFixed(2)).join(' ')}`).join('\n');
console.log(`attention of a restating query on its source token (heads 0-${H - 1}):\n${fmt(toSource, queries)}`);
console.log(`attention on the previous token, in the passage:\n${fmt(toPrev, prevQueries)}`);
