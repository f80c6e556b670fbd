/**
 * softpress compressors. Importing this module registers every method; a new method is one
 * file plus its line here and its entry in test/compressors.test.ts (the shared suite).
 */
import './strategies.js';
import './ccf.js';
import './comprexit.js';
import './gmsa.js';
import './meanpool.js';
import './icae.js';

export * from './types.js';
export * from './registry.js';
export * from './decode.js';
export * from './softctx.js';
export * from './batching.js';
export * from './prompts.js';
export {
  recipeOptions,
  recipeReport,
  recipeTable,
  stageRecipe,
  type MethodRecipe,
  type RecipeDeviation,
  type RecipeSource,
  type RecipeValue,
  type StageRecipe,
} from './recipe.js';
