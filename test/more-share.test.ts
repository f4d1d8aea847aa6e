import { describe, it, expect } from 'vitest';
import {
  DataType,
  parseModel,
  readModel,
  serializeModel,
  shareEqualInitializers,
  makeNode,
  intsAttr,
  intAttr,
  type Model,
} from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { prune } from '../src/prune/index.js';
import { analyze } from '../src/graph/analyze.js';
import { modelStats } from '../src/graph/shapes.js';
import { sizeModel } from '../src/budget/size.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { rng } from './oracle.js';
import { randTensor, smallModel, storedElements } from './graph-helpers.js';

// Constants torch stores once and reads through Identity views (test/fixtures/make-more-share.py): the second block's
// causal mask, the LayerNorms' ones and zeros. normalizeModel gives each reader its own copy; the counts and the pruned
// file must still hold each once. Oracle: the elements a file stores, summed here from its initializers and Constants.

const FILE = 'test/fixtures/share-gpt2.onnx';

const masks = (m: Model) => m.graph!.initializer.filter((t) => t.dataType === DataType.BOOL).length;

describe('constants the exporter stores once', () => {
  it('are counted once after normalization copies them', () => {
    const file = readModel(FILE),
      m = readModel(FILE);
    expect(file.graph!.node.filter((n) => n.opType === 'Identity').length).toBeGreaterThan(0);
    expect(masks(file)).toBe(1);
    analyze(m); // normalizes in place: each Identity's reader gets a copy
    expect(m.graph!.node.some((n) => n.opType === 'Identity')).toBe(false);
    expect(masks(m)).toBe(2);
    expect(storedElements(m)).toBeGreaterThan(storedElements(file));
    expect(modelStats(m).params).toBe(storedElements(file));
  });

  it('are stored once in the pruned model, whose report and size model count its file', async () => {
    const calib = openNpy('test/fixtures/share-gpt2.calib.npy');
    try {
      const m = readModel(FILE);
      const { model, report } = await prune(m, calib, { budget: { compression: 1.5 }, threads: 1 });
      const written = parseModel(serializeModel(model));
      expect(report.groups.some((g) => g.kept < g.channels)).toBe(true);
      expect(masks(written)).toBe(1);
      expect(report.params.before).toBe(storedElements(readModel(FILE)));
      expect(report.params.after).toBe(storedElements(written));
      // the nodes that read a shared tensor under its name keep their op (FLOPs counted from the shapes through them)
      expect(report.flops.after).toBe(modelStats(written).flops);
      const keeps = new Map(report.groups.map((g) => [g.id, g.kept]));
      expect(sizeModel(m, analyze(m).groups, undefined, 'params')(keeps)).toBe(storedElements(written));
    } finally {
      calib.close();
    }
  });
});

// torch stores equal initializers once and reads them through Identity views; in an untrained network (and in
// torchvision's EfficientNets as exported) the SE layers' zero biases are one tensor that layers of several groups
// read. Normalization copies it per reader and groups cut the copies apart; until a copy is cut it is the stored one.
describe('a shared constant that groups cut', () => {
  const r = rng(11);
  // x → conv0 → conv1 (bias: Identity of bz) → conv2 (bias: Identity of bz) → GAP → fc, a Relu after each
  const file = () =>
    smallModel(
      [
        makeNode('Conv', ['x', 'w0', 'b0'], ['a0'], [intsAttr('pads', [1, 1, 1, 1])], 'conv0'),
        makeNode('Relu', ['a0'], ['r0'], [], 'relu0'),
        makeNode('Identity', ['bz'], ['b1'], [], 'view1'),
        makeNode('Conv', ['r0', 'w1', 'b1'], ['a1'], [intsAttr('pads', [1, 1, 1, 1])], 'conv1'),
        makeNode('Relu', ['a1'], ['r1'], [], 'relu1'),
        makeNode('Identity', ['bz'], ['b2'], [], 'view2'),
        makeNode('Conv', ['r1', 'w2', 'b2'], ['a2'], [intsAttr('pads', [1, 1, 1, 1])], 'conv2'),
        makeNode('Relu', ['a2'], ['r2'], [], 'relu2'),
        makeNode('GlobalAveragePool', ['r2'], ['p'], [], 'gap'),
        makeNode('Flatten', ['p'], ['f'], [intAttr('axis', 1)], 'flatten'),
        makeNode('Gemm', ['f', 'wf', 'bf'], ['y'], [intAttr('transB', 1)], 'fc'),
      ],
      [
        randTensor('w0', [4, 2, 3, 3], r),
        randTensor('b0', [4], r),
        randTensor('w1', [6, 4, 3, 3], r),
        randTensor('bz', [6], r),
        randTensor('w2', [6, 6, 3, 3], r),
        randTensor('wf', [5, 6], r),
        randTensor('bf', [5], r),
      ],
      ['N', 2, 6, 6],
    );
  const shape = [1, 2, 6, 6];

  it("is counted as the file stores it by the size model (budgets, inspect's share), cut or not", () => {
    const stored = storedElements(file()),
      m = file(),
      { groups } = analyze(m, shape);
    expect(groups.map((g) => g.id).sort()).toEqual(['conv0', 'conv1', 'conv2']);
    const size = sizeModel(m, groups, shape, 'params');
    const full = new Map(groups.map((g) => [g.id, g.channels]));
    expect(modelStats(m, shape).params).toBe(stored);
    expect(size(full)).toBe(stored);
    // each keep of conv1 and conv2 (conv0 at 3), against the elements the pruned file stores
    for (const k1 of [6, 4, 1])
      for (const k2 of [6, 5, 2]) {
        const keeps = new Map([...full, ['conv0', 3], ['conv1', k1], ['conv2', k2]]);
        const plans = groups.map((g) => ({ group: g, keep: Array.from({ length: keeps.get(g.id)! }, (_, i) => i) }));
        // as prune writes it: the copies still equal read one tensor again
        const pruned = pruneGroups(m, plans),
          written = parseModel(serializeModel({ ...pruned, graph: shareEqualInitializers(pruned.graph!) }));
        expect([k1, k2, size(keeps)]).toEqual([k1, k2, storedElements(written)]);
      }
  });
});
