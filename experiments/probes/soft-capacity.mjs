// How much a frozen decoder can read from k = len / ratio soft tokens when nothing limits them but
// their number: for each held-out passage of the reconstruct task, k free vectors (started at the
// mean of each group of `ratio` token embeddings, i.e. untrained mean-pool) are optimised directly
// with AdamW for the restate loss, then the passage is restated greedily from them. That is the
// ceiling a compressor at that ratio could reach over this base, against the passage itself as
// the context (`full`). Optionally the same for a fresh compressor trained on that one passage
// (--method gmsa), to see how fast its parametrisation can carry one passage.
//   node experiments/probes/soft-capacity.mjs [--model smollm2-135m-instruct] [--n 4] [--len 128]
//     [--ratios 4,8] [--steps 60] [--lr 1e-2] [--method NAME --method-lr 3e-3]
import { parseArgs } from 'node:util';
import { loadModel } from '../../dist/src/models/load.js';
import { noGrad, tensor, tidy } from '../../dist/src/tensor/index.js';
import { Parameter } from '../../dist/src/nn/module.js';
import { AdamW } from '../../dist/src/nn/optim.js';
import { createCompressor, freeCompressor, generateWithContext, restateFormat, restateTail, tailLoss } from '../../dist/src/compress/index.js';
import { evalDocuments, makeReconstructTask } from '../../dist/src/eval/tasks.js';
import { corpusBleu } from '../../dist/src/eval/metrics.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'smollm2-135m-instruct' },
    n: { type: 'string', default: '4' },
    len: { type: 'string', default: '128' },
    ratios: { type: 'string', default: '4,8' },
    steps: { type: 'string', default: '60' },
    lr: { type: 'string', default: '1e-2' },
    method: { type: 'string' },
    'method-lr': { type: 'string', default: '3e-3' },
  },
});
const n = Number(values.n);
const len = Number(values.len);
const steps = Number(values.steps);
const ratios = values.ratios.split(',').map(Number);
const { model, tokenizer: tok } = loadModel(values.model);
const restate = restateFormat(tok);
const passages = makeReconstructTask(evalDocuments('test'), tok, { n, lengths: [len] }).examples.map((e) => e.context);

/** A soft context of given vectors [1, k, H] for one passage. */
const softOf = (vectors, k) => ({
  softTokens: vectors,
  meta: { method: 'probe', budget: { tokens: k }, sourceTokens: [len], softTokens: [k], baseFingerprint: model.fingerprint() },
});
/** Teacher-forced restate loss (nats per token, EOS included) of ids from the soft context. */
function restateLoss(ctx, ids, lora) {
  const { tail, lossFrom } = restateTail(restate, ids);
  return tailLoss(model, ctx, [tail], [lossFrom], { bos: restate.lead, pad: tok.pad, lora }).loss;
}
/** Greedy restatement from the soft context (the stop token dropped). */
function restated(ctx, lora) {
  return noGrad(() =>
    tidy(() => {
      const out = generateWithContext(model, ctx, [restate.prompt], restate.lead, { maxTokens: len + 8, stopTokens: [restate.end], lora }).tokens[0];
      return out.at(-1) === restate.end ? out.slice(0, -1) : out;
    }),
  );
}
/** The passage's token embeddings [1, len, H]. */
const tokenEmbeds = (ids) => noGrad(() => model.embed(tensor(ids, [1, ids.length], { dtype: 'int64' })));

const rows = [];
// full: the passage's own embeddings in place of the soft tokens.
{
  const hyps = [];
  let loss = 0;
  for (const ids of passages) {
    const ctx = softOf(tokenEmbeds(ids), len);
    loss += noGrad(() => tidy(() => restateLoss(ctx, ids).item())) / n;
    hyps.push(restated(ctx));
  }
  rows.push({ what: 'full (the passage itself)', k: len, curve: [], loss, bleu: corpusBleu(hyps, passages).bleu, seconds: 0 });
}

/** Optimises `params` for the restate loss of one passage; returns the loss every 10 steps. */
function fit(params, lr, makeCtx, ids, lora) {
  const opt = new AdamW(params, { lr, betas: [0.9, 0.95], weightDecay: 0 });
  const curve = [];
  for (let step = 0; step < steps; step++) {
    const l = tidy(() => {
      const loss = restateLoss(makeCtx(), ids, lora);
      loss.backward();
      return loss.item();
    });
    opt.step();
    opt.zeroGrad();
    if (step % 10 === 0) curve.push(l);
  }
  curve.push(noGrad(() => tidy(() => restateLoss(makeCtx(), ids, lora).item())));
  return curve;
}

for (const ratio of ratios) {
  const k = Math.ceil(len / ratio);
  const what = [['free vectors', values.lr]];
  if (values.method) what.push([`${values.method} (fresh, trained on the passage)`, values['method-lr']]);
  for (const [label, lr] of what) {
    const t0 = Date.now();
    const hyps = [];
    const curves = [];
    for (const ids of passages) {
      if (label === 'free vectors') {
        const init = noGrad(() => tokenEmbeds(ids).reshape(1, k, ratio, -1).mean(2).contiguous());
        const p = new Parameter(init);
        curves.push(fit([p], Number(lr), () => softOf(p.value, k), ids));
        hyps.push(restated(softOf(p.value, k)));
        p.value.free();
      } else {
        const c = createCompressor(values.method, model, {});
        const params = c.trainable('ae').map(([, p]) => p);
        const make = () => c.compress([ids], { ratio });
        curves.push(fit(params, Number(lr), make, ids, c.decoderLora));
        c.setTraining(false);
        hyps.push(restated(c.compress([ids], { ratio }), c.decoderLora));
        freeCompressor(c);
      }
    }
    const curve = curves[0].map((_, i) => curves.reduce((s, c) => s + c[i], 0) / curves.length);
    rows.push({
      what: `${label}, lr ${lr}`,
      k,
      ratio,
      curve,
      loss: curve.at(-1),
      bleu: corpusBleu(hyps, passages).bleu,
      seconds: (Date.now() - t0) / 1000 / n,
    });
    console.error(`ratio ${ratio} ${label}: loss ${curve.map((x) => x.toFixed(2)).join(' ')} bleu ${rows.at(-1).bleu.toFixed(3)}`);
  }
}

console.log(`Restating ${n} held-out ${len}-token passages (reconstruct task, test split) over \`${values.model}\`; ${steps} AdamW steps per passage.\n`);
console.log(`| context | ratio | soft tokens | restate loss by step (0, 10, …, ${steps}) | final loss | greedy BLEU-4 | s per passage |`);
console.log('| --- | ---: | ---: | --- | ---: | ---: | ---: |');
for (const r of rows)
  console.log(
    `| ${r.what} | ${r.ratio ?? '-'} | ${r.k} | ${r.curve.map((x) => x.toFixed(2)).join(' → ') || '-'} | ${r.loss.toFixed(3)} | ${r.bleu.toFixed(3)} | ${r.seconds ? r.seconds.toFixed(0) : '-'} |`,
  );
