import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { create, toBinary } from '@bufbuild/protobuf';
import {
  DataType,
  ModelProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataLocation,
  initializerMap,
  intAttr,
  makeNode,
  readModel,
  replaceInitializerData,
  serializeModel,
  tensorToFloat32,
  type Model,
} from '../src/onnx/index.js';
import { encodeNpy, openNpy } from '../src/npy.js';
import { analyze } from '../src/graph/analyze.js';
import { gramBytes } from '../src/kernels/gram.js';
import { fmtBytes } from '../src/kernels/memory.js';
import { selectionBytes } from '../src/select/greedy.js';
import { randTensor, rng, smallModel } from './graph-helpers.js';
import { ensureBuilt, expectFailure, runCli, spawnCli } from './cli-helpers.js';

// The CLI as users meet it: every failure is an exit code (2 bad input, 1 internal) and one line on stderr saying what
// is wrong and what to do; nothing the user has is lost or overwritten; an interrupted run leaves no partial file.
// All files are made here, in a temporary folder.

const LENET = 'models/lenet.onnx';
let dir: string;
const at = (name: string) => join(dir, name);
const put = (name: string, bytes: Uint8Array | string) => {
  writeFileSync(at(name), bytes);
  return at(name);
};
const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
const temps = () => readdirSync(dir).filter((f) => f.endsWith('.tmp') || f.startsWith('.subprune-probe'));

/** LeNet with a change, written to the temp folder. */
function lenetWith(name: string, change: (m: Model) => void): string {
  const m = readModel(LENET);
  change(m);
  return put(name, toBinary(ModelProtoSchema, m)); // toBinary: no checks, so broken models can be written
}

function setFloat(m: Model, name: string, i: number, v: number): void {
  const { dims, data } = tensorToFloat32(initializerMap(m.graph!).get(name)!);
  data[i] = v;
  replaceInitializerData(m.graph!, name, dims, data);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'subprune-cli-'));
  put('calib.npy', readFileSync('models/calib.npy')); // 512 samples
  const calib = openNpy(at('calib.npy')),
    x = calib.readF32(0, 64);
  calib.close();
  const nan = x.slice(),
    inf = x.slice();
  nan[3 * 784 + 100] = NaN;
  inf[5 * 784] = -Infinity;
  put('calib-few.npy', encodeNpy(x, [64, 1, 28, 28]));
  put('calib-nan.npy', encodeNpy(nan, [64, 1, 28, 28]));
  put('calib-inf.npy', encodeNpy(inf, [64, 1, 28, 28]));
  put('calib-27.npy', encodeNpy(new Float32Array(4 * 27 * 27), [4, 1, 27, 27]));
  put('calib-rank2.npy', encodeNpy(x.subarray(0, 4 * 784), [4, 784]));
  put('calib-int.npy', encodeNpy(new Int32Array(4 * 784), [4, 1, 28, 28]));
  put('calib-none.npy', encodeNpy(new Float32Array(0), [0, 1, 28, 28]));
  put('empty.npy', '');
  put('dense-calib.npy', encodeNpy(new Float32Array(8 * 4).fill(0.5), [8, 4]));
  mkdirSync(at('folder'));
  put('text.onnx', 'this is not a model\n');
  put('trunc.onnx', readFileSync(LENET).subarray(0, 100_000));
  lenetWith('opset30.onnx', (m) => {
    m.opsetImport[0]!.version = 30n;
  });
  lenetWith('opset5.onnx', (m) => {
    m.opsetImport[0]!.version = 5n;
  });
  lenetWith('bool-input.onnx', (m) => {
    const t = m.graph!.input[0]!.type!.value;
    if (t.case === 'tensorType') t.value.elemType = DataType.BOOL;
  });
  lenetWith('short-weight.onnx', (m) => {
    initializerMap(m.graph!).get('conv1.weight')!.dims = [6n, 1n, 3n, 4n];
  });
  lenetWith('huge-dims.onnx', (m) => {
    initializerMap(m.graph!).get('fc3.bias')!.dims = [2n ** 40n, 2n ** 40n];
  });
  lenetWith('nan-weight.onnx', (m) => setFloat(m, 'conv2.bias', 0, NaN));
  lenetWith('escape.onnx', (m) => {
    const t = initializerMap(m.graph!).get('fc3.bias')!;
    t.rawData = new Uint8Array(0);
    t.dataLocation = TensorProto_DataLocation.EXTERNAL;
    t.externalData = [create(StringStringEntryProtoSchema, { key: 'location', value: '../fc3.bin' })];
  });
  put('budget-unknown.json', '{"nope": 2}');
  put('budget-large.json', '{"/conv1/Conv": 7}');
  put('budget-zero.json', '{"/conv1/Conv": 0}');
  put('budget-bad.json', '{"/conv1/Conv": 3,');
  put('a-file', 'x');
  // A single Gemm: nothing to prune.
  const r = rng(3);
  put(
    'one-layer.onnx',
    serializeModel(
      smallModel(
        [makeNode('Gemm', ['x', 'w'], ['y'], [intAttr('transB', 1)], 'fc')],
        [randTensor('w', [3, 4], r)],
        ['N', 4],
      ),
    ),
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('bad input: exit 2 and one line that says what is wrong and what to do', () => {
  const prune = (model: string, calib = at('calib.npy'), ...more: string[]) => [
    'prune',
    model,
    '--calib',
    calib,
    '-o',
    at('out.onnx'),
    '--quiet',
    ...more,
  ];
  const cases: [string, () => string[], RegExp][] = [
    [
      'a file that is not ONNX',
      () => ['inspect', at('text.onnx')],
      /text\.onnx: not a valid ONNX model: .* re-export or re-download it/,
    ],
    [
      'a truncated model',
      () => prune(at('trunc.onnx')),
      /trunc\.onnx: not a valid ONNX model: protobuf decoding failed/,
    ],
    [
      'a corrupted model (weights shorter than their dims)',
      () => ['inspect', at('short-weight.onnx')],
      /tensor "conv1\.weight" has 216 bytes of data but its dims \[6, 1, 3, 4\] need 288; the model is corrupted/,
    ],
    [
      'a tensor larger than memory could hold',
      () => prune(at('huge-dims.onnx')),
      /tensor "fc3\.bias" has 40 bytes of data but its dims \[1099511627776, 1099511627776\] need 4\.8\d*e\+24/,
    ],
    [
      'an opset newer than supported',
      () => ['inspect', at('opset30.onnx')],
      /opset 30; subprune supports opsets 7 to 26\. Re-export/,
    ],
    ['an opset older than supported', () => prune(at('opset5.onnx')), /opset 5; subprune supports opsets 7 to 26/],
    [
      'an unsupported input data type',
      () => prune(at('bool-input.onnx')),
      /input input has data type BOOL; subprune feeds float32\/float16 and int64\/int32 inputs/,
    ],
    [
      'external data outside the model folder',
      () => ['inspect', at('escape.onnx')],
      new RegExp(
        'external data location "\\.\\./fc3\\.bin" contains "\\.\\.": ' +
          "subprune reads external data only from files inside the model's folder",
      ),
    ],
    [
      'calibration data of the wrong shape',
      () => prune(LENET, at('calib-27.npy')),
      /calib-27\.npy has shape \[4,1,27,27\] but the model input input needs \[\?,1,28,28\]/,
    ],
    [
      'calibration data of the wrong rank',
      () => prune(LENET, at('calib-rank2.npy')),
      /calib-rank2\.npy has shape \[4,784\] \(rank 2\); the model input input has rank 4/,
    ],
    [
      'calibration data of the wrong dtype',
      () => prune(LENET, at('calib-int.npy')),
      /calib-int\.npy holds int32 values; the model input input is float/,
    ],
    [
      'NaN in calibration data',
      () => prune(LENET, at('calib-nan.npy')),
      /calib-nan\.npy: NaN in sample 3; calibration data must be finite/,
    ],
    [
      'Inf in calibration data',
      () => prune(LENET, at('calib-inf.npy')),
      /calib-inf\.npy: -Infinity in sample 5; calibration data must be finite/,
    ],
    [
      'NaN in captured activations (names the tensor)',
      () => prune(at('nan-weight.onnx')),
      /tensor \/flatten\/Flatten_output_0 has NaN on the calibration data \(sample 0\)/,
    ],
    ['an empty calibration file', () => prune(LENET, at('empty.npy')), /empty\.npy: not a \.npy file/],
    [
      'a calibration file with no samples',
      () => prune(LENET, at('calib-none.npy')),
      /calib-none\.npy holds no samples/,
    ],
    [
      'a calibration folder without --preprocess',
      () => prune(LENET, at('folder')),
      /folder is a folder of images: give --preprocess/,
    ],
    [
      'an unknown unit id in a budget file',
      () => prune(LENET, undefined, '--budget', at('budget-unknown.json')),
      /budget names "nope", which is no prunable group \(ids: \/conv1\/Conv, /,
    ],
    [
      'a budget larger than a unit',
      () => prune(LENET, undefined, '--budget', at('budget-large.json')),
      /budget for \/conv1\/Conv: 7 channels; it has 6, keep between 1 and 6/,
    ],
    [
      'a budget of 0 channels',
      () => prune(LENET, undefined, '--budget', at('budget-zero.json')),
      /budget for \/conv1\/Conv: 0 channels; .* keep between 1 and 6/,
    ],
    [
      'a budget file that is not JSON',
      () => prune(LENET, undefined, '--budget', at('budget-bad.json')),
      /--budget .*budget-bad\.json: /,
    ],
    [
      'compression < 1',
      () => prune(LENET, undefined, '--compression', '0.5'),
      /--compression 0\.5: expected a ratio ≥ 1/,
    ],
    [
      'a compression out of reach',
      () => prune(LENET, undefined, '--compression', '1000'),
      /compression 1000 is out of reach: .*; the rest is in layers subprune cannot prune/,
    ],
    [
      // VGG's groups (32–256 channels) keep 8 at least by default (--round-to auto): 261× at most, 8986× any count
      'a compression only --round-to 1 reaches',
      () => prune('models/vgg.onnx', undefined, '--compression', '1000'),
      /compression 1000 is out of reach: .*\(261\.24×\); --round-to 1 \(any count; .*\) reaches it/,
    ],
    ['a missing model', () => prune(at('nothere.onnx')), /cannot read model file .*nothere\.onnx: ENOENT/],
    [
      'a missing calibration file',
      () => prune(LENET, at('nothere.npy')),
      /nothere\.npy: cannot open \(ENOENT\); check the path/,
    ],
    [
      'a missing budget file',
      () => prune(LENET, undefined, '--budget', at('nothere.json')),
      /--budget .*nothere\.json: ENOENT/,
    ],
    [
      'an output folder that does not exist',
      () => ['prune', LENET, '--calib', at('calib.npy'), '-o', at('no/such/out.onnx')],
      /cannot write .*no\/such\/out\.onnx: .*check that its folder exists and is writable/,
    ],
    [
      'an output folder that is a file',
      () => ['prune', LENET, '--calib', at('calib.npy'), '-o', at('a-file/out.onnx')],
      /cannot write .*a-file\/out\.onnx: ENOTDIR/,
    ],
    [
      'an output folder that is read-only',
      () => ['prune', LENET, '--calib', at('calib.npy'), '-o', '/proc/out.onnx'],
      /cannot write \/proc\/out\.onnx: /,
    ],
    [
      'an output that is a folder',
      () => ['prune', LENET, '--calib', at('calib.npy'), '-o', at('folder')],
      /cannot write .*folder: it is a folder/,
    ],
    [
      'a report in an unwritable folder',
      () => prune(LENET, undefined, '--report', at('no/such/r.json')),
      /cannot write .*no\/such\/r\.json/,
    ],
    [
      'an unknown flag',
      () => ['prune', LENET, '--calibration', 'x'],
      /unknown option --calibration; did you mean --calib\?/,
    ],
    [
      'an unknown short flag',
      () => ['prune', LENET, '-c', '4'],
      /unknown option -c; did you mean --calib, --compression\?/,
    ],
    ['an unknown command', () => ['shrink', LENET], /unknown command 'shrink'/],
    ['--round-to 0', () => prune(LENET, undefined, '--round-to', '0'), /--round-to .*a whole number ≥ 1/],
  ];
  it.each(cases)('%s', async (_, args, message) => {
    rmSync(at('out.onnx'), { force: true });
    const r = await runCli(...args());
    expectFailure(r, 2, message);
    expect(existsSync(at('out.onnx'))).toBe(false);
    expect(temps()).toEqual([]);
  });
});

describe('too few calibration samples for a re-fit', () => {
  it('the consumer takes the ridge: exit 0, the model written, a warning on stderr naming it', async () => {
    const out = at('few.onnx');
    const r = await runCli('prune', LENET, '--calib', at('calib-few.npy'), '--keep-ratio', '0.5', '-o', out);
    expect(r.code).toBe(0);
    expect(existsSync(out)).toBe(true);
    // one warning, its consumers one per line
    expect(r.err).toMatch(
      new RegExp(
        'warning: .*few\\.onnx: the 64 calibration samples give 3 consumers fewer rows of input than their d ' +
          'columns, .*re-fitted with a ridge toward their own weights; give at least ' +
          '400 distinct samples for a full re-fit, and measure the pruned model on other inputs \\(--verify\\):\n' +
          '  group /conv2/Conv, consumer /fc1/Gemm: 64 rows, d = 400\n' +
          '  group /fc1/Gemm, consumer /fc2/Gemm: 64 rows, d = 120\n',
      ),
    );
  });
});

describe('a model with no prunable groups', () => {
  it('is not an error: exit 0, says so, writes the report but no useless copy of the model', async () => {
    const r = await runCli(
      'prune',
      at('one-layer.onnx'),
      '--calib',
      at('dense-calib.npy'),
      '-o',
      at('none.onnx'),
      '--report',
      at('none.json'),
    );
    expect(r.code).toBe(0);
    expect(r.err).toMatch(
      new RegExp(
        'one-layer\\.onnx has no prunable groups \\(1 candidates refused; subprune inspect says why\\); ' +
          'nothing to prune, so .*none\\.onnx was not written',
      ),
    );
    expect(existsSync(at('none.onnx'))).toBe(false);
    const report = JSON.parse(readFileSync(at('none.json'), 'utf8'));
    expect(report.groups).toEqual([]);
    expect(report.refused).toEqual([{ node: 'fc', reason: 'output layer: no consumer' }]);
  });
});

describe('nothing is lost or overwritten', () => {
  it('prune writes a model that runs; the input is not modified; no temporary file remains', async () => {
    const input = put('in.onnx', readFileSync(LENET)),
      before = sha(input),
      mtime = statSync(input).mtimeMs;
    const r = await runCli(
      'prune',
      input,
      '--calib',
      at('calib.npy'),
      '-o',
      at('pruned.onnx'),
      '--compression',
      '2',
      '--quiet',
    );
    expect(r).toEqual({ code: 0, out: '', err: '' });
    expect([sha(input), statSync(input).mtimeMs]).toEqual([before, mtime]);
    expect(temps()).toEqual([]);
    const s = await ort.InferenceSession.create(readFileSync(at('pruned.onnx')));
    const y = await s.run({ input: new ort.Tensor('float32', new Float32Array(2 * 784).fill(0.5), [2, 1, 28, 28]) });
    await s.release();
    expect(y[s.outputNames[0]!]!.dims).toEqual([2, 10]);
    expect(readFileSync(at('pruned.onnx')).length).toBeLessThan(readFileSync(input).length / 1.5);
  });

  it(
    '-o equal to the input is refused (same path, another spelling, a symbolic link, a hard link), and so are ' +
      'outputs over other inputs',
    async () => {
      const input = put('self.onnx', readFileSync(LENET)),
        before = sha(input);
      symlinkSync(input, at('self-symlink.onnx'));
      linkSync(input, at('self-hardlink.onnx'));
      for (const o of [
        input,
        join(dir, 'folder', '..', 'self.onnx'),
        at('self-symlink.onnx'),
        at('self-hardlink.onnx'),
      ]) {
        const r = await runCli('prune', input, '--calib', at('calib.npy'), '-o', o);
        expectFailure(r, 2, /is the input model; subprune never overwrites its input, choose another file/);
      }
      expect(sha(input)).toBe(before);
      const calib = sha(at('calib.npy'));
      for (const args of [
        ['-o', at('calib.npy')],
        ['-o', at('x.onnx'), '--report', at('calib.npy')],
      ]) {
        const r = await runCli('prune', input, '--calib', at('calib.npy'), ...args);
        expectFailure(r, 2, /calib\.npy is an input of this run; subprune never overwrites its inputs/);
      }
      expect(sha(at('calib.npy'))).toBe(calib);
    },
  );

  it('a failed run leaves an existing output file as it was', async () => {
    const out = put('existing.onnx', 'an earlier result');
    const r = await runCli('prune', LENET, '--calib', at('calib-nan.npy'), '-o', out);
    expectFailure(r, 2, /NaN in sample 3/);
    expect(readFileSync(out, 'utf8')).toBe('an earlier result');
    expect(temps()).toEqual([]);
  });
});

describe('the kernel memory a run needs', () => {
  it('is printed before the run and reported: all Gram matrices in one pass, the largest selection', async () => {
    const r = await runCli(
      'prune',
      LENET,
      '--calib',
      at('calib.npy'),
      '-o',
      at('plan.onnx'),
      '--report',
      at('plan.json'),
      '--compression',
      '4',
      '--mode',
      'layerwise', // one pass over the data for every group
      '--threads',
      '1',
    );
    expect(r.code).toBe(0);
    const groups = analyze(readModel(LENET), [1, 1, 28, 28]).groups;
    const capture = groups.reduce(
        (a, u) => a + u.consumers.reduce((b, c) => b + gramBytes(c.d, false, undefined, c.conv), 0),
        0,
      ),
      select = Math.max(
        ...groups.map((u) => u.consumers.reduce((b, c) => b + selectionBytes(c.d, c.m, c.g, u.channels), 0)),
      );
    expect(r.out.split('\n')[0]).toBe(
      `kernel memory: at most ${fmtBytes(capture)} to capture (${groups.length} groups, 1 pass) and ` +
        `${fmtBytes(select)} to select (1 thread)`,
    );
    expect(JSON.parse(readFileSync(at('plan.json'), 'utf8')).memory).toEqual({
      capture,
      passes: 1,
      groups: groups.length,
      select,
    });
  });
});

describe('the real process (bin/subprune.js)', () => {
  beforeAll(ensureBuilt, 180_000);

  it('exit 2 with one line and no stack trace; --debug shows the stack', () => {
    const r = spawnCli('inspect', at('trunc.onnx'));
    expectFailure(r, 2, /not a valid ONNX model/);
    expect(r.out).toBe('');
    const d = spawnCli('inspect', at('trunc.onnx'), '--debug');
    expect(d.code).toBe(2);
    expect(d.err).toMatch(/SubpruneError: .*not a valid ONNX model[^]*\n\s+at /);
  });

  it('SIGINT during a run: exit 130, one line, no output file and no temporary file', async () => {
    // VGG, sequential mode, batches of 1: about 14 s of work here (LeNet finished in 1 s on a fast machine), so the
    // signal lands mid-run
    const child = spawn(
      process.execPath,
      [
        'bin/subprune.js',
        'prune',
        'models/vgg.onnx',
        '--calib',
        'models/calib.npy',
        '-o',
        at('interrupted.onnx'),
        '--report',
        at('interrupted.json'),
        '--mode',
        'sequential',
        '--batch',
        '1',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '',
      exited = false;
    child.stderr.on('data', (b) => (err += b));
    const done = new Promise<number | null>((res) =>
      child.on('exit', (code) => {
        exited = true;
        res(code);
      }),
    );
    await new Promise((res) => setTimeout(res, 2500));
    expect(exited, 'the run ended before the signal: make it slower').toBe(false);
    const t = performance.now();
    child.kill('SIGINT');
    const code = await done;
    expect(performance.now() - t).toBeLessThan(3000);
    expect(code).toBe(130);
    expect(err.trim()).toBe('subprune: interrupted (SIGINT); no partial output was left');
    expect(existsSync(at('interrupted.onnx'))).toBe(false);
    expect(existsSync(at('interrupted.json'))).toBe(false);
    expect(temps()).toEqual([]);
  }, 30_000);
});
