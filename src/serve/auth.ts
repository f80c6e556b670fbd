/**
 * Who may use the server: API keys, the owner a key's contexts belong to, and whether a listen
 * address is safe without keys.
 *
 * - Keys come from `--api-key KEY` (repeatable), `--api-keys FILE` (one key per line, an optional
 *   name after it) and `SOFTPRESS_API_KEYS` (keys separated by commas or white space). Clients
 *   send one as `Authorization: Bearer KEY` (what the OpenAI clients do with `apiKey`).
 * - Only SHA-256 hashes of the keys are kept: a presented key is hashed and compared with every
 *   configured hash in constant time (crypto.timingSafeEqual, no early exit), so neither the
 *   comparison nor the number of keys checked depends on how much of a key was right.
 * - A key's owner id is a short hash of the key (the first 16 hex digits of its SHA-256). It is
 *   what the context store records, so contexts belong to the key (not to its name: renaming a
 *   key in the file keeps its contexts; a new key starts empty). Without keys every request is
 *   the owner `anonymous`.
 * - Keys never appear in logs, error messages or the store: errors about a key file name the
 *   file and line, never the key.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';

export { ANONYMOUS } from './store.js';

/** Shortest accepted key, in characters (a random 16-character key has about 95 bits). */
export const MIN_KEY_LENGTH = 16;
export const MAX_KEY_LENGTH = 512;

/** A key as given, before it is hashed (where it came from, for messages that must not show it). */
export interface KeySource {
  key: string;
  /** A label for logs (the file's name for it, or where it came from). */
  name: string;
  /** Where it was given, e.g. "--api-key #2", "keys.txt line 4". */
  origin: string;
}

/** A configured key: its hash, owner id and name (never the key itself). */
export interface ApiKey {
  name: string;
  owner: string;
  hash: Buffer;
}

export type Identity = { ok: true; owner: string; name: string } | { ok: false; code: 'missing_api_key' | 'invalid_api_key'; message: string };

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** The owner id of a key: 16 hex digits of its SHA-256. */
export function ownerOf(key: string): string {
  return sha256(key).toString('hex').slice(0, 16);
}

/** Why a key is unusable (the reason names no character of it), or null. */
function keyProblem(key: string): string | null {
  if (key.length < MIN_KEY_LENGTH)
    return `a key must have at least ${MIN_KEY_LENGTH} characters (this one has ${key.length}); make one with: openssl rand -hex 24`;
  if (key.length > MAX_KEY_LENGTH) return `a key must have at most ${MAX_KEY_LENGTH} characters (this one has ${key.length})`;
  if (!/^[\x21-\x7e]+$/.test(key)) return 'a key must be printable ASCII without spaces (it travels in an HTTP header)';
  return null;
}

/**
 * Keys of a keys file: one per line, optionally followed by white space and a name; blank lines
 * and lines starting with # are skipped. Errors name the file and line, never the key.
 */
export function parseKeysFile(path: string): KeySource[] {
  if (!existsSync(path)) throw new Error(`--api-keys: no file at ${path}`);
  if (statSync(path).isDirectory()) throw new Error(`--api-keys: ${path} is a folder; give a file with one key per line`);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`--api-keys: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const out: KeySource[] = [];
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const m = /^(\S+)(?:\s+(.*))?$/.exec(line)!;
    const origin = `${path} line ${i + 1}`;
    const problem = keyProblem(m[1]);
    if (problem) throw new Error(`--api-keys: ${origin}: ${problem} (a line is: KEY [NAME])`);
    const name = (m[2] ?? '').trim() || `${path.split(/[\\/]/).pop()}:${i + 1}`;
    // eslint-disable-next-line no-control-regex -- control characters are what this refuses
    if (/[\u0000-\u001f\u007f]/.test(name) || name.length > 64) throw new Error(`--api-keys: ${origin}: the name must be at most 64 printable characters`);
    out.push({ key: m[1], name, origin });
  });
  if (out.length === 0) throw new Error(`--api-keys: ${path} has no keys (one key per line, optionally followed by a name; # starts a comment)`);
  return out;
}

/** Keys of SOFTPRESS_API_KEYS: separated by commas or white space. */
export function parseKeysEnv(value: string, variable = 'SOFTPRESS_API_KEYS'): KeySource[] {
  const keys = value.split(/[\s,]+/).filter(Boolean);
  return keys.map((key, i) => {
    const origin = `${variable} #${i + 1}`;
    const problem = keyProblem(key);
    if (problem) throw new Error(`${origin}: ${problem}`);
    return { key, name: origin, origin };
  });
}

/** Keys of --api-key flags. */
export function parseKeyFlags(values: readonly string[]): KeySource[] {
  return values.map((key, i) => {
    const origin = `--api-key #${i + 1}`;
    const problem = keyProblem(key);
    if (problem) throw new Error(`${origin}: ${problem}`);
    return { key, name: origin, origin };
  });
}

/** The configured keys, as hashes. */
export class KeyRing {
  private readonly keys: ApiKey[];

  constructor(sources: readonly KeySource[]) {
    if (sources.length === 0) throw new Error('a key ring needs at least one key');
    const seen = new Map<string, string>();
    this.keys = sources.map((s) => {
      const problem = keyProblem(s.key);
      if (problem) throw new Error(`${s.origin}: ${problem}`);
      const hash = sha256(s.key);
      const hex = hash.toString('hex');
      const before = seen.get(hex);
      if (before) throw new Error(`${s.origin} is the same key as ${before}; give each key once`);
      seen.set(hex, s.origin);
      return { name: s.name, owner: hex.slice(0, 16), hash };
    });
    if (new Set(this.keys.map((k) => k.owner)).size !== this.keys.length)
      throw new Error('two keys have the same owner id (a 64-bit hash collision); replace one of them');
  }

  get size(): number {
    return this.keys.length;
  }

  get names(): string[] {
    return this.keys.map((k) => k.name);
  }

  /**
   * Who sends this Authorization header. The presented key is hashed and compared with every
   * configured hash in constant time; the answer never repeats the key.
   */
  identify(authorization: string | undefined): Identity {
    if (authorization === undefined || authorization.trim() === '') {
      return {
        ok: false,
        code: 'missing_api_key',
        message: "This server needs an API key: send it as the header 'Authorization: Bearer KEY' (the OpenAI clients do with apiKey).",
      };
    }
    const m = /^\s*Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!m) return { ok: false, code: 'invalid_api_key', message: "The Authorization header must be 'Bearer KEY' (one key, no other scheme)." };
    const presented = sha256(m[1]);
    let found: ApiKey | undefined;
    for (const k of this.keys) {
      // every key is compared, so the time does not tell which (or whether one) matched early
      if (timingSafeEqual(presented, k.hash) && !found) found = k;
    }
    if (!found)
      return {
        ok: false,
        code: 'invalid_api_key',
        message: 'Incorrect API key provided. Check the key this server was given (--api-key, --api-keys or SOFTPRESS_API_KEYS).',
      };
    return { ok: true, owner: found.owner, name: found.name };
  }
}

/** All keys from the flags, the keys file and the environment; undefined when there are none. */
export function collectKeys(o: { flags?: readonly string[]; file?: string; env?: string }): KeyRing | undefined {
  const sources = [
    ...parseKeyFlags(o.flags ?? []),
    ...(o.file !== undefined ? parseKeysFile(o.file) : []),
    ...(o.env !== undefined ? parseKeysEnv(o.env) : []),
  ];
  if (o.env !== undefined && o.env.trim() !== '' && sources.length === 0) throw new Error('SOFTPRESS_API_KEYS has no keys');
  return sources.length ? new KeyRing(sources) : undefined;
}

/** Whether a listen host only accepts connections from this machine. */
export function isLoopback(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) {
    // the URL parser writes an IPv6 address in its one canonical form (::1, ::ffff:7f00:1)
    const canonical = new URL(`http://[${h}]/`).hostname;
    return canonical === '[::1]' || /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/.test(canonical);
  }
  return false;
}

/**
 * Refuses to listen beyond loopback without keys unless the user says so: anyone who reaches
 * the port could fill the store, spend the CPU and read any context whose id they learn.
 */
export function checkExposure(host: string, keys: KeyRing | undefined, insecureNoAuth: boolean): void {
  if (keys || insecureNoAuth || isLoopback(host)) return;
  throw new Error(
    `refusing to listen on ${host} without an API key: anyone who reaches this port could create contexts, spend the CPU and read contexts whose ids they learn.\n` +
      '  Give keys with --api-key KEY (repeatable), --api-keys FILE (one key per line) or SOFTPRESS_API_KEYS (make one with: openssl rand -hex 24),\n' +
      '  or keep the default host 127.0.0.1 (this machine only, or behind a reverse proxy that authenticates),\n' +
      '  or pass --insecure-no-auth if this network is trusted.',
  );
}
