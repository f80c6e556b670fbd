import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  DTYPE_SIZE,
  SafetensorsError,
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromFloat32,
  parseSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  serializeSafetensors,
  toFloat32,
  writeSafetensors,
  type RawTensor,
  type SafeDType,
} from '../src/io/safetensors.js';
import { Llama2cError, Llama2cTokenizer, llama2cCheckpointBytes, llama2cToHfConfig, readLlama2cCheckpoint, type Llama2cConfig } from '../src/io/llama2c.js';

const FIXTURES = path.resolve(process.cwd(), '../shared/fixtures/stories260K');
const HAVE_FIXTURES = fs.existsSync(path.join(FIXTURES, 'stories260K.bin'));
const NO_FIXTURES = `fixtures not found at ${FIXTURES} (run the tests from the repo root)`;

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-io-'));
}

/** Deterministic pseudo-random bytes. */
function bytesOf(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** A safetensors image from a literal header (object or raw text) and a data buffer. */
function craft(header: unknown, data: Uint8Array | number = 0, lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const buf = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + buf.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(buf, 8 + json.length);
  return out;
}

function rejects(bytes: Uint8Array, pattern: RegExp, source = '<buffer>'): void {
  assert.throws(
    () => parseSafetensors(bytes, source),
    (e: unknown) => {
      assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${String(e)}`);
      assert.match(e.message, pattern);
      assert.ok(e.message.startsWith(`${source}: `), `message should name the source: ${e.message}`);
      return true;
    },
  );
}

// ---------------------------------------------------------------------------------------------
// safetensors

test('safetensors: round trip of every dtype through a file', () => {
  const dir = tmpDir();
  try {
    const dtypes = Object.keys(DTYPE_SIZE) as SafeDType[];
    const tensors = new Map<string, RawTensor>();
    dtypes.forEach((dtype, i) => {
      const shape = [2, 3, (i % 3) + 1];
      const n = shape.reduce((a, b) => a * b, 1);
      tensors.set(`t.${dtype.toLowerCase()}`, { dtype, shape, data: bytesOf(n * DTYPE_SIZE[dtype], i) });
    });
    tensors.set('scalar', { dtype: 'F32', shape: [], data: bytesOf(4, 99) });
    tensors.set('empty', { dtype: 'I64', shape: [0, 5], data: new Uint8Array(0) });
    tensors.set('10', { dtype: 'U8', shape: [1], data: Uint8Array.of(7) }); // integer-like name
    const metadata = { format: 'pt', note: 'héllo "quoted"' };

    const file = path.join(dir, 'm.safetensors');
    writeSafetensors(file, tensors, metadata);
    assert.deepEqual(fs.readdirSync(dir), ['m.safetensors'], 'no temporary file is left behind');

    const back = readSafetensors(file);
    assert.deepEqual(back.metadata, metadata);
    assert.equal(back.tensors.size, tensors.size);
    for (const [name, t] of tensors) {
      const r = back.tensors.get(name);
      assert.ok(r, `missing ${name}`);
      assert.equal(r.dtype, t.dtype);
      assert.deepEqual(r.shape, t.shape);
      assert.deepEqual(Buffer.from(r.data), Buffer.from(t.data), name);
    }

    // The in-memory serializer produces the same bytes; the header is padded to 8 bytes.
    const bytes = serializeSafetensors(tensors, metadata);
    assert.deepEqual(Buffer.from(bytes), fs.readFileSync(file));
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const parsed = parseSafetensors(bytes);
    assert.deepEqual([...parsed.tensors.keys()].sort(), [...tensors.keys()].sort());

    // Data is laid out in sorted-name order.
    const header = readSafetensorsHeader(file);
    const byOffset = [...header.tensors.entries()]
      .sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0] || a[1].dataOffsets[1] - b[1].dataOffsets[1])
      .map(([k]) => k);
    const nonEmpty = byOffset.filter((k) => header.tensors.get(k)!.dataOffsets[1] > header.tensors.get(k)!.dataOffsets[0]);
    assert.deepEqual(nonEmpty, [...nonEmpty].sort());
    assert.equal(header.dataStart, 8 + n);

    // Records work as input too, and overwriting an existing file is atomic.
    writeSafetensors(file, { only: { dtype: 'BF16', shape: [2], data: Uint8Array.of(0x80, 0x3f, 0, 0xc0) } });
    const again = readSafetensors(file);
    assert.deepEqual([...again.tensors.keys()], ['only']);
    assert.deepEqual(again.metadata, {});
    assert.deepEqual([...toFloat32(again.tensors.get('only')!)], [1, -2]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: float encode/decode helpers', () => {
  const values = Float32Array.of(0, -1.5, 3.140625, 65504, -0.25);
  for (const dtype of ['F32', 'F16', 'BF16'] as const) {
    const raw = fromFloat32(values, [5], dtype);
    assert.equal(raw.data.length, 5 * DTYPE_SIZE[dtype]);
    const back = toFloat32(parseSafetensors(serializeSafetensors({ x: raw })).tensors.get('x')!);
    if (dtype === 'BF16') assert.deepEqual([...back], [0, -1.5, 3.140625, 65536, -0.25]);
    else assert.deepEqual([...back], [...values]);
  }
  const f64 = new Uint8Array(Float64Array.of(0.5, -2).buffer);
  assert.deepEqual([...toFloat32({ dtype: 'F64', shape: [2], data: f64 })], [0.5, -2]);
  assert.throws(() => toFloat32({ dtype: 'I64', shape: [1], data: new Uint8Array(8) }), /not a floating-point/);
  assert.throws(() => fromFloat32(values, [2, 2]), /does not match 5 values/);
});

test('safetensors: rejects corrupt files with clear errors', () => {
  const f32 = (begin: number, end: number, shape: number[] = [(end - begin) / 4]) => ({
    dtype: 'F32',
    shape,
    data_offsets: [begin, end],
  });

  // Truncated: length field, header, data.
  rejects(new Uint8Array(5), /5 bytes, too short/);
  const good = serializeSafetensors({ a: { dtype: 'F32', shape: [4], data: new Uint8Array(16) } });
  rejects(good.subarray(0, 20), /header length \d+ exceeds the 12 bytes after the length field \(truncated file\?\)/);
  rejects(good.subarray(0, good.length - 4), /tensor "a": data_offsets \[0, 16\] run past the end of the data buffer \(12 bytes/);

  // Header length beyond the 100 MB bound.
  rejects(craft({}, 0, 200_000_000n), /header length 200000000 exceeds the 100000000-byte limit/);
  rejects(craft({}, 0, 2n ** 63n), /exceeds the 100000000-byte limit/);

  // Offsets out of range, overlaps, gaps, trailing bytes.
  rejects(craft({ a: f32(0, 8), b: f32(8, 24) }, 16), /tensor "b": data_offsets \[8, 24\] run past the end/);
  rejects(craft({ a: f32(0, 8), b: f32(4, 12) }, 12), /tensor "b": data_offsets \[4, 12\] overlap tensor "a" \(which ends at 8\)/);
  rejects(craft({ a: f32(0, 4), b: f32(8, 12) }, 12), /bytes \[4, 8\) .* not covered by any tensor \(gap before tensor "b"\)/);
  rejects(craft({ a: f32(0, 4) }, 8), /4 trailing bytes after the last tensor/);
  rejects(craft({ a: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, 8), /tensor "a": data_offsets \[8, 4\] end before begin/);
  rejects(craft({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }, 4), /tensor "a": data_offsets must be \[begin, end\]/);
  rejects(craft({ a: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, 4), /non-negative integers/);

  // Byte count that does not match dtype x shape.
  rejects(craft({ w: f32(0, 12, [2, 2]) }, 12), /tensor "w": data_offsets \[0, 12\] hold 12 bytes but F32 \[2, 2\] needs 16/);
  rejects(craft({ w: { dtype: 'F16', shape: [3], data_offsets: [0, 4] } }, 4), /F16 \[3\] needs 6/);

  // Bad dtype or shape.
  rejects(craft({ w: { dtype: 'F31', shape: [1], data_offsets: [0, 4] } }, 4), /tensor "w": unknown dtype "F31"/);
  rejects(craft({ w: { shape: [1], data_offsets: [0, 4] } }, 4), /tensor "w": unknown dtype undefined/);
  rejects(craft({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4), /tensor "w": shape \[-1\] must hold non-negative integers/);
  rejects(craft({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }, 4), /non-negative integers/);
  rejects(craft({ w: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, 4), /too large/);
  rejects(craft({ w: 5 }, 0), /tensor "w": entry must be an object/);

  // Not JSON, not an object, bad metadata.
  rejects(craft('{"a": nope}'), /header \(bytes 8\.\.\d+\) is not valid JSON/);
  rejects(craft('[1, 2]'), /must be a JSON object starting with '\{'/);
  rejects(craft('null    '), /must be a JSON object/);
  const badUtf8 = new Uint8Array(8 + 3);
  new DataView(badUtf8.buffer).setBigUint64(0, 3n, true);
  badUtf8.set([0x7b, 0xff, 0x7d], 8);
  rejects(badUtf8, /header \(bytes 8\.\.11\) is not valid UTF-8/);
  rejects(craft({ __metadata__: { a: 1 } }), /__metadata__\["a"\] must be a string, got 1/);
  rejects(craft({ __metadata__: ['x'] }), /__metadata__ must be an object of strings/);
  assert.deepEqual(parseSafetensors(craft({ __metadata__: null })).metadata, {});

  // File errors name the file.
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'bad.safetensors');
    fs.writeFileSync(file, good.subarray(0, good.length - 1));
    assert.throws(
      () => readSafetensors(file),
      (e: unknown) => {
        assert.ok(e instanceof SafetensorsError);
        assert.equal(e.source, file);
        assert.ok(e.message.startsWith(`${file}: tensor "a"`), e.message);
        return true;
      },
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: the writer validates its input', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'w.safetensors');
    const bad = { x: { dtype: 'F32' as const, shape: [3], data: new Uint8Array(8) } };
    assert.throws(() => writeSafetensors(file, bad), /w\.safetensors: tensor "x": F32 \[3\] needs 12 bytes, data has 8/);
    assert.throws(() => serializeSafetensors({ x: { dtype: 'F33' as SafeDType, shape: [1], data: new Uint8Array(4) } }), /tensor "x": unknown dtype "F33"/);
    assert.throws(() => serializeSafetensors({ __metadata__: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } }), /reserved/);
    assert.throws(() => serializeSafetensors({}, { n: 5 as unknown as string }), /metadata\["n"\] must be a string/);
    assert.deepEqual(fs.readdirSync(dir), [], 'nothing written on a validation error');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('f16 conversions: edge values round to nearest even', () => {
  const h = (x: number) => f32ToF16(Float32Array.of(x))[0];
  assert.equal(h(0), 0x0000);
  assert.equal(h(-0), 0x8000);
  assert.equal(h(1), 0x3c00);
  assert.equal(h(-2), 0xc000);
  assert.equal(h(65504), 0x7bff); // max finite
  assert.equal(h(65519.99), 0x7bff); // below the rounding midpoint
  assert.equal(h(65520), 0x7c00); // midpoint rounds to even = Inf
  assert.equal(h(1e6), 0x7c00);
  assert.equal(h(-Infinity), 0xfc00);
  assert.equal(h(Infinity), 0x7c00);
  const nan = h(NaN);
  assert.equal(nan & 0x7c00, 0x7c00);
  assert.notEqual(nan & 0x3ff, 0);
  assert.equal(h(2 ** -14), 0x0400); // smallest normal
  assert.equal(h(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(h(2 ** -25), 0x0000); // halfway to 0: ties to even
  assert.equal(h(2 ** -25 * 1.5), 0x0001);
  assert.equal(h(3 * 2 ** -25), 0x0002); // 1.5 ulp: ties to even (2)
  assert.equal(h(1023 * 2 ** -24), 0x03ff); // largest subnormal
  assert.equal(h(2 ** -14 - 2 ** -26), 0x0400); // rounds up into the normals
  assert.equal(h(1e-10), 0x0000);
  assert.equal(h(-1e-10), 0x8000);
  assert.equal(h(1 + 2 ** -11), 0x3c00); // tie, even stays
  assert.equal(h(1 + 3 * 2 ** -11), 0x3c02); // tie, odd rounds up
  assert.equal(h(1 + 2 ** -11 + 2 ** -20), 0x3c01); // above the tie

  const back = f16ToF32(Uint16Array.of(0x0000, 0x8000, 0x3c00, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x7e00, 0x3555));
  assert.ok(Object.is(back[1], -0));
  assert.deepEqual([...back.subarray(0, 9)], [0, -0, 1, 65504, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, Infinity, -Infinity]);
  assert.ok(Number.isNaN(back[9]));
  assert.equal(back[10], 0.333251953125);

  // Every finite half survives half -> float -> half unchanged.
  const all = new Uint16Array(65536).map((_, i) => i);
  const round = f32ToF16(f16ToF32(all));
  for (let i = 0; i < 65536; i++) {
    if ((i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0) {
      assert.equal(round[i] & 0x7c00, 0x7c00, `NaN ${i}`);
      assert.notEqual(round[i] & 0x3ff, 0, `NaN ${i}`);
    } else if (round[i] !== i) {
      assert.fail(`half 0x${i.toString(16)} came back as 0x${round[i].toString(16)}`);
    }
  }
});

test('bf16 conversions: edge values round to nearest even', () => {
  const b = (x: number) => f32ToBf16(Float32Array.of(x))[0];
  assert.equal(b(0), 0x0000);
  assert.equal(b(-0), 0x8000);
  assert.equal(b(1), 0x3f80);
  assert.equal(b(-2), 0xc000);
  assert.equal(b(1 + 2 ** -8), 0x3f80); // tie, even stays
  assert.equal(b(1 + 3 * 2 ** -8), 0x3f82); // tie, odd rounds up
  assert.equal(b(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  assert.equal(b(3.4028234663852886e38), 0x7f80); // FLT_MAX rounds to Inf
  assert.equal(b(Infinity), 0x7f80);
  assert.equal(b(-Infinity), 0xff80);
  assert.equal(b(2 ** -149), 0x0000); // smallest f32 subnormal is below half a bf16 ulp
  assert.equal(b(2 ** -133), 0x0001); // smallest bf16 subnormal
  assert.equal(b(2 ** -126), 0x0080); // smallest normal
  // A NaN whose payload lives only in the low 16 bits must stay NaN.
  const lowNan = new Float32Array(new Uint32Array([0x7f800001]).buffer);
  const nb = f32ToBf16(lowNan)[0];
  assert.equal(nb & 0x7f80, 0x7f80);
  assert.notEqual(nb & 0x7f, 0);
  assert.ok(Number.isNaN(bf16ToF32(Uint16Array.of(nb))[0]));

  const back = bf16ToF32(Uint16Array.of(0x3f80, 0xc000, 0x7f80, 0xff80, 0x0001, 0x8000, 0x4049));
  assert.deepEqual([...back.subarray(0, 5)], [1, -2, Infinity, -Infinity, 2 ** -133]);
  assert.ok(Object.is(back[5], -0));
  assert.equal(back[6], 3.140625);
  // bf16 -> f32 -> bf16 is the identity for all non-NaN values.
  const all = new Uint16Array(65536).map((_, i) => i);
  const round = f32ToBf16(bf16ToF32(all));
  for (let i = 0; i < 65536; i++) {
    const isNan = (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0;
    if (!isNan && round[i] !== i) assert.fail(`bf16 0x${i.toString(16)} came back as 0x${round[i].toString(16)}`);
  }
});

// ---------------------------------------------------------------------------------------------
// llama2.c checkpoint

test('llama2c: stories260K checkpoint', (t) => {
  if (!HAVE_FIXTURES) {
    t.skip(NO_FIXTURES);
    return;
  }
  const file = path.join(FIXTURES, 'stories260K.bin');
  const { config, weights } = readLlama2cCheckpoint(file);
  assert.deepEqual(config, {
    dim: 64,
    hiddenDim: 172,
    nLayers: 5,
    nHeads: 8,
    nKvHeads: 4,
    vocabSize: 512,
    seqLen: 512,
    sharedClassifier: true,
  });
  assert.equal(llama2cCheckpointBytes(config), 1_056_540);

  const expected = new Map<string, number[]>([
    ['model.embed_tokens.weight', [512, 64]],
    ['model.norm.weight', [64]],
  ]);
  for (let l = 0; l < 5; l++) {
    const p = `model.layers.${l}.`;
    expected.set(`${p}input_layernorm.weight`, [64]);
    expected.set(`${p}self_attn.q_proj.weight`, [64, 64]);
    expected.set(`${p}self_attn.k_proj.weight`, [32, 64]);
    expected.set(`${p}self_attn.v_proj.weight`, [32, 64]);
    expected.set(`${p}self_attn.o_proj.weight`, [64, 64]);
    expected.set(`${p}post_attention_layernorm.weight`, [64]);
    expected.set(`${p}mlp.gate_proj.weight`, [172, 64]);
    expected.set(`${p}mlp.down_proj.weight`, [64, 172]);
    expected.set(`${p}mlp.up_proj.weight`, [172, 64]);
  }
  assert.deepEqual([...weights.keys()].sort(), [...expected.keys()].sort());
  assert.ok(!weights.has('lm_head.weight'), 'shared classifier: no lm_head');
  let total = 0;
  for (const [name, w] of weights) {
    assert.deepEqual(w.shape, expected.get(name), name);
    assert.equal(
      w.data.length,
      w.shape.reduce((a, b) => a * b, 1),
      name,
    );
    total += w.data.length;
  }
  assert.equal(total, 260_032);

  const raw = fs.readFileSync(file);
  const emb = weights.get('model.embed_tokens.weight')!.data;
  assert.equal(emb[0], raw.readFloatLE(28));
  assert.equal(emb[emb.length - 1], raw.readFloatLE(28 + 4 * (512 * 64 - 1)));
  // rms_att of layer 0 directly follows the embedding table.
  assert.equal(weights.get('model.layers.0.input_layernorm.weight')!.data[0], raw.readFloatLE(28 + 4 * 512 * 64));
  // The final norm's last float sits just before the two 512x4 freq_cis tables.
  const norm = weights.get('model.norm.weight')!.data;
  assert.equal(norm[63], raw.readFloatLE(raw.length - 4 * 2 * 512 * 4 - 4));

  const hf = llama2cToHfConfig(config);
  assert.deepEqual(hf, {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 64,
    intermediate_size: 172,
    num_hidden_layers: 5,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 512,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    hidden_act: 'silu',
    torch_dtype: 'float32',
    bos_token_id: 1,
    eos_token_id: 2,
    rope_interleaved: true,
  });
});

/** Writes a legacy checkpoint whose k-th float (after the header) equals k. */
function writeCountingCheckpoint(file: string, header: number[], floats: number): void {
  const buf = Buffer.alloc(28 + 4 * floats);
  header.forEach((v, i) => buf.writeInt32LE(v, i * 4));
  for (let k = 0; k < floats; k++) buf.writeFloatLE(k, 28 + 4 * k);
  fs.writeFileSync(file, buf);
}

test('llama2c: separate classifier and the exact file order', () => {
  const dir = tmpDir();
  try {
    // dim 4, hidden 6, 2 layers, 2 heads, 1 kv head (head 2, kv_dim 2), vocab -5 (separate wcls), seq 3.
    const cfg: Llama2cConfig = { dim: 4, hiddenDim: 6, nLayers: 2, nHeads: 2, nKvHeads: 1, vocabSize: 5, seqLen: 3, sharedClassifier: false };
    const floats = (llama2cCheckpointBytes(cfg) - 28) / 4;
    assert.equal(floats, 20 + 2 * (4 + 16 + 8 + 8 + 16 + 4 + 24 + 24 + 24) + 4 + 2 * 3 * 1 + 20);
    const file = path.join(dir, 'tiny.bin');
    writeCountingCheckpoint(file, [4, 6, 2, 2, 1, -5, 3], floats);
    const { config, weights } = readLlama2cCheckpoint(file);
    assert.deepEqual(config, cfg);
    assert.equal(llama2cToHfConfig(config).tie_word_embeddings, false);

    // Walk the documented order and check where each weight starts.
    let k = 0;
    const at = (name: string, numel: number) => {
      const w = weights.get(name);
      assert.ok(w, `missing ${name}`);
      assert.equal(w.data[0], k, `${name} should start at float ${k}`);
      assert.equal(w.data[numel - 1], k + numel - 1, name);
      k += numel;
    };
    at('model.embed_tokens.weight', 20);
    const groups: [string, number][] = [
      ['input_layernorm.weight', 4],
      ['self_attn.q_proj.weight', 16],
      ['self_attn.k_proj.weight', 8],
      ['self_attn.v_proj.weight', 8],
      ['self_attn.o_proj.weight', 16],
      ['post_attention_layernorm.weight', 4],
      ['mlp.gate_proj.weight', 24],
      ['mlp.down_proj.weight', 24],
      ['mlp.up_proj.weight', 24],
    ];
    for (const [name, numel] of groups) for (let l = 0; l < 2; l++) at(`model.layers.${l}.${name}`, numel);
    at('model.norm.weight', 4);
    k += 2 * 3 * 1; // freq_cis tables
    at('lm_head.weight', 20);
    assert.equal(k, floats);
    assert.deepEqual(weights.get('model.layers.1.mlp.down_proj.weight')!.shape, [4, 6]);
    assert.deepEqual(weights.get('model.layers.0.self_attn.k_proj.weight')!.shape, [2, 4]);

    // Size mismatches are reported with the header's view of the file.
    writeCountingCheckpoint(file, [4, 6, 2, 2, 1, -5, 3], floats - 1);
    assert.throws(
      () => readLlama2cCheckpoint(file),
      (e: unknown) => {
        assert.ok(e instanceof Llama2cError);
        assert.match(e.message, /tiny\.bin: file is \d+ bytes but the header .*vocab_size -5.* implies \d+ bytes \(truncated\?\)/);
        return true;
      },
    );
    writeCountingCheckpoint(file, [4, 6, 2, 2, 1, -5, 3], floats + 1);
    assert.throws(() => readLlama2cCheckpoint(file), /trailing data or a different layout/);
    writeCountingCheckpoint(file, [4, 6, 2, 3, 1, 5, 3], 10);
    assert.throws(() => readLlama2cCheckpoint(file), /dim 4 is not divisible by n_heads 3/);
    writeCountingCheckpoint(file, [4, 6, 0, 2, 1, 5, 3], 10);
    assert.throws(() => readLlama2cCheckpoint(file), /header field n_layers at byte 8 is 0/);
    fs.writeFileSync(file, Buffer.from([0x32, 0x34, 0x6b, 0x61, 1, 0, 0, 0, ...new Array(40).fill(0)]));
    assert.throws(() => readLlama2cCheckpoint(file), /"ak42" magic/);
    fs.writeFileSync(file, Buffer.alloc(10));
    assert.throws(() => readLlama2cCheckpoint(file), /file is 10 bytes, too short/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer

/** A direct transcription of run.c's quadratic merge loop, to cross-check the heap version. */
function referenceEncode(tok: Llama2cTokenizer, text: string, bos: boolean): number[] {
  const str = (id: number) => Buffer.from(tok.piece(id)).toString('latin1');
  const lookup = new Map<string, number>();
  for (let id = tok.vocabSize - 1; id >= 0; id--) lookup.set(str(id), id);
  const bytes = Buffer.from(text, 'utf8');
  const toks: number[] = bos ? [1] : [];
  if (bytes.length > 0) toks.push(lookup.get(' ')!);
  let buf: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i] & 0xc0) !== 0x80) buf = [];
    buf.push(bytes[i]);
    if (i + 1 < bytes.length && (bytes[i + 1] & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup.get(Buffer.from(buf).toString('latin1'));
    if (id !== undefined) toks.push(id);
    else for (const b of buf) toks.push(b + 3);
    buf = [];
  }
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i + 1 < toks.length; i++) {
      const id = lookup.get(str(toks[i]) + str(toks[i + 1]));
      if (id !== undefined && tok.score(id) > best) {
        best = tok.score(id);
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx < 0) break;
    toks.splice(bestIdx, 2, bestId);
  }
  return toks;
}

test('llama2c tokenizer: encode matches run.c', (t) => {
  if (!HAVE_FIXTURES) {
    t.skip(NO_FIXTURES);
    return;
  }
  const tok = Llama2cTokenizer.load(path.join(FIXTURES, 'tok512.bin'), 512);
  assert.equal(tok.vocabSize, 512);
  assert.equal(tok.maxTokenLength, 7);
  assert.equal(tok.bos, 1);
  assert.equal(tok.eos, 2);
  assert.equal(tok.pad, 0);
  assert.equal(tok.special.get('<s>'), 1);

  assert.deepEqual(tok.encode('Once upon a time', { bos: true }), [1, 403, 407, 261, 378]);
  assert.deepEqual(tok.encode('Once upon a time'), [403, 407, 261, 378]);
  assert.deepEqual(tok.encode('Once upon a time', { bos: true, eos: true }), [1, 403, 407, 261, 378, 2]);
  assert.deepEqual(tok.encode(''), []);
  assert.deepEqual(tok.encode('', { bos: true, eos: true }), [1, 2]);

  const runs = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'greedy-tokens.json'), 'utf8')).runs as {
    prompt: string;
    prompt_tokens: number[];
  }[];
  for (const run of runs) assert.deepEqual(tok.encode(run.prompt, { bos: true }), run.prompt_tokens, run.prompt);

  // The heap-based merge picks exactly the merges of run.c's rescanning loop.
  const samples = [
    'Lily went to the park',
    '  leading and trailing spaces  ',
    'One day, a boy named Tim went to the park with his mom. "Mom, look!" she said.\nThe end.',
    'aaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbb ab ab ab abab',
    'naïve café — 日本語 🙂 \u0000 tab\there',
    'the the the, and and; she he they them then there',
  ];
  let seed = 7;
  const alphabet = 'abcdefghijklmnopqrstuvwxyz ABCDE .,!?\'"\n\té€🙂';
  const chars = [...alphabet];
  for (let s = 0; s < 40; s++) {
    let str = '';
    const len = 1 + ((s * 13) % 90);
    for (let i = 0; i < len; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      str += chars[(seed >>> 8) % chars.length];
    }
    samples.push(str);
  }
  // Concatenated vocabulary pieces give many competing merges.
  for (let s = 0; s < 300; s++) {
    let str = '';
    const len = 1 + (s % 30);
    for (let i = 0; i < len; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const p = Buffer.from(tok.piece(3 + ((seed >>> 8) % 509))).toString('latin1');
      str += p.startsWith('<0x') ? String.fromCharCode(32 + (seed % 95)) : p;
    }
    samples.push(str);
  }
  for (const s of samples) {
    assert.deepEqual(tok.encode(s, { bos: true }), referenceEncode(tok, s, true), JSON.stringify(s));
  }
});

test('llama2c tokenizer: decodePiece reproduces run.c output byte for byte', (t) => {
  if (!HAVE_FIXTURES) {
    t.skip(NO_FIXTURES);
    return;
  }
  const tok = Llama2cTokenizer.load(path.join(FIXTURES, 'tok512.bin'));
  const runs = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'greedy-tokens.json'), 'utf8')).runs as {
    file: string;
    ids: number[];
  }[];
  assert.equal(runs.length, 4);
  for (const run of runs) {
    const parts: Uint8Array[] = [];
    for (let i = 1; i < run.ids.length; i++) parts.push(tok.decodePiece(run.ids[i - 1], run.ids[i]));
    parts.push(Buffer.from('\n'));
    const expected = fs.readFileSync(path.join(FIXTURES, run.file));
    assert.deepEqual(Buffer.concat(parts), expected, run.file);
    // The interface's decode agrees on these all-printable texts.
    assert.equal(tok.decode(run.ids) + '\n', expected.toString('utf8'), run.file);
  }

  // run.c specifics: space stripped only after BOS, byte pieces become bytes, lone
  // non-printable bytes are not printed.
  assert.deepEqual(Buffer.from(tok.decodePiece(1, 403)), Buffer.from('Once'));
  assert.deepEqual(Buffer.from(tok.decodePiece(2, 403)), Buffer.from(' Once'));
  assert.deepEqual(Buffer.from(tok.decodePiece(5, 0x41 + 3)), Buffer.from('A'));
  assert.deepEqual(Buffer.from(tok.decodePiece(5, 0x0a + 3)), Buffer.from('\n'));
  assert.equal(tok.decodePiece(5, 0x00 + 3).length, 0);
  assert.equal(tok.decodePiece(5, 0x07 + 3).length, 0);
  assert.equal(tok.decodePiece(5, 0xe6 + 3).length, 0);
  assert.throws(() => tok.decodePiece(1, 512), /outside the vocabulary/);
});

test('llama2c tokenizer: encode/decode round trips, with byte fallback', (t) => {
  if (!HAVE_FIXTURES) {
    t.skip(NO_FIXTURES);
    return;
  }
  const tok = Llama2cTokenizer.load(path.join(FIXTURES, 'tok512.bin'));
  const texts = [
    'Once upon a time, there was a little girl named Lily.',
    'She said, "Hello!"\nThey played all day. 123 + 456 = 579',
    '  two leading spaces',
    'naïve café, 日本語 and 🙂',
  ];
  for (const text of texts) {
    for (const bos of [true, false]) {
      const ids = tok.encode(text, { bos, eos: true });
      assert.equal(tok.decode(ids), text, JSON.stringify(text));
    }
  }
  // Characters outside the 512-piece vocabulary fall back to their UTF-8 bytes (+3).
  const ids = tok.encode('日', { bos: true });
  assert.deepEqual(
    ids.slice(2),
    [...Buffer.from('日', 'utf8')].map((b) => b + 3),
  );
  assert.equal(tok.decode(ids), '日');
  // keepSpecial shows BOS/EOS pieces as stored.
  assert.equal(tok.decode([1, 403, 2], { keepSpecial: true }), '\n<s>\nOnce\n</s>\n');
  assert.throws(() => tok.decode([1, 9999]), /token id 9999 is outside the vocabulary \[0, 512\)/);
  assert.throws(() => Llama2cTokenizer.load(path.join(FIXTURES, 'tok512.bin'), 600), /expected 600 pieces, file ends after 512/);
});

test('llama2c tokenizer: rejects malformed files', () => {
  const piece = (score: number, s: string) => {
    const b = Buffer.alloc(8 + Buffer.byteLength(s, 'latin1'));
    b.writeFloatLE(score, 0);
    b.writeInt32LE(b.length - 8, 4);
    b.write(s, 8, 'latin1');
    return b;
  };
  const header = Buffer.alloc(4);
  header.writeUInt32LE(6, 0);
  const pieces = [piece(0, '<unk>'), piece(0, '\n<s>\n'), piece(0, '\n</s>\n')];
  for (let b = 0; b < 256; b++) pieces.push(piece(0, `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`));
  pieces.push(piece(-1, ' '), piece(-2, 'a'), piece(-3, 'b'), piece(5, 'ab'), piece(4, ' a'));
  const ok = Buffer.concat([header, ...pieces]);
  const tok = Llama2cTokenizer.fromBytes(ok, 'mini.bin');
  assert.equal(tok.vocabSize, 264);
  // 'ab' (score 5) beats ' a' (score 4) even though ' a' is further left.
  assert.deepEqual(tok.encode('ab'), [259, 262]);
  assert.deepEqual(tok.encode('ab', { bos: true }), referenceEncode(tok, 'ab', true));
  assert.deepEqual(tok.encode('ac'), [263, 0x63 + 3]);
  // On equal scores the leftmost pair merges first, as in run.c's scan.
  const tied = Buffer.concat([header, ...pieces.slice(0, -1), piece(5, ' a')]);
  const tiedTok = Llama2cTokenizer.fromBytes(tied, 'tied.bin');
  assert.deepEqual(tiedTok.encode('ab'), [263, 261]);
  assert.deepEqual(tiedTok.encode('ab', { bos: true }), referenceEncode(tiedTok, 'ab', true));

  assert.throws(
    () => Llama2cTokenizer.fromBytes(ok.subarray(0, ok.length - 1), 'mini.bin'),
    /mini\.bin: piece 263: byte length 2 at byte \d+ runs past the end/,
  );
  assert.throws(() => Llama2cTokenizer.fromBytes(ok.subarray(0, ok.length - 6), 'mini.bin'), /piece 263: truncated score\/length/);
  assert.throws(() => Llama2cTokenizer.fromBytes(ok.subarray(0, 2), 'mini.bin'), /too short/);
  assert.throws(() => Llama2cTokenizer.fromBytes(Buffer.concat([header, ...pieces.slice(0, 100)]), 'mini.bin'), /byte fallback needs at least 259/);
  const swapped = [...pieces];
  swapped[3 + 65] = piece(0, 'A');
  assert.throws(() => Llama2cTokenizer.fromBytes(Buffer.concat([header, ...swapped]), 'mini.bin'), /piece 68 is "A"; byte fallback expects "<0x41>"/);
});
