// Protobuf binary encoding in two passes: every length first, then one write into a buffer of the final size.
// protobuf-es's toBinary encodes each nested message into a buffer of its own and copies it into its parent's, so a
// weight's bytes were copied once per level (TensorProto, GraphProto, ModelProto, and again per subgraph level); here
// every byte is written once. The output is byte-identical to toBinary's: the same reflection decides which fields are
// set and in what order, unknown fields follow the known ones, and values are checked as toBinary checks them.
import { protoInt64, ScalarType, type DescField, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { reflect, type ReflectList, type ReflectMap, type ReflectMessage } from '@bufbuild/protobuf/reflect';

// protobuf wire types and the presence of a proto2 `required` field (google.protobuf.FieldDescriptorProto)
const VARINT = 0,
  BIT64 = 1,
  DELIMITED = 2,
  START_GROUP = 3,
  END_GROUP = 4,
  BIT32 = 5;
const LEGACY_REQUIRED = 3;
const FLOAT32_MAX = 3.4028234663852886e38,
  INT32_MAX = 0x7fffffff,
  UINT32_MAX = 0xffffffff;

const utf8 = new TextEncoder();

/** toBinary(schema, message), written into one buffer of the final size. */
export function encodeMessage<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): Uint8Array {
  const lengths: number[] = [];
  const size = measureMessage(reflect(schema, message, false), lengths);
  const w = new Writer(new Uint8Array(size), lengths);
  w.message(reflect(schema, message, false));
  if (w.pos !== size || w.next !== lengths.length) throw new Error('protobuf encoding: the two passes disagree');
  return w.buf;
}

function wireTypeOf(t: ScalarType): number {
  switch (t) {
    case ScalarType.BYTES:
    case ScalarType.STRING:
      return DELIMITED;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return BIT64;
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
    case ScalarType.FLOAT:
      return BIT32;
    default:
      return VARINT;
  }
}

/** A message field encoded as a group (proto2 groups, editions' DELIMITED encoding). */
const delimited = (f: DescField) => (f as { delimitedEncoding?: boolean }).delimitedEncoding === true;

const tagOf = (no: number, wireType: number) => ((no << 3) | wireType) >>> 0;

function varint32Size(v: number): number {
  let n = 1;
  while (v > 0x7f) {
    v >>>= 7;
    n++;
  }
  return n;
}

/** Bytes of a varint holding the 64 bits hi:lo (two's complement halves, as protoInt64.enc gives them). */
function varint64Size(lo: number, hi: number): number {
  lo >>>= 0;
  hi >>>= 0;
  let n = 1;
  while (hi !== 0 || lo > 0x7f) {
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
    n++;
  }
  return n;
}

/** Bytes of TextEncoder's output for s: lone surrogates become U+FFFD (3 bytes). */
function utf8Size(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 2; // a pair: 2 UTF-16 units, 4 bytes
      i++;
    } else n += 2;
  }
  return n;
}

// the checks of protobuf-es's BinaryWriter, with its messages
function checkInt32(v: unknown): number {
  const x = typeof v === 'string' ? Number(v) : v;
  if (typeof x !== 'number') throw new Error('invalid int32: ' + typeof v);
  if (!Number.isInteger(x) || x > INT32_MAX || x < -INT32_MAX - 1) throw new Error('invalid int32: ' + x);
  return x;
}

function checkUint32(v: unknown): number {
  const x = typeof v === 'string' ? Number(v) : v;
  if (typeof x !== 'number') throw new Error('invalid uint32: ' + typeof v);
  if (!Number.isInteger(x) || x > UINT32_MAX || x < 0) throw new Error('invalid uint32: ' + x);
  return x;
}

function checkFloat32(v: unknown): void {
  let x = v;
  if (typeof v === 'string') {
    x = Number(v);
    if (Number.isNaN(x) && v !== 'NaN') throw new Error('invalid float32: ' + v);
  } else if (typeof v !== 'number') throw new Error('invalid float32: ' + typeof v);
  if (Number.isFinite(x) && ((x as number) > FLOAT32_MAX || (x as number) < -FLOAT32_MAX))
    throw new Error('invalid float32: ' + x);
}

type Int64 = bigint | string | number;
const zigzag64 = ({ lo, hi }: { lo: number; hi: number }) => {
  const sign = hi >> 31;
  return { lo: (lo << 1) ^ sign, hi: ((hi << 1) | (lo >>> 31)) ^ sign };
};

/** Bytes of one value of field f (without its tag); checks it as toBinary does, with toBinary's error. */
function scalarSize(f: DescField, t: ScalarType, v: unknown, lengths: number[]): number {
  try {
    return valueSize(t, v, lengths);
  } catch (e) {
    throw e instanceof Error
      ? new Error(`cannot encode field ${f.parent.typeName}.${f.name} to binary: ${e.message}`)
      : e;
  }
}

function valueSize(t: ScalarType, v: unknown, lengths: number[]): number {
  switch (t) {
    case ScalarType.STRING: {
      const n = utf8Size(v as string);
      lengths.push(n);
      return varint32Size(n) + n;
    }
    case ScalarType.BYTES:
      return varint32Size((v as Uint8Array).byteLength) + (v as Uint8Array).byteLength;
    case ScalarType.BOOL:
      return 1;
    case ScalarType.DOUBLE:
      return 8;
    case ScalarType.FLOAT:
      checkFloat32(v);
      return 4;
    case ScalarType.INT32: {
      const x = checkInt32(v);
      return x < 0 ? 10 : varint32Size(x);
    }
    case ScalarType.UINT32:
      return varint32Size(checkUint32(v));
    case ScalarType.SINT32: {
      const x = checkInt32(v);
      return varint32Size(((x << 1) ^ (x >> 31)) >>> 0);
    }
    case ScalarType.FIXED32:
      checkUint32(v);
      return 4;
    case ScalarType.SFIXED32:
      checkInt32(v);
      return 4;
    case ScalarType.FIXED64:
      protoInt64.uEnc(v as Int64);
      return 8;
    case ScalarType.SFIXED64:
      protoInt64.enc(v as Int64);
      return 8;
    case ScalarType.INT64: {
      const { lo, hi } = protoInt64.enc(v as Int64);
      return varint64Size(lo, hi);
    }
    case ScalarType.UINT64: {
      const { lo, hi } = protoInt64.uEnc(v as Int64);
      return varint64Size(lo, hi);
    }
    case ScalarType.SINT64: {
      const { lo, hi } = zigzag64(protoInt64.enc(v as Int64));
      return varint64Size(lo, hi);
    }
  }
}

/** The raw array of a repeated scalar field (lists are never in a oneof). */
const scalarList = (r: ReflectMessage, f: DescField): unknown[] =>
  (r.message as unknown as Record<string, unknown[]>)[f.localName]!;

/**
 * The message's encoded size. `lengths` receives, in the order the write pass needs them: the size of each message,
 * each packed list's payload, each map entry and each string's UTF-8 bytes.
 */
function measureMessage(r: ReflectMessage, lengths: number[]): number {
  const slot = lengths.push(0) - 1;
  let n = 0;
  for (const f of r.sortedFields) {
    if (!r.isSet(f)) {
      if (f.presence === LEGACY_REQUIRED) throw new Error(`cannot encode ${f} to binary: required field not set`);
      continue;
    }
    n += measureField(r, f, lengths);
  }
  for (const u of r.getUnknown() ?? []) n += varint32Size(tagOf(u.no, u.wireType)) + u.data.byteLength;
  lengths[slot] = n;
  return n;
}

function measureNested(f: DescField, m: ReflectMessage, lengths: number[]): number {
  // a group's start and end tags differ only in the wire type: the same size
  if (delimited(f)) return 2 * varint32Size(tagOf(f.number, START_GROUP)) + measureMessage(m, lengths);
  const n = measureMessage(m, lengths);
  return varint32Size(tagOf(f.number, DELIMITED)) + varint32Size(n) + n;
}

function measureField(r: ReflectMessage, f: DescField, lengths: number[]): number {
  switch (f.fieldKind) {
    case 'scalar':
    case 'enum': {
      const t = f.scalar ?? ScalarType.INT32;
      return varint32Size(tagOf(f.number, wireTypeOf(t))) + scalarSize(f, t, r.get(f), lengths);
    }
    case 'message':
      return measureNested(f, r.get(f) as ReflectMessage, lengths);
    case 'list': {
      if (f.listKind === 'message') {
        let n = 0;
        for (const item of r.get(f) as ReflectList) n += measureNested(f, item as ReflectMessage, lengths);
        return n;
      }
      const t = f.scalar ?? ScalarType.INT32,
        list = scalarList(r, f);
      if (f.packed) {
        if (!list.length) return 0;
        const slot = lengths.push(0) - 1;
        let n = 0;
        for (const v of list) n += scalarSize(f, t, v, lengths);
        lengths[slot] = n;
        return varint32Size(tagOf(f.number, DELIMITED)) + varint32Size(n) + n;
      }
      const tag = varint32Size(tagOf(f.number, wireTypeOf(t)));
      let n = 0;
      for (const v of list) n += tag + scalarSize(f, t, v, lengths);
      return n;
    }
    case 'map': {
      const entryTag = varint32Size(tagOf(f.number, DELIMITED));
      let n = 0;
      for (const [key, value] of r.get(f) as ReflectMap) {
        const slot = lengths.push(0) - 1;
        let e = varint32Size(tagOf(1, wireTypeOf(f.mapKey))) + scalarSize(f, f.mapKey, key, lengths);
        if (f.mapKind === 'message') {
          const v = measureMessage(value as ReflectMessage, lengths);
          e += varint32Size(tagOf(2, DELIMITED)) + varint32Size(v) + v;
        } else {
          const t = f.scalar ?? ScalarType.INT32;
          e += varint32Size(tagOf(2, wireTypeOf(t))) + scalarSize(f, t, value, lengths);
        }
        lengths[slot] = e;
        n += entryTag + varint32Size(e) + e;
      }
      return n;
    }
  }
}

/** The write pass: the same traversal as measureMessage, taking the lengths it recorded in order. */
class Writer {
  pos = 0;
  next = 0;
  private readonly view: DataView;
  constructor(
    readonly buf: Uint8Array,
    private readonly lengths: number[],
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private varint32(v: number): void {
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  private varint64(lo: number, hi: number): void {
    lo >>>= 0;
    hi >>>= 0;
    while (hi !== 0 || lo > 0x7f) {
      this.buf[this.pos++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.pos++] = lo;
  }

  private tag(no: number, wireType: number): void {
    this.varint32(tagOf(no, wireType));
  }

  private bytes(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }

  private scalar(t: ScalarType, v: unknown): void {
    const view = this.view;
    switch (t) {
      case ScalarType.STRING: {
        const n = this.lengths[this.next++]!;
        this.varint32(n);
        const { written } = utf8.encodeInto(v as string, this.buf.subarray(this.pos, this.pos + n));
        if (written !== n) throw new Error('protobuf encoding: a string is not the size measured');
        this.pos += n;
        return;
      }
      case ScalarType.BYTES:
        this.varint32((v as Uint8Array).byteLength);
        this.bytes(v as Uint8Array);
        return;
      case ScalarType.BOOL:
        this.buf[this.pos++] = v ? 1 : 0;
        return;
      case ScalarType.DOUBLE:
        view.setFloat64(this.pos, Number(v), true);
        this.pos += 8;
        return;
      case ScalarType.FLOAT:
        view.setFloat32(this.pos, Number(v), true);
        this.pos += 4;
        return;
      case ScalarType.INT32: {
        const x = Number(v);
        if (x >= 0) this.varint32(x);
        else this.varint64(x, -1); // sign-extended to 64 bits: 10 bytes
        return;
      }
      case ScalarType.UINT32:
        this.varint32(Number(v));
        return;
      case ScalarType.SINT32: {
        const x = Number(v);
        this.varint32(((x << 1) ^ (x >> 31)) >>> 0);
        return;
      }
      case ScalarType.FIXED32:
        view.setUint32(this.pos, Number(v), true);
        this.pos += 4;
        return;
      case ScalarType.SFIXED32:
        view.setInt32(this.pos, Number(v), true);
        this.pos += 4;
        return;
      case ScalarType.FIXED64:
      case ScalarType.SFIXED64: {
        const { lo, hi } = t === ScalarType.FIXED64 ? protoInt64.uEnc(v as Int64) : protoInt64.enc(v as Int64);
        view.setInt32(this.pos, lo, true);
        view.setInt32(this.pos + 4, hi, true);
        this.pos += 8;
        return;
      }
      case ScalarType.INT64: {
        const { lo, hi } = protoInt64.enc(v as Int64);
        this.varint64(lo, hi);
        return;
      }
      case ScalarType.UINT64: {
        const { lo, hi } = protoInt64.uEnc(v as Int64);
        this.varint64(lo, hi);
        return;
      }
      case ScalarType.SINT64: {
        const { lo, hi } = zigzag64(protoInt64.enc(v as Int64));
        this.varint64(lo, hi);
        return;
      }
    }
  }

  message(r: ReflectMessage): void {
    this.next++; // the message's own size, written by its parent
    for (const f of r.sortedFields) if (r.isSet(f)) this.field(r, f);
    for (const u of r.getUnknown() ?? []) {
      this.tag(u.no, u.wireType);
      this.bytes(u.data);
    }
  }

  private nested(f: DescField, m: ReflectMessage): void {
    if (delimited(f)) {
      this.tag(f.number, START_GROUP);
      this.message(m);
      this.tag(f.number, END_GROUP);
      return;
    }
    this.tag(f.number, DELIMITED);
    this.varint32(this.lengths[this.next]!);
    this.message(m);
  }

  private field(r: ReflectMessage, f: DescField): void {
    switch (f.fieldKind) {
      case 'scalar':
      case 'enum': {
        const t = f.scalar ?? ScalarType.INT32;
        this.tag(f.number, wireTypeOf(t));
        this.scalar(t, r.get(f));
        return;
      }
      case 'message':
        this.nested(f, r.get(f) as ReflectMessage);
        return;
      case 'list': {
        if (f.listKind === 'message') {
          for (const item of r.get(f) as ReflectList) this.nested(f, item as ReflectMessage);
          return;
        }
        const t = f.scalar ?? ScalarType.INT32,
          list = scalarList(r, f);
        if (f.packed) {
          if (!list.length) return;
          this.tag(f.number, DELIMITED);
          this.varint32(this.lengths[this.next++]!);
          for (const v of list) this.scalar(t, v);
          return;
        }
        for (const v of list) {
          this.tag(f.number, wireTypeOf(t));
          this.scalar(t, v);
        }
        return;
      }
      case 'map':
        for (const [key, value] of r.get(f) as ReflectMap) {
          this.tag(f.number, DELIMITED);
          this.varint32(this.lengths[this.next++]!);
          this.tag(1, wireTypeOf(f.mapKey));
          this.scalar(f.mapKey, key);
          if (f.mapKind === 'message') {
            this.tag(2, DELIMITED);
            this.varint32(this.lengths[this.next]!);
            this.message(value as ReflectMessage);
          } else {
            const t = f.scalar ?? ScalarType.INT32;
            this.tag(2, wireTypeOf(t));
            this.scalar(t, value);
          }
        }
        return;
    }
  }
}
