/**
 * .softctx files are checked before any tensor is made: the content checksum, every tensor
 * against the metadata and the base it names (names, dtypes, shapes, mask values, finite
 * values), each failure a SoftContextError naming the file and the field.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { parseSafetensors, serializeSafetensors, ChecksumError, CHECKSUM_KEY, type RawTensor } from '../src/io/safetensors.js';
import { parseSoftContext, serializeSoftContext, freeSoftContext, SoftContextError, type SoftContext } from '../src/compress/index.js';
import { tensor, randn, tidy } from '../src/tensor/index.js';
import { tinyBase } from './helpers/tiny.js';

const { model: base } = tinyBase();

/** A two-item context of 3 soft tokens (the second item has 2) over the tiny base. */
function sampleBytes(): Uint8Array {
  return tidy(() => {
    const ctx: SoftContext = {
      meta: { method: 'meanpool', baseFingerprint: base.fingerprint(), sourceTokens: [12, 8], softTokens: [3, 2], budget: { ratio: 4 } } as SoftContext['meta'],
      softTokens: randn([2, 3, base.dim]),
      mask: tensor([1, 1, 1, 1, 1, 0], [2, 3], { dtype: 'bool' }),
    };
    return serializeSoftContext(ctx);
  });
}

/** The file's records with `edit` applied, written again with a fresh checksum (a well-formed file). */
function rewrite(bytes: Uint8Array, edit: (tensors: Map<string, RawTensor>, metadata: Record<string, string>) => void): Uint8Array {
  const { tensors, metadata } = parseSafetensors(bytes);
  const t = new Map([...tensors].map(([k, v]) => [k, { ...v, data: v.data.slice() }]));
  const m = { ...metadata };
  edit(t, m);
  return serializeSafetensors(t, m, { checksum: true });
}

function refused(bytes: Uint8Array, field: string, pattern: RegExp, code: 'invalid' | 'base_mismatch' = 'invalid'): void {
  assert.throws(
    () => parseSoftContext(bytes, base, 'ctx.softctx'),
    (e: unknown) =>
      e instanceof SoftContextError && e.field === field && e.code === code && e.message.startsWith(`ctx.softctx: ${field}: `) && pattern.test(e.message),
  );
}

test('a saved context carries a checksum and loads back as written', () => {
  const bytes = sampleBytes();
  assert.match(parseSafetensors(bytes).metadata[CHECKSUM_KEY], /^[0-9a-f]{64}$/);
  const ctx = parseSoftContext(bytes, base);
  assert.deepEqual(ctx.meta.softTokens, [3, 2]);
  assert.deepEqual(ctx.softTokens!.shape, [2, 3, base.dim]);
  freeSoftContext(ctx);
});

test('a changed byte or a relabelled dtype is a checksum error', () => {
  const bytes = sampleBytes();
  const flipped = bytes.slice();
  flipped[flipped.length - 7] ^= 0x10; // inside the data buffer
  assert.throws(
    () => parseSoftContext(flipped, base, 'ctx.softctx'),
    (e: unknown) => e instanceof ChecksumError && /ctx\.softctx.*checksum mismatch/.test((e as Error).message),
  );
  // F32 -> I32 has the same size, so only the checksum can tell.
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true))));
  assert.ok(text.includes('"F32"'));
  const header = text.replace('"F32"', '"I32"');
  const relabelled = new Uint8Array(bytes.length);
  relabelled.set(bytes);
  relabelled.set(new TextEncoder().encode(header), 8);
  assert.throws(() => parseSoftContext(relabelled, base, 'ctx.softctx'), ChecksumError);
});

test('tensors that disagree with the metadata or the base are refused, naming the field', () => {
  const bytes = sampleBytes();
  // A mask of the wrong shape (the probe's [602, 1]) and of the wrong dtype.
  refused(
    rewrite(bytes, (t) => t.set('mask', { dtype: 'BOOL', shape: [6, 1], data: new Uint8Array([1, 1, 1, 1, 1, 0]) })),
    'mask',
    /shape/,
  );
  refused(
    rewrite(bytes, (t) => t.set('mask', { dtype: 'F32', shape: [2, 3], data: new Uint8Array(24) })),
    'mask',
    /dtype|BOOL|F32/,
  );
  // Mask rows that count other numbers of real tokens than meta.softTokens.
  refused(
    rewrite(bytes, (t) => t.set('mask', { dtype: 'BOOL', shape: [2, 3], data: new Uint8Array([1, 1, 1, 1, 1, 1]) })),
    'mask',
    /2|soft/,
  );
  // Soft tokens of another width than the base.
  refused(
    rewrite(bytes, (t) => t.set('soft_tokens', { dtype: 'F32', shape: [2, 3, base.dim + 1], data: new Uint8Array(2 * 3 * (base.dim + 1) * 4) })),
    'soft_tokens',
    /width/,
  );
  // A NaN among the soft tokens.
  refused(
    rewrite(bytes, (t) => {
      const s = t.get('soft_tokens')!;
      new DataView(s.data.buffer, s.data.byteOffset).setFloat32(4 * 5, NaN, true);
    }),
    'soft_tokens',
    /finite|NaN/i,
  );
  // Another base's fingerprint.
  refused(
    rewrite(bytes, (_t, m) => {
      const meta = JSON.parse(m.meta) as Record<string, unknown>;
      m.meta = JSON.stringify({ ...meta, baseFingerprint: 'f'.repeat(16) });
    }),
    'meta.baseFingerprint',
    /made for base model/,
    'base_mismatch',
  );
  // Not a soft context at all.
  refused(
    rewrite(bytes, (_t, m) => delete m.softpress_softctx),
    'softpress_softctx',
    /not a softpress soft context/,
  );
});
