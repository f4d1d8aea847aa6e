import * as ort from 'onnxruntime-node';
import { openNpy } from '../src/npy.js';

/** Top-1 accuracy of a written model on the bundled 2,000 test images (models/test.npy), run in onnxruntime. */
export async function testAccuracy(path: string): Promise<number> {
  const s = await ort.InferenceSession.create(path),
    x = openNpy('models/test.npy'),
    y = openNpy('models/test-labels.npy').readF64();
  let hit = 0;
  for (let r0 = 0; r0 < x.rows; r0 += 500) {
    const r1 = Math.min(x.rows, r0 + 500);
    const out = (
      await s.run({ [s.inputNames[0]]: new ort.Tensor('float32', x.readF32(r0, r1), [r1 - r0, 1, 28, 28]) })
    )[s.outputNames[0]].data as Float32Array;
    for (let r = 0; r < r1 - r0; r++) {
      let b = 0;
      for (let j = 1; j < 10; j++) if (out[r * 10 + j] > out[r * 10 + b]) b = j;
      if (b === y[r0 + r]) hit++;
    }
  }
  x.close();
  await s.release();
  return hit / x.rows;
}
