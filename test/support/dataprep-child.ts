/**
 * node --max-old-space-size=40 --import tsx test/support/dataprep-child.ts SOURCE OUT TOKENIZER
 *
 * Runs the data-preparation pipeline in its own (small-heap) process for the streaming test; prints the report as
 * JSON on stdout, and the peak RSS.
 */
import { prepareData } from '../../model/dataprep/pipeline.ts';

const [source, outDir, tokenizer] = process.argv.slice(2);
const report = await prepareData({ sources: [{ name: 'big', path: source! }], outDir: outDir!, tokenizer: tokenizer!, heldOutFraction: 0.01 });
process.stdout.write(JSON.stringify({ report, maxRssMB: process.resourceUsage().maxRSS / 1024 }) + '\n');
