/** A progress bar on stderr: a redrawn line on a terminal, a line every few seconds otherwise. */

function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

function fmtValue(v: number): string {
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(3);
  return v.toPrecision(3);
}

export class Progress {
  private readonly tty: boolean;
  private readonly startTime = performance.now();
  private readonly startCount: number;
  private lastPrint = 0;
  private lastLine = '';

  constructor(
    private readonly total: number,
    private readonly opts: { quiet?: boolean; start?: number; label?: string; width?: number } = {},
  ) {
    this.tty = !!process.stderr.isTTY;
    this.startCount = opts.start ?? 0;
  }

  update(count: number, fields: Record<string, number> = {}): void {
    if (this.opts.quiet) return;
    const now = performance.now();
    const done = count - this.startCount;
    const rate = done / ((now - this.startTime) / 1000);
    const eta = (this.total - count) / rate;
    const frac = this.total ? count / this.total : 1;
    const width = this.opts.width ?? 24;
    const filled = Math.round(frac * width);
    const bar = '='.repeat(Math.max(0, filled - 1)) + (filled ? '>' : '') + ' '.repeat(width - filled);
    const extra = Object.entries(fields)
      .map(([k, v]) => `${k} ${fmtValue(v)}`)
      .join('  ');
    const label = this.opts.label ? `${this.opts.label} ` : '';
    const line = `${label}${count}/${this.total} [${bar}] ${(frac * 100).toFixed(1)}%  ${extra}  ETA ${fmtDuration(eta)}`;
    this.lastLine = line;
    if (this.tty) {
      process.stderr.write(`\r\x1b[K${line}`);
    } else if (now - this.lastPrint > 10_000 || count === this.total) {
      process.stderr.write(line + '\n');
      this.lastPrint = now;
    }
  }

  /** Prints a message above the bar. */
  note(msg: string): void {
    if (this.opts.quiet) return;
    if (this.tty) process.stderr.write(`\r\x1b[K${msg}\n${this.lastLine}`);
    else process.stderr.write(msg + '\n');
  }

  done(): void {
    if (this.opts.quiet) return;
    if (this.tty && this.lastLine) process.stderr.write('\n');
  }
}
