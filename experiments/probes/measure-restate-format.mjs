// Which restate prompt an instruct model reads best: the passage itself stands in for the soft
// context, and the teacher-forced loss (nats per restated token, EOS included) of restating it is
// measured in the plain format and in the model's chat template (src/compress/prompts.ts), and
// with no passage at all (the floor). Cheap: N passages, one forward each.
//   node experiments/probes/measure-restate-format.mjs [--model smollm2-135m-instruct] [--n 8] [--len 128]
import { parseArgs } from 'node:util';
import { loadModel } from '../../dist/src/models/load.js';
import { noGrad, tensor, tidy, crossEntropy, setNumThreads } from '../../dist/src/tensor/index.js';
import { evalDocuments } from '../../dist/src/eval/tasks.js';
import { Rng } from '../../dist/src/data/rng.js';
import { RESTATE_INSTRUCTION, restateFormat } from '../../dist/src/compress/prompts.js';

const { values } = parseArgs({
  options: { model: { type: 'string', default: 'smollm2-135m-instruct' }, n: { type: 'string', default: '8' }, len: { type: 'string', default: '128' } },
});
setNumThreads?.(1);
const { model, tokenizer: tok } = loadModel(values.model);
const n = Number(values.n);
const len = Number(values.len);
const docs = evalDocuments('test').filter((d) => d.text.length > len * 8);
const rng = new Rng(`restate-format:${len}`);
const passages = [];
while (passages.length < n) {
  const d = docs[rng.int(docs.length)];
  const ids = tok.encode(d.text);
  if (ids.length < len) continue;
  const at = rng.int(ids.length - len + 1);
  passages.push(ids.slice(at, at + len));
}

/** Mean NLL of ids[from..] given ids[..from). */
function loss(ids, from) {
  return tidy(() =>
    noGrad(() => {
      const t = tensor(ids, [1, ids.length], { dtype: 'int64' });
      const logits = model.forward({ ids: t }).logits;
      const pred = logits.narrow(1, from - 1, ids.length - from).reshape(ids.length - from, -1);
      return crossEntropy(pred, t.narrow(1, from, ids.length - from).reshape(ids.length - from)).item();
    }),
  );
}

const chat = restateFormat(tok);
const plainPrompt = tok.encode(`\n${RESTATE_INSTRUCTION}\n`);
const start = tok.addsBos === false ? [] : [tok.bos];
const rows = { plain: [], plainNone: [], chat: [], chatNone: [] };
for (const p of passages) {
  // plain: [BOS if the tokenizer adds one] passage "\nRestate ...\n" | passage EOS
  let ids = [...start, ...p, ...plainPrompt];
  rows.plain.push(loss([...ids, ...p, tok.eos], ids.length));
  ids = [...(start.length ? start : []), ...plainPrompt];
  if (ids.length) rows.plainNone.push(loss([...ids, ...p, tok.eos], ids.length));
  if (chat.chat) {
    ids = [...chat.lead, ...p, ...chat.prompt];
    rows.chat.push(loss([...ids, ...p, chat.end], ids.length));
    ids = [...chat.lead, ...chat.prompt];
    rows.chatNone.push(loss([...ids, ...p, chat.end], ids.length));
  }
}
const mean = (xs) => (xs.length ? xs.reduce((a, x) => a + x, 0) / xs.length : NaN);
console.log(`${values.model}: ${n} test passages of ${len} tokens; teacher-forced restate loss (nats per token)`);
console.log(`| format | with the passage | without | gap |`);
console.log(`|---|---|---|---|`);
console.log(`| plain | ${mean(rows.plain).toFixed(3)} | ${mean(rows.plainNone).toFixed(3)} | ${(mean(rows.plainNone) - mean(rows.plain)).toFixed(3)} |`);
if (chat.chat)
  console.log(`| chat template | ${mean(rows.chat).toFixed(3)} | ${mean(rows.chatNone).toFixed(3)} | ${(mean(rows.chatNone) - mean(rows.chat)).toFixed(3)} |`);
