import { describe, it, expect } from 'vitest';
import { readModel, tensorToFloat32, type Model } from '../src/onnx/index.js';
import { analyze, consumerWeightMatrix } from '../src/graph/analyze.js';
import { Calibration } from '../src/calibration.js';
import { captureGrams } from '../src/capture/index.js';
import { prune } from '../src/index.js';
import { constantTensors } from '../src/graph/shapes.js';
import { openNpy, readNpy } from '../src/npy.js';
import { attrInts, type NodeProto } from '../src/onnx/index.js';
import { gramOf, type Mat } from './oracle.js';
import { describeFixtures } from './fixture-suite.js';
import { run } from './graph-helpers.js';

// 3-D convolutions (r3d_18, r2plus1d_18, s3d, 3-D UNets had 0 % of their FLOPs prunable): their consumers' patches
// are those of their planes over the input unfolded along depth. Oracles: onnxruntime running the original with the
// dropped channels' inputs zeroed (test/fixture-suite.ts), and the Gram matrices of 3-D patches built here from the
// convolution's definition in float64.

const FIX = 'test/fixtures';
const calib = () => openNpy(`${FIX}/conv3d-video.calib.npy`);

describeFixtures([
  {
    // the stem's channels (the residual stream: the stem and conv2 make them, conv1 and the (2+1)-D pair's spatial
    // conv read them), conv1's, the spatial conv's (read by the temporal one, kernel 3×1×1), the temporal conv's
    // (through the depthwise conv to the pointwise one) and the pointwise conv's (the classifier reads them)
    model: `${FIX}/conv3d-video.onnx`,
    data: calib,
    groups: [
      [8, 2, 27, 9],
      [8, 1, 27],
      [12, 1, 3],
      [16, 1, 1],
      [16, 1, 1],
    ],
  },
  {
    // a C3D-like net (make-more-tv16.py): the stem's channels (a residual stream, read by conv1 and the classifier) and
    // conv1's
    model: `${FIX}/tv16-c3d.onnx`,
    data: () => openNpy(`${FIX}/tv16-c3d.calib.npy`),
    groups: [
      [8, 2, 27, 1],
      [8, 1, 27],
    ],
  },
  {
    // a 3-D UNet (make-more-tv16.py): the encoder's channels (read by the down conv and, past the Concat with the
    // skip, the output conv), the down conv's (read by the ConvTranspose3d, a row per voxel) and the up conv's
    model: `${FIX}/tv16-unet3d.onnx`,
    data: () => openNpy(`${FIX}/conv3d-volume.calib.npy`),
    groups: [
      [4, 1, 27, 1],
      [8, 1, 1],
      [4, 1, 1],
    ],
  },
]);

/** The im2col patches of a 3-D Conv node over x [b, C, D, H, W], by its definition: a row per output position. */
function patches3d(node: NodeProto, x: { data: Float32Array; dims: number[] }, k: number[]): Mat {
  const [b, C, D, H, W] = x.dims as [number, number, number, number, number],
    s = attrInts(node, 'strides', [1, 1, 1]),
    p = attrInts(node, 'pads', [0, 0, 0, 0, 0, 0]),
    dl = attrInts(node, 'dilations', [1, 1, 1]);
  const size = [D, H, W],
    out = size.map((n, a) => Math.floor((n + p[a]! + p[a + 3]! - (k[a]! - 1) * dl[a]! - 1) / s[a]!) + 1);
  const cols = C * k[0]! * k[1]! * k[2]!,
    rows: number[] = [];
  for (let n = 0; n < b; n++)
    for (let od = 0; od < out[0]!; od++)
      for (let oh = 0; oh < out[1]!; oh++)
        for (let ow = 0; ow < out[2]!; ow++)
          for (let c = 0; c < C; c++)
            for (let i = 0; i < k[0]!; i++)
              for (let j = 0; j < k[1]!; j++)
                for (let l = 0; l < k[2]!; l++) {
                  const z = od * s[0]! - p[0]! + i * dl[0]!,
                    y = oh * s[1]! - p[1]! + j * dl[1]!,
                    w = ow * s[2]! - p[2]! + l * dl[2]!;
                  const inside = z >= 0 && z < D && y >= 0 && y < H && w >= 0 && w < W;
                  rows.push(inside ? x.data[(((n * C + c) * D + z) * H + y) * W + w]! : 0);
                }
  return { rows: rows.length / cols, cols, a: Float64Array.from(rows) };
}

describe('3-D Conv consumers', () => {
  it('capture the Gram matrices of their 3-D patches, and project the target on their weights', async () => {
    const m: Model = readModel(`${FIX}/conv3d-video.onnx`),
      x = readNpy(`${FIX}/conv3d-video.calib.npy`),
      data = calib();
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    const consts = constantTensors(m.graph!);
    // every 3-D Conv consumer: kernels 3×3×3 (pads 1), 1×3×3, 3×3×3, 3×1×1 (stride 2 in depth) and 1×1×1
    const consumers = groups.flatMap((g) => g.consumers.filter((c) => c.conv?.depth));
    expect(consumers.map((c) => c.g)).toEqual([27, 9, 27, 3, 1]);
    const acts = await run(
      m,
      { data: x.data as Float32Array, dims: x.shape },
      consumers.map((c) => c.input),
    );
    // layerwise: G = BᵀB; asymmetric on the model itself (A = B): CW = G·W and ‖BW‖², the target read off each
    // consumer's own output (less its bias) as an asymmetric capture reads the original's, or C = H = G
    for (const asymmetric of [false, true]) {
      const grams = await captureGrams(m, groups, data, asymmetric ? { target: { model: m, groups } } : {});
      for (const g of groups)
        g.consumers.forEach((c, i) => {
          if (!c.conv?.depth) return;
          const k = tensorToFloat32(consts.get(c.weight)!).dims.slice(2);
          const P = patches3d(c.node, acts.get(c.input)!, k),
            G = gramOf(P),
            got = grams.get(g.id)![i]!;
          const scale = Math.max(...G.map(Math.abs));
          expect(got.rows).toBe(P.rows);
          expect(Math.max(...got.G.map((v, j) => Math.abs(v - G[j]!)))).toBeLessThan(2e-5 * scale);
          if (!asymmetric) return;
          if (!got.CW) {
            // C = BᵀA and H = AᵀA where the target is not projected (m ≥ 3d/4): both G here
            for (const X of [got.C!, got.H!])
              expect(Math.max(...X.map((v, j) => Math.abs(v - G[j]!)))).toBeLessThan(2e-5 * scale);
            return;
          }
          const W = consumerWeightMatrix(m, c),
            GW = new Float64Array(c.d * c.m);
          for (let r = 0; r < c.d; r++)
            for (let q = 0; q < c.d; q++)
              for (let j = 0; j < c.m; j++) GW[r * c.m + j] += G[r * c.d + q]! * W[q * c.m + j]!;
          const gwScale = Math.max(...GW.map(Math.abs));
          expect(Math.max(...got.CW.map((v, j) => Math.abs(v - GW[j]!)))).toBeLessThan(1e-4 * gwScale);
          let norm2 = 0;
          for (let j = 0; j < c.m * c.d; j++) norm2 += W[j]! * GW[j]!;
          expect(Math.abs(got.targetNorm2! - norm2)).toBeLessThan(1e-4 * norm2);
        });
    }
  });

  it("take the sampling method's statistics and the sweep's re-fit from the same patches", async () => {
    // both read the consumers' 3-D patches on their own paths (capture/stats.ts, prune/sweep.ts); they threw on the
    // 5-D input before. The pruned model must stay close to the original (every run above, default: error < 0.01)
    const { report } = await prune(readModel(`${FIX}/conv3d-video.onnx`), calib(), {
      budget: { compression: 2 },
      mode: 'layerwise',
      method: 'sampling',
      sweep: 1,
      threads: 1,
    });
    expect(report.groups.length).toBe(5);
    expect(report.fidelity.relError).toBeLessThan(0.05);
  });
});
