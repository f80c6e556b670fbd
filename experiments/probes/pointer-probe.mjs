// Does a model retrieve planted facts from its context, and does one head point at them?
// On N held-out passages (valid split, 1,200 characters, 3 planted facts each; fixed seed) it asks
// the first fact back and reports (a) how often the greedy first answer token is right, (b) the
// attention weight head H of layer L puts, at the "Answer:" position, on the answer's first token
// in the context (the head an `"answerPointer"` config supervises).
//   node experiments/probes/pointer-probe.mjs MODEL_DIR [LAYER] [HEAD] [N]
//   node experiments/probes/pointer-probe.mjs RUN_DIR [LAYER] [HEAD] [N]   (a pretraining run's checkpoint,
//                                                                 weights over models/softpress-base)
// (after `npm run setup`)
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel } from '../../dist/src/models/load.js';
import { loadCheckpointParams } from '../../dist/src/train/trainer.js';
import { loadDocs } from '../../dist/src/data/pretrain-mix.js';
import { splitDocuments } from '../../dist/src/data/splits.js';
import { formatQAPrompt, makeRecallExamples } from '../../dist/src/data/qa.js';
import { noGrad, tensor, tidy } from '../../dist/src/tensor/index.js';

const [dir, layerArg = '5', headArg = '0', nArg = '32'] = process.argv.slice(2);
if (!dir || !existsSync(dir)) {
  console.error('usage: node experiments/probes/pointer-probe.mjs MODEL_DIR|RUN_DIR [LAYER] [HEAD] [N]');
  process.exit(2);
}
const isModel = existsSync(join(dir, 'model.safetensors'));
const { model, tokenizer: tok } = loadModel(isModel ? dir : 'models/softpress-base', { dtype: 'float32' });
if (!isModel) console.log(`checkpoint of ${dir} at step ${loadCheckpointParams(dir, model.namedParameters()).step}`);
const layer = Number(layerArg);
const head = Number(headArg);
const n = Number(nArg);
if (!(
  Number.isInteger(layer) &&
  layer >= 0 &&
  layer < model.config.numLayers &&
  Number.isInteger(head) &&
  head >= 0 &&
  head < model.config.numHeads &&
  n >= 1
)) {
  console.error(`bad LAYER/HEAD/N: ${layerArg}/${headArg}/${nArg} (model: ${model.config.numLayers} layers, ${model.config.numHeads} heads)`);
  process.exit(2);
}
model.eval();
const valid = splitDocuments(loadDocs({ corpora: ['sotu', 'moby-dick', 'brown'] }), { seed: 0 }).valid;
const examples = makeRecallExamples(valid, { seed: 'pointer-probe', count: n, chars: 1200, facts: 3 });
let right = 0;
let mass = 0;
noGrad(() => {
  for (const ex of examples) {
    const qa = ex.qas[0];
    const ids = [tok.bos, ...tok.encode(formatQAPrompt({ context: ex.context, question: qa.question }))];
    const first = tok.encode(` ${qa.answer}`)[0];
    const T = ids.length;
    tidy(() => {
      const out = model.forward({ ids: tensor(Int32Array.from(ids), [1, T]).to('int64'), outputAttentions: true });
      const att = out.attentions[layer]
        .select(1, head)
        .reshape(T, T)
        .narrow(0, T - 1, 1)
        .reshape(T)
        .toArray();
      for (let j = 0; j < T; j++) if (ids[j] === first) mass += att[j];
      const logits = out.logits
        .reshape(T, -1)
        .narrow(0, T - 1, 1)
        .reshape(-1)
        .toArray();
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      if (best === first) right++;
    });
  }
});
console.log(
  `${dir}: greedy first answer token right ${right}/${n} (${(right / n).toFixed(3)}); head ${head} of layer ${layer} puts ${(mass / n).toFixed(3)} of its attention on the answer's first token`,
);
