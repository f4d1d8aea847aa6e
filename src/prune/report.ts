// The report file of a run, as `prune --report` writes it and the page downloads it. Only types come from the
// pipeline, so the page's main thread can build it without loading onnxruntime.
import type { Budget } from '../budget/index.js';
import type { Mode, PruneReport } from './index.js';

/** One size of a run: where its model went and its report, or why it failed. */
export interface SizeResult {
  output: string;
  budget: Budget;
  result: PruneReport | { error: string };
}

/**
 * One size: {model, output, budget, ...its report}; several: {model, sizes: [{output, budget, ...its report} or
 * {output, budget, error}], shared}, where `shared` says what the sizes shared in `mode`. `extra` (the resolved
 * preprocessing, say) goes at the top level.
 */
export function runReport(model: string, mode: Mode, sizes: SizeResult[], extra: object = {}): object {
  const entry = ({ output, budget, result }: SizeResult) => ({ output, budget, ...result });
  if (sizes.length === 1) return { model, ...entry(sizes[0]!), ...extra };
  const shared =
    mode === 'layerwise'
      ? "one capture and one ranking per group for every size; the first size's seconds include them"
      : `${mode} mode captures the model pruned so far: one run per size`;
  return { model, sizes: sizes.map(entry), shared, ...extra };
}
