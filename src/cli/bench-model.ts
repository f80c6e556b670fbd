/**
 * softpress bench model --config S|M|smol [--json] [--threads N] [--reps N] [--profile]
 * Training, prefill, frozen-decoder-to-inputs and decode speed of a random Llama-style model
 * (../shared/bench-spec.md). Figures are medians of timed repetitions after 3 warm-ups.
 */
import { parseArgs } from 'node:util';
import { manualSeed, noGrad, profile, randint, setNumThreads, tidy, type Tensor } from '../tensor/index.js';
import { AdamW } from '../nn/index.js';
import { configFromHf } from '../models/config.js';
import { LlamaModel } from '../models/llama.js';
import { generate } from '../models/generate.js';
import { median, timeMedian } from './bench.js';

export const BENCH_CONFIGS = {
  S: { dim: 256, layers: 4, heads: 8, kvHeads: 4, ffn: 688, vocab: 8192, seq: 256, batch: 8 },
  M: { dim: 512, layers: 8, heads: 8, kvHeads: 4, ffn: 1376, vocab: 8192, seq: 512, batch: 4 },
  // SmolLM2-135M's shape: training a compressor through a frozen real-size decoder.
  smol: { dim: 576, layers: 30, heads: 9, kvHeads: 3, ffn: 1536, vocab: 49152, seq: 512, batch: 2 },
} as const;

export function benchModel(name: keyof typeof BENCH_CONFIGS, reps: number, log: (s: string) => void, withProfile = false): Record<string, number | string> {
  const c = BENCH_CONFIGS[name];
  manualSeed(0);
  const model = noGrad(
    () =>
      new LlamaModel(
        configFromHf({
          model_type: 'llama',
          hidden_size: c.dim,
          num_hidden_layers: c.layers,
          num_attention_heads: c.heads,
          num_key_value_heads: c.kvHeads,
          intermediate_size: c.ffn,
          vocab_size: c.vocab,
          max_position_embeddings: Math.max(c.seq, 512),
          rms_norm_eps: 1e-5,
          tie_word_embeddings: false,
        }),
      ),
  );
  const ids = randint(0, c.vocab, [c.batch, c.seq + 1]).keep();
  const inputs = ids.narrow(1, 0, c.seq).contiguous().keep();
  const targets = ids.narrow(1, 1, c.seq).contiguous().keep();
  const tokens = c.batch * c.seq;
  // The loss from the final hidden states, without the full logits (linearCrossEntropy).
  const lossOf = (hidden: Tensor) => model.headLoss(hidden, targets);

  model.train();
  const opt = new AdamW(model.parameters(), { lr: 1e-4, weightDecay: 0.1 });
  const trainStep = () =>
    tidy(() => {
      const { hidden } = model.forward({ ids: inputs, logits: 'none' });
      lossOf(hidden).backward();
      opt.step();
      opt.zeroGrad();
    });
  const train = timeMedian(reps, trainStep);
  log(`train   ${(tokens / train).toFixed(0)} tok/s (${(train * 1000).toFixed(0)} ms/step)`);
  if (withProfile) logProfile('training steps', trainStep, log);

  model.eval();
  const prefill = timeMedian(reps, () => tidy(() => noGrad(() => model.forward({ ids: inputs }))));
  log(`prefill ${(tokens / prefill).toFixed(0)} tok/s`);

  model.freeze();
  const embeds = noGrad(() => model.embed(inputs)).keep();
  const frozenStep = () =>
    tidy(() => {
      const x = embeds.detach().setRequiresGrad(true);
      const { hidden } = model.forward({ inputsEmbeds: x, logits: 'none' });
      lossOf(hidden).backward();
      if (!x.grad) throw new Error('frozen step: no gradient reached the inputs');
    });
  const frozen = timeMedian(reps, frozenStep);
  log(`frozen  ${(tokens / frozen).toFixed(0)} tok/s (grad to input embeddings)`);
  if (withProfile) logProfile('frozen-to-inputs steps', frozenStep, log);

  const prompt = randint(0, c.vocab, [256]).toNumbers();
  const newTokens = 128;
  const decodeTimes: number[] = [];
  for (let i = 0; i < Math.max(3, Math.ceil(reps / 2)) + 3; i++) {
    const r = generate(model, [prompt], { maxTokens: newTokens, temperature: 0 });
    if (i >= 3) decodeTimes.push(r.decodeMs / 1000);
  }
  const decode = median(decodeTimes);
  log(`decode  ${(newTokens / decode).toFixed(1)} tok/s (batch 1, 256-token prompt, 128 new tokens, KV cache)`);
  for (const t of [ids, inputs, targets, embeds]) t.free();
  return {
    bench: 'model',
    config: name,
    train_tok_s: Math.round(tokens / train),
    prefill_tok_s: Math.round(tokens / prefill),
    frozen_tok_s: Math.round(tokens / frozen),
    decode_tok_s: Math.round((newTokens / decode) * 10) / 10,
  };
}

/** Where a step's time goes: self time per libtorch operator over two steps, the top 15. */
function logProfile(what: string, step: () => void, log: (s: string) => void): void {
  const { ops, totalMs } = profile(() => {
    for (let i = 0; i < 2; i++) step();
  });
  log(`profile of 2 ${what} (self time per operator, ${totalMs.toFixed(0)} ms in all):`);
  for (const o of ops.slice(0, 15))
    log(
      `  ${o.name.padEnd(40)} ${String(o.calls).padStart(6)} calls ${o.selfMs.toFixed(1).padStart(9)} ms ${((100 * o.selfMs) / totalMs).toFixed(1).padStart(5)}%`,
    );
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', default: 'S' },
      json: { type: 'boolean', default: false },
      threads: { type: 'string', default: '2' },
      reps: { type: 'string', default: '5' },
      profile: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const name = Object.keys(BENCH_CONFIGS).find((k) => k.toLowerCase() === values.config!.toLowerCase());
  if (name === undefined) throw new Error(`--config must be one of ${Object.keys(BENCH_CONFIGS).join(', ')}, got '${values.config}'`);
  const threads = Number(values.threads);
  const reps = Number(values.reps);
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`--threads must be a positive integer, got '${values.threads}'`);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, got '${values.reps}'`);
  setNumThreads(threads);
  const log = (s: string) => process.stderr.write(s + '\n');
  log(`bench model --config ${name} (threads ${threads}, median of ${reps} after 3 warm-ups)`);
  const result = { ...benchModel(name as keyof typeof BENCH_CONFIGS, reps, log, values.profile), threads };
  if (values.json) process.stdout.write(JSON.stringify(result) + '\n');
}
