/** The decoder (Llama family), its loaders, tokenizers, chat formats and generation: softpress/models. */
export * from './bpe.js';
export * from './chat.js';
export * from './config.js';
export * from './generate.js';
export * from './gguf.js';
export * from './hf-tokenizer.js';
export * from './llama.js';
export * from './load.js';
export * from './tokenizer.js';
