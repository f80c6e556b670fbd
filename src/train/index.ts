/** Training: the trainer, objectives and compressor training: softpress/train. */
export * from './answer-pointer.js';
export * from './induction.js';
export * from './objectives.js';
export * from './pretrain.js';
export * from './progress.js';
export * from './soft-restate.js';
export * from './train-compressor.js';
export * from './trainer.js';
