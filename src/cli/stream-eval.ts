/**
 * softpress stream-eval [--base DIR] [--ccf DIR] [--meanpool DIR] [--lengths 1024,2048,4096]
 *                       [--docs 4] [--ratios 8,32] [--out FILE.md]
 * Streaming perplexity of long test documents (models/.../long-test-docs.json's rule: test split,
 * >= 2,048 tokens) for CCF memory against sliding-window full attention, no memory and mean-pool
 * memory, with throughput and bytes held per document.
 */
import { parseArgs } from 'node:util';
import { writeFileSync } from 'node:fs';
import { loadModel } from '../models/load.js';
import { loadCompressor } from '../compress/index.js';
import { longTestDocs } from '../data/long-docs.js';
import { streamEval } from '../eval/stream.js';
import { getNumThreads } from '../tensor/index.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      base: { type: 'string', default: 'models/softpress-base' },
      ccf: { type: 'string' },
      meanpool: { type: 'string' },
      lengths: { type: 'string', default: '1024,2048,4096' },
      docs: { type: 'string', default: '4' },
      ratios: { type: 'string', default: '8,32' },
      out: { type: 'string' },
    },
    strict: true,
  });
  const list = (name: string, v: string) =>
    v.split(',').map((x) => {
      const n = Number(x);
      if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} takes positive integers, got '${v}'`);
      return n;
    });
  const lengths = list('lengths', values.lengths!);
  const ratios = list('ratios', values.ratios!);
  const nDocs = list('docs', values.docs!)[0];
  const { model, tokenizer } = loadModel(values.base!);
  if (!tokenizer) throw new Error(`${values.base}: no tokenizer`);
  const streaming = values.ccf ? loadCompressor(values.ccf, model) : undefined;
  if (streaming && !streaming.streaming) throw new Error(`--ccf ${values.ccf} holds a '${streaming.method}' compressor, which does not read text as a stream`);
  const segmentLen = streaming?.streaming?.segmentLen ?? 64;
  const meanpool = values.meanpool ? loadCompressor(values.meanpool, model) : undefined;
  const { docs } = longTestDocs(tokenizer, { corpora: ['sotu', 'moby-dick', 'brown'], minTokens: Math.max(...lengths) });
  const chosen = docs.slice(0, nDocs);
  const picked = chosen.map((d) => tokenizer.encode(d.text));
  if (!picked.length) throw new Error(`no test document has ${Math.max(...lengths)} tokens`);
  const log = (s: string) => process.stderr.write(s + '\n');
  log(`${picked.length} test documents of >= ${Math.max(...lengths)} tokens; segment ${segmentLen} tokens`);
  const rows = streamEval({
    model,
    tokenizer,
    docs: picked,
    lengths,
    segmentLen,
    streaming,
    streamRatios: ratios,
    meanpool,
    meanpoolRatios: ratios.filter((r) => r <= 32),
    log,
  });
  const md = ['| method | ratio | tokens per doc | docs | perplexity | tokens/s | bytes held per doc |', '|---|---:|---:|---:|---:|---:|---:|'];
  for (const r of rows)
    md.push(
      `| ${r.method} | ${r.ratio ?? '-'} | ${r.length} | ${r.docs} | ${r.ppl.toFixed(1)} | ${r.tokensPerSecond.toFixed(0)} | ${(r.stateBytes / 1024).toFixed(0)} KiB |`,
    );
  const text = md.join('\n') + '\n';
  if (values.out) {
    // The file says what was measured: base, compressors, documents, and how to read the rows.
    const head = [
      '# Streaming perplexity',
      '',
      `- Base \`${values.base}\`${values.ccf ? `; streaming compressor \`${values.ccf}\`` : ''}${values.meanpool ? `; mean-pool \`${values.meanpool}\`` : ''}; segments of ${segmentLen} tokens; ${getNumThreads()} threads; ${new Date().toISOString()}`,
      `- Documents (the first ${picked.length} of the test split with >= ${Math.max(...lengths)} tokens, each read from its start up to the row's length): ${chosen.map((d, i) => `${d.title ?? d.id} (${picked[i]!.length} tokens)`).join('; ')}`,
      '- Each token after the first is scored once, with what the row keeps of the text before its segment: `full` the raw tokens that fit the window, `none` nothing, `window (same memory)` the last 1/ratio of the tokens read so far (as many KV entries as the compressor holds before that segment), the compressor its memory of all earlier segments, `meanpool memory` mean-pool soft tokens of the latest earlier text that fits the window. Bytes held: at the end of a document (the compressor also counts the memory of its last segment, which no prediction reads).',
      '',
    ];
    writeFileSync(values.out, head.join('\n') + text);
  }
  process.stdout.write(text);
}
