import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { create, equals, toBinary } from '@bufbuild/protobuf';
import { SubpruneError } from '../src/errors.js';
import {
  DataType,
  ModelProtoSchema,
  StringStringEntryProtoSchema,
  TensorProtoSchema,
  TensorProto_DataLocation,
  attrFloat,
  attrInt,
  attrInts,
  attrString,
  float16BitsToFloat32,
  float32Tensor,
  float32ToFloat16Bits,
  floatAttr,
  initializerMap,
  int64Tensor,
  intAttr,
  intsAttr,
  makeGraph,
  makeModel,
  makeNode,
  makeTensorValueInfo,
  opsetVersion,
  parseModel,
  readModel,
  replaceInitializerData,
  serializeModel,
  stringAttr,
  tensorToFloat32,
  tensorToInt64,
  writeModel,
  type Model,
  type TensorProto,
} from '../src/onnx/index.js';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'subprune-onnx-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function expectBadInput(fn: () => unknown, message: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SubpruneError);
  expect((err as SubpruneError).code).toBe('bad-input');
  expect((err as Error).message).toMatch(message);
}

// The test network: Y = 0.5 * reshape(Gemm(relu(Gemm(X, W1, B1)), W2, B2), [2]).
// Values are exact in float16, so the expected output is exact too.
const X = [1, 2, -1];
const W1 = [1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]; // 4x3
const B1 = [0.5, -3, 0, 0.25];
const W2 = [1, 1, 1, 1, 2, 0, 0, -1]; // 2x4
const B2 = [0.25, -1];
// By hand: X W1^T = [1, 2, -1, 2]; + B1 = [1.5, -1, -1, 2.25]; relu = [1.5, 0, 0, 2.25];
// W2 rows: 1.5 + 2.25 = 3.75 and 3 - 2.25 = 0.75; + B2 = [4, -0.25]; * 0.5 = [2, -0.125].
const EXPECTED_Y = [2, -0.125];

function externalRef(t: TensorProto, location: string, offset: number, length: number): void {
  t.dataLocation = TensorProto_DataLocation.EXTERNAL;
  t.externalData = [
    create(StringStringEntryProtoSchema, { key: 'location', value: location }),
    create(StringStringEntryProtoSchema, { key: 'offset', value: String(offset) }),
    create(StringStringEntryProtoSchema, { key: 'length', value: String(length) }),
  ];
}

/** One model with initializers in every storage form subprune reads. */
function testModel(): Model {
  const inits = [
    float32Tensor('W1h', [4, 3], Float32Array.from(W1), DataType.FLOAT16), // float16 in raw_data
    create(TensorProtoSchema, {
      name: 'B1h',
      dims: [4n],
      dataType: DataType.FLOAT16,
      int32Data: B1.map(float32ToFloat16Bits),
    }),
    create(TensorProtoSchema, { name: 'W2', dims: [2n, 4n], dataType: DataType.FLOAT, floatData: W2 }),
    create(TensorProtoSchema, { name: 'B2d', dims: [2n], dataType: DataType.DOUBLE, doubleData: B2 }),
    create(TensorProtoSchema, { name: 'S', dims: [1n], dataType: DataType.INT64, int64Data: [2n] }),
    float32Tensor('K', [1], Float32Array.of(0.5)), // float32 in raw_data
  ];
  const nodes = [
    makeNode('Cast', ['W1h'], ['W1'], [intAttr('to', DataType.FLOAT)], 'cast_w1'),
    makeNode('Cast', ['B1h'], ['B1'], [intAttr('to', DataType.FLOAT)], 'cast_b1'),
    makeNode('Cast', ['B2d'], ['B2'], [intAttr('to', DataType.FLOAT)], 'cast_b2'),
    makeNode('Gemm', ['X', 'W1', 'B1'], ['H'], [intAttr('transB', 1), floatAttr('alpha', 1)], 'fc1'),
    makeNode('Relu', ['H'], ['R'], [], 'relu1'),
    makeNode('Gemm', ['R', 'W2', 'B2'], ['Z'], [intAttr('transB', 1)], 'fc2'),
    makeNode('Reshape', ['Z', 'S'], ['Zr'], [], 'flat'),
    makeNode('Mul', ['Zr', 'K'], ['Y'], [], 'scale'),
  ];
  const graph = makeGraph(
    'test',
    nodes,
    [makeTensorValueInfo('X', DataType.FLOAT, [1, 3])],
    [makeTensorValueInfo('Y', DataType.FLOAT, [2])],
    inits,
  );
  return makeModel(graph, 13);
}

async function runY(bytes: Uint8Array, x: number[] = X): Promise<number[]> {
  const session = await ort.InferenceSession.create(bytes);
  try {
    const out = await session.run({ X: new ort.Tensor('float32', Float32Array.from(x), [1, x.length]) });
    return Array.from(out['Y']!.data as Float32Array);
  } finally {
    await session.release();
  }
}

describe('float16', () => {
  // Hand decode: sign * 2^(exp-15) * (1 + mant/1024), subnormals mant * 2^-24.
  const known: [number, number][] = [
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0x0001, 2 ** -24],
    [0x03ff, 1023 * 2 ** -24],
    [0x0400, 2 ** -14],
    [0x3555, 0.333251953125],
    [0x3800, 0.5],
    [0x0000, 0],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
  ];

  it('decodes known bit patterns exactly', () => {
    for (const [bits, value] of known) expect(float16BitsToFloat32(bits)).toBe(value);
    expect(Object.is(float16BitsToFloat32(0x8000), -0)).toBe(true);
    expect(float16BitsToFloat32(0x7e00)).toBeNaN();
  });

  it('encodes representable values to the same bits and rounds to nearest even', () => {
    for (const [bits, value] of known) expect(float32ToFloat16Bits(value)).toBe(bits);
    expect(float32ToFloat16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even
    expect(float32ToFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
    expect(float32ToFloat16Bits(65519)).toBe(0x7bff);
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00); // overflow -> Inf
    expect(float32ToFloat16Bits(2 ** -25)).toBe(0x0000); // tie -> even (zero)
    expect(float32ToFloat16Bits(1.5 * 2 ** -25)).toBe(0x0001);
    expect(float32ToFloat16Bits(2 ** -14 - 2 ** -25)).toBe(0x0400); // subnormal rounds up into normal
    expect(float32ToFloat16Bits(NaN) & 0x7e00).toBe(0x7e00);
  });

  it('reads FLOAT16 tensors from raw_data and from int32_data', () => {
    const raw = new Uint8Array(known.length * 2);
    known.forEach(([bits], i) => new DataView(raw.buffer).setUint16(2 * i, bits, true));
    const fromRaw = create(TensorProtoSchema, {
      name: 'h',
      dims: [BigInt(known.length)],
      dataType: DataType.FLOAT16,
      rawData: raw,
    });
    const fromInt32 = create(TensorProtoSchema, {
      name: 'h',
      dims: [BigInt(known.length)],
      dataType: DataType.FLOAT16,
      int32Data: known.map(([b]) => b),
    });
    const want = Float32Array.from(known.map(([, v]) => v));
    expect(tensorToFloat32(fromRaw).data).toEqual(want);
    expect(tensorToFloat32(fromInt32).data).toEqual(want);
    // Writing back as FLOAT16 reproduces the original bytes.
    const back = float32Tensor('h', [known.length], want, DataType.FLOAT16);
    expect(back.dataType).toBe(DataType.FLOAT16);
    expect(back.rawData).toEqual(raw);
  });
});

describe('tensors', () => {
  it('reads every storage form of the test model', () => {
    const g = testModel().graph!;
    const m = initializerMap(g);
    expect(tensorToFloat32(m.get('W1h')!)).toEqual({ dims: [4, 3], data: Float32Array.from(W1) });
    expect(tensorToFloat32(m.get('B1h')!)).toEqual({ dims: [4], data: Float32Array.from(B1) });
    expect(tensorToFloat32(m.get('W2')!)).toEqual({ dims: [2, 4], data: Float32Array.from(W2) });
    expect(tensorToFloat32(m.get('B2d')!)).toEqual({ dims: [2], data: Float32Array.from(B2) });
    expect(tensorToFloat32(m.get('K')!)).toEqual({ dims: [1], data: Float32Array.of(0.5) });
    expect(tensorToInt64(m.get('S')!)).toEqual({ dims: [1], data: BigInt64Array.of(2n) });
    const shape = int64Tensor('shape', [3], [-1, 16, 9223372036854775807n]);
    expect(shape.rawData.length).toBe(24);
    expect(Array.from(tensorToInt64(shape).data)).toEqual([-1n, 16n, 9223372036854775807n]);
  });

  it('reads FLOAT raw_data held at an odd offset of a larger buffer, and returns its own copy', () => {
    const values = [1.5, -2.25, 3e-8, 65504, -0, 7];
    const pool = Buffer.alloc(3 + 4 * values.length + 5, 0xab);
    values.forEach((v, i) => pool.writeFloatLE(v, 3 + 4 * i));
    const raw = pool.subarray(3, 3 + 4 * values.length);
    const t = create(TensorProtoSchema, { name: 'w', dims: [2n, 3n], dataType: DataType.FLOAT, rawData: raw });
    const { data } = tensorToFloat32(t);
    expect(Array.from(data)).toEqual(values.map((v) => Math.fround(v)));
    data[0] = 42;
    expect(pool.readFloatLE(3)).toBe(1.5);
  });

  it('refuses unsupported data types and inconsistent sizes with a clear error', () => {
    const ints = create(TensorProtoSchema, { name: 'idx', dims: [2n], dataType: DataType.INT32, int32Data: [1, 2] });
    expectBadInput(() => tensorToFloat32(ints), /tensor "idx" has data type INT32.*FLOAT, FLOAT16 or DOUBLE/);
    expectBadInput(() => tensorToInt64(ints), /INT32 where INT64 was expected/);
    const short = create(TensorProtoSchema, {
      name: 'w',
      dims: [2n, 2n],
      dataType: DataType.FLOAT,
      rawData: new Uint8Array(12),
    });
    expectBadInput(() => tensorToFloat32(short), /tensor "w" has 12 bytes of data but its dims \[2, 2\] need 16/);
  });

  it('replaces an initializer, keeping its element type and fixing its declared shape, and leaves the old one', () => {
    const model = testModel();
    const g = model.graph!;
    g.input.push(makeTensorValueInfo('W1h', DataType.FLOAT16, [4, 3])); // pre-IR-4 style
    const old = initializerMap(g).get('W1h')!,
      oldBytes = toBinary(TensorProtoSchema, old),
      oldInput = g.input[g.input.length - 1]!;
    const t = replaceInitializerData(g, 'W1h', [2, 3], Float32Array.of(1, 2, 3, 4, 5, 6));
    expect(initializerMap(g).get('W1h')).toBe(t);
    // a copy of a model may share the old tensor and input: both stay as they were
    expect(toBinary(TensorProtoSchema, old)).toEqual(oldBytes);
    expect(oldInput.type?.value.case === 'tensorType' && oldInput.type.value.value.shape?.dim.length).toBe(2);
    expect(oldInput.type?.value.case === 'tensorType' && oldInput.type.value.value.shape?.dim[0]?.value.value).toBe(4n);
    expect(t.dataType).toBe(DataType.FLOAT16);
    expect(tensorToFloat32(t)).toEqual({ dims: [2, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6) });
    const vi = g.input.find((v) => v.name === 'W1h')!;
    expect(vi.type?.value.case === 'tensorType' && vi.type.value.value.shape?.dim.map((d) => d.value.value)).toEqual([
      2n,
      3n,
    ]);
    replaceInitializerData(g, 'B1h', [2], Float32Array.of(7, 8)); // from int32_data to raw_data
    expect(initializerMap(g).get('B1h')!.int32Data).toEqual([]);
    expect(tensorToFloat32(initializerMap(g).get('B1h')!).data).toEqual(Float32Array.of(7, 8));
    replaceInitializerData(g, 'S', [2], BigInt64Array.of(1n, 2n));
    expect(Array.from(tensorToInt64(initializerMap(g).get('S')!).data)).toEqual([1n, 2n]);
    expectBadInput(() => replaceInitializerData(g, 'nope', [1], Float32Array.of(1)), /no initializer "nope"/);
  });
});

describe('attributes and opsets', () => {
  const node = makeNode(
    'Conv',
    ['x', 'w'],
    ['y'],
    [intAttr('group', 2), intsAttr('pads', [1, 1, 1, 1]), floatAttr('alpha', 0.25), stringAttr('auto_pad', 'NOTSET')],
    'conv1',
  );

  it('reads attributes with defaults', () => {
    expect(attrInt(node, 'group')).toBe(2);
    expect(attrInts(node, 'pads')).toEqual([1, 1, 1, 1]);
    expect(attrFloat(node, 'alpha')).toBe(0.25);
    expect(attrString(node, 'auto_pad')).toBe('NOTSET');
    expect(attrInts(node, 'strides', [1, 1])).toEqual([1, 1]);
    expect(attrInt(node, 'missing', 7)).toBe(7);
  });

  it('refuses a missing required attribute or a wrong attribute type', () => {
    expectBadInput(
      () => attrInts(node, 'kernel_shape'),
      /Conv node "conv1" lacks the required attribute "kernel_shape"/,
    );
    expectBadInput(() => attrInt(node, 'alpha'), /attribute "alpha" is FLOAT, expected INT/);
  });

  it('finds opset versions', () => {
    const m = testModel();
    expect(opsetVersion(m)).toBe(13);
    expect(opsetVersion(m, 'ai.onnx')).toBe(13);
    expect(opsetVersion(m, 'com.microsoft')).toBeUndefined();
  });
});

describe('read and write', () => {
  it('round-trips write -> read with nothing lost, including fields newer than onnx.proto', () => {
    const model = testModel();
    const bytes = serializeModel(model);
    // Append an unknown top-level field (number 30, 3 bytes) as a newer ONNX version might.
    const withUnknown = new Uint8Array([...bytes, 0xf2, 0x01, 3, 0x61, 0x62, 0x63]);
    const file = path.join(tmp, 'roundtrip.onnx');
    writeModel(parseModel(withUnknown), file);
    const back = readModel(file);
    expect(equals(ModelProtoSchema, back, model)).toBe(true);
    expect(serializeModel(back)).toEqual(withUnknown);
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]); // temp file renamed away
  });

  it('writes valid ONNX: onnxruntime runs the round-tripped model and gives the hand-computed output', async () => {
    const file = path.join(tmp, 'run.onnx');
    writeModel(testModel(), file);
    const bytes = serializeModel(readModel(file));
    expect(await runY(bytes)).toEqual(EXPECTED_Y);
  });

  it('runs in onnxruntime after replacing weights (float16 kept as float16)', async () => {
    const model = testModel();
    // Double W1 and drop nothing: H doubles before the bias, so fc1 = [2.5, 1, -2, 4.25], relu -> [2.5, 1, 0, 4.25],
    // fc2 = [7.75 + 0.25, 5 - 4.25 - 1] = [8, -0.25], times 0.5 = [4, -0.125].
    replaceInitializerData(model.graph!, 'W1h', [4, 3], Float32Array.from(W1.map((v) => 2 * v)));
    expect(await runY(serializeModel(model))).toEqual([4, -0.125]);
  });

  it('refuses garbage, empty, text and every truncation of a model with SubpruneError', () => {
    const bytes = serializeModel(testModel());
    for (let n = 0; n < bytes.length; n++) {
      expect(() => parseModel(bytes.subarray(0, n))).toThrow(SubpruneError);
    }
    let seed = 12345;
    const garbage = Uint8Array.from({ length: 4096 }, () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
    expectBadInput(() => parseModel(garbage), /ONNX model|protobuf decoding failed/);
    expectBadInput(
      () => parseModel(new TextEncoder().encode('hello, this is not a model\n')),
      /ONNX model|protobuf decoding failed/,
    );
    const file = path.join(tmp, 'truncated.onnx');
    fs.writeFileSync(file, bytes.subarray(0, bytes.length >> 1));
    expectBadInput(() => readModel(file), /truncated\.onnx: .*(truncated|decoding failed)/);
    expectBadInput(() => readModel(path.join(tmp, 'does-not-exist.onnx')), /cannot read model file/);
  });
});

describe('external data', () => {
  /** A model folder with the test model's W2 stored in an external file. */
  function externalModel(
    name: string,
    location: string,
    offset = 16,
    length = W2.length * 4,
  ): { dir: string; file: string } {
    const dir = path.join(tmp, name);
    fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
    const model = testModel();
    const w2 = initializerMap(model.graph!).get('W2')!;
    w2.floatData = [];
    externalRef(w2, location, offset, length);
    const file = path.join(dir, 'model.onnx');
    fs.writeFileSync(file, toBinary(ModelProtoSchema, model)); // serializeModel refuses external references
    return { dir, file };
  }
  function weightsFile(file: string): void {
    const bytes = new Uint8Array(16 + W2.length * 4 + 8); // padding before and after
    bytes.set(new Uint8Array(Float32Array.from(W2).buffer), 16);
    fs.writeFileSync(file, bytes);
  }

  it('loads data from files in the model folder, inlines it and writes a self-contained model', async () => {
    const { dir, file } = externalModel('ext-ok', 'data/weights.bin');
    weightsFile(path.join(dir, 'data', 'weights.bin'));
    const model = readModel(file);
    const w2 = initializerMap(model.graph!).get('W2')!;
    expect(w2.dataLocation).toBe(TensorProto_DataLocation.DEFAULT);
    expect(w2.externalData).toEqual([]);
    expect(tensorToFloat32(w2)).toEqual({ dims: [2, 4], data: Float32Array.from(W2) });
    const out = path.join(tmp, 'ext-inlined.onnx'); // another folder: must not depend on weights.bin
    writeModel(model, out);
    expect(await runY(serializeModel(readModel(out)))).toEqual(EXPECTED_Y);
  });

  it('reads external tensors lazily when parsed without a folder, and needs the folder to write', () => {
    const { dir, file } = externalModel('ext-lazy', 'w.bin');
    weightsFile(path.join(dir, 'w.bin'));
    const model = parseModel(fs.readFileSync(file));
    const w2 = initializerMap(model.graph!).get('W2')!;
    expectBadInput(() => tensorToFloat32(w2), /external file; load the model with readModel/);
    expect(tensorToFloat32(w2, dir).data).toEqual(Float32Array.from(W2));
    expectBadInput(() => serializeModel(model), /still refers to external data/);
  });

  it('follows symlinks that stay inside the model folder', () => {
    const { dir, file } = externalModel('ext-link-in', 'alias.bin');
    weightsFile(path.join(dir, 'data', 'real.bin'));
    fs.symlinkSync(path.join(dir, 'data', 'real.bin'), path.join(dir, 'alias.bin'));
    expect(tensorToFloat32(initializerMap(readModel(file).graph!).get('W2')!).data).toEqual(Float32Array.from(W2));
  });

  it('refuses absolute, "..", and symlink-escaping locations', () => {
    const outside = path.join(tmp, 'outside');
    fs.mkdirSync(outside, { recursive: true });
    weightsFile(path.join(outside, 'w.bin'));

    const abs = externalModel('ext-abs', path.join(outside, 'w.bin'));
    expectBadInput(() => readModel(abs.file), /is an absolute path/);

    const dotdot = externalModel('ext-dotdot', '../outside/w.bin');
    expectBadInput(() => readModel(dotdot.file), /contains "\.\."/);
    const inner = externalModel('ext-inner-dotdot', 'data/../w.bin'); // even if it would stay inside
    weightsFile(path.join(inner.dir, 'w.bin'));
    expectBadInput(() => readModel(inner.file), /contains "\.\."/);

    const fileLink = externalModel('ext-filelink', 'w.bin');
    fs.symlinkSync(path.join(outside, 'w.bin'), path.join(fileLink.dir, 'w.bin'));
    expectBadInput(() => readModel(fileLink.file), /outside the model's folder/);

    const dirLink = externalModel('ext-dirlink', 'linked/w.bin');
    fs.symlinkSync(outside, path.join(dirLink.dir, 'linked'));
    expectBadInput(() => readModel(dirLink.file), /outside the model's folder/);
  });

  it('refuses missing files and offsets or lengths past the end of the file before reading', () => {
    const missing = externalModel('ext-missing', 'nothere.bin');
    expectBadInput(() => readModel(missing.file), /cannot be found in the model's folder/);
    const tooLong = externalModel('ext-too-long', 'w.bin', 16, 1e12);
    weightsFile(path.join(tooLong.dir, 'w.bin'));
    expectBadInput(() => readModel(tooLong.file), /runs past the end of the 56-byte file/);
    const badOffset = externalModel('ext-bad-offset', 'w.bin', -4 as number);
    weightsFile(path.join(badOffset.dir, 'w.bin'));
    expectBadInput(() => readModel(badOffset.file), /offset "-4" is not a non-negative integer/);
  });
});

describe('models/lenet.onnx (exported by PyTorch)', () => {
  const lenet = path.join(import.meta.dirname, '..', 'models', 'lenet.onnx');

  it('reads it and writes it back with the same bytes and the same outputs in onnxruntime', async () => {
    const original = fs.readFileSync(lenet);
    const model = readModel(lenet);
    expect(initializerMap(model.graph!).size).toBeGreaterThan(0);
    for (const t of model.graph!.initializer) {
      expect(tensorToFloat32(t).data.length).toBe(t.dims.reduce((a, b) => a * Number(b), 1));
    }
    const file = path.join(tmp, 'lenet-copy.onnx');
    writeModel(model, file);
    const copy = fs.readFileSync(file);
    expect(Buffer.compare(copy, original)).toBe(0);

    // Same outputs on a deterministic batch, input shape [batch, 1, 28, 28] from the model itself.
    const input = model.graph!.input[0]!;
    const batch = 3;
    const x = Float32Array.from({ length: batch * 28 * 28 }, (_, i) => Math.sin(i * 0.37) * 0.5 + 0.5);
    const outputs: Float32Array[] = [];
    for (const bytes of [original, copy]) {
      const session = await ort.InferenceSession.create(bytes);
      const out = await session.run({ [input.name]: new ort.Tensor('float32', x, [batch, 1, 28, 28]) });
      outputs.push(out[session.outputNames[0]!]!.data as Float32Array);
      await session.release();
    }
    expect(outputs[0]!.length).toBe(batch * 10);
    expect(outputs[1]).toEqual(outputs[0]);
  });
});
