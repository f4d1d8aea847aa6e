import { describe, it, expect } from 'vitest';
import { readModel, DataType, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { randInput, randomKeep, rng, run1, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures, fixtureOutputs } from './fixture-suite.js';

// Round 6 (test/fixtures/make-more-edge6.py): ONNX files as unusual export settings and tools write them: model-local
// functions (export_modules_as_functions), a scripted If and Loop, TrainingMode.TRAINING, float16 and float64
// weights, one conv applied twice, a file edited by tools (unused initializer and input, unnamed and same-named nodes,
// a stale value_info), dynamic H and W with renamed axes, two inputs of different ranks, a dict of two outputs.
// Oracle: onnxruntime running the original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const CALIB: Record<string, string> = {
  'edge6-half': 'edge6-half.calib.npy',
  'edge6-edited': 'edge6-edited.calib.npz',
  'edge6-two-inputs': 'edge6-two-inputs.calib.npz',
};
const open = (model: string) => {
  const name = CALIB[model] ?? 'cnn-images.calib.npy';
  return name.endsWith('.npz') ? openNpz(`${FIX}/${name}`) : openNpy(`${FIX}/${name}`);
};

const CASES: { model: string; groups: number[][] }[] = [
  // each BasicBlock a call of a FunctionProto: inlined, the stem and block 1's residual stream one group, block 2's
  // output and its downsample conv another
  {
    model: 'edge6-functions',
    groups: [
      [8, 2, 9, 1],
      [8, 1, 9],
      [16, 1, 9],
      [16, 2, 1],
    ],
  },
  // functions calling functions (a Stage of two BasicBlocks)
  {
    model: 'edge6-functions-nested',
    groups: [
      [8, 3, 9, 1],
      [8, 1, 9],
      [8, 1, 9],
      [16, 1, 9],
      [16, 3, 9, 1],
      [16, 1, 9],
    ],
  },
  // BatchNormalization in training mode refuses both convs; the classifier's hidden Linear stays a group
  { model: 'edge6-training', groups: [[12, 1, 1]] },
  // Dropout(ratio, training_mode) nodes pass the channels
  {
    model: 'edge6-dropout-train',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
      [12, 1, 1],
    ],
  },
  ...['edge6-half', 'edge6-edited', 'edge6-dynamic-all'].map((model) => ({
    model,
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 1],
    ],
  })),
  // float32 convs, a Cast to float64, a float64 MLP
  {
    model: 'edge6-double',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
      [24, 1, 1],
    ],
  },
  // the conv applied twice refuses the stem's channels; the head's output, pooled into the classifier, a group
  { model: 'edge6-tied', groups: [[16, 1, 1]] },
  // the metadata MLP's 8 neurons concatenated after the 16 pooled image channels
  {
    model: 'edge6-two-inputs',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
      [8, 1, 1],
      [12, 1, 1],
    ],
  },
  // the tower read by the box and the score convs (both outputs)
  {
    model: 'edge6-detect',
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => open(model), groups })),
);

const read = (name: string) => readModel(`${FIX}/${name}.onnx`);
const groupsOf = (m: Model, name: string) => analyzeFixture(m, () => open(name));

describe('model-local functions (export_modules_as_functions)', () => {
  it.each(['edge6-functions', 'edge6-functions-nested'])(
    '%s: the pruned model calls no function, and equals the original where nothing is removed',
    async (name) => {
      const m = read(name);
      expect(m.functions.length).toBeGreaterThan(1);
      expect(m.graph!.node.some((n) => n.domain !== '')).toBe(true);
      const original = await fixtureOutputs(read(name), open(name), 8);
      const { groups } = groupsOf(m, name);
      const all = pruneGroups(
        m,
        groups.map((group) => ({ group, keep: [...Array(group.channels).keys()] })),
      );
      expect(all.functions).toEqual([]);
      expect(all.graph!.node.every((n) => n.domain === '')).toBe(true);
      expect(await fixtureOutputs(all, open(name), 8)).toEqual(original);
      const r = rng(3),
        half = pruneGroups(
          m,
          groups.map((group) => ({ group, keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r) })),
        );
      expect(half.functions).toEqual([]);
      const convs = half.graph!.node.filter((n) => n.opType === 'Conv').length;
      expect(convs).toBe(name === 'edge6-functions' ? 6 : 10);
    },
  );

  it('a function left called (its opset differs from the model) is refused naming it', () => {
    const m = read('edge6-functions');
    m.functions.forEach((f) => f.opsetImport.forEach((o) => o.domain === '' && (o.version = 13n)));
    const { groups, refused } = groupsOf(m, 'edge6-functions');
    expect(groups).toEqual([]);
    const why = 'which subprune cannot inline: it imports opset 13 of "ai.onnx" where the model imports 17';
    expect(refused.find((r) => r.node === '/stem/stem.0/Conv')?.reason).toMatch(
      new RegExp(`calls the model-local function "BasicBlock(\\.1)?", ${why}`),
    );
  });
});

describe('refusals name what couples the channels', () => {
  it.each([
    // the Loop's body reads mid.weight (a scalar from it added each step): slicing it would change that scalar
    ['edge6-script-if', '/stem/Conv', /constant "mid.weight" is shared \(used by \/mid\/Conv, \/ReduceMean_1\)/],
    ['edge6-script-if', '/head/Conv', /comes from If "\/If", whose output shape could not be computed/],
    ['edge6-training', '/f/f.0/Conv', /BatchNormalization "\/f\/f.1\/BatchNormalization" is in training mode/],
    ['edge6-tied', '/stem/Conv', /constant "shared.weight" is shared .*: one layer applied to several inputs/],
  ])('%s: %s', (name, node, why) => {
    const { refused } = groupsOf(read(name), name);
    expect(refused.find((r) => r.node === node)?.reason).toMatch(why);
  });

  it('a scripted If and Loop: no group, and prune leaves the model as it is', async () => {
    expect(groupsOf(read('edge6-script-if'), 'edge6-script-if').groups).toEqual([]);
    const m = read('edge6-script-if'),
      { model, report } = await prune(m, open('edge6-script-if'), { budget: { keepRatio: 0.5 }, refit: false });
    expect(report.params.after).toBe(report.params.before);
    expect(model.graph!.initializer).toEqual(read('edge6-script-if').graph!.initializer);
  });
});

describe('weights of other float types', () => {
  it.each([
    ['edge6-half', DataType.FLOAT16, 3],
    ['edge6-double', DataType.DOUBLE, 2],
  ])('%s: the pruned weights keep their type', (name, type, count) => {
    const m = read(name),
      r = rng(4);
    const plans = groupsOf(m, name).groups.map((group) => ({ group, keep: randomKeep(group.channels, 3, r) }));
    const inits = pruneGroups(m, plans).graph!.initializer.filter((t) => t.dims.length === 2 || t.dims.length === 4);
    expect(inits.filter((t) => t.dataType === type).length).toBeGreaterThanOrEqual(count);
    expect(inits.every((t) => t.dataType === DataType.FLOAT || t.dataType === type)).toBe(true);
  });
});

describe('a file edited by tools', () => {
  it('keeps the unused input and initializer, names every node once, drops the stale value_info', () => {
    const m = read('edge6-edited');
    expect(m.graph!.node.filter((n) => n.name === '').length).toBe(2);
    expect(m.graph!.node.filter((n) => n.name === 'conv').length).toBe(2);
    const { groups } = groupsOf(m, 'edge6-edited');
    // the stale value_info says 8 channels; the conv writes 16, and the group says so
    expect(groups.map((g) => g.channels)).toEqual([8, 16, 16]);
    const pruned = pruneGroups(
      m,
      groups.map((group) => ({ group, keep: [0, 1, 2] })),
    );
    const names = pruned.graph!.node.map((n) => n.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names.every(Boolean)).toBe(true);
    expect(pruned.graph!.input.map((i) => i.name)).toEqual(['input', 'aux']);
    expect(pruned.graph!.initializer.some((t) => t.name === 'unused.weight')).toBe(true);
    expect(pruned.graph!.valueInfo).toEqual([]);
  });
});

describe('dynamic H and W, axes named differently', () => {
  it('the pruned model equals the zeroed original at batch 3 and 48×40', async () => {
    const m = read('edge6-dynamic-all'),
      r = rng(6);
    const plans = groupsOf(m, 'edge6-dynamic-all').groups.map((group) => ({
      group,
      keep: randomKeep(group.channels, 4, r),
    }));
    const x = randInput([3, 3, 48, 40], 7);
    const [got, want] = [await run1(pruneGroups(m, plans), x), await run1(zeroDroppedInputs(m, plans), x)];
    expect(got.dims).toEqual([3, 10]);
    expect(relDiff(got.data, want.data)).toBeLessThan(1e-4);
  });
});
