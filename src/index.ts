/**
 * softpress: soft context compression for Llama-family LLMs, in TypeScript on libtorch.
 *
 * ```ts
 * import { Softpress, SoftContext } from 'softpress';
 * const sp = await Softpress.open({ base: 'smollm2-135m-instruct', method: 'truncate' });
 * const ctx = await sp.compress(text, { ratio: 4 });
 * const [a, b] = await sp.ask(ctx, ['Who …?', 'Where …?']);
 * sp.close();
 * ```
 *
 * Lower layers are subpaths: `softpress/tensor`, `softpress/nn`, `softpress/models`,
 * `softpress/compress`, `softpress/train`.
 * @packageDocumentation
 */
export { Softpress, SoftContext, SoftpressError, OptionsError, LoadError, ClosedError } from './api.js';
export type { Method, OpenOptions, CompressOptions, AskOptions, AskResult, StreamOptions } from './api.js';
export type { Budget, SoftContextMeta } from './compress/types.js';
