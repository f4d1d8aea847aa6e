// Messages between the page (main.ts) and its worker (worker.ts).
import type { Mode, PruneReport } from '../prune/index.js';
import type { Method } from '../select/baselines.js';

export interface Job {
  model: ArrayBuffer;
  modelName: string;
  calib: ArrayBuffer;
  calibName: string;
  /** One size per compression, all from one run (pruneSizes). */
  compressions: number[];
  target: 'params' | 'flops';
  mode: Mode;
  method: Method;
  refit: boolean;
}

/**
 * progress: a stage of the size `size` (an index into the job's compressions; capture and select in layerwise mode
 * serve every size). size: one size, verified (or why it failed), as soon as it is ready. done: every size was sent.
 * error: the run failed (bad input, or before any size).
 */
export type FromWorker =
  | { type: 'progress'; size: number; stage: string; done: number; total: number }
  | { type: 'size'; size: number; model: Uint8Array; report: PruneReport }
  | { type: 'size'; size: number; error: string }
  | { type: 'done' }
  | { type: 'error'; message: string };
