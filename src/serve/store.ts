/**
 * The server's persistent context store: each stored soft context is its `.softctx` bytes
 * (serializeSoftContext) plus a small metadata record, in LMDB through lmdb-js.
 *
 * Why LMDB: it is an embedded database (a library in this process, no server to run or
 * configure), transactional (a context's bytes, its metadata, the LRU index and the size
 * total change in one ACID write transaction, so they never disagree), and crash-safe by
 * construction (a copy-on-write memory-mapped B+tree whose commit is a single meta-page
 * switch: a crash leaves the last committed state, never a torn record, and there is no
 * write-ahead log to replay). Reads are synchronous, zero-I/O lookups in the memory map, so a
 * `GET` never waits for the model. lmdb-js ships prebuilt binaries, so `npm ci` installs it
 * offline with no compiler.
 *
 * Durability: records are written with synchronous transactions (`transactionSync`) and
 * `overlappingSync: false`, so when a create or delete returns, the commit is flushed to disk.
 * Only the last-use timestamps (for LRU eviction) are written asynchronously in batches; losing
 * the last few of those in a crash only changes which context is evicted first.
 *
 * Size bound: the sum of the stored `.softctx` bytes is kept at or below `maxBytes` by
 * evicting least-recently-used contexts in the same transaction as the insert (contexts made
 * for another base model go first: they cannot be served anyway). The file itself can be
 * larger than the bound by LMDB's page overhead, and it never shrinks (freed pages are
 * reused, not returned to the file system).
 *
 * Owners: each record names its owner (the short hash of the API key that created it, or
 * `anonymous` on a server without keys; never the key). Records stored before owners existed
 * have none and count as `anonymous`. Per-owner totals (contexts, bytes) are kept in the same
 * transactions as the records and recounted from the metadata at open, so quotas count what is
 * in the store, across restarts.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import type { Budget } from '../compress/index.js';

export interface StoredContext {
  id: string;
  method: string;
  budget: Budget;
  /** Context tokens. */
  sourceTokens: number;
  /** Soft tokens (or memory slots). */
  softTokens: number;
  compressMs: number;
  /** Milliseconds since the epoch. */
  createdAt: number;
  lastUsed: number;
  /** Size of the stored .softctx value. */
  bytes: number;
  /** The base model the context was made for. */
  baseFingerprint: string;
  /** Length of the source text in characters. */
  textChars: number;
  /** Who created it: a short hash of an API key, or `anonymous` (absent on records from before owners: `anonymous`). */
  owner?: string;
}

/** The owner of every context on a server without keys (and of records from before owners). */
export const ANONYMOUS = 'anonymous';

/** The owner of a record (records from before owners belong to `anonymous`). */
export function ownerOfRecord(m: StoredContext): string {
  return m.owner ?? ANONYMOUS;
}

/** Limits on one owner's stored contexts, checked in the insert's transaction (0 or absent: none). */
export interface OwnerQuota {
  contexts?: number;
  bytes?: number;
}

export interface OwnerUsage {
  contexts: number;
  bytes: number;
}

export class StoreError extends Error {
  constructor(
    message: string,
    readonly code: 'too_large' | 'quota_contexts' | 'quota_bytes',
  ) {
    super(message);
  }
}

interface SysRecord {
  version: number;
  totalBytes: number;
}

const SCHEMA_VERSION = 1;

export class ContextStore {
  private readonly root: RootDatabase;
  private readonly meta: Database<StoredContext, string>;
  private readonly blobs: Database<Buffer, string>;
  /** [lastUsed, id] -> true, ascending = least recently used first. */
  private readonly lru: Database<boolean, [number, string]>;
  private readonly sys: Database<SysRecord, string>;
  /** owner -> its contexts and bytes (derived from meta: rebuilt at open). */
  private readonly owners: Database<OwnerUsage, string>;
  private closed = false;
  private readonly touches = new Set<Promise<void>>();

  private constructor(
    readonly path: string,
    readonly maxBytes: number,
    /** Fingerprint of the base model this process serves (stale contexts are evicted first). */
    readonly fingerprint: string,
  ) {
    mkdirSync(dirname(path), { recursive: true });
    this.root = open({ path, maxDbs: 8, compression: false, overlappingSync: false });
    this.meta = this.root.openDB<StoredContext, string>('meta', { encoding: 'msgpack' });
    this.blobs = this.root.openDB<Buffer, string>('blobs', { encoding: 'binary' });
    this.lru = this.root.openDB<boolean, [number, string]>('lru', { encoding: 'msgpack' });
    this.sys = this.root.openDB<SysRecord, string>('sys', { encoding: 'msgpack' });
    this.owners = this.root.openDB<OwnerUsage, string>('owners', { encoding: 'msgpack' });
    this.recount();
  }

  /** Opens (creating when missing) the store at path. */
  static open(path: string, opts: { maxBytes: number; fingerprint: string }): ContextStore {
    if (!(Number.isFinite(opts.maxBytes) && opts.maxBytes > 0)) throw new Error(`context store: maxBytes must be positive, got ${opts.maxBytes}`);
    try {
      return new ContextStore(path, opts.maxBytes, opts.fingerprint);
    } catch (e) {
      throw new Error(`cannot open the context store at ${path}: ${(e as Error).message}`);
    }
  }

  /** Recomputes the size total and rebuilds the LRU index from the metadata (self-healing at open). */
  private recount(): void {
    this.root.transactionSync(() => {
      const sys = this.sys.get('sys');
      if (sys && sys.version !== SCHEMA_VERSION) throw new Error(`store schema version ${sys.version}, this build reads ${SCHEMA_VERSION}`);
      let total = 0;
      const owners = new Map<string, OwnerUsage>();
      const indexed = new Set<string>();
      for (const key of this.lru.getKeys()) indexed.add(`${key[0]}\u0000${key[1]}`);
      // keys only: reading every value would map the whole store into memory at each start
      const blobs = new Set(this.blobs.getKeys());
      for (const { key, value } of this.meta.getRange()) {
        if (!blobs.has(key)) {
          // metadata without bytes cannot happen through this class; drop it if it does
          this.meta.removeSync(key);
          continue;
        }
        total += value.bytes;
        const u = owners.get(ownerOfRecord(value)) ?? { contexts: 0, bytes: 0 };
        u.contexts += 1;
        u.bytes += value.bytes;
        owners.set(ownerOfRecord(value), u);
        const k = `${value.lastUsed}\u0000${key}`;
        if (!indexed.has(k)) this.lru.putSync([value.lastUsed, key], true);
        indexed.delete(k);
      }
      for (const k of indexed) {
        const [t, id] = k.split('\u0000');
        this.lru.removeSync([Number(t), id]);
      }
      this.sys.putSync('sys', { version: SCHEMA_VERSION, totalBytes: total });
      for (const key of [...this.owners.getKeys()]) if (!owners.has(key)) this.owners.removeSync(key);
      for (const [owner, u] of owners) this.owners.putSync(owner, u);
    });
  }

  /** An owner's stored contexts and their bytes. */
  usage(owner: string): OwnerUsage {
    return this.owners.get(owner) ?? { contexts: 0, bytes: 0 };
  }

  /** Adds to an owner's totals inside the current transaction. */
  private addUsage(owner: string, contexts: number, bytes: number): void {
    const u = this.owners.get(owner) ?? { contexts: 0, bytes: 0 };
    const next = { contexts: u.contexts + contexts, bytes: u.bytes + bytes };
    if (next.contexts <= 0) this.owners.removeSync(owner);
    else this.owners.putSync(owner, next);
  }

  get totalBytes(): number {
    return this.sys.get('sys')?.totalBytes ?? 0;
  }

  get count(): number {
    return this.meta.getCount();
  }

  has(id: string): boolean {
    return this.meta.get(id) !== undefined;
  }

  getMeta(id: string): StoredContext | undefined {
    return this.meta.get(id);
  }

  /** The stored .softctx bytes (a copy owned by the caller). */
  getBytes(id: string): Uint8Array | undefined {
    const b = this.blobs.get(id);
    return b ? new Uint8Array(b) : undefined;
  }

  /** Most recently used first; with a filter, the first `limit` records that pass it. */
  list(opts: { limit?: number; filter?: (m: StoredContext) => boolean } = {}): StoredContext[] {
    const out: StoredContext[] = [];
    const limit = opts.limit ?? Infinity;
    if (limit <= 0) return out;
    for (const key of this.lru.getKeys({ reverse: true, limit: opts.filter ? undefined : opts.limit })) {
      const m = this.meta.get(key[1]);
      if (!m || (opts.filter && !opts.filter(m))) continue;
      out.push(m);
      if (out.length >= limit) break;
    }
    return out;
  }

  /**
   * Stores a context durably (synchronous commit), evicting least-recently-used contexts in
   * the same transaction until the bound holds. Returns the evicted records. With a quota, the
   * record's owner must stay within it (checked in the same transaction, so concurrent inserts
   * cannot both pass), else a StoreError with code quota_contexts or quota_bytes.
   */
  put(meta: StoredContext, bytes: Uint8Array, opts: { quota?: OwnerQuota } = {}): { evicted: StoredContext[] } {
    this.assertOpen();
    if (bytes.length > this.maxBytes) {
      throw new StoreError(
        `this soft context takes ${bytes.length} bytes, more than the whole context store (${this.maxBytes} bytes); use a higher ratio or start the server with a larger --store-mb`,
        'too_large',
      );
    }
    const record: StoredContext = { ...meta, bytes: bytes.length };
    return this.root.transactionSync(() => {
      const evicted: StoredContext[] = [];
      let total = this.sys.get('sys')?.totalBytes ?? 0;
      const old = this.meta.get(record.id);
      if (old) total -= this.removeInTxn(old);
      const quota = opts.quota;
      if (quota) {
        const u = this.usage(ownerOfRecord(record));
        if (quota.contexts && u.contexts + 1 > quota.contexts) {
          throw new StoreError(
            `you already store ${u.contexts} contexts, your quota is ${quota.contexts}; delete some (DELETE /v1/contexts/ID) before creating more`,
            'quota_contexts',
          );
        }
        if (quota.bytes && u.bytes + bytes.length > quota.bytes) {
          throw new StoreError(
            `this soft context takes ${bytes.length} bytes and you already store ${u.bytes} bytes of your quota of ${quota.bytes}; delete some contexts or use a higher ratio`,
            'quota_bytes',
          );
        }
      }
      if (total + bytes.length > this.maxBytes) {
        // contexts of another base model first (they cannot be served), then least recently used
        const victims: StoredContext[] = [];
        for (const { value } of this.meta.getRange()) if (value.baseFingerprint !== this.fingerprint) victims.push(value);
        victims.sort((a, b) => a.lastUsed - b.lastUsed);
        for (const v of victims) {
          if (total + bytes.length <= this.maxBytes) break;
          total -= this.removeInTxn(v);
          evicted.push(v);
        }
        for (const key of this.lru.getKeys()) {
          if (total + bytes.length <= this.maxBytes) break;
          const v = this.meta.get(key[1]);
          if (!v) {
            this.lru.removeSync(key);
            continue;
          }
          total -= this.removeInTxn(v);
          evicted.push(v);
        }
      }
      this.blobs.putSync(record.id, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
      this.meta.putSync(record.id, record);
      this.lru.putSync([record.lastUsed, record.id], true);
      this.addUsage(ownerOfRecord(record), 1, bytes.length);
      this.sys.putSync('sys', { version: SCHEMA_VERSION, totalBytes: total + bytes.length });
      return { evicted };
    });
  }

  /** Removes a record inside the current transaction; returns its bytes. */
  private removeInTxn(m: StoredContext): number {
    this.blobs.removeSync(m.id);
    this.meta.removeSync(m.id);
    this.lru.removeSync([m.lastUsed, m.id]);
    this.addUsage(ownerOfRecord(m), -1, -m.bytes);
    return m.bytes;
  }

  /** Deletes a context durably; false when it did not exist (or, with an owner, is another owner's). */
  delete(id: string, opts: { owner?: string } = {}): boolean {
    this.assertOpen();
    return this.root.transactionSync(() => {
      const m = this.meta.get(id);
      if (!m) return false;
      if (opts.owner !== undefined && ownerOfRecord(m) !== opts.owner) return false;
      const total = (this.sys.get('sys')?.totalBytes ?? 0) - this.removeInTxn(m);
      this.sys.putSync('sys', { version: SCHEMA_VERSION, totalBytes: Math.max(0, total) });
      return true;
    });
  }

  /**
   * Records a use (for LRU eviction). Asynchronous and batched by lmdb-js: it does not block
   * the event loop on a disk flush. A no-op when the context was deleted meanwhile.
   */
  touch(id: string, now = Date.now()): Promise<void> {
    if (this.closed) return Promise.resolve();
    const p = this.root.transaction(() => {
      const m = this.meta.get(id);
      if (!m || m.lastUsed >= now) return;
      this.lru.removeSync([m.lastUsed, id]);
      this.lru.putSync([now, id], true);
      this.meta.putSync(id, { ...m, lastUsed: now });
    });
    this.touches.add(p);
    const settle = () => this.touches.delete(p);
    p.then(settle, settle);
    return p;
  }

  /** Waits until the recorded uses are committed. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.touches]);
  }

  /** Waits for pending writes and closes the environment. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.flush();
    await this.root.committed;
    await this.root.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('context store is closed');
  }
}
