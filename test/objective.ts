// The oracle for a unit's reported objective: run the original and the pruned model in onnxruntime and compare the
// consumer's outputs. consumer output − bias = B·W, so 1 − Σ‖Y′ − Y‖² / Σ‖Y − bias‖² is the objective the selection
// claims (for a unit pruned alone, so that its consumer input is the one the selection saw).
import type { Model } from '../src/onnx/index.js';
import { initializerMap, tensorToFloat32 } from '../src/onnx/index.js';
import type { NpyFile } from '../src/npy.js';
import type { Unit } from '../src/graph/types.js';
import { Runner } from '../src/capture/index.js';
import { batches } from '../src/calibration.js';

export async function measuredObjective(orig: Model, pruned: Model, unit: Unit, calib: NpyFile): Promise<number> {
  const out = unit.consumer.output[0]!,
    bName = unit.consumer.input[2];
  const bias = bName ? tensorToFloat32(initializerMap(orig.graph!).get(bName)!).data : undefined;
  const a = await Runner.open(orig, [out]),
    b = await Runner.open(pruned, [out]);
  let err = 0,
    norm = 0;
  try {
    for (const batch of batches(calib, 128)) {
      const y = (await a.run(batch.data, batch.dims, [out])).get(out)!,
        z = (await b.run(batch.data, batch.dims, [out])).get(out)!;
      if (z.dims.join() !== y.dims.join()) throw new Error(`consumer output [${z.dims}] vs [${y.dims}]`);
      const m = y.dims[1]!,
        per = y.data.length / (y.dims[0]! * m); // Conv [N, m, h, w] and dense [N, m] alike
      for (let i = 0; i < y.data.length; i++) {
        const yb = y.data[i]! - (bias ? bias[Math.floor(i / per) % m]! : 0);
        err += (z.data[i]! - y.data[i]!) ** 2;
        norm += yb * yb;
      }
    }
  } finally {
    await a.release();
    await b.release();
  }
  return 1 - err / norm;
}

/** ‖a − b‖ / ‖b‖. */
export const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let e = 0,
    n = 0;
  for (let i = 0; i < b.length; i++) {
    e += (a[i]! - b[i]!) ** 2;
    n += b[i]! ** 2;
  }
  return Math.sqrt(e / n);
};
