/**
 * Evaluation metrics, pure and dependency-free:
 * - SQuAD-style normalised exact match and token F1 (lower-case, punctuation and the articles
 *   a/an/the removed, whitespace collapsed);
 * - SQuAD's official scoring exactly as evaluate-v2.0.py does it (squadScores: ASCII punctuation,
 *   the best over several gold answers, an unanswerable question right iff the prediction is
 *   empty), with the no-answer phrases a model may say instead of nothing;
 * - corpus-level BLEU-4 over token lists (uniform weights, brevity penalty, optional +1
 *   smoothing of the n > 1 precisions as in Lin & Och 2004);
 * - exact-prefix length (leading tokens equal) and ROUGE-L (LCS-based F-measure);
 * - perplexity and bits per byte from (total nats, tokens, bytes);
 * - retention of a compressed score between the `none` floor and the `full` ceiling.
 */

// ---------------------------------------------------------------------------------------------
// Answers (SQuAD)

/** ASCII punctuation (Python's string.punctuation) and any Unicode punctuation. */
const PUNCTUATION = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~\p{P}]/gu;
const ARTICLES = /\b(a|an|the)\b/g;

/** SQuAD's normalize_answer: lower-case, strip punctuation, drop articles, collapse whitespace. */
export function normalizeAnswer(s: string): string {
  return s.toLowerCase().replace(PUNCTUATION, '').replace(ARTICLES, ' ').split(/\s+/).filter(Boolean).join(' ');
}

function golds(gold: string | readonly string[]): readonly string[] {
  const g = typeof gold === 'string' ? [gold] : gold;
  if (g.length === 0) throw new Error('metrics: at least one gold answer is needed');
  return g;
}

/** 1 when the normalised prediction equals a normalised gold answer (the best of several), else 0. */
export function exactMatch(prediction: string, gold: string | readonly string[]): number {
  const p = normalizeAnswer(prediction);
  return golds(gold).some((g) => normalizeAnswer(g) === p) ? 1 : 0;
}

function tokenF1(prediction: string, gold: string, normalize: (s: string) => string = normalizeAnswer): number {
  const p = normalize(prediction).split(' ').filter(Boolean);
  const g = normalize(gold).split(' ').filter(Boolean);
  // SQuAD 2.0: when either side is empty, F1 is 1 if both are, else 0.
  if (p.length === 0 || g.length === 0) return p.length === g.length ? 1 : 0;
  const counts = new Map<string, number>();
  for (const t of g) counts.set(t, (counts.get(t) ?? 0) + 1);
  let same = 0;
  for (const t of p) {
    const c = counts.get(t) ?? 0;
    if (c > 0) {
      same++;
      counts.set(t, c - 1);
    }
  }
  if (same === 0) return 0;
  const precision = same / p.length;
  const recall = same / g.length;
  return (2 * precision * recall) / (precision + recall);
}

/** Token F1 of the normalised answers (bag of words), the best over several gold answers. */
export function f1Score(prediction: string, gold: string | readonly string[]): number {
  return Math.max(...golds(gold).map((g) => tokenF1(prediction, g)));
}

// ---------------------------------------------------------------------------------------------
// SQuAD, as the official script scores it

/** Python's string.punctuation, which the official script removes (ASCII only, unlike normalizeAnswer). */
const SQUAD_PUNCTUATION = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g;
/** re.compile(r'\b(a|an|the)\b', re.UNICODE): word boundaries between Unicode word characters. */
const SQUAD_ARTICLES = /(?<![\p{L}\p{N}_])(?:a|an|the)(?![\p{L}\p{N}_])/gu;

/** evaluate-v2.0.py's normalize_answer: lower, remove_punc, remove_articles, white_space_fix. */
export function squadNormalize(s: string): string {
  return s.toLowerCase().replace(SQUAD_PUNCTUATION, '').replace(SQUAD_ARTICLES, ' ').split(/\s+/).filter(Boolean).join(' ');
}

/**
 * What a model may say for "the context does not answer this" instead of an empty answer (the
 * QA prompt does not teach either; both count as abstaining). Compared after normalisation, as
 * the whole answer: "Unanswerable.", "No answer", "Not mentioned in the passage" abstain; "no",
 * "none" and "unknown" do not (they answer real questions).
 */
export const NO_ANSWER_PHRASES: readonly string[] = [
  'unanswerable',
  'no answer',
  'there is no answer',
  'not answerable',
  'cannot be answered',
  'can not be answered',
  'cannot answer',
  'not mentioned',
  'not mentioned in the passage',
  'not mentioned in the context',
  'not mentioned in the text',
  'not in the passage',
  'not in the context',
  'not in the text',
  'not stated',
  'not given',
];
const NO_ANSWER = new Set(NO_ANSWER_PHRASES.map(squadNormalize));

/** The prediction as SQuAD 2.0 scores it: '' when it is a no-answer phrase, else as given. */
export function squadPrediction(prediction: string): string {
  return NO_ANSWER.has(squadNormalize(prediction)) ? '' : prediction;
}

export interface SquadScore {
  em: number;
  f1: number;
  /** The prediction abstained (empty or a no-answer phrase). */
  abstained: boolean;
}

/**
 * EM and F1 of a prediction as the official SQuAD 2.0 script computes them: gold answers that
 * normalise to nothing are dropped, and none left means unanswerable (gold ['']); the best over
 * the gold answers; F1 = 1 when both sides are empty and 0 when one is. So an unanswerable
 * question scores 1 iff the prediction abstains, and an abstention on an answerable one scores 0.
 * (v1.1 files score the same: every question has an answer.)
 */
export function squadScores(prediction: string, answers: readonly string[]): SquadScore {
  const pred = squadPrediction(prediction);
  let golds = answers.filter((a) => squadNormalize(a) !== '');
  if (golds.length === 0) golds = [''];
  const p = squadNormalize(pred);
  return {
    em: golds.some((g) => squadNormalize(g) === p) ? 1 : 0,
    f1: Math.max(...golds.map((g) => tokenF1(pred, g, squadNormalize))),
    abstained: p === '',
  };
}

// ---------------------------------------------------------------------------------------------
// BLEU

export type TokenLike = number | string;

export interface BleuOptions {
  /** Largest n-gram order (default 4; weights are uniform 1/maxOrder). */
  maxOrder?: number;
  /** Add 1 to the matches and totals of orders n > 1 (Lin & Och 2004, "BLEU+1"). Default false. */
  smooth?: boolean;
}

export interface BleuResult {
  /** In [0, 1]. */
  bleu: number;
  /** Modified n-gram precisions, orders 1..maxOrder (after smoothing when asked). */
  precisions: number[];
  /** Clipped matches and candidate n-grams per order (before smoothing). */
  matches: number[];
  totals: number[];
  brevityPenalty: number;
  /** Total hypothesis and reference lengths (c and r). */
  hypothesisLength: number;
  referenceLength: number;
}

function ngramCounts(tokens: readonly TokenLike[], n: number): Map<string, number> {
  const out = new Map<string, number>();
  for (let i = 0; i + n <= tokens.length; i++) {
    const key = tokens.slice(i, i + n).join('\u0001');
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

/**
 * Corpus-level BLEU (Papineni et al. 2002): clipped n-gram matches and candidate n-grams are
 * summed over all pairs before the precisions are taken; BP = 1 if c > r else exp(1 - r/c).
 * One reference per hypothesis. An empty corpus or empty hypotheses give 0; without smoothing
 * any zero precision gives 0.
 */
export function corpusBleu(hypotheses: readonly (readonly TokenLike[])[], references: readonly (readonly TokenLike[])[], opts: BleuOptions = {}): BleuResult {
  if (hypotheses.length !== references.length) throw new Error(`corpusBleu: ${hypotheses.length} hypotheses for ${references.length} references`);
  const maxOrder = opts.maxOrder ?? 4;
  if (!(Number.isInteger(maxOrder) && maxOrder >= 1)) throw new RangeError(`corpusBleu: maxOrder must be a positive integer, got ${maxOrder}`);
  const matches = new Array<number>(maxOrder).fill(0);
  const totals = new Array<number>(maxOrder).fill(0);
  let c = 0;
  let r = 0;
  hypotheses.forEach((hyp, i) => {
    const ref = references[i] as readonly TokenLike[];
    c += hyp.length;
    r += ref.length;
    for (let n = 1; n <= maxOrder; n++) {
      const h = ngramCounts(hyp, n);
      const rc = ngramCounts(ref, n);
      for (const [g, count] of h) matches[n - 1] += Math.min(count, rc.get(g) ?? 0);
      totals[n - 1] += Math.max(0, hyp.length - n + 1);
    }
  });
  const precisions = matches.map((m, k) => {
    const t = totals[k] as number;
    if (opts.smooth && k > 0) return (m + 1) / (t + 1);
    return t > 0 ? m / t : 0;
  });
  const brevityPenalty = c === 0 ? 0 : c > r ? 1 : Math.exp(1 - r / c);
  let bleu = 0;
  if (c > 0 && precisions.every((p) => p > 0)) {
    bleu = brevityPenalty * Math.exp(precisions.reduce((a, p) => a + Math.log(p), 0) / maxOrder);
  }
  return { bleu, precisions, matches, totals, brevityPenalty, hypothesisLength: c, referenceLength: r };
}

/** BLEU of one hypothesis against one reference (corpusBleu of a single pair). */
export function sentenceBleu(hypothesis: readonly TokenLike[], reference: readonly TokenLike[], opts: BleuOptions = {}): number {
  return corpusBleu([hypothesis], [reference], opts).bleu;
}

// ---------------------------------------------------------------------------------------------
// Prefix, ROUGE-L

/** Number of leading tokens the hypothesis has equal to the reference. */
export function exactPrefixLength(hypothesis: readonly TokenLike[], reference: readonly TokenLike[]): number {
  const n = Math.min(hypothesis.length, reference.length);
  let i = 0;
  while (i < n && hypothesis[i] === reference[i]) i++;
  return i;
}

/** Length of the longest common subsequence (O(n m) time, O(m) memory). */
export function lcsLength(a: readonly TokenLike[], b: readonly TokenLike[]): number {
  if (a.length === 0 || b.length === 0) return 0;
  let prev = new Int32Array(b.length + 1);
  let cur = new Int32Array(b.length + 1);
  for (let i = 1; i <= a.length; i++) {
    const ai = a[i - 1];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = ai === b[j - 1] ? (prev[j - 1] as number) + 1 : Math.max(prev[j] as number, cur[j - 1] as number);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[b.length] as number;
}

export interface RougeLResult {
  precision: number;
  recall: number;
  f: number;
}

/**
 * ROUGE-L (Lin 2004): P = LCS / |hypothesis|, R = LCS / |reference|,
 * F = (1 + beta^2) P R / (R + beta^2 P); beta = 1 (the balanced F1) by default.
 */
export function rougeL(hypothesis: readonly TokenLike[], reference: readonly TokenLike[], beta = 1): RougeLResult {
  const lcs = lcsLength(hypothesis, reference);
  if (lcs === 0) return { precision: 0, recall: 0, f: 0 };
  const precision = lcs / hypothesis.length;
  const recall = lcs / reference.length;
  const b2 = beta * beta;
  return { precision, recall, f: ((1 + b2) * precision * recall) / (recall + b2 * precision) };
}

// ---------------------------------------------------------------------------------------------
// Language modelling

/** exp(nats / tokens). */
export function perplexity(totalNats: number, tokens: number): number {
  if (!(tokens > 0)) throw new RangeError(`perplexity: tokens must be > 0, got ${tokens}`);
  return Math.exp(totalNats / tokens);
}

/** Total nats / ln 2 / UTF-8 bytes of the text scored. */
export function bitsPerByte(totalNats: number, bytes: number): number {
  if (!(bytes > 0)) throw new RangeError(`bitsPerByte: bytes must be > 0, got ${bytes}`);
  return totalNats / Math.LN2 / bytes;
}

export interface LmScore {
  /** Mean nats per token. */
  nll: number;
  ppl: number;
  /** When bytes were given. */
  bpb?: number;
}

export function lmScore(totalNats: number, tokens: number, bytes?: number): LmScore {
  const out: LmScore = { nll: totalNats / tokens, ppl: perplexity(totalNats, tokens) };
  if (bytes !== undefined) out.bpb = bitsPerByte(totalNats, bytes);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Aggregates

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/**
 * Retention of a score between the floor (`none`) and the ceiling (`full`):
 * (score - none) / (full - none). Works for lower-is-better scores (perplexity) too. Null when
 * full and none coincide (nothing to retain) or any input is not finite.
 */
export function retention(score: number, none: number, full: number): number | null {
  if (![score, none, full].every(Number.isFinite)) return null;
  const span = full - none;
  if (Math.abs(span) < 1e-12) return null;
  return (score - none) / span;
}
