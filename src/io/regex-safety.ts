/**
 * A static check that a regular expression from a file (a tokenizer.json `Split` or `Replace`
 * pattern) cannot backtrack catastrophically in a backtracking engine such as V8's, which is
 * what @huggingface/tokenizers runs it in. There is no time limit on a RegExp in JavaScript, so
 * a pattern like `(a+)+$` against a few dozen characters freezes the process: it has to be
 * refused before it is compiled.
 *
 * The pattern is parsed (JavaScript and Oniguruma syntax as tokenizer.json files use it) and
 * refused when it has one of the three shapes that make a backtracking matcher super-linear
 * beyond O(n^2) per search (Weideman et al., "Analyzing Matching Time Behavior of Backtracking
 * Regular Expression Matchers by Using Ambiguity of NFA", 2016; Davis et al., "The impact of
 * regular expression denial of service (ReDoS) in practice", 2018):
 *  1. nested repetition (star height > 1): a repeated group (max > 1) holding a repetition of
 *     variable count, or whose body can match the empty string — `(a+)+`, `(a*)*`, `(a{1,3})+`,
 *     `(a?)+`. Such a group can split one string among its iterations in exponentially many ways;
 *  2. a repeated alternation whose branches can start with the same character (or one branch is
 *     empty) — `(a|ab)+`, `(\w|\d)*`: again exponentially many ways to match one string;
 *  3. three or more unbounded repetitions in a row that can match the same characters, with
 *     only optional items between them — `\s*\s*\s*x`: O(n^3) per start position and more.
 * Two such repetitions in a row (`\s*[\r\n]+`, GPT-2's `\s+(?!\S)`) are O(n^2) and are
 * accepted: every real pre-tokenizer pattern (GPT-2, Llama 3, Qwen2, GPT-4o, DeepSeek) has them.
 * Backreferences are refused (matching with them is NP-hard); counted repetitions are bounded
 * ({n,m} up to MAX_COUNT), and so is the pattern's length.
 *
 * The check is conservative (it may refuse a pattern that is in fact safe, never the reverse
 * for the constructs it knows): "can start with / consume the same character" is decided over
 * an alphabet holding every ASCII and Latin-1 character, representatives of each Unicode
 * category the common classes name (letters, marks, numbers, spaces, punctuation, symbols,
 * astral characters) and every character the pattern itself names; a construct it cannot
 * interpret is taken to match any character.
 */

/** Longest pattern accepted (the longest real pre-tokenizer pattern, DeepSeek's, is ~1,500). */
export const MAX_PATTERN_LENGTH = 20_000;
/** Largest count of a counted repetition {n,m}. */
export const MAX_COUNT = 1000;
/** A repetition of more than this many counts as unbounded for rule 3 (\s{0,1000} three times is 10^9 steps). */
const LONG_RUN = 16;

export class UnsafeRegexError extends Error {
  /** The pattern refused. */
  readonly pattern: string;
  /** Character offset in the pattern of the construct at fault. */
  readonly offset: number;
  constructor(pattern: string, offset: number, message: string) {
    super(`${message} (at character ${offset} of the pattern ${show(pattern)})`);
    this.name = 'UnsafeRegexError';
    this.pattern = pattern;
    this.offset = offset;
  }
}

function show(pattern: string): string {
  const s = JSON.stringify(pattern);
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

type Node =
  | { k: 'set'; src: string; ci: boolean; at: number }
  | { k: 'empty'; at: number }
  | { k: 'look'; body: Node; at: number }
  | { k: 'seq'; items: Node[]; at: number }
  | { k: 'alt'; branches: Node[]; at: number }
  | { k: 'rep'; min: number; max: number; body: Node; at: number };

const INF = Number.POSITIVE_INFINITY;

/** A recursive-descent parser of the pattern; `lits` collects every character it names. */
class Parser {
  i = 0;
  readonly lits = new Set<string>();
  constructor(readonly p: string) {}

  fail(message: string, at = this.i): never {
    throw new UnsafeRegexError(this.p, at, message);
  }

  parse(): Node {
    const n = this.alt(false);
    if (this.i < this.p.length) this.fail(`unbalanced ')'`);
    return n;
  }

  private alt(ci: boolean): Node {
    const at = this.i;
    const branches = [this.seq(ci)];
    while (this.p[this.i] === '|') {
      this.i++;
      branches.push(this.seq(ci));
    }
    return branches.length === 1 ? branches[0] : { k: 'alt', branches, at };
  }

  private seq(ci: boolean): Node {
    const at = this.i;
    const items: Node[] = [];
    while (this.i < this.p.length && this.p[this.i] !== '|' && this.p[this.i] !== ')') {
      // an inline flag group (?i) applies to the rest of the enclosing group
      const inline = /^\(\?([imsx-]+)\)/.exec(this.p.slice(this.i));
      if (inline) {
        this.i += inline[0].length;
        if (/^[imsx]*i/.test(inline[1])) ci = true;
        continue;
      }
      const atom = this.atom(ci);
      items.push(this.quantified(atom));
    }
    return items.length === 1 ? items[0] : { k: 'seq', items, at };
  }

  private quantified(atom: Node): Node {
    const at = this.i;
    const c = this.p[this.i];
    let min: number;
    let max: number;
    if (c === '*') [min, max] = [0, INF];
    else if (c === '+') [min, max] = [1, INF];
    else if (c === '?') [min, max] = [0, 1];
    else if (c === '{') {
      const m = /^\{(\d*)(,(\d*))?\}/.exec(this.p.slice(this.i));
      if (!m || (m[1] === '' && (m[3] ?? '') === '')) return atom; // a literal '{'
      min = m[1] === '' ? 0 : Number(m[1]);
      max = m[2] === undefined ? min : m[3] === '' ? INF : Number(m[3]);
      if (min > MAX_COUNT || (max !== INF && max > MAX_COUNT)) this.fail(`counted repetition ${m[0]} is over the limit of ${MAX_COUNT}`);
      if (max < min) this.fail(`counted repetition ${m[0]} has max < min`);
      this.i += m[0].length - 1;
    } else return atom;
    this.i++;
    if (this.p[this.i] === '?' || this.p[this.i] === '+') this.i++; // lazy or possessive
    if (atom.k === 'empty' || atom.k === 'look') return atom;
    // a{2}* (Oniguruma): a repetition of a repetition
    return this.quantified({ k: 'rep', min, max, body: atom, at });
  }

  private atom(ci: boolean): Node {
    const at = this.i;
    const c = this.p[this.i];
    if (c === '(') return this.group(ci);
    if (c === '[') return this.cls(ci);
    if (c === '\\') return this.escape(ci);
    if (c === '^' || c === '$') {
      this.i++;
      return { k: 'empty', at };
    }
    if (c === '*' || c === '+' || c === '?') this.fail(`quantifier '${c}' with nothing to repeat`);
    const cp = this.p.codePointAt(this.i)!;
    const ch = String.fromCodePoint(cp);
    this.i += ch.length;
    if (c === '.') return { k: 'set', src: '.', ci, at };
    this.lits.add(ch);
    return { k: 'set', src: escapeLiteral(ch), ci, at };
  }

  private group(ci: boolean): Node {
    const at = this.i;
    const rest = this.p.slice(this.i);
    let look = false;
    let m: RegExpExecArray | null;
    if ((m = /^\((\?(?:[=!]|<[=!]))/.exec(rest))) look = true;
    else if ((m = /^\(\?([imsx]*)(?:-[imsx]*)?:/.exec(rest))) ci = ci || m[1].includes('i');
    else if ((m = /^\(\?(?:<[A-Za-z_][A-Za-z0-9_]*>|P<[A-Za-z_][A-Za-z0-9_]*>|'[A-Za-z_][A-Za-z0-9_]*'|>)/.exec(rest))) {
      // a named or atomic group: matched like a plain group
    } else if (rest.startsWith('(?')) this.fail('unsupported group syntax');
    else m = /^\(/.exec(rest)!;
    this.i += m[0].length;
    const body = this.alt(ci);
    if (this.p[this.i] !== ')') this.fail(`unclosed '('`, at);
    this.i++;
    return look ? { k: 'look', body, at } : body;
  }

  /** A bracket expression, kept as source (translated where Oniguruma differs) for membership tests. */
  private cls(ci: boolean): Node {
    const at = this.i;
    let j = this.i + 1;
    let depth = 1;
    if (this.p[j] === '^') j++;
    if (this.p[j] === ']') j++; // a leading ']' is literal
    let prev = '';
    while (j < this.p.length && depth > 0) {
      const c = this.p[j];
      if (c === '\\') {
        const e = /^\\(?:[pP]\{[^}]*\}|x\{[0-9A-Fa-f]+\}|u\{[0-9A-Fa-f]+\}|u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|[\s\S])/.exec(this.p.slice(j));
        const lit = escapeValue(e![0]);
        if (lit !== undefined) this.lits.add(lit);
        j += e![0].length;
        prev = lit ?? '';
        continue;
      }
      if (c === '[')
        depth++; // Oniguruma's nested classes; JavaScript's u flag takes '[' literally
      else if (c === ']') depth--;
      else {
        const cp = String.fromCodePoint(this.p.codePointAt(j)!);
        if (prev === '-' || c !== '-') this.lits.add(cp);
        // range endpoints and their neighbours are in the alphabet
        const code = cp.codePointAt(0)!;
        if (code > 0) this.lits.add(String.fromCodePoint(code - 1));
        if (code < 0x10ffff) this.lits.add(String.fromCodePoint(code + 1));
        j += cp.length - 1;
        prev = cp;
      }
      j++;
    }
    if (depth > 0) this.fail(`unclosed '['`, at);
    this.i = j;
    return { k: 'set', src: this.p.slice(at, j), ci, at };
  }

  private escape(ci: boolean): Node {
    const at = this.i;
    const rest = this.p.slice(this.i);
    const m = /^\\(?:[pP]\{[^}]*\}|x\{[0-9A-Fa-f]+\}|u\{[0-9A-Fa-f]+\}|u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|k<[^>]*>|[1-9]\d*|[\s\S])/.exec(rest);
    if (!m) this.fail('a trailing backslash');
    this.i += m[0].length;
    const e = m[0];
    if (/^\\(?:[1-9]|k<)/.test(e)) this.fail('backreferences are not allowed (matching with them can take exponential time)', at);
    if (/^\\[bBAzZG]$/.test(e)) return { k: 'empty', at };
    const lit = escapeValue(e);
    if (lit !== undefined) this.lits.add(lit);
    return { k: 'set', src: e, ci, at };
  }
}

/** The character a literal escape stands for (\n, \x41, \u{1F600}, \.), or undefined for a class (\d, \p{L}). */
function escapeValue(e: string): string | undefined {
  const simple: Record<string, string> = { n: '\n', r: '\r', t: '\t', f: '\f', v: '\v', '0': '\0', a: '\x07', e: '\x1b' };
  const body = e.slice(1);
  if (body.length === 1 && simple[body] !== undefined) return simple[body];
  const hex = /^(?:x\{([0-9A-Fa-f]+)\}|u\{([0-9A-Fa-f]+)\}|u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2}))$/.exec(body);
  if (hex) {
    const code = parseInt(hex[1] ?? hex[2] ?? hex[3] ?? hex[4], 16);
    return code <= 0x10ffff ? String.fromCodePoint(code) : undefined;
  }
  if (body.length >= 1 && !/^[A-Za-z0-9]/.test(body)) return String.fromCodePoint(body.codePointAt(0)!);
  return undefined;
}

function escapeLiteral(ch: string): string {
  return /[\\^$.*+?()[\]{}|/-]/.test(ch) ? `\\${ch}` : ch;
}

// ---------------------------------------------------------------------------------------------
// Character sets over a finite alphabet

/** Representatives of the Unicode categories and spaces that pre-tokenizer classes name. */
const REPRESENTATIVES = [
  'ſ',
  'ǅ',
  'ʰ',
  'ƻ',
  'Ж',
  'ж',
  'α',
  'Ω',
  '中',
  'あ',
  'ア',
  '한',
  'ا',
  'א',
  'ก',
  'अ',
  '\u0301',
  '\u0903',
  '\u20dd',
  '٣',
  '३',
  'Ⅳ',
  '½',
  '²',
  '\u1680',
  '\u2000',
  '\u2003',
  '\u2028',
  '\u2029',
  '\u202f',
  '\u205f',
  '\u3000',
  '\ufeff',
  '\u200b',
  '\u200d',
  '\u180e',
  '。',
  '、',
  '「',
  '‘',
  '’',
  '“',
  '—',
  '€',
  '©',
  '™',
  '→',
  '∑',
  '\ue000',
  '\ufffd',
  '\ud800',
  '\udc00',
  '\u{1f600}',
  '\u{1d7d8}',
  '\u{10400}',
  '\u{20000}',
  '\u{e0041}',
  '\u{10ffff}',
];

class Alphabet {
  readonly chars: string[];
  private readonly cache = new Map<string, Uint8Array>();
  constructor(lits: Iterable<string>) {
    const set = new Set<string>();
    for (let c = 0; c < 256; c++) set.add(String.fromCharCode(c));
    for (const c of REPRESENTATIVES) set.add(c);
    for (const c of lits) {
      set.add(c);
      set.add(c.toLowerCase());
      set.add(c.toUpperCase());
    }
    this.chars = [...set].filter((c) => [...c].length === 1);
  }

  /** Which alphabet characters a one-character atom matches (all of them when it cannot be compiled). */
  members(src: string, ci: boolean): Uint8Array {
    const key = `${ci ? 'i' : '-'}${src}`;
    let bits = this.cache.get(key);
    if (bits) return bits;
    bits = new Uint8Array(this.chars.length);
    const re = compileAtom(src, ci);
    for (let i = 0; i < this.chars.length; i++) bits[i] = re ? (re.test(this.chars[i]) ? 1 : 0) : 1;
    this.cache.set(key, bits);
    return bits;
  }

  none(): Uint8Array {
    return new Uint8Array(this.chars.length);
  }
}

/** Oniguruma escapes JavaScript lacks, as JavaScript. */
const ONIGURUMA: Record<string, string> = { '\\h': '[0-9A-Fa-f]', '\\H': '[^0-9A-Fa-f]', '\\a': '\\x07', '\\e': '\\x1b' };

function compileAtom(src: string, ci: boolean): RegExp | undefined {
  const flags = ci ? 'iu' : 'u';
  const js = (ONIGURUMA[src] ?? src).replace(/\\x\{([0-9A-Fa-f]+)\}/g, '\\u{$1}').replace(/\\([he])/g, (_m, c: string) => (c === 'h' ? '0-9A-Fa-f' : '\\x1b'));
  for (const candidate of [js, js.replace(/\\([pP])\{([^}=]+)\}/g, '\\$1{Script=$2}')]) {
    try {
      return new RegExp(`^(?:${candidate})$`, flags);
    } catch {
      // try the next spelling
    }
  }
  return undefined;
}

const intersects = (a: Uint8Array, b: Uint8Array) => a.some((x, i) => x === 1 && b[i] === 1);
const union = (a: Uint8Array, b: Uint8Array) => a.map((x, i) => x | b[i]);

// ---------------------------------------------------------------------------------------------
// Analysis

class Analysis {
  constructor(
    readonly pattern: string,
    readonly abc: Alphabet,
  ) {}

  nullable(n: Node): boolean {
    switch (n.k) {
      case 'set':
        return false;
      case 'empty':
      case 'look':
        return true;
      case 'seq':
        return n.items.every((x) => this.nullable(x));
      case 'alt':
        return n.branches.some((x) => this.nullable(x));
      case 'rep':
        return n.min === 0 || this.nullable(n.body);
    }
  }

  /** Characters a match of n can start with. */
  first(n: Node): Uint8Array {
    return this.consumed(n, true);
  }

  /** Characters a match of n can consume anywhere. */
  chars(n: Node): Uint8Array {
    return this.consumed(n, false);
  }

  private consumed(n: Node, firstOnly: boolean): Uint8Array {
    switch (n.k) {
      case 'set':
        return this.abc.members(n.src, n.ci);
      case 'empty':
      case 'look':
        return this.abc.none();
      case 'seq': {
        let out = this.abc.none();
        for (const x of n.items) {
          out = union(out, this.consumed(x, firstOnly));
          if (firstOnly && !this.nullable(x)) break;
        }
        return out;
      }
      case 'alt':
        return n.branches.reduce((acc, b) => union(acc, this.consumed(b, firstOnly)), this.abc.none());
      case 'rep':
        return n.max === 0 ? this.abc.none() : this.consumed(n.body, firstOnly);
    }
  }

  fail(at: number, message: string): never {
    throw new UnsafeRegexError(this.pattern, at, message);
  }

  /** Checks every rule on n and below. */
  check(n: Node): void {
    switch (n.k) {
      case 'set':
      case 'empty':
        return;
      case 'look':
        return this.check(n.body);
      case 'alt':
        return n.branches.forEach((b) => this.check(b));
      case 'seq':
        this.checkChains(n);
        return n.items.forEach((x) => this.check(x));
      case 'rep':
        if (n.max > 1) this.checkLoopBody(n);
        return this.check(n.body);
    }
  }

  /** Rules 1 and 2 for the body of a repetition that can run more than once. */
  private checkLoopBody(loop: Extract<Node, { k: 'rep' }>): void {
    if (this.nullable(loop.body))
      this.fail(loop.at, 'a repeated group that can match the empty string (nested repetition, e.g. (a?)+ or (a*)*) can take exponential time');
    const visit = (n: Node): void => {
      switch (n.k) {
        case 'set':
        case 'empty':
        case 'look': // zero width: it does not change how the loop splits the string
          return;
        case 'seq':
          return n.items.forEach(visit);
        case 'rep':
          if (n.min !== n.max) this.fail(n.at, 'a repetition inside a repeated group (nested quantifiers, e.g. (a+)+) can take exponential time');
          return visit(n.body);
        case 'alt': {
          const firsts = n.branches.map((b) => this.first(b));
          for (let i = 0; i < n.branches.length; i++) {
            if (this.nullable(n.branches[i])) this.fail(n.at, 'a repeated alternation with an empty branch (e.g. (a|)+) can take exponential time');
            for (let j = i + 1; j < n.branches.length; j++) {
              if (intersects(firsts[i], firsts[j]))
                this.fail(
                  n.at,
                  `a repeated alternation whose branches ${i + 1} and ${j + 1} can start with the same character (e.g. (a|ab)+) can take exponential time`,
                );
            }
          }
          return n.branches.forEach(visit);
        }
      }
    };
    visit(loop.body);
  }

  /** Rule 3: no chain of three unbounded repetitions over shared characters with only optional items between. */
  private checkChains(seq: Extract<Node, { k: 'seq' }>): void {
    const items = seq.items;
    const unbounded = items.map((x) => x.k === 'rep' && x.max > LONG_RUN);
    const sets = items.map((x, i) => (unbounded[i] ? this.chars(x) : undefined));
    const nullable = items.map((x) => this.nullable(x));
    // longest[i]: the longest chain of overlapping unbounded repetitions ending at item i
    const longest = items.map(() => 0);
    for (let j = 0; j < items.length; j++) {
      if (!unbounded[j]) continue;
      longest[j] = 1;
      for (let i = j - 1; i >= 0; i--) {
        if (unbounded[i] && intersects(sets[i]!, sets[j]!)) longest[j] = Math.max(longest[j], longest[i] + 1);
        if (!nullable[i]) break;
      }
      if (longest[j] >= 3)
        this.fail(
          items[j].at,
          `${longest[j]} unbounded repetitions in a row over the same characters (e.g. \\s*\\s*\\s*) take polynomial time of degree ${longest[j]}`,
        );
    }
  }
}

/**
 * Throws an UnsafeRegexError when the pattern could backtrack catastrophically (see the module
 * comment) or cannot be parsed; returns when it is safe to compile.
 */
export function checkRegexSafety(pattern: string): void {
  if (pattern.length > MAX_PATTERN_LENGTH)
    throw new UnsafeRegexError(pattern.slice(0, 40), 0, `the pattern is ${pattern.length} characters long, over the limit of ${MAX_PATTERN_LENGTH}`);
  const parser = new Parser(pattern);
  const tree = parser.parse();
  new Analysis(pattern, new Alphabet(parser.lits)).check(tree);
}
