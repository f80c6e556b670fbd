/**
 * Fuzz targets for the binary formats: safetensors, GGUF, llama2.c checkpoints and tokenizers,
 * and .softctx. Each case is a seed file with one to three stacked mutations (bytes, or fields
 * of the format's header: shapes, dtypes, offsets, counts), given to the parser as a buffer or
 * as a file.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseSafetensors, readSafetensors, serializeSafetensors, DTYPE_SIZE, type RawTensor, type SafeDType } from '../../io/safetensors.js';
import { metaArray, metaNumber, metaString, parseGguf, readGguf, readGgufTensor, type GgufFile } from '../../io/gguf.js';
import { Llama2cTokenizer, readLlama2cCheckpoint } from '../../io/llama2c.js';
import { ggufHfConfig } from '../../models/gguf.js';
import { INTERESTING, Rng, hostileValue, mutateBytes, mutateJson } from './mutate.js';
import { ggufSeeds, llama2cSeeds, safetensorsSeeds, softctxRecordSeeds, type Seed } from './seeds.js';
import { isNamedErrorWith, type Prepared, type Target } from './target.js';

/** Texts every tokenizer that loads must encode (long runs are what slow patterns choke on). */
export const PROBES = [
  'Hello world, 123 times!',
  '',
  ' ',
  'a'.repeat(3000) + '!',
  ' '.repeat(3000) + 'x',
  '\n'.repeat(2000) + 'y',
  '1'.repeat(2000),
  'Ünïcödé 中文 😀 \ud800 \u0000 <|bos|>',
];

/** 1-3 stacked byte mutations of a seed. */
function mutated(seed: Seed, rng: Rng): Uint8Array {
  let b = seed.bytes;
  for (let k = 1 + rng.int(3); k > 0; k--) b = mutateBytes(b, rng, seed.fields);
  return b;
}

interface FileCase {
  bytes: Uint8Array;
  viaFile: boolean;
}

const bytesOf = (input: unknown) => (input as FileCase).bytes;

// ---------------------------------------------------------------------------------------------
// safetensors

const ST_SOURCE = 'fuzz-case.safetensors';
const DTYPES = Object.keys(DTYPE_SIZE) as SafeDType[];

/** Header-level damage: the JSON header rewritten with hostile shapes, dtypes or offsets. */
function mutateSafetensorsHeader(seed: Uint8Array, rng: Rng): Uint8Array {
  const n = Number(new DataView(seed.buffer, seed.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(seed.subarray(8, 8 + n))) as Record<string, Record<string, unknown>>;
  let data = seed.subarray(8 + n);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const t = header[rng.pick(names)];
  switch (rng.int(7)) {
    case 0:
      t.shape = Array.from({ length: rng.int(6) }, () => rng.pick([...INTERESTING, -1, 1.5]));
      break;
    case 1:
      t.dtype = rng.chance(0.8) ? rng.pick(DTYPES) : hostileValue(rng);
      break;
    case 2: {
      // overlapping or swapped offsets
      const other = header[rng.pick(names)];
      t.data_offsets = rng.chance(0.5) ? structuredClone(other.data_offsets) : [(other.data_offsets as number[])[1], (other.data_offsets as number[])[0]];
      break;
    }
    case 3:
      t.data_offsets = [rng.pick(INTERESTING), rng.pick(INTERESTING)];
      break;
    case 4:
      header.__metadata__ = hostileValue(rng) as Record<string, unknown>;
      break;
    case 5:
      data = data.subarray(0, rng.int(data.length + 1));
      break;
    default:
      return encodeHeader(mutateJson(header, rng), data, rng);
  }
  return encodeHeader(header, data, rng);
}

function encodeHeader(header: unknown, data: Uint8Array, rng: Rng): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header) ?? 'null');
  const out = new Uint8Array(8 + json.length + data.length);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(json.length + (rng.chance(0.1) ? rng.int(16) - 8 : 0)) & 0xffffffffffffffffn, true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

export const safetensors: Target = {
  name: 'safetensors',
  about: 'safetensors',
  timeoutMs: 5000,
  prepare(tmp): Prepared {
    const seeds = safetensorsSeeds();
    const path = join(tmp, ST_SOURCE);
    return {
      make: (rng) => {
        const seed = rng.pick(seeds);
        const bytes = rng.chance(0.5) ? mutated(seed, rng) : mutateSafetensorsHeader(seed.bytes, rng);
        return { bytes, viaFile: rng.chance(0.3) } satisfies FileCase;
      },
      run: (input) => {
        const c = input as FileCase;
        if (c.viaFile) {
          writeFileSync(path, c.bytes);
          readSafetensors(path);
        } else parseSafetensors(c.bytes, ST_SOURCE);
      },
      clean: (e) => isNamedErrorWith(e, ST_SOURCE),
      bytes: bytesOf,
    };
  },
};

// ---------------------------------------------------------------------------------------------
// GGUF

const GGUF_SOURCE = 'fuzz-case.gguf';

/** Reads what a model loader reads: the config keys, each tensor (dequantized). */
function useGguf(file: GgufFile): void {
  try {
    ggufHfConfig(file);
  } catch (e) {
    if (!isNamedErrorWith(e, GGUF_SOURCE)) throw e;
  }
  for (const k of ['general.architecture', 'tokenizer.ggml.model']) if (file.metadata.has(k)) void metaString(file, k, '');
  if (file.metadata.has('tokenizer.ggml.tokens')) void metaArray(file, 'tokenizer.ggml.tokens', []);
  if (file.metadata.has('general.alignment')) void metaNumber(file, 'general.alignment', 32);
  let k = 0;
  for (const name of file.tensors.keys()) {
    if (k++ >= 8) break;
    readGgufTensor(file, name);
  }
}

export const gguf: Target = {
  name: 'gguf',
  about: 'GGUF',
  timeoutMs: 5000,
  prepare(tmp): Prepared {
    const seeds = ggufSeeds();
    const path = join(tmp, GGUF_SOURCE);
    return {
      make: (rng) => ({ bytes: mutated(rng.pick(seeds), rng), viaFile: rng.chance(0.3) }) satisfies FileCase,
      run: (input) => {
        const c = input as FileCase;
        let file: GgufFile;
        if (c.viaFile) {
          writeFileSync(path, c.bytes);
          file = readGguf(path);
        } else file = parseGguf(c.bytes, GGUF_SOURCE);
        useGguf(file);
      },
      clean: (e) => isNamedErrorWith(e, GGUF_SOURCE),
      bytes: bytesOf,
    };
  },
};

// ---------------------------------------------------------------------------------------------
// llama2.c

const CKPT_SOURCE = 'fuzz-case-llama2c.bin';
const TOK_SOURCE = 'fuzz-case-tokenizer.bin';

export const llama2cCheckpoint: Target = {
  name: 'llama2c-checkpoint',
  about: 'llama2.c checkpoint',
  timeoutMs: 5000,
  prepare(tmp): Prepared {
    const seeds = llama2cSeeds().checkpoint;
    const path = join(tmp, CKPT_SOURCE);
    return {
      make: (rng) => ({ bytes: mutated(rng.pick(seeds), rng), viaFile: true }) satisfies FileCase,
      run: (input) => {
        writeFileSync(path, bytesOf(input));
        readLlama2cCheckpoint(path);
      },
      clean: (e) => isNamedErrorWith(e, CKPT_SOURCE),
      bytes: bytesOf,
    };
  },
};

export const llama2cTokenizer: Target = {
  name: 'llama2c-tokenizer',
  about: 'llama2.c tokenizer.bin',
  timeoutMs: 5000,
  prepare(tmp): Prepared {
    const seeds = llama2cSeeds().tokenizer;
    const path = join(tmp, TOK_SOURCE);
    return {
      make: (rng) => ({ bytes: mutated(rng.pick(seeds), rng), viaFile: rng.chance(0.3) }) satisfies FileCase,
      run: (input) => {
        const c = input as FileCase;
        let tok: Llama2cTokenizer;
        if (c.viaFile) {
          writeFileSync(path, c.bytes);
          tok = Llama2cTokenizer.load(path);
        } else tok = Llama2cTokenizer.fromBytes(c.bytes, TOK_SOURCE);
        for (const p of PROBES) tok.decode(tok.encode(p, { bos: true }));
      },
      clean: (e) => isNamedErrorWith(e, TOK_SOURCE),
      bytes: bytesOf,
    };
  },
};

// ---------------------------------------------------------------------------------------------
// .softctx

const CTX_SOURCE = 'fuzz-case.softctx';

type Records = { tensors: Map<string, RawTensor>; metadata: Record<string, string> };

/** Record-level damage, written back with a valid checksum so that the checks behind it are reached. */
function mutateRecords(r: Records, rng: Rng): { records: Records; checksum: boolean } {
  const tensors = new Map([...r.tensors].map(([k, t]) => [k, { ...t, shape: [...t.shape] }]));
  const metadata = { ...r.metadata };
  const names = [...tensors.keys()];
  const name = rng.pick(names);
  const t = tensors.get(name)!;
  const refill = (x: RawTensor) => {
    let n = 1;
    for (const d of x.shape) n *= d;
    x.data = new Uint8Array(Math.min(n * DTYPE_SIZE[x.dtype], 1 << 20)).map(() => rng.int(256));
    if (n * DTYPE_SIZE[x.dtype] > 1 << 20) x.shape = [x.data.length / DTYPE_SIZE[x.dtype]];
  };
  switch (rng.int(10)) {
    case 8: {
      // consistent records for another base model: another width, layer count, KV heads or fingerprint
      const soft = tensors.get('soft_tokens');
      const mem = names.filter((n) => n.startsWith('memory.'));
      const pick = rng.int(4);
      if (pick === 0 && soft) {
        soft.shape = [soft.shape[0] ?? 1, soft.shape[1] ?? 3, rng.pick([4, 16, 576])];
        refill(soft);
      } else if (pick === 1 && mem.length) {
        for (const part of ['k', 'v']) tensors.set(`memory.${mem.length / 2}.${part}`, { ...tensors.get(mem[0])!, shape: [...tensors.get(mem[0])!.shape] });
      } else if (pick === 2 && mem.length) {
        const [h, d] = rng.pick([
          [1, 8],
          [4, 2],
          [3, 4],
        ]);
        for (const n of mem) {
          const x = tensors.get(n)!;
          x.shape = [x.shape[0] ?? 1, h, x.shape[2] ?? 2, d];
          refill(x);
        }
      } else {
        try {
          metadata.meta = JSON.stringify({ ...JSON.parse(metadata.meta ?? '{}'), baseFingerprint: rng.pick(['0123456789abcdef', '', 'fuzz-0000']) });
        } catch {
          // meta already damaged
        }
      }
      break;
    }
    case 0:
      t.shape = Array.from({ length: rng.int(5) }, () => rng.pick([0, 1, 2, 3, 4, 8, 602]));
      refill(t);
      break;
    case 1:
      t.dtype = rng.pick(DTYPES);
      refill(t);
      break;
    case 2:
      tensors.delete(name);
      break;
    case 3:
      tensors.set(rng.pick(['memory.01.k', 'memory.7.v', 'extra', 'memory_mask', 'mask', 'soft_tokens']), { ...t, shape: [...t.shape] });
      break;
    case 4: {
      // NaN, Inf, mask values > 1
      const d = new Uint8Array(t.data);
      for (let i = 0; i < 1 + rng.int(3) && d.length; i++) d[rng.int(d.length)] = rng.pick([0xff, 0x7f, 0x80, 0x02, 0x7c]);
      t.data = d;
      break;
    }
    case 5: {
      let meta: unknown;
      try {
        meta = JSON.parse(metadata.meta ?? 'null');
      } catch {
        meta = null;
      }
      metadata.meta = JSON.stringify(mutateJson(meta, rng)) ?? '';
      break;
    }
    case 6:
      metadata.softpress_softctx = rng.pick(['0', '2', '', '1 ', 'x']);
      break;
    case 7:
      delete metadata[rng.pick(['meta', 'softpress_softctx'])];
      break;
    default:
      return { records: { tensors, metadata }, checksum: false };
  }
  return { records: { tensors, metadata }, checksum: rng.chance(0.9) };
}

/**
 * The base model the .softctx cases name: a tiny random Llama (width 8, 2 layers, 2 KV heads of
 * size 4, 32 ids), the shapes of the seeds. With it, parseSoftContext checks the base's
 * fingerprint and every tensor's shape against it, and a context it accepts is read by the
 * decoder (one forward pass over lead + soft tokens + a tail, as ask does): a context that
 * passes the checks but breaks the decoder counts as a crash.
 */
async function tinyBase() {
  const { configFromHf } = await import('../../models/config.js');
  const { LlamaModel } = await import('../../models/llama.js');
  const { manualSeed, noGrad } = await import('../../tensor/index.js');
  manualSeed(11);
  const cfg = configFromHf({
    model_type: 'llama',
    vocab_size: 32,
    hidden_size: 8,
    intermediate_size: 16,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 2,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: true,
    bos_token_id: 1,
    eos_token_id: 2,
  });
  return noGrad(() => new LlamaModel(cfg));
}

export const softctx: Target = {
  name: 'softctx',
  about: '.softctx',
  timeoutMs: 10_000,
  async prepare(): Promise<Prepared> {
    const { parseSoftContext, freeSoftContext } = await import('../../compress/softctx.js');
    const { tailLoss } = await import('../../compress/decode.js');
    const { noGrad, tidy } = await import('../../tensor/index.js');
    const base = await tinyBase();
    const seeds = softctxRecordSeeds(base.fingerprint());
    return {
      make: (rng) => {
        const withBase = rng.chance(0.6);
        const seed = rng.pick(seeds);
        if (rng.chance(0.35))
          return { bytes: mutateBytes(serializeSafetensors(seed.tensors, seed.metadata, { checksum: true }), rng, [{ at: 0, width: 8 }]), withBase };
        let r: Records = { tensors: seed.tensors, metadata: seed.metadata };
        let checksum = true;
        for (let k = 1 + rng.int(2); k > 0; k--) ({ records: r, checksum } = mutateRecords(r, rng));
        const bytes = serializeSafetensors(r.tensors, r.metadata, { checksum });
        return { bytes: rng.chance(0.3) ? mutateBytes(bytes, rng, [{ at: 0, width: 8 }]) : bytes, withBase };
      },
      run: (input) => {
        const c = input as { bytes: Uint8Array; withBase: boolean };
        const ctx = parseSoftContext(c.bytes, c.withBase ? base : undefined, CTX_SOURCE);
        try {
          if (c.withBase) {
            const b = ctx.meta.sourceTokens.length;
            const tails = Array.from({ length: b }, () => [3, 4, 5]);
            tidy(() => noGrad(() => tailLoss(base, ctx, tails, new Array(b).fill(0), { bos: 1, pad: 0 }).loss.item()));
          }
        } finally {
          freeSoftContext(ctx);
        }
      },
      clean: (e) => isNamedErrorWith(e, CTX_SOURCE),
      bytes: (input) => (input as { bytes: Uint8Array }).bytes,
    };
  },
};
