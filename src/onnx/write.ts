// Writing models: one .onnx file, or (when it would reach protobuf's 2 GB message limit, or when asked) the .onnx with
// its weights in a data file next to it, in ONNX's external-data layout: each large initializer's TensorProto has
// data_location = EXTERNAL and external_data entries location (relative to the model's folder), offset and length,
// offsets aligned to 4096 bytes so that a runtime can map them. The weights are written tensor by tensor from their own
// buffers; no buffer ever holds the whole model. Both files are staged in a temporary folder next to the output and
// renamed into place (data file first) only after the optional check has passed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { badInput, SubpruneError } from '../errors.js';
import { trackTemp, untrackTemp } from '../atomic.js';
import { dataFileForWrite, isExternal, PROTOBUF_LIMIT } from './external.js';
import { encodeMessage } from './encode.js';
import { serializeModel, type Model } from './model.js';
import {
  TensorProto_DataType as DataType,
  ModelProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataLocation,
  type GraphProto,
  type TensorProto,
} from './gen/onnx_pb.js';

/** Initializers smaller than this stay inside the .onnx (onnx.save's size_threshold). */
export const EXTERNAL_MIN_BYTES = 1024;
/** Offsets of external tensors are multiples of this (a page: the data can be memory-mapped in place). */
export const EXTERNAL_ALIGN = 4096;

export interface WriteOptions {
  /**
   * Weights in a data file next to the model: 'auto' (default) when the model would reach `limit` bytes as one .onnx
   * file, true always, false never (a model too large then is refused).
   */
  externalData?: boolean | 'auto';
  /** The size from which 'auto' writes external data: protobuf's limit by default (tests lower it). */
  limit?: number;
  /** The data file, relative to the model's folder; default: the model's file name + '.data'. */
  location?: string;
}

/** A tensor's data as the little-endian bytes an external file holds, or undefined if it stays inside the .onnx. */
function externalBytes(t: TensorProto): Uint8Array | undefined {
  if (isExternal(t) || t.segment !== undefined) return undefined;
  const view = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const b =
    t.rawData.length > 0
      ? t.rawData
      : t.dataType === DataType.FLOAT && t.floatData.length > 0
        ? view(Float32Array.from(t.floatData))
        : t.dataType === DataType.DOUBLE && t.doubleData.length > 0
          ? view(Float64Array.from(t.doubleData))
          : t.dataType === DataType.INT64 && t.int64Data.length > 0
            ? view(BigInt64Array.from(t.int64Data))
            : undefined;
  return b && b.length >= EXTERNAL_MIN_BYTES ? b : undefined;
}

/** Initializers of the graph and of its subgraphs (If, Loop, Scan bodies): the tensors that may go external. */
function initializers(g: GraphProto): TensorProto[] {
  const sub = g.node.flatMap((n) => n.attribute.flatMap((a) => [...(a.g ? [a.g] : []), ...a.graphs]));
  return [...g.initializer, ...sub.flatMap(initializers)];
}

/** Bytes of the initializers' values (of the graph and its subgraphs), as they are held. */
const dataBytes = (g: GraphProto) =>
  initializers(g).reduce(
    (a, t) =>
      a +
      t.rawData.length +
      4 * (t.floatData.length + t.int32Data.length) +
      8 * (t.doubleData.length + t.int64Data.length + t.uint64Data.length),
    0,
  );

/** The graph with each initializer that `swap` knows replaced (a structural copy: the input model is not changed). */
function swapInitializers(g: GraphProto, swap: Map<TensorProto, TensorProto>): GraphProto {
  const node = g.node.map((n) =>
    n.attribute.some((a) => a.g || a.graphs.length)
      ? {
          ...n,
          attribute: n.attribute.map((a) => ({
            ...a,
            g: a.g && swapInitializers(a.g, swap),
            graphs: a.graphs.map((s) => swapInitializers(s, swap)),
          })),
        }
      : n,
  );
  return { ...g, initializer: g.initializer.map((t) => swap.get(t) ?? t), node };
}

/** Where each external tensor goes in the data file, and the .onnx that refers to them. */
interface ExternalLayout {
  /** The .onnx file's bytes. */
  onnx: Uint8Array;
  parts: { bytes: Uint8Array; offset: number }[];
  /** Bytes of the data file. */
  size: number;
}

function externalLayout(model: Model, location: string): ExternalLayout {
  const moved = initializers(model.graph!)
    .map((t) => ({ t, bytes: externalBytes(t) }))
    .filter((x): x is { t: TensorProto; bytes: Uint8Array } => x.bytes !== undefined);
  const offsets = moved.reduce<number[]>((acc, x, i) => {
    const end = i === 0 ? 0 : acc[i - 1]! + moved[i - 1]!.bytes.length;
    return [...acc, Math.ceil(end / EXTERNAL_ALIGN) * EXTERNAL_ALIGN];
  }, []);
  const entry = (key: string, value: string) => create(StringStringEntryProtoSchema, { key, value });
  const swap = new Map(
    moved.map(({ t, bytes }, i): [TensorProto, TensorProto] => [
      t,
      {
        ...t,
        rawData: new Uint8Array(0),
        floatData: [],
        doubleData: [],
        int64Data: [],
        dataLocation: TensorProto_DataLocation.EXTERNAL,
        externalData: [
          entry('location', location),
          entry('offset', String(offsets[i])),
          entry('length', String(bytes.length)),
        ],
      },
    ]),
  );
  const skeleton = { ...model, graph: swapInitializers(model.graph!, swap) };
  const onnx = encodeMessage(ModelProtoSchema, skeleton);
  if (onnx.length >= PROTOBUF_LIMIT)
    throw badInput(
      `the model without its initializers still serializes to ${onnx.length} bytes, over protobuf's 2 GB limit ` +
        '(large Constant nodes or non-float tensors); it cannot be written as ONNX.',
    );
  const parts = moved.map(({ bytes }, i) => ({ bytes, offset: offsets[i]! }));
  const last = parts[parts.length - 1];
  return { onnx, parts, size: last ? last.offset + last.bytes.length : 0 };
}

/**
 * Bytes of the model as one .onnx file, without encoding it: an upper bound (the external references it counts take
 * more room than the fields holding the data inline: under 100 bytes per external tensor).
 */
function inlineSize(layout: ExternalLayout): number {
  return layout.onnx.length + layout.parts.reduce((a, p) => a + p.bytes.length, 0);
}

/** Writes `bytes` at `offset` of an open file, in chunks (one write call moves at most 2 GiB). */
function writeAt(fd: number, bytes: Uint8Array, offset: number): void {
  const CHUNK = 1 << 30;
  for (let done = 0; done < bytes.length;) {
    done += fs.writeSync(fd, bytes, done, Math.min(CHUNK, bytes.length - done), offset + done);
  }
}

function writeSynced(file: string, write: (fd: number) => void): void {
  const fd = fs.openSync(file, 'wx');
  try {
    write(fd);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** What was written: the .onnx file and, with external data, the data file and its location as the .onnx names it. */
export interface Written {
  onnx: string;
  data?: { file: string; location: string };
}

/**
 * Writes the model to `file` (and its data file) directly, no staging: for files in a fresh folder. Locations are
 * checked as for reading (relative, no `..`, no symlink out of the folder).
 */
export function writeModelFiles(model: Model, file: string, opts: WriteOptions = {}): Written {
  const mode = opts.externalData ?? 'auto';
  const location = opts.location ?? `${path.basename(file)}.data`;
  const dataFile = mode === false ? undefined : dataFileForWrite(file, location);
  const layout = mode === false ? undefined : externalLayout(model, location);
  const external = layout !== undefined && (mode === true || inlineSize(layout) >= (opts.limit ?? PROTOBUF_LIMIT));
  if (!external || !layout?.parts.length) {
    const bytes = serializeModel(model);
    writeSynced(file, (fd) => fs.writeSync(fd, bytes));
    return { onnx: file };
  }
  writeSynced(dataFile!, (fd) => {
    fs.ftruncateSync(fd, layout.size); // padding between tensors stays a hole
    for (const p of layout.parts) writeAt(fd, p.bytes, p.offset);
  });
  writeSynced(file, (fd) => fs.writeSync(fd, layout.onnx));
  return { onnx: file, data: { file: dataFile!, location } };
}

const cannotWrite = (file: string, e: unknown) =>
  badInput(`cannot write ${file}: ${(e as Error).message}; check that its folder exists and is writable`, e);

/** The model written into a fresh temporary folder next to `file`, with the same file names as it will have. */
interface Staged {
  dir: string;
  written: Written;
}

function stage(model: Model, file: string, opts: WriteOptions): Staged {
  const target = path.resolve(file);
  const location = opts.location ?? `${path.basename(target)}.data`;
  // a location given or certain to be used is refused before any work; commit() checks it again in any case
  if (opts.location !== undefined || opts.externalData === true) dataFileForWrite(target, location);
  const dir = path.join(
    path.dirname(target),
    `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`,
  );
  trackTemp(dir);
  try {
    fs.mkdirSync(dir);
    if (path.dirname(location) !== '.') fs.mkdirSync(path.join(dir, path.dirname(location)), { recursive: true });
    return { dir, written: writeModelFiles(model, path.join(dir, path.basename(target)), { ...opts, location }) };
  } catch (e) {
    discard(dir);
    throw e instanceof SubpruneError ? e : cannotWrite(file, e);
  }
}

function discard(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  untrackTemp(dir);
}

/** Renames the staged files into place: the data file first, so the new .onnx never refers to old data. */
function commit(staged: Staged, file: string): Written {
  const target = path.resolve(file),
    { data } = staged.written;
  const out: Written = { onnx: target };
  if (data) {
    const dataFile = dataFileForWrite(target, data.location);
    fs.renameSync(data.file, dataFile);
    out.data = { file: dataFile, location: data.location };
  }
  fs.renameSync(staged.written.onnx, target);
  return out;
}

/** The staged files renamed into place; a failure that is not already a user error says the file cannot be written. */
function renamed(staged: Staged, file: string): Written {
  try {
    return commit(staged, file);
  } catch (e) {
    throw e instanceof SubpruneError ? e : cannotWrite(file, e);
  }
}

/**
 * Writes a model atomically: readers never see a half-written file, and a failed write leaves no file behind. With
 * external data (see WriteOptions) the weights go to `<file>.data` (or opts.location) next to it.
 */
export function writeModel(model: Model, file: string, opts: WriteOptions = {}): Written {
  const staged = stage(model, file, opts);
  try {
    return renamed(staged, file);
  } finally {
    discard(staged.dir);
  }
}

/**
 * As writeModel, but the files are renamed into place only after `check` (given the staged .onnx file, which refers to
 * its staged data file by the final relative location) has passed: e.g. onnxruntime loading it.
 */
export async function writeModelChecked(
  model: Model,
  file: string,
  check: (written: Written) => Promise<void>,
  opts: WriteOptions = {},
): Promise<Written> {
  const staged = stage(model, file, opts);
  try {
    await check(staged.written);
    return renamed(staged, file);
  } finally {
    discard(staged.dir);
  }
}

/**
 * The model as onnxruntime can load it: its bytes when they fit one protobuf message, else files with external data
 * in a fresh temporary folder (`dispose` removes it; onnxruntime has read or mapped the data once a session exists).
 */
export function modelSource(
  model: Model,
  opts: Pick<WriteOptions, 'limit'> = {},
): { bytes: Uint8Array } | { written: Written; dispose: () => void } {
  const limit = opts.limit ?? PROTOBUF_LIMIT;
  // a model whose weights fill less than half the limit is serialized once, without laying out a data file first
  // (that took half of the sessions' setup in a sequential capture, one session per group)
  if (dataBytes(model.graph!) < limit / 2) {
    const bytes = serializeModel(model);
    if (bytes.length < limit) return { bytes };
  }
  const layout = externalLayout(model, 'model.onnx.data');
  if (inlineSize(layout) < limit) return { bytes: serializeModel(model) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'subprune-session-'));
  trackTemp(dir);
  const dispose = () => discard(dir);
  try {
    return { written: writeModelFiles(model, path.join(dir, 'model.onnx'), { externalData: true }), dispose };
  } catch (e) {
    dispose();
    throw e;
  }
}
