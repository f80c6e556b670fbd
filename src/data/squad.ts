/**
 * Question-answer sets of a user's own: SQuAD JSON (v1.1, and v2.0 with unanswerable questions)
 * and JSONL, read into flat records with strict validation (errors name the file, the line for
 * JSONL or the JSON path for SQuAD, and the field).
 *
 * - SQuAD: {"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
 *   "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}.
 * - JSONL: one {"context", "question", "answers"} per line, answers a list of strings or SQuAD's
 *   [{"text", "answer_start"}]; "id" and "is_impossible" are optional.
 *
 * As in SQuAD 2.0's official script, a question with no answers (answers without a letter or digit,
 * which normalise to nothing, are dropped) is unanswerable; "is_impossible": true must come with an empty answers
 * list. Records keep their file order; `contexts` counts the distinct context texts, which the
 * evaluation compresses once each however many questions they have.
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';

export interface QaRecord {
  /** The file's id, or `<line>` / `<article>.<paragraph>.<question>` when it has none. */
  id: string;
  context: string;
  question: string;
  /** Gold answers as written (SQuAD: the texts); empty for an unanswerable question. */
  answers: string[];
  /** SQuAD 2.0: the context does not answer the question. */
  unanswerable: boolean;
  /** SQuAD: the article's title. */
  title?: string;
}

export interface QaSet {
  format: 'squad' | 'jsonl';
  /** SQuAD's "version" field, when given. */
  version?: string;
  records: QaRecord[];
  /** Distinct context texts. */
  contexts: number;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function isObject(v: unknown): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function kind(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/** Line and column of a character offset (1-based). */
function lineColumn(text: string, offset: number): string {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return `line ${line}, column ${offset - before.lastIndexOf('\n')}`;
}

/** JSON.parse with an error that says where (line and column, when the engine gives a position). */
function parseJson(text: string, where: string): Json {
  try {
    return JSON.parse(text) as Json;
  } catch (e) {
    const msg = (e as Error).message;
    const pos = /at position (\d+)/.exec(msg);
    const at = pos ? ` at ${lineColumn(text, Number(pos[1]))}` : '';
    throw new Error(`${where}: not valid JSON${at} (${msg.split('\n')[0]})`);
  }
}

function field<T>(obj: Record<string, Json>, name: string, where: string, check: (v: Json) => v is Json & T, want: string): T {
  if (!(name in obj)) throw new Error(`${where}: missing field "${name}" (${want})`);
  const v = obj[name] as Json;
  if (!check(v)) throw new Error(`${where}: field "${name}" must be ${want}, got ${kind(v)}`);
  return v as T;
}

const isString = (v: Json): v is string => typeof v === 'string';
const isList = (v: Json): v is Json[] => Array.isArray(v);

/** Answers given as strings or as SQuAD's [{"text", "answer_start"}]; where names the field. */
function readAnswers(list: Json[], where: string): string[] {
  return list.map((a, i) => {
    if (typeof a === 'string') return a;
    if (!isObject(a)) throw new Error(`${where}[${i}]: an answer must be a string or {"text", "answer_start"}, got ${kind(a)}`);
    const text = field(a, 'text', `${where}[${i}]`, isString, 'a string');
    if ('answer_start' in a && !(Number.isInteger(a.answer_start) && (a.answer_start as number) >= 0)) {
      throw new Error(`${where}[${i}]: field "answer_start" must be a non-negative integer, got ${JSON.stringify(a.answer_start)}`);
    }
    return text;
  });
}

/** Whether an answer has a letter or digit (SQuAD 2.0 drops answers that normalise to nothing). */
function nonEmpty(answer: string): boolean {
  return /[\p{L}\p{N}]/u.test(answer);
}

function record(id: string, context: string, question: string, answers: string[], impossible: Json | undefined, where: string, title?: string): QaRecord {
  if (impossible !== undefined && typeof impossible !== 'boolean') throw new Error(`${where}: field "is_impossible" must be true or false, got ${kind(impossible)}`);
  if (context.trim() === '') throw new Error(`${where}: field "context" is empty`);
  if (question.trim() === '') throw new Error(`${where}: field "question" is empty`);
  const real = answers.filter(nonEmpty);
  if (impossible === true && real.length > 0) throw new Error(`${where}: "is_impossible" is true but "answers" has ${real.length} answer(s) (SQuAD 2.0 keeps those of an unanswerable question in "plausible_answers")`);
  return { id, context, question, answers: real, unanswerable: real.length === 0, ...(title !== undefined ? { title } : {}) };
}

function finish(format: QaSet['format'], records: QaRecord[], source: string, version?: string): QaSet {
  if (records.length === 0) throw new Error(`${source}: no questions`);
  const ids = new Set<string>();
  for (const r of records) {
    if (ids.has(r.id)) throw new Error(`${source}: question id "${r.id}" appears twice`);
    ids.add(r.id);
  }
  return { format, ...(version !== undefined ? { version } : {}), records, contexts: new Set(records.map((r) => r.context)).size };
}

/** SQuAD JSON (v1.1 or v2.0). */
export function parseSquad(text: string, source = '<SQuAD JSON>'): QaSet {
  const root = parseJson(text, source);
  if (!isObject(root)) throw new Error(`${source}: a SQuAD file is an object {"version", "data": [...]}, got ${kind(root)}`);
  const data = field(root, 'data', source, isList, 'a list of articles {"title", "paragraphs"}');
  const version = typeof root.version === 'string' ? root.version : undefined;
  const records: QaRecord[] = [];
  data.forEach((article, a) => {
    const aw = `${source}: data[${a}]`;
    if (!isObject(article)) throw new Error(`${aw}: an article must be an object {"title", "paragraphs"}, got ${kind(article)}`);
    const title = typeof article.title === 'string' ? article.title : undefined;
    const paragraphs = field(article, 'paragraphs', aw, isList, 'a list of {"context", "qas"}');
    paragraphs.forEach((para, p) => {
      const pw = `${aw}.paragraphs[${p}]`;
      if (!isObject(para)) throw new Error(`${pw}: a paragraph must be an object {"context", "qas"}, got ${kind(para)}`);
      const context = field(para, 'context', pw, isString, 'a string');
      const qas = field(para, 'qas', pw, isList, 'a list of {"id", "question", "answers"}');
      qas.forEach((qa, q) => {
        const qw = `${pw}.qas[${q}]`;
        if (!isObject(qa)) throw new Error(`${qw}: a question must be an object {"id", "question", "answers"}, got ${kind(qa)}`);
        const question = field(qa, 'question', qw, isString, 'a string');
        const id = 'id' in qa ? field(qa, 'id', qw, isString, 'a string') : `${a}.${p}.${q}`;
        const answers = readAnswers(field(qa, 'answers', qw, isList, 'a list of {"text", "answer_start"} ([] for an unanswerable question)'), `${qw}.answers`);
        records.push(record(id, context, question, answers, qa.is_impossible, qw, title));
      });
    });
  });
  return finish('squad', records, source, version);
}

/** JSONL: one {"context", "question", "answers"} per line (blank lines skipped). */
export function parseQaJsonl(text: string, source = '<JSONL>'): QaSet {
  const records: QaRecord[] = [];
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${source}:${i + 1}`;
    const obj = parseJson(line, where);
    if (!isObject(obj)) throw new Error(`${where}: each line must be an object {"context", "question", "answers"}, got ${kind(obj)}`);
    const context = field(obj, 'context', where, isString, 'a string');
    const question = field(obj, 'question', where, isString, 'a string');
    const answers = readAnswers(field(obj, 'answers', where, isList, 'a list of answer strings or {"text", "answer_start"} ([] for an unanswerable question)'), `${where}: answers`);
    let id = String(i + 1);
    if ('id' in obj) {
      if (typeof obj.id !== 'string' && typeof obj.id !== 'number') throw new Error(`${where}: field "id" must be a string or a number, got ${kind(obj.id)}`);
      id = String(obj.id);
    }
    records.push(record(id, context, question, answers, obj.is_impossible, where));
  });
  return finish('jsonl', records, source);
}

/**
 * Text in either format: JSONL when told so, else SQuAD when told so, else JSONL when the first
 * non-blank line is a JSON object of its own with a "question", else SQuAD JSON.
 */
export function parseQaText(text: string, opts: { source?: string; format?: 'squad' | 'jsonl' } = {}): QaSet {
  const source = opts.source ?? '<QA data>';
  const body = text.replace(/^\uFEFF/, '');
  if (opts.format === 'jsonl') return parseQaJsonl(body, source);
  if (opts.format === 'squad') return parseSquad(body, source);
  const first = body.split('\n').find((l) => l.trim() !== '');
  if (first === undefined) throw new Error(`${source}: empty file`);
  let firstObj: unknown;
  try {
    firstObj = JSON.parse(first);
  } catch {
    firstObj = undefined;
  }
  return isObject(firstObj) && 'question' in firstObj ? parseQaJsonl(body, source) : parseSquad(body, source);
}

/** A QA file: .jsonl / .ndjson as JSONL, .json as SQuAD, any other name by its content. */
export function loadQaFile(path: string): QaSet {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`QA data: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const ext = extname(path).toLowerCase();
  const format = ext === '.jsonl' || ext === '.ndjson' ? 'jsonl' : ext === '.json' ? 'squad' : undefined;
  return parseQaText(text, { source: path, format });
}

/** Whether a path names a QA file by its extension (.json, .jsonl, .ndjson). */
export function isQaFileName(path: string): boolean {
  return ['.json', '.jsonl', '.ndjson'].includes(extname(path).toLowerCase());
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface SquadQuestion {
  id: string;
  question: string;
  answers: { text: string; answer_start: number }[];
  is_impossible: boolean;
}

export interface SquadParagraph {
  title: string;
  context: string;
  qas: SquadQuestion[];
}

/** A SQuAD v2.0 document (one article per paragraph), extra top-level fields first (e.g. licence). */
export function toSquadJson(paragraphs: readonly SquadParagraph[], extra: Record<string, unknown> = {}): string {
  const doc = { ...extra, version: 'v2.0', data: paragraphs.map((p) => ({ title: p.title, paragraphs: [{ context: p.context, qas: p.qas }] })) };
  return JSON.stringify(doc, null, 1) + '\n';
}
