// Writes results/recipes.md: every learned method's training recipe against its paper, and every
// deviation, from the recipes in src/compress/<method>.ts (run `npm run build:ts` first), then
// notes on what our compute forces and on the compressors shipped before the recipes.
import { writeFileSync } from 'node:fs';
import { compressorNames, compressorRecipe, recipeReport } from '../dist/src/compress/index.js';

const recipes = compressorNames({ learnedOnly: true })
  .map((m) => compressorRecipe(m))
  .filter(Boolean);
const notes = `
## What our compute and bases force

- **CCF documents.** The paper trains on documents of up to 128k tokens; the default here is 16
  segments per document (16,384 tokens at l = 1,024), drawn from inside single long documents of
  the train split (\`DocumentChunkSampler\`), so that the reservoir (k = 2) decides for 14 of
  them. Fewer segments are used when the base's position window cannot hold the memory of all but
  the last segment plus that segment at the smallest training ratio (\`CcfCompressor.defaultDocLen\`), and a
  document that does not fit is refused with the positions it needs. On SmolLM2 (8,192 positions)
  16 segments fit at ratio 8 (1,920 + 1,024 positions).
- **Small bases.** GMSA's encoder depth is at most half the base's layers and its LoRA rank at
  most the hidden size; CCF's segment at most a quarter of the window. All equal the paper on
  SmolLM2; on softpress-base (6 layers, hidden 256, 1,024 positions) they are 3 layers, rank 128,
  l = 256. Each trained compressor's card lists the values it actually used.
- **Precision.** Trainable parameters are float32 for any base dtype (float64 over a float64
  base); LoRA factors and GMSA's deltas cast at use, so a bfloat16 base keeps small AdamW updates.

## The compressors shipped in models/

They were trained on softpress-base before these recipes (e.g. CCF l = 64, rank 8, documents of
5 segments; ICAE rank 16 with memory from \`<|mem|>\`; GMSA rank 32; ComprExIT with one shared
LayerNorm, no biases, no BOS; all with the \`<|restate|>\` token prompt) and are not retrained
here: their \`compressor.json\` keeps the options they were made with, and options they predate
load with the old layout (\`savedDefaults\` in the registry; \`test/shipped-compressors.test.ts\`).
Their reconstruction figures in README.md were measured with the \`<|restate|>\` prompt; the
evaluation now asks every method with the text prompt.
`;
writeFileSync('results/recipes.md', recipeReport(recipes) + notes);
console.log(`wrote results/recipes.md (${recipes.map((r) => r.method).join(', ')})`);
