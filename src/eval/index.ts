/** softpress evaluation: metrics, tasks, the method x ratio x task harness, perplexity, reports. */
export * from './metrics.js';
export * from './tasks.js';
export * from './harness.js';
export * from './perplexity.js';
export * from './report.js';
export * from './claims.js';
export { linePlotPng, encodePng } from './png.js';
