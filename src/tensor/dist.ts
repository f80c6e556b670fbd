/**
 * Process groups for data parallelism: libtorch's c10d with the Gloo backend, through the addon.
 * Rank 0 serves a TCPStore at the master address (the rendezvous); every rank then joins Gloo's
 * full mesh over TCP. Collectives change tensors in place and block until done.
 *
 * A failure (a peer that died and closed its connections, a timeout, a size mismatch) is a
 * DistError naming the operation and this process's rank; nothing aborts the process. A peer
 * that died is noticed at once (its sockets close); one that hangs or vanished from the network
 * is noticed after the group's timeout.
 */
import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import { native as c10d, type GroupHandle } from './native.js';
import { tidy } from './scope.js';
import type { Tensor } from './tensor.js';

export type ReduceOp = 'sum' | 'avg' | 'max' | 'min';
const REDUCE: Record<ReduceOp, number> = { sum: 0, avg: 1, max: 2, min: 3 };

/** A collective that failed: `op` ('init', 'allreduce', 'broadcast', 'barrier'), this process's rank, and c10d's reason. */
export class DistError extends Error {
  constructor(
    message: string,
    readonly op: string,
    readonly rank: number,
    readonly worldSize: number,
  ) {
    super(message);
    this.name = 'DistError';
  }
}

export interface ProcessGroupOptions {
  rank: number;
  worldSize: number;
  /** Rank 0's address, host:port (rank 0 listens on that port for the rendezvous). */
  master: string;
  /** How long a collective may wait for the others (default 30 min). */
  timeoutMs?: number;
  /** How long the rendezvous waits for every rank to join (default: timeoutMs). */
  joinTimeoutMs?: number;
  /**
   * This machine's address that the other ranks can reach (Gloo listens there). Default:
   * SOFTPRESS_DIST_ADDR, else 127.0.0.1 when the master is on loopback, else the address of the
   * interface in the master's subnet, else the first non-internal IPv4 address.
   */
  localAddress?: string;
  /** Gloo's worker threads (default 2). */
  threads?: number;
}

export const DEFAULT_DIST_TIMEOUT_MS = 30 * 60 * 1000;

/** "host:port" (or "[v6]:port") -> parts, with a clear error. */
export function parseMaster(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(spec.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(Number.isInteger(port) && port >= 1 && port <= 65535)) throw new Error(`--master must be ADDR:PORT (e.g. 10.0.0.1:29500), got '${spec}'`);
  return { host: m[1] ?? m[2], port };
}

function ipv4ToInt(a: string): number {
  return a.split('.').reduce((acc, x) => (acc << 8) + Number(x), 0) >>> 0;
}

/** The local address to bind for a master at `host` (see ProcessGroupOptions.localAddress). */
export function localAddressFor(host: string): string {
  const given = process.env.SOFTPRESS_DIST_ADDR;
  if (given) return given;
  if (host === 'localhost' || host === '::1' || host.startsWith('127.')) return host === '::1' ? '::1' : '127.0.0.1';
  const addrs = Object.values(networkInterfaces())
    .flat()
    .filter((a): a is NonNullable<typeof a> => a !== undefined && a.family === 'IPv4' && !a.internal);
  if (isIP(host) === 4) {
    const h = ipv4ToInt(host);
    const same = addrs.find((a) => {
      const mask = ipv4ToInt(a.netmask);
      return (ipv4ToInt(a.address) & mask) === (h & mask);
    });
    if (same) return same.address;
  }
  if (addrs.length === 0) throw new Error(`no network interface to reach ${host} (set SOFTPRESS_DIST_ADDR to this machine's address)`);
  return addrs[0].address;
}

export class ProcessGroup {
  private handle: GroupHandle | undefined;

  private constructor(
    handle: GroupHandle,
    readonly rank: number,
    readonly worldSize: number,
  ) {
    this.handle = handle;
  }

  /** Joins (rank 0: serves) the group; returns once every rank has joined, or throws DistError after the timeout. */
  static init(o: ProcessGroupOptions): ProcessGroup {
    if (!(Number.isInteger(o.worldSize) && o.worldSize >= 1)) throw new Error(`world size must be an integer >= 1, got ${o.worldSize}`);
    if (!(Number.isInteger(o.rank) && o.rank >= 0 && o.rank < o.worldSize)) throw new Error(`rank must be an integer in [0, ${o.worldSize}), got ${o.rank}`);
    const { host, port } = parseMaster(o.master);
    const timeout = o.timeoutMs ?? DEFAULT_DIST_TIMEOUT_MS;
    const joinTimeout = o.joinTimeoutMs ?? timeout;
    for (const t of [timeout, joinTimeout]) if (!(Number.isFinite(t) && t > 0)) throw new Error(`timeouts must be > 0 ms, got ${t}`);
    const local = o.localAddress ?? localAddressFor(host);
    const h = wrap('init', o.rank, o.worldSize, () =>
      c10d.distInit(o.rank, o.worldSize, host, port, local, Math.round(timeout), o.threads ?? 2, Math.round(joinTimeout)),
    );
    return new ProcessGroup(h, o.rank, o.worldSize);
  }

  private group(op: string): GroupHandle {
    if (!this.handle)
      throw new DistError(`c10d ${op} (rank ${this.rank} of ${this.worldSize}): the process group was destroyed`, op, this.rank, this.worldSize);
    return this.handle;
  }

  /** Reduces each tensor across ranks in place (all start at once; 'avg' = sum / world size). Contiguous tensors. */
  allreduce(tensors: Tensor | Tensor[], op: ReduceOp = 'sum'): void {
    const g = this.group('allreduce');
    const ts = Array.isArray(tensors) ? tensors : [tensors];
    wrap('allreduce', this.rank, this.worldSize, () =>
      tidy(() =>
        c10d.distAllreduce(
          g,
          ts.map((t) => t.detach().handle),
          REDUCE[op],
        ),
      ),
    );
  }

  /** Every rank's tensors take root's values (in place; contiguous tensors). */
  broadcast(tensors: Tensor | Tensor[], root = 0): void {
    const g = this.group('broadcast');
    const ts = Array.isArray(tensors) ? tensors : [tensors];
    wrap('broadcast', this.rank, this.worldSize, () =>
      tidy(() =>
        c10d.distBroadcast(
          g,
          ts.map((t) => t.detach().handle),
          root,
        ),
      ),
    );
  }

  /** Returns when every rank has reached it. */
  barrier(): void {
    const g = this.group('barrier');
    wrap('barrier', this.rank, this.worldSize, () => c10d.distBarrier(g));
  }

  /** Closes the connections (rank 0 also stops serving the store). Further calls throw. */
  destroy(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = undefined;
    wrap('destroy', this.rank, this.worldSize, () => c10d.distDestroy(h));
  }
}

function wrap<T>(op: string, rank: number, size: number, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof DistError) throw e;
    const msg = (e as Error).message;
    throw new DistError(msg.startsWith('c10d ') ? msg : `c10d ${op} (rank ${rank} of ${size}): ${msg}`, op, rank, size);
  }
}
