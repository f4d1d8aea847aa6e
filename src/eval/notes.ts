// What a summary says of a pruned model's fidelity beyond its figures: the CLI's and the page's words. Only types come
// from the pipeline, so the page's main thread can use it without loading onnxruntime.
import type { Fidelity, OutputFidelity } from './index.js';

/**
 * Whether an output's relative error flatters it: its values sit far from 0 (its mean holds more than three quarters
 * of its norm), so the error against their spread (centeredRelError) is more than twice the relative error.
 */
export const flattered = (o: OutputFidelity): boolean =>
  o.centeredRelError !== undefined && o.centeredRelError > 2 * o.relError;

/**
 * The notes on the largest relative output error: which output it is (of several), its error against its values'
 * spread where the relative error flatters it, that the agreement says little where the original's top-1 is one
 * class everywhere (and how far the scores are off against their spread across the inputs, which the relative error
 * then flatters), why there is no top-1 agreement, and which outputs were not compared.
 */
export function fidelityNotes(f: Fidelity): string[] {
  const outputs = f.outputs ?? [],
    worst = outputs.find((o) => o.relError === f.relError),
    scores = outputs.find((o) => o.agreement !== undefined),
    one = scores?.oneClass,
    skipped = f.uncompared?.map((o) => `"${o}"`).join(', ');
  return [
    ...(worst && outputs.length > 1 ? [`the largest of ${outputs.length} outputs': "${worst.name}"`] : []),
    ...(worst && flattered(worst)
      ? [`${worst.centeredRelError!.toFixed(4)} of the spread of its values about their mean`]
      : []),
    ...(one !== undefined
      ? [
          `the original's top-1 is class ${one} at every position, so the agreement says little` +
            (scores!.spreadRelError === undefined
              ? ': read the error'
              : `; its scores are off by ${scores!.spreadRelError.toFixed(4)} of their spread across the inputs`),
        ]
      : []),
    ...(f.relError !== undefined && f.agreement === undefined
      ? ['no output holds class scores, so no top-1 agreement']
      : []),
    // integers follow from the float outputs; data-shaped outputs may hold other numbers of boxes after pruning
    ...(skipped ? [`not compared: ${skipped} (integers, or shapes that depend on the values)`] : []),
  ];
}
