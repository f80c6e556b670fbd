/**
 * The `softpress` command: one file per subcommand under src/cli/, each exporting
 * `run(argv)`. Loaded lazily so that `softpress --help` does not load libtorch.
 */
type Runner = (argv: string[]) => Promise<void>;

/** Options whose value may name a model of the cache (pulled before the command runs). */
const MODEL_OPTIONS = new Set(['--base', '--model']);

/** Pulls the named models that argv refers to and are not in the cache yet. */
async function pullNamedModels(argv: string[]): Promise<void> {
  const refs = argv.flatMap((a, i) =>
    MODEL_OPTIONS.has(a) && i + 1 < argv.length ? [argv[i + 1]] : a.includes('=') && MODEL_OPTIONS.has(a.split('=')[0]) ? [a.slice(a.indexOf('=') + 1)] : [],
  );
  if (refs.length === 0) return;
  const { cachedModelPath, namedModel, pullModel } = await import('../io/model-source.js');
  const { existsSync } = await import('node:fs');
  for (const ref of refs) {
    const model = existsSync(ref) ? undefined : namedModel(ref);
    if (model && !cachedModelPath(model)) await pullModel(ref, { log: (line) => process.stderr.write(`softpress: ${line}\n`) });
  }
}

const COMMANDS: Record<string, { about: string; load: () => Promise<{ run: Runner }> }> = {
  bench: {
    about: 'benchmarks: bench engine | bench model --config S|M|smol | bench serve | bench generate --model NAME | bench train --nproc 1,2 [--json]',
    load: () => import('./bench.js'),
  },
  eval: {
    about:
      'evaluate methods x ratios x tasks: [--suite default|quick] [--out DIR] [--task T,..] [--methods full,none,truncate,DIR,..] [--json]; --task perplexity [--split test|valid]',
    load: () => import('./eval.js'),
  },
  generate: { about: 'generate text: --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]', load: () => import('./generate.js') },
  convert: {
    about: 'convert a llama2.c checkpoint to a Hugging Face folder: --in FILE.bin [--tokenizer tok.bin] --out DIR',
    load: () => import('./convert.js'),
  },
  data: { about: 'data sets: data long-docs --tokenizer FILE [--min-tokens 2048] [--out FILE]', load: () => import('./data.js') },
  losses: { about: 'objective losses (ae, lm) of methods on the same valid batches: --methods full,none,DIR --ratio 4', load: () => import('./losses.js') },
  'stream-eval': {
    about: 'streaming perplexity of long documents: CCF memory vs sliding window, no memory, mean-pool memory',
    load: () => import('./stream-eval.js'),
  },
  ship: { about: 'write a trained compressor in final form: --base DIR --compressor DIR --out DIR [--dtype float16]', load: () => import('./ship.js') },
  pretrain: { about: 'pretrain a base model: --config FILE --out DIR [--resume]', load: () => import('./pretrain.js') },
  tokenizer: { about: 'tokenizer train --out DIR [--vocab 8192]', load: () => import('./tokenizer.js') },
  train: {
    about:
      'train a compressor: --base DIR --method NAME (--ratio R[,R..] | --budget K) --stage ae|lm|qa|ae+lm --out DIR [--resume] [--steps N] [--init DIR] (--help)',
    load: () => import('./train.js'),
  },
  compress: {
    about: 'compress a text: --base DIR (--compressor DIR | --method full|none|truncate) [--ratio R | --budget K] --in FILE --out FILE.softctx',
    load: () => import('./compress.js'),
  },
  ask: {
    about: 'answer questions over a context: --base DIR (--compressor DIR | --method NAME) --context FILE.txt|.softctx --question TEXT [...]',
    load: () => import('./ask.js'),
  },
  fuzz: {
    about: 'fuzz every parser a user can feed: [--cases N] [--parsers NAME,..] [--seed S] [--json] (--replay NAME:INDEX)',
    load: () => import('./fuzz.js'),
  },
  pull: { about: 'put a named model into the cache and print its path: pull smollm2-135m-instruct (pull --list)', load: () => import('./pull.js') },
  serve: {
    about: 'HTTP server: [--port 8080] [--host 127.0.0.1] [--store PATH] [--base DIR] [--compressor DIR ...] (playground at /)',
    load: () => import('./serve.js'),
  },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.about}`);
  return `usage: softpress <command> [options]\n\ncommands:\n${lines.join('\n')}\n`;
}

export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`softpress: unknown command '${name}'\n\n${usage()}`);
    process.exitCode = 2;
    return;
  }
  try {
    const mod = await cmd.load();
    await pullNamedModels(rest);
    await mod.run(rest);
  } catch (e) {
    const err = e as Error;
    if (process.env.SOFTPRESS_DEBUG) console.error(err.stack);
    process.stderr.write(`softpress ${name}: ${err.message}\n`);
    process.exitCode = 1;
  }
}
