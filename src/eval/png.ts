/**
 * PNG line plots without a browser or any dependency: the same layout as src/io/plot.ts's SVG
 * (axes, grid, ticks, legend, dashed series, markers), rasterised in TypeScript at 2x and
 * box-filtered down (anti-aliasing), text in a built-in 5x7 bitmap font, encoded as an 8-bit RGB
 * PNG with node:zlib.
 */
import { deflateSync } from 'node:zlib';
import { PALETTE, plotFrame, type PlotOptions, type Series } from '../io/plot.js';

// ---------------------------------------------------------------------------------------------
// Font: 5 columns x 7 rows (9 with descenders), '#' = ink.

const GLYPHS: Record<string, string> = {
  ' ': '.....|.....|.....|.....|.....|.....|.....',
  '0': '.###.|#...#|#..##|#.#.#|##..#|#...#|.###.',
  '1': '..#..|.##..|..#..|..#..|..#..|..#..|.###.',
  '2': '.###.|#...#|....#|...#.|..#..|.#...|#####',
  '3': '#####|...#.|..#..|...#.|....#|#...#|.###.',
  '4': '...#.|..##.|.#.#.|#..#.|#####|...#.|...#.',
  '5': '#####|#....|####.|....#|....#|#...#|.###.',
  '6': '..##.|.#...|#....|####.|#...#|#...#|.###.',
  '7': '#####|....#|...#.|..#..|.#...|.#...|.#...',
  '8': '.###.|#...#|#...#|.###.|#...#|#...#|.###.',
  '9': '.###.|#...#|#...#|.####|....#|...#.|.##..',
  A: '.###.|#...#|#...#|#####|#...#|#...#|#...#',
  B: '####.|#...#|#...#|####.|#...#|#...#|####.',
  C: '.###.|#...#|#....|#....|#....|#...#|.###.',
  D: '###..|#..#.|#...#|#...#|#...#|#..#.|###..',
  E: '#####|#....|#....|####.|#....|#....|#####',
  F: '#####|#....|#....|####.|#....|#....|#....',
  G: '.###.|#...#|#....|#.###|#...#|#...#|.####',
  H: '#...#|#...#|#...#|#####|#...#|#...#|#...#',
  I: '.###.|..#..|..#..|..#..|..#..|..#..|.###.',
  J: '..###|...#.|...#.|...#.|...#.|#..#.|.##..',
  K: '#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#',
  L: '#....|#....|#....|#....|#....|#....|#####',
  M: '#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#',
  N: '#...#|#...#|##..#|#.#.#|#..##|#...#|#...#',
  O: '.###.|#...#|#...#|#...#|#...#|#...#|.###.',
  P: '####.|#...#|#...#|####.|#....|#....|#....',
  Q: '.###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#',
  R: '####.|#...#|#...#|####.|#.#..|#..#.|#...#',
  S: '.####|#....|#....|.###.|....#|....#|####.',
  T: '#####|..#..|..#..|..#..|..#..|..#..|..#..',
  U: '#...#|#...#|#...#|#...#|#...#|#...#|.###.',
  V: '#...#|#...#|#...#|#...#|#...#|.#.#.|..#..',
  W: '#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.',
  X: '#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#',
  Y: '#...#|#...#|.#.#.|..#..|..#..|..#..|..#..',
  Z: '#####|....#|...#.|..#..|.#...|#....|#####',
  a: '.....|.....|.###.|....#|.####|#...#|.####',
  b: '#....|#....|#.##.|##..#|#...#|#...#|####.',
  c: '.....|.....|.###.|#....|#....|#...#|.###.',
  d: '....#|....#|.##.#|#..##|#...#|#...#|.####',
  e: '.....|.....|.###.|#...#|#####|#....|.###.',
  f: '..##.|.#..#|.#...|###..|.#...|.#...|.#...',
  g: '.....|.....|.####|#...#|#...#|.####|....#|#...#|.###.',
  h: '#....|#....|#.##.|##..#|#...#|#...#|#...#',
  i: '..#..|.....|.##..|..#..|..#..|..#..|.###.',
  j: '...#.|.....|..##.|...#.|...#.|...#.|...#.|#..#.|.##..',
  k: '#....|#....|#..#.|#.#..|##...|#.#..|#..#.',
  l: '.##..|..#..|..#..|..#..|..#..|..#..|.###.',
  m: '.....|.....|##.#.|#.#.#|#.#.#|#.#.#|#.#.#',
  n: '.....|.....|#.##.|##..#|#...#|#...#|#...#',
  o: '.....|.....|.###.|#...#|#...#|#...#|.###.',
  p: '.....|.....|####.|#...#|#...#|#...#|####.|#....|#....',
  q: '.....|.....|.####|#...#|#...#|#...#|.####|....#|....#',
  r: '.....|.....|#.##.|##..#|#....|#....|#....',
  s: '.....|.....|.###.|#....|.###.|....#|####.',
  t: '.#...|.#...|###..|.#...|.#...|.#..#|..##.',
  u: '.....|.....|#...#|#...#|#...#|#..##|.##.#',
  v: '.....|.....|#...#|#...#|#...#|.#.#.|..#..',
  w: '.....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.',
  x: '.....|.....|#...#|.#.#.|..#..|.#.#.|#...#',
  y: '.....|.....|#...#|#...#|#...#|#...#|.####|....#|.###.',
  z: '.....|.....|#####|...#.|..#..|.#...|#####',
  '.': '.....|.....|.....|.....|.....|.##..|.##..',
  ',': '.....|.....|.....|.....|.##..|..#..|.#...',
  ':': '.....|.##..|.##..|.....|.##..|.##..|.....',
  ';': '.....|.##..|.##..|.....|.##..|..#..|.#...',
  '-': '.....|.....|.....|#####|.....|.....|.....',
  '+': '.....|..#..|..#..|#####|..#..|..#..|.....',
  '%': '##...|##..#|...#.|..#..|.#...|#..##|...##',
  '(': '...#.|..#..|.#...|.#...|.#...|..#..|...#.',
  ')': '.#...|..#..|...#.|...#.|...#.|..#..|.#...',
  '[': '.###.|.#...|.#...|.#...|.#...|.#...|.###.',
  ']': '.###.|...#.|...#.|...#.|...#.|...#.|.###.',
  '/': '.....|....#|...#.|..#..|.#...|#....|.....',
  '=': '.....|.....|#####|.....|#####|.....|.....',
  '@': '.###.|#...#|....#|.##.#|#.#.#|#.#.#|.###.',
  _: '.....|.....|.....|.....|.....|.....|#####',
  "'": '..#..|..#..|.#...|.....|.....|.....|.....',
  '"': '.#.#.|.#.#.|.....|.....|.....|.....|.....',
  '!': '..#..|..#..|..#..|..#..|..#..|.....|..#..',
  '?': '.###.|#...#|....#|...#.|..#..|.....|..#..',
  '<': '...#.|..#..|.#...|#....|.#...|..#..|...#.',
  '>': '.#...|..#..|...#.|....#|...#.|..#..|.#...',
  '#': '.#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.',
  '*': '.....|..#..|#.#.#|.###.|#.#.#|..#..|.....',
  '&': '.##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#',
  '|': '..#..|..#..|..#..|..#..|..#..|..#..|..#..',
  '^': '..#..|.#.#.|#...#|.....|.....|.....|.....',
  '~': '.....|.....|.#...|#.#.#|...#.|.....|.....',
  '×': '.....|#...#|.#.#.|..#..|.#.#.|#...#|.....',
  '·': '.....|.....|.....|..#..|.....|.....|.....',
  '\u2013': '.....|.....|.....|#####|.....|.....|.....',
  '\u2212': '.....|.....|.....|#####|.....|.....|.....',
};
const UNKNOWN = '#####|#...#|#...#|#...#|#...#|#...#|#####';

const glyphCache = new Map<string, boolean[][]>();
function glyph(ch: string): boolean[][] {
  let g = glyphCache.get(ch);
  if (!g) {
    g = (GLYPHS[ch] ?? UNKNOWN).split('|').map((row) => [...row].map((c) => c === '#'));
    glyphCache.set(ch, g);
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// Canvas (supersampled)

const SS = 2;

class Canvas {
  readonly w: number;
  readonly h: number;
  readonly px: Uint8Array;
  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.w = width * SS;
    this.h = height * SS;
    this.px = new Uint8Array(this.w * this.h * 3).fill(255);
  }

  /** Sets a supersampled pixel. */
  dot(x: number, y: number, c: [number, number, number]): void {
    const xi = Math.round(x);
    const yi = Math.round(y);
    if (xi < 0 || yi < 0 || xi >= this.w || yi >= this.h) return;
    const o = (yi * this.w + xi) * 3;
    this.px[o] = c[0];
    this.px[o + 1] = c[1];
    this.px[o + 2] = c[2];
  }

  /** Filled rectangle in final-pixel coordinates. */
  fillRect(x: number, y: number, w: number, h: number, c: [number, number, number]): void {
    const x0 = Math.max(0, Math.round(x * SS));
    const y0 = Math.max(0, Math.round(y * SS));
    const x1 = Math.min(this.w, Math.round((x + w) * SS));
    const y1 = Math.min(this.h, Math.round((y + h) * SS));
    for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) this.dot(xx, yy, c);
  }

  disc(cx: number, cy: number, r: number, c: [number, number, number]): void {
    const X = cx * SS;
    const Y = cy * SS;
    const R = r * SS;
    for (let yy = Math.floor(Y - R); yy <= Math.ceil(Y + R); yy++) {
      for (let xx = Math.floor(X - R); xx <= Math.ceil(X + R); xx++) {
        if ((xx - X) ** 2 + (yy - Y) ** 2 <= R * R) this.dot(xx, yy, c);
      }
    }
  }

  /** A line of the given width (final pixels); dash = [on, off] lengths; returns the dash phase. */
  line(x0: number, y0: number, x1: number, y1: number, width: number, c: [number, number, number], dash?: [number, number], phase = 0): number {
    const len = Math.hypot(x1 - x0, y1 - y0);
    const steps = Math.max(1, Math.ceil(len * SS * 2));
    const r = Math.max(0.5, width / 2);
    for (let i = 0; i <= steps; i++) {
      const t = i / steps;
      const d = phase + t * len;
      if (dash && d % (dash[0] + dash[1]) >= dash[0]) continue;
      const x = x0 + (x1 - x0) * t;
      const y = y0 + (y1 - y0) * t;
      if (width <= 1.01) this.fillRect(x - 0.5, y - 0.5, 1, 1, c);
      else this.disc(x, y, r, c);
    }
    return phase + len;
  }

  /** Text at (x, y) = left end of its baseline; scale = final pixels per font pixel; vertical = rotated -90 degrees. */
  text(
    s: string,
    x: number,
    y: number,
    opts: { scale?: number; anchor?: 'start' | 'middle' | 'end'; color?: [number, number, number]; vertical?: boolean } = {},
  ): void {
    const f = opts.scale ?? 1.5;
    const advance = 6 * f;
    const width = s.length * advance - f;
    const shift = opts.anchor === 'middle' ? -width / 2 : opts.anchor === 'end' ? -width : 0;
    const c = opts.color ?? [0, 0, 0];
    const fs = f * SS;
    [...s].forEach((ch, k) => {
      const g = glyph(ch);
      g.forEach((row, ry) =>
        row.forEach((on, rx) => {
          if (!on) return;
          // Font pixel (rx, ry) with the baseline under row 6.
          const u = shift + k * advance + rx * f;
          const v = (ry - 7) * f;
          for (let a = 0; a < fs; a++) {
            for (let b = 0; b < fs; b++) {
              if (opts.vertical) this.dot((x + v) * SS + b, (y - u) * SS - a, c);
              else this.dot((x + u) * SS + a, (y + v) * SS + b, c);
            }
          }
        }),
      );
    });
  }

  /** Box-filtered down to final size, as 8-bit RGB rows. */
  downsample(): Uint8Array {
    const out = new Uint8Array(this.width * this.height * 3);
    for (let y = 0; y < this.height; y++) {
      for (let x = 0; x < this.width; x++) {
        for (let ch = 0; ch < 3; ch++) {
          let sum = 0;
          for (let a = 0; a < SS; a++) for (let b = 0; b < SS; b++) sum += this.px[((y * SS + a) * this.w + x * SS + b) * 3 + ch]!;
          out[(y * this.width + x) * 3 + ch] = Math.round(sum / (SS * SS));
        }
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// PNG encoding

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'ascii');
  const body = Buffer.concat([head.subarray(4), Buffer.from(data)]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body), 0);
  return Buffer.concat([head.subarray(0, 4), body, crc]);
}

/** An 8-bit RGB PNG of width x height pixels (rgb: row-major, 3 bytes per pixel). */
export function encodePng(width: number, height: number, rgb: Uint8Array): Buffer {
  if (rgb.length !== width * height * 3) throw new Error(`encodePng: ${rgb.length} bytes for ${width}x${height} RGB`);
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0; // filter: none
    raw.set(rgb.subarray(y * width * 3, (y + 1) * width * 3), y * (width * 3 + 1) + 1);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', new Uint8Array(0)),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Plot

function rgbOf(hex: string): [number, number, number] {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
  if (!m) return [0, 0, 0];
  return [parseInt(m[1]!, 16), parseInt(m[2]!, 16), parseInt(m[3]!, 16)];
}

/** The PNG counterpart of linePlotSvg (src/io/plot.ts), same layout and options. */
export function linePlotPng(series: Series[], opts: PlotOptions): Buffer {
  const { W, H, m, ok, px, py, xTicks, yTicks } = plotFrame(series, opts);
  const cv = new Canvas(W, H);
  const grid: [number, number, number] = [0xee, 0xee, 0xee];
  const ink: [number, number, number] = [0x33, 0x33, 0x33];
  cv.text(opts.title, W / 2 - m.r / 2, 24, { anchor: 'middle', scale: 2 });
  for (const t of xTicks) {
    cv.line(px(t), m.t, px(t), H - m.b, 1, grid);
    cv.text(String(t), px(t), H - m.b + 18, { anchor: 'middle' });
  }
  for (const t of yTicks) {
    const y = py(t);
    cv.line(m.l, y, W - m.r, y, 1, grid);
    cv.text(String(Number(t.toPrecision(3))), m.l - 6, y + 5, { anchor: 'end' });
  }
  cv.line(m.l, m.t, W - m.r, m.t, 1, ink);
  cv.line(m.l, H - m.b, W - m.r, H - m.b, 1, ink);
  cv.line(m.l, m.t, m.l, H - m.b, 1, ink);
  cv.line(W - m.r, m.t, W - m.r, H - m.b, 1, ink);
  cv.text(opts.xLabel, (m.l + W - m.r) / 2, H - 12, { anchor: 'middle' });
  cv.text(opts.yLabel, 20, (m.t + H - m.b) / 2, { anchor: 'middle', vertical: true });
  series.forEach((s, i) => {
    const color = rgbOf(s.color ?? PALETTE[i % PALETTE.length]!);
    const dash: [number, number] | undefined = s.dashed ? [6, 4] : undefined;
    const pts = s.points.filter(ok);
    let phase = 0;
    for (let j = 1; j < pts.length; j++) phase = cv.line(px(pts[j - 1]![0]), py(pts[j - 1]![1]), px(pts[j]![0]), py(pts[j]![1]), 1.8, color, dash, phase);
    if (pts.length < 40) for (const [x, y] of pts) cv.disc(px(x), py(y), 3, color);
    const ly = m.t + 10 + i * 18;
    cv.line(W - m.r + 12, ly, W - m.r + 36, ly, 2, color, dash);
    const maxChars = Math.floor((m.r - 44) / 9);
    cv.text(s.name.length > maxChars ? `${s.name.slice(0, maxChars - 1)}~` : s.name, W - m.r + 42, ly + 5);
  });
  return encodePng(W, H, cv.downsample());
}
