// Messages between the page (main.ts) and its worker (worker.ts).
import type { Mode, PruneReport } from '../prune/index.js';
import type { Method } from '../select/baselines.js';

export interface Job {
  model: ArrayBuffer;
  modelName: string;
  calib: ArrayBuffer;
  calibName: string;
  compression: number;
  target: 'params' | 'flops';
  mode: Mode;
  method: Method;
  refit: boolean;
}

export type FromWorker =
  | { type: 'progress'; stage: string; done: number; total: number }
  | { type: 'done'; model: Uint8Array; report: PruneReport }
  | { type: 'error'; message: string };
