import { describe, it, expect } from 'vitest';
import { DataType, parseModel, readModel, serializeModel, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { prune } from '../src/prune/index.js';
import { analyze } from '../src/graph/analyze.js';
import { modelStats } from '../src/graph/shapes.js';
import { sizeModel } from '../src/budget/size.js';
import { storedElements } from './graph-helpers.js';

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
