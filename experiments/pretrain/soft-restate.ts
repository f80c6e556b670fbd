/**
 * Soft-prefix restate rows for pretraining: teach the base model to read multi-token vectors.
 *
 * A row is   [BOS] m_1 … m_k <|restate|> t_1 … t_n   → targets t_1 … t_n EOS,
 * where m_g is the mean of the input embeddings of the g-th group of r consecutive passage tokens
 * (the last group may be shorter), k = ceil(n / r), by default through the final norm (`norm`). It is the decoder layout every soft compressor
 * uses (compress/decode.ts: [BOS] [soft tokens] [tail]) with the autoencoding tail
 * (train/objectives.ts, stage 'ae'), fed the simplest soft tokens there are: group means of
 * embeddings. A small base that has only learnt to copy tokens cannot read r tokens back out of
 * one vector, and in GMSA's autoencoding stage the decoder is frozen by design; this gives it
 * that skill before any compressor is trained, as a large pretrained LLM has it to some degree.
 *
 * Optional attention supervision: chosen heads of one layer, at the query that predicts passage
 * token j, should attend to the soft token of j's group (1 + floor(j / r) in the row), −log of
 * their weight there, and a copy loss through their output. Optional plain restate rows of the
 * same passages keep the model able to restate a plain context in the same place.
 */
import { Tensor, cat, crossEntropy, tensor } from '../../src/tensor/index.js';
import type { LlamaModel } from '../../src/models/llama.js';
import { Rng } from '../../src/data/rng.js';
import { groupStarts } from '../../src/compress/batching.js';

export interface SoftRestate {
  /** Rows per micro-batch (all of one passage length and ratio, drawn per micro-batch). */
  rows: number;
  /** Passage lengths in tokens to draw from. */
  lengths: number[];
  /** Group sizes (compression ratios) to draw from; 1 means one soft token per token. */
  ratios: number[];
  /**
   * What the soft tokens are: 'final' (default) the group means through the model's final norm,
   * i.e. in the space where GMSA (LSA + frozen final-norm copy) and ICAE (final hidden states)
   * put their soft tokens, RMS ~ the norm's weights (1.6 on our base, 25x an embedding's);
   * 'none' the raw means, where mean pooling of embeddings puts them.
   */
  norm?: 'final' | 'none';
  /** Weight of the mean loss on the restated tokens (default 1); plain rows have the same. */
  weight?: number;
  /**
   * Also this many plain restate rows per micro-batch (default 0): the first passages of the
   * same draw as tokens, [BOS] t_1 … t_n <|restate|> t_1 … t_n → EOS, loss on the restated part.
   * Soft rows alone teach the model that a row starting with BOS at position 0 and restated
   * after <|restate|> holds group means, and it then misreads a plain context in that place
   * (restate loss with the passage 2.43 -> 4.65 nats in 300 steps); text rows never put a
   * restate document at position 0. Logged as `plain_restate_loss`.
   */
  plainRows?: number;
  /**
   * Attention supervision toward the group's soft token for some heads of one layer (weight 0
   * or absent: none), and with copyWeight a copy loss: those heads' summed output with all their
   * attention on that soft token, read through the output embedding, should predict the token.
   * Their values and output projections learn to read a group's tokens out of the mean, which
   * the next-token loss alone teaches slowly (120 steps from our base: 5.8 -> 5.1 nats). One head
   * is not enough: its value has 32 features on our base, and through one head the copy loss
   * stalled at 5.4 nats at ratios 2–8 (the floor is ln r); several heads widen the path.
   */
  pointer?: { layer: number; heads: number[]; weight: number; copyWeight?: number };
}

export function checkSoftRestate(s: SoftRestate, numLayers: number, numHeads: number, maxLen: number, where: string): void {
  const bad = (m: string) => new Error(`${where}: softRestate ${m}, got ${JSON.stringify(s)}`);
  if (!s || typeof s !== 'object') throw bad('must be an object');
  if (!(Number.isInteger(s.rows) && s.rows >= 1)) throw bad("'rows' must be an integer >= 1");
  if (!Array.isArray(s.lengths) || s.lengths.length === 0 || s.lengths.some((n) => !(Number.isInteger(n) && n >= 2)))
    throw bad("'lengths' must be a non-empty list of integers >= 2");
  if (!Array.isArray(s.ratios) || s.ratios.length === 0 || s.ratios.some((r) => !(Number.isInteger(r) && r >= 1)))
    throw bad("'ratios' must be a non-empty list of integers >= 1");
  const longest = Math.max(...s.lengths);
  if (2 + Math.ceil(longest / Math.min(...s.ratios)) + longest > maxLen)
    throw bad(`rows of ${longest} tokens at ratio ${Math.min(...s.ratios)} exceed the model's ${maxLen} positions`);
  if (s.plainRows !== undefined && !(Number.isInteger(s.plainRows) && s.plainRows >= 0 && s.plainRows <= s.rows))
    throw bad("'plainRows' must be an integer in 0..rows");
  const plainLongest = (s.plainRows ?? 0) > 0 ? 2 * longest + 1 : 0;
  if (plainLongest > maxLen) throw bad(`plain rows of ${longest} tokens need ${plainLongest} positions, the model has ${maxLen}`);
  if (s.norm !== undefined && s.norm !== 'final' && s.norm !== 'none') throw bad("'norm' must be 'final' or 'none'");
  if (s.weight !== undefined && !(typeof s.weight === 'number' && s.weight >= 0)) throw bad("'weight' must be a number >= 0");
  const p = s.pointer;
  if (p !== undefined) {
    if (!(Number.isInteger(p.layer) && p.layer >= 0 && p.layer < numLayers)) throw bad(`'pointer.layer' must be in 0..${numLayers - 1}`);
    if (
      !Array.isArray(p.heads) ||
      p.heads.length === 0 ||
      p.heads.some((h) => !(Number.isInteger(h) && h >= 0 && h < numHeads)) ||
      new Set(p.heads).size !== p.heads.length
    )
      throw bad(`'pointer.heads' must be distinct heads in 0..${numHeads - 1}`);
    if (!(typeof p.weight === 'number' && p.weight >= 0)) throw bad("'pointer.weight' must be a number >= 0");
    if (p.copyWeight !== undefined && !(typeof p.copyWeight === 'number' && p.copyWeight >= 0)) throw bad("'pointer.copyWeight' must be a number >= 0");
  }
}

/** The (length, ratio) of one micro-batch, fixed by the seed string. */
export function drawSoftRestateShape(s: SoftRestate, seed: string): { length: number; ratio: number } {
  const rng = new Rng(seed);
  return { length: s.lengths[rng.int(s.lengths.length)], ratio: s.ratios[rng.int(s.ratios.length)] };
}

/**
 * [k, n] group-mean weights: row g is 1/|g| on the tokens of group g, the groups of GMSA's merging
 * (groupStarts: [g r, min((g+1) r, n)) for an integer ratio), so the means are the ones it forms.
 */
export function groupMeanWeights(n: number, ratio: number): Tensor {
  const starts = groupStarts(n, { ratio });
  const k = starts.length;
  const w = new Float32Array(k * n);
  for (let g = 0; g < k; g++) {
    const start = starts[g]!;
    const end = g + 1 < k ? starts[g + 1]! : n;
    for (let i = start; i < end; i++) w[g * n + i] = 1 / (end - start);
  }
  return tensor(w, [k, n]);
}

export interface SoftRestateLoss {
  /** Mean next-token loss on the restated tokens and EOS. */
  loss: Tensor;
  /** Attention supervision loss, when a pointer is configured with weight > 0. */
  pointed?: Tensor;
  /** The pointer heads' copy loss, when its copyWeight > 0. */
  copied?: Tensor;
}

/**
 * Loss of `rows` soft-restate rows. passages: rows x n ids (flat). The soft tokens carry no
 * gradient: the model learns to read them; the embedding table and final norm are not pushed
 * toward what is easy to average.
 */
export function softRestateLoss(
  model: LlamaModel,
  passages: Int32Array,
  rows: number,
  n: number,
  ratio: number,
  ids: { bos: number; eos: number; restate: number },
  s: SoftRestate,
): SoftRestateLoss {
  if (passages.length !== rows * n) throw new Error(`softRestateLoss: ${passages.length} ids for ${rows} rows of ${n}`);
  const k = Math.ceil(n / ratio);
  const passage = tensor(passages, [rows, n], { dtype: 'int64' });
  const passageEmb = model.embed(passage); // [rows, n, dim]
  let soft = groupMeanWeights(n, ratio).to(passageEmb.dtype).matmul(passageEmb.detach()); // [rows, k, dim]
  if ((s.norm ?? 'final') === 'final') soft = model.model.norm.forward(soft).detach();
  const marks = model.embed(tensor([ids.bos, ids.restate], [1, 2], { dtype: 'int64' })).expand(rows, 2, model.dim);
  // [BOS] soft <|restate|> t_1 … t_n ; the last position's target is EOS.
  const embeds = cat([marks.narrow(1, 0, 1), soft, marks.narrow(1, 1, 1), passageEmb], 1); // [rows, 2 + k + n, dim]
  const wantAttn = !!s.pointer && s.pointer.weight > 0;
  const wantCopy = !!s.pointer && (s.pointer.copyWeight ?? 0) > 0;
  const out = model.forward({ inputsEmbeds: embeds, outputAttentions: wantAttn || wantCopy, outputAttnInputs: wantCopy });
  const total = 2 + k + n;
  const from = 1 + k; // the <|restate|> position predicts t_1
  const logits = out.logits!.narrow(1, from, n + 1).reshape(rows * (n + 1), -1);
  const targets = cat([passage, tensor(new Array(rows).fill(ids.eos), [rows, 1], { dtype: 'int64' })], 1).reshape(rows * (n + 1));
  const loss = crossEntropy(logits, targets);
  if (!wantAttn && !wantCopy) return { loss };
  // The query predicting token j (at from + j) should attend to its group's soft token 1 + floor(j / r).
  const target = new Float32Array(n * total);
  for (let j = 0; j < n; j++) target[j * total + 1 + Math.floor(j / ratio)] = 1;
  const p = s.pointer!;
  let pointed: Tensor | undefined;
  if (wantAttn) {
    const heads = tensor(p.heads, [p.heads.length], { dtype: 'int64' });
    const probs = out.attentions![p.layer]!.indexSelect(1, heads).narrow(2, from, n); // [rows, heads, n, total]
    const onTarget = probs.mul(tensor(target, [1, 1, n, total]).to(probs.dtype)).sum(-1);
    pointed = onTarget.add(1e-6).log().mean().neg();
  }
  let copied: Tensor | undefined;
  if (wantCopy) {
    // With all attention on one key, a head's output is its value there through its slice of o_proj.
    const { numHeads: h, numKvHeads: kv, headDim: hd } = model.config;
    const attn = model.layers[p.layer]!.selfAttn;
    const x = out.attnInputs![p.layer]!.narrow(1, 1, k); // the soft tokens' normed inputs [rows, k, dim]
    let read: Tensor | undefined;
    for (const head of p.heads) {
      const kvHead = Math.floor(head / (h / kv));
      const value = x.matmul(attn.vProj.weight.value.narrow(0, kvHead * hd, hd).T); // [rows, k, hd]
      const o = value.matmul(attn.oProj.weight.value.narrow(1, head * hd, hd).T); // [rows, k, dim]
      read = read ? read.add(o) : o;
    }
    const group = tensor(
      Array.from({ length: n }, (_, j) => Math.floor(j / ratio)),
      [n],
      { dtype: 'int64' },
    );
    const perToken = model.head(read!.indexSelect(1, group)); // [rows, n, vocab]: token j reads its group
    copied = crossEntropy(perToken.reshape(rows * n, -1), passage.reshape(rows * n));
  }
  return { loss, pointed, copied };
}

/**
 * Plain restate rows from the first `rows` passages (rows x n ids, flat, or more rows: the rest
 * are ignored): [BOS] t_1 … t_n <|restate|> t_1 … t_n, mean loss on the restated tokens and EOS.
 */
export function plainRestateLoss(model: LlamaModel, passages: Int32Array, rows: number, n: number, ids: { bos: number; eos: number; restate: number }): Tensor {
  if (passages.length < rows * n) throw new Error(`plainRestateLoss: ${passages.length} ids for ${rows} rows of ${n}`);
  const seq = new Int32Array(rows * (2 * n + 3));
  for (let r = 0; r < rows; r++) {
    const p = passages.subarray(r * n, (r + 1) * n);
    const o = r * (2 * n + 3);
    seq[o] = ids.bos;
    seq.set(p, o + 1);
    seq[o + n + 1] = ids.restate;
    seq.set(p, o + n + 2);
    seq[o + 2 * n + 2] = ids.eos;
  }
  const all = tensor(seq, [rows, 2 * n + 3], { dtype: 'int64' });
  const logits = model.forward({ ids: all.narrow(1, 0, 2 * n + 2) }).logits!; // [rows, 2n + 2, vocab]
  // The <|restate|> position (n + 1) predicts t_1; the last input predicts EOS.
  return crossEntropy(logits.narrow(1, n + 1, n + 1).reshape(rows * (n + 1), -1), all.narrow(1, n + 2, n + 1).reshape(rows * (n + 1)));
}
