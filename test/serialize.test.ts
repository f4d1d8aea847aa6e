// The two-pass encoder (src/onnx/encode.ts) against its oracle, protobuf-es's own toBinary: the same bytes for every
// model in models/ and test/fixtures/, with external data inlined and as references, with unknown fields, and for a
// message type built here with every scalar type, packed and unpacked lists, maps, a oneof and a group.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { create, createFileRegistry, fromBinary, toBinary, type DescMessage } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { encodeMessage } from '../src/onnx/encode.js';
import {
  DataType,
  ModelProtoSchema,
  TensorProtoSchema,
  file_onnx,
  float32Tensor,
  forEachTensor,
  int64Tensor,
  tensorToFloat32,
  type TensorProto,
  parseModel,
  readModel,
  serializeModel,
  writeModel,
  type Model,
} from '../src/onnx/index.js';

const root = path.join(import.meta.dirname, '..');

function onnxFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? onnxFiles(p) : e.name.endsWith('.onnx') ? [p] : [];
  });
}

const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'subprune-serialize-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('encodeMessage: the bytes of toBinary', () => {
  const files = [...onnxFiles(path.join(root, 'models')), ...onnxFiles(path.join(root, 'test/fixtures'))];

  it('for every model in models/ and test/fixtures/', () => {
    expect(files.length).toBeGreaterThan(200);
    const seen = { subgraphs: 0, int64Data: 0, models: 0 };
    for (const file of files) {
      const bytes = fs.readFileSync(file);
      // decoded only: no check of the model's contents, so a fixture that is meant to be refused is compared too
      const model = fromBinary(ModelProtoSchema, bytes);
      const ours = encodeMessage(ModelProtoSchema, model);
      if (!same(ours, toBinary(ModelProtoSchema, model))) throw new Error(`${file}: the encodings differ`);
      seen.models++;
      if (model.graph?.node.some((n) => n.attribute.some((a) => a.g || a.graphs.length))) seen.subgraphs++;
      let i = false;
      forEachTensor(model, (t) => (i ||= t.int64Data.length > 0));
      seen.int64Data += Number(i);
    }
    expect(seen.models).toBe(files.length);
    // the fixtures cover what the encoder must get right
    expect(seen.subgraphs).toBeGreaterThan(0);
    expect(seen.int64Data).toBeGreaterThan(0);
  });

  it('for a model with external data, as references and inlined', () => {
    const model = readModel(path.join(root, 'models/lenet.onnx'));
    const out = path.join(tmp, 'ext.onnx');
    expect(writeModel(model, out, { externalData: true }).data).toBeDefined();
    const refs = parseModel(fs.readFileSync(out)); // external tensors stay references
    let external = 0;
    forEachTensor(refs, (t) => (external += t.externalData.length ? 1 : 0));
    expect(external).toBeGreaterThan(0);
    expect(same(encodeMessage(ModelProtoSchema, refs), toBinary(ModelProtoSchema, refs))).toBe(true);
    const inlined = readModel(out);
    expect(same(serializeModel(inlined), toBinary(ModelProtoSchema, inlined))).toBe(true);
    expect(same(serializeModel(inlined), serializeModel(model))).toBe(true);
  });

  it('with unknown fields, in the model, a graph and a tensor', () => {
    const model: Model = readModel(path.join(root, 'models/lenet.onnx'));
    const t = model.graph!.initializer[0]!;
    // fields this schema does not know, appended to the bytes: decoding keeps them in $unknown
    const varint = (n: number): number[] => (n < 0x80 ? [n] : [(n & 0x7f) | 0x80, ...varint(n >>> 7)]);
    const extra = (no: number, payload: number[]) => [...varint((no << 3) | 2), payload.length, ...payload];
    const tensor = new Uint8Array([...toBinary(TensorProtoSchema, t), ...extra(99, [1, 2, 3]), 0xa8, 0x06, 0x7f]);
    model.graph!.initializer[0] = fromBinary(TensorProtoSchema, tensor);
    model.graph!.$unknown = [{ no: 1000, wireType: 0, data: new Uint8Array([0x96, 0x01]) }];
    const bytes = new Uint8Array([...toBinary(ModelProtoSchema, model), ...extra(77, [9, 8])]);
    const back = fromBinary(ModelProtoSchema, bytes);
    expect(back.$unknown?.length).toBe(1);
    expect(back.graph!.$unknown?.length).toBe(1);
    expect(back.graph!.initializer[0]!.$unknown?.length).toBe(2);
    const ours = encodeMessage(ModelProtoSchema, back);
    expect(same(ours, toBinary(ModelProtoSchema, back))).toBe(true);
    expect(same(ours, bytes)).toBe(true); // unknown fields follow the known ones, as appended
  });

  it('for weights held in float_data and int64_data (no fixture has them)', () => {
    const model = readModel(path.join(root, 'models/lenet.onnx'));
    let moved = 0;
    forEachTensor(model, (t) => {
      if (t.dataType !== DataType.FLOAT) return;
      t.floatData = [...tensorToFloat32(t).data];
      t.rawData = new Uint8Array(0);
      moved++;
    });
    model.graph!.initializer.push(int64Tensor('shape', [3], [1n, -1n, 2n ** 40n]));
    model.graph!.initializer.at(-1)!.int64Data = [1n, -1n, 2n ** 40n];
    delete (model.graph!.initializer.at(-1)! as Partial<TensorProto>).rawData;
    expect(moved).toBeGreaterThan(4);
    expect(same(serializeModel(model), toBinary(ModelProtoSchema, model))).toBe(true);
  });

  it('for explicitly set empty fields and a tensor built in code', () => {
    const t = float32Tensor('w', [2, 3], new Float32Array([1, -2, 3.5, 0, Infinity, NaN]));
    t.docString = '';
    t.rawData = new Uint8Array(0); // set, though empty: written as an empty field
    t.floatData = [0.1, -0, 1e-45, 3.4028234663852886e38];
    t.int64Data = [0n, -1n, 2n ** 63n - 1n, -(2n ** 63n)];
    t.uint64Data = [0n, 2n ** 64n - 1n, 300n];
    t.doubleData = [Math.PI, -0, Number.MIN_VALUE];
    t.int32Data = [-1, 0, 2147483647, -2147483648];
    t.dataType = DataType.FLOAT;
    t.name = 'ü€😀\ud800x'; // 2-, 3- and 4-byte UTF-8 and a lone surrogate (written as U+FFFD)
    expect(same(encodeMessage(TensorProtoSchema, t), toBinary(TensorProtoSchema, t))).toBe(true);
  });

  it('fails as toBinary fails on a value out of range', () => {
    const t = float32Tensor('w', [1], new Float32Array([1]));
    t.floatData = [1e39];
    expect(() => toBinary(TensorProtoSchema, t)).toThrow('cannot encode field onnx.TensorProto.float_data');
    expect(() => encodeMessage(TensorProtoSchema, t)).toThrow(
      'cannot encode field onnx.TensorProto.float_data to binary: invalid float32: 1e+39',
    );
  });

  it("for protobuf's own descriptors (bools, int32s, nested messages, options)", () => {
    const set = create(FileDescriptorSetSchema, { file: [file_onnx.proto] });
    expect(same(encodeMessage(FileDescriptorSetSchema, set), toBinary(FileDescriptorSetSchema, set))).toBe(true);
  });

  it('for every scalar type, packed and not, maps, a oneof, a group and a required field', () => {
    const schema = allTypes();
    const field = (name: string) => schema.fields.find((f) => f.name === name)!;
    const types = [
      ['double', 1.5, -0, 1e300],
      ['float', 1.5, -2.25, 3.4e38],
      ['int32', 0, -1, 2147483647, -2147483648, 300],
      ['int64', 0n, -1n, 2n ** 62n, -(2n ** 63n)],
      ['uint32', 0, 127, 128, 4294967295],
      ['uint64', 0n, 2n ** 64n - 1n, 16384n],
      ['sint32', 0, -1, 1, -2147483648, 2147483647],
      ['sint64', 0n, -1n, 2n ** 63n - 1n, -(2n ** 63n)],
      ['fixed32', 0, 4294967295],
      ['fixed64', 0n, 2n ** 64n - 1n],
      ['sfixed32', -2147483648, 5],
      ['sfixed64', -(2n ** 63n), 5n],
      ['bool', true, false],
      ['string', '', 'abc', 'ü€😀'],
      ['bytes', new Uint8Array(0), new Uint8Array(200).fill(7)],
    ] as const;
    const msg: Record<string, unknown> = create(schema);
    for (const [name, ...values] of types) {
      msg[`s_${name}`] = values[values.length - 1];
      msg[`r_${name}`] = [...values];
      if (field(`p_${name}`)) msg[`p_${name}`] = [...values];
    }
    msg.req = 0;
    msg.choice = { case: 'oneInt', value: -5 };
    msg.byName = { a: 1n, ü: -1n };
    msg.byNumber = {
      3: create(schema, { req: 7, sString: 'inner' } as never),
      [-1]: create(schema, { req: 1 } as never),
    };
    msg.grp = create(schema.nestedMessages[0]!, { a: 42 } as never);
    msg.children = [create(schema, { req: 2 } as never), create(schema, { req: 3, pInt32: [1, 2] } as never)];
    const m = msg as never;
    expect(same(encodeMessage(schema, m), toBinary(schema, m))).toBe(true);
    delete msg.req;
    expect(() => toBinary(schema, m)).toThrow('required field not set');
    expect(() => encodeMessage(schema, m)).toThrow('required field not set');
  });
});

/** A proto2 message type with a field of every kind, built from its descriptor. */
function allTypes(): DescMessage {
  const T = {
    double: 1,
    float: 2,
    int64: 3,
    uint64: 4,
    int32: 5,
    fixed64: 6,
    fixed32: 7,
    bool: 8,
    string: 9,
    group: 10,
    message: 11,
    bytes: 12,
    uint32: 13,
    sfixed32: 15,
    sfixed64: 16,
    sint32: 17,
    sint64: 18,
  } as const;
  const OPTIONAL = 1,
    REQUIRED = 2,
    REPEATED = 3;
  const scalars = Object.entries(T).filter(([n]) => n !== 'group' && n !== 'message');
  let no = 1;
  const field = (name: string, type: number, label: number, extra: Record<string, unknown> = {}) => ({
    name,
    number: no++,
    type,
    label,
    ...extra,
  });
  const packable = (n: string) => n !== 'string' && n !== 'bytes';
  const fields = [
    ...scalars.map(([n, t]) => field(`s_${n}`, t, OPTIONAL)),
    ...scalars.map(([n, t]) => field(`r_${n}`, t, REPEATED)),
    ...scalars
      .filter(([n]) => packable(n))
      .map(([n, t]) => field(`p_${n}`, t, REPEATED, { options: { packed: true } })),
    field('req', T.int32, REQUIRED),
    field('one_int', T.sint32, OPTIONAL, { oneofIndex: 0 }),
    field('one_str', T.string, OPTIONAL, { oneofIndex: 0 }),
    field('by_name', T.message, REPEATED, { typeName: '.t.All.ByNameEntry' }),
    field('by_number', T.message, REPEATED, { typeName: '.t.All.ByNumberEntry' }),
    field('grp', T.group, OPTIONAL, { typeName: '.t.All.Grp' }),
    field('children', T.message, REPEATED, { typeName: '.t.All' }),
  ];
  const entry = (name: string, key: number, value: number, typeName?: string) => ({
    name,
    field: [
      { name: 'key', number: 1, type: key, label: OPTIONAL },
      { name: 'value', number: 2, type: value, label: OPTIONAL, ...(typeName ? { typeName } : {}) },
    ],
    options: { mapEntry: true },
  });
  const file = create(FileDescriptorProtoSchema, {
    name: 't.proto',
    package: 't',
    syntax: 'proto2',
    messageType: [
      {
        name: 'All',
        field: fields,
        oneofDecl: [{ name: 'choice' }],
        nestedType: [
          { name: 'Grp', field: [{ name: 'a', number: 1, type: T.int32, label: OPTIONAL }] },
          entry('ByNameEntry', T.string, T.sint64),
          entry('ByNumberEntry', T.int32, T.message, '.t.All'),
        ],
      },
    ],
  } as never);
  return createFileRegistry(file, () => undefined).getMessage('t.All')!;
}
