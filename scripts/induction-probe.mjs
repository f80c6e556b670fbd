// Can a small model of this code base learn to copy from its context (an induction head)?
// A fresh 2-layer Llama trains on random tokens in which a 12-token span is repeated later at a
// random offset; printed is the loss on the repeated span's tokens (after its first), which
// can only fall below chance, ln(120) = 4.79, by copying.
//   node scripts/induction-probe.mjs [steps=600]      (after `npm run setup`; about a minute on 2 cores)
import { LlamaModel } from '../dist/src/models/llama.js';
import { configFromHf } from '../dist/src/models/config.js';
import { crossEntropy, manualSeed, tensor, tidy } from '../dist/src/tensor/index.js';
import { AdamW } from '../dist/src/nn/index.js';

const steps = Number(process.argv[2] ?? 600);
const seqLen = 96, batch = 16, span = 12, symbols = 120;
manualSeed(0);
const cfg = configFromHf({ model_type: 'llama', hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4, intermediate_size: 344, vocab_size: 3 + symbols, max_position_embeddings: 256, tie_word_embeddings: true });
const model = new LlamaModel(cfg);
const opt = new AdamW(model.namedParameters().map(([, p]) => p), { lr: 1e-3, weightDecay: 0 });
let state = 7;
const random = () => ((state = (state * 1103515245 + 12345) % 2147483648), state / 2147483648);

for (let step = 0; step <= steps; step++) {
  const rows = [];
  const copied = []; // flat indices (row * (seqLen - 1) + position) whose target is a copied token
  for (let b = 0; b < batch; b++) {
    const x = Array.from({ length: seqLen }, () => 3 + Math.floor(random() * symbols));
    const from = 1 + Math.floor(random() * 30);
    const to = from + span + Math.floor(random() * 30);
    for (let i = 0; i < span; i++) x[to + i] = x[from + i];
    rows.push(x);
    for (let i = 1; i < span; i++) copied.push(b * (seqLen - 1) + to + i - 1);
  }
  const copyLoss = tidy(() => {
    const ids = tensor(rows.flat(), [batch, seqLen]).to('int64');
    const { logits } = model.forward({ ids: ids.narrow(1, 0, seqLen - 1) });
    const flat = logits.reshape(batch * (seqLen - 1), -1);
    const targets = ids.narrow(1, 1, seqLen - 1).reshape(batch * (seqLen - 1));
    const loss = crossEntropy(flat, targets);
    opt.zeroGrad();
    loss.backward();
    opt.step();
    const at = tensor(copied, [copied.length]).to('int64');
    return crossEntropy(flat.indexSelect(0, at), targets.indexSelect(0, at)).item();
  });
  if (step % 50 === 0) console.log(`step ${step}: loss on repeated tokens ${copyLoss.toFixed(3)} (chance ${Math.log(symbols).toFixed(3)})`);
}
