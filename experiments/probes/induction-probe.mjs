// Can a small model of this code base learn to copy from its context?
// A fresh 2-layer Llama trains on rows of random tokens (softpress's seeded Rng) on one of three tasks;
// printed is the loss on the tokens that can only be predicted from the context (chance ln(120) = 4.79):
//   offset     every token repeats the one 5 positions back: attention to a fixed relative
//              position (RoPE), learnt within ~100 steps — attention and its gradients work;
//   induction  a 12-token span is repeated later at a random offset: copying needs a match on
//              content (an induction head), which small models learn only after a long plateau;
//              trained on all tokens (11 of 95 targets copyable) it stays near chance for 600 steps;
//   repeat     spans of 8–40 tokens each repeated at once (half the targets copyable, variable
//              distance), trained on the copied tokens only: the dense signal gets this 2-layer
//              model through the plateau at ~550 steps (`node experiments/probes/induction-probe.mjs 700 repeat`:
//              4.10 at step 450, 1.24 at 550, 0.77 at 650).
//   node experiments/probes/induction-probe.mjs [steps=600] [induction|offset|repeat]      (after `npm run setup`)
// (Session 2's version drew its tokens from a float64 linear congruential generator whose products
// lost precision, so its "random" rows repeated themselves and the induction loss fell for the
// wrong reason; with real randomness it stays at chance for 600 steps.)
import { LlamaModel } from '../../dist/src/models/llama.js';
import { configFromHf } from '../../dist/src/models/config.js';
import { crossEntropy, manualSeed, tensor, tidy } from '../../dist/src/tensor/index.js';
import { AdamW } from '../../dist/src/nn/index.js';
import { Rng } from '../../dist/src/data/rng.js';

const steps = Number(process.argv[2] ?? 600);
const task = process.argv[3] ?? 'induction';
if (!['induction', 'offset', 'repeat'].includes(task) || !(steps >= 0)) {
  console.error('usage: node experiments/probes/induction-probe.mjs [steps] [induction|offset|repeat]');
  process.exit(2);
}
const seqLen = 96,
  batch = 16,
  span = 12,
  symbols = 120,
  offset = 5;
manualSeed(0);
const cfg = configFromHf({
  model_type: 'llama',
  hidden_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  intermediate_size: 344,
  vocab_size: 3 + symbols,
  max_position_embeddings: 256,
  tie_word_embeddings: true,
});
const model = new LlamaModel(cfg);
const opt = new AdamW(
  model.namedParameters().map(([, p]) => p),
  { lr: 1e-3, weightDecay: 0 },
);
const rng = new Rng(7);

for (let step = 0; step <= steps; step++) {
  const rows = [];
  const copied = []; // flat indices (row * (seqLen - 1) + position) whose target is a copied token
  for (let b = 0; b < batch; b++) {
    const x = Array.from({ length: seqLen }, () => 3 + rng.int(symbols));
    if (task === 'repeat') {
      for (let start = 0; start < seqLen;) {
        const L = 8 + rng.int(33);
        for (let i = 0; i < L && start + L + i < seqLen; i++) {
          x[start + L + i] = x[start + i];
          if (i >= 1) copied.push(b * (seqLen - 1) + start + L + i - 1);
        }
        start += 2 * L;
      }
    } else if (task === 'offset') {
      for (let i = offset; i < seqLen; i++) x[i] = x[i - offset];
      for (let i = offset; i < seqLen - 1; i++) copied.push(b * (seqLen - 1) + i);
    } else {
      const from = 1 + rng.int(30);
      const to = from + span + rng.int(30);
      for (let i = 0; i < span; i++) x[to + i] = x[from + i];
      for (let i = 1; i < span; i++) copied.push(b * (seqLen - 1) + to + i - 1);
    }
    rows.push(x);
  }
  const copyLoss = tidy(() => {
    const ids = tensor(rows.flat(), [batch, seqLen]).to('int64');
    const { logits } = model.forward({ ids: ids.narrow(1, 0, seqLen - 1) });
    const flat = logits.reshape(batch * (seqLen - 1), -1);
    const targets = ids.narrow(1, 1, seqLen - 1).reshape(batch * (seqLen - 1));
    const at = tensor(copied, [copied.length]).to('int64');
    const copy = crossEntropy(flat.indexSelect(0, at), targets.indexSelect(0, at));
    const loss = task === 'repeat' ? copy : crossEntropy(flat, targets);
    opt.zeroGrad();
    loss.backward();
    opt.step();
    return copy.item();
  });
  if (step % 50 === 0) console.log(`step ${step}: ${task} loss on copied tokens ${copyLoss.toFixed(3)} (chance ${Math.log(symbols).toFixed(3)})`);
}
