/** Training: the trainer, objectives, pretraining and compressor training: softpress/train. */
export * from './objectives.js';
export * from './pretrain.js';
export * from './progress.js';
export * from './train-compressor.js';
export * from './trainer.js';
