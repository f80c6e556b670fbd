// bAbI scored by choice instead of greedy generation: each question's answer is the candidate
// (every answer of its task's training part) with the highest log-likelihood, summed over the
// answer's tokens, after the (compressed) story in the evaluation's QA format. Asks whether a
// base model that answers no better with the story than without it (greedy exact match) is
// held back by generation, or does not read the story at all. Same questions as
// `softpress eval --task babi` (seed 0, N per task, the held-out part of each training file).
//   node experiments/probes/babi-choice.mjs [--model smollm2-135m-instruct] [--n 3]
//     [--methods full,none,models/icae-smollm2] [--ratio 4] [--data ../shared/fixtures/babi/en-10k]
import { parseArgs } from 'node:util';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadModel } from '../../dist/src/models/load.js';
import { noGrad, tidy } from '../../dist/src/tensor/index.js';
import { createCompressor, loadCompressor, tailLoss, withTaskEmbeddings } from '../../dist/src/compress/index.js';
import { makeBabiTask } from '../../dist/src/eval/tasks.js';
import { loadBabiFile, splitBabi } from '../../dist/src/data/babi.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'smollm2-135m-instruct' },
    n: { type: 'string', default: '3' },
    methods: { type: 'string', default: 'full,none' },
    ratio: { type: 'string', default: '4' },
    data: { type: 'string', default: '../shared/fixtures/babi/en-10k' },
  },
});
const dir = resolve(values.data);
const ratio = Number(values.ratio);
const { model, tokenizer: tok } = loadModel(values.model);
const task = makeBabiTask(dir, tok, { seed: 0, n: Number(values.n) });

// Candidates of each task: the distinct answers of its training part (what the eval's uniform
// and majority references count over).
const candidates = new Map();
for (const f of readdirSync(dir).filter((name) => /^qa\d+_.*train.*\.txt$/.test(name))) {
  const { train } = splitBabi(loadBabiFile(join(dir, f), { split: 'all' }));
  if (train.length > 0) candidates.set(`qa${train[0].task}`, [...new Set(train.map((e) => e.answer))]);
}

for (const spec of values.methods.split(',')) {
  const c = spec.includes('/') ? loadCompressor(spec, model) : createCompressor(spec, model);
  const perTask = new Map();
  let right = 0;
  const t0 = performance.now();
  for (const ex of task.examples) {
    const group = ex.groups.task;
    const answers = candidates.get(group);
    if (!answers) throw new Error(`${group}: no training answers in ${dir}`);
    // Sum of the answer tokens' log-probabilities, per candidate (the compression done once).
    const scores = noGrad(() =>
      tidy(() => {
        const ctx = withTaskEmbeddings(c, c.compress([ex.context], { ratio }), 'qa');
        return answers.map((a) => {
          const tail = [...ex.tail, ...tok.encode(` ${a}`)];
          const { loss, tokens } = tailLoss(model, ctx, [tail], [ex.tail.length], { bos: task.lead ?? tok.bos, pad: tok.pad, lora: c.decoderLora });
          return -loss.item() * tokens;
        });
      }),
    );
    const ok = answers[scores.indexOf(Math.max(...scores))] === ex.answer ? 1 : 0;
    right += ok;
    const t = perTask.get(group) ?? [0, 0];
    perTask.set(group, [t[0] + ok, t[1] + 1]);
  }
  const n = task.examples.length;
  const tasks = [...perTask].map(([g, [ok, all]]) => `${g} ${(ok / all).toFixed(2)}`).join(', ');
  const name = spec.includes('/') ? `${spec} @${ratio}` : spec;
  console.log(`${name}: choice accuracy ${(right / n).toFixed(3)} on ${n} questions (${((performance.now() - t0) / 1000).toFixed(0)} s); ${tasks}`);
}
