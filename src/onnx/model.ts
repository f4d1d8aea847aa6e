// Reading and encoding whole models (writing files: write.ts). A model is the generated ModelProto itself: no wrapper,
// so every stage sees the plain ONNX structure. External data is read into each tensor's own raw_data when the model is
// loaded from its folder (never into one buffer), so the in-memory model is self-contained and can be written anywhere.
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { badInput, SubpruneError } from '../errors.js';
import { encodeMessage } from './encode.js';
import { isExternal, PROTOBUF_LIMIT, externalDataLocation, readExternalData } from './external.js';
import { checkStoredSize, expectedBytes, setTensorData, tensorDims } from './tensor.js';
import {
  ModelProtoSchema,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type SparseTensorProto,
  type TensorProto,
} from './gen/onnx_pb.js';

export type Model = ModelProto;

/** Visit every TensorProto in the model: initializers, Constant values, subgraphs, functions. */
export function forEachTensor(model: Model, fn: (t: TensorProto) => void): void {
  const sparse = (s: SparseTensorProto) => {
    if (s.values) fn(s.values);
    if (s.indices) fn(s.indices);
  };
  const nodes = (ns: NodeProto[]) => {
    for (const n of ns) {
      for (const a of n.attribute) {
        if (a.t) fn(a.t);
        a.tensors.forEach(fn);
        if (a.sparseTensor) sparse(a.sparseTensor);
        a.sparseTensors.forEach(sparse);
        if (a.g) graph(a.g);
        a.graphs.forEach(graph);
      }
    }
  };
  const graph = (g: GraphProto) => {
    g.initializer.forEach(fn);
    g.sparseInitializer.forEach(sparse);
    nodes(g.node);
  };
  if (model.graph) graph(model.graph);
  for (const f of model.functions) nodes(f.node);
  for (const ti of model.trainingInfo) {
    if (ti.initialization) graph(ti.initialization);
    if (ti.algorithm) graph(ti.algorithm);
  }
}

/** Replace every external-data reference by raw_data read from files inside baseDir (each tensor its own buffer). */
export function inlineExternalData(model: Model, baseDir: string): void {
  let total = 0;
  const files = new Set<string>();
  forEachTensor(model, (t) => {
    if (!isExternal(t)) return;
    const { file, length } = externalDataLocation(t, baseDir),
      want = expectedBytes(t);
    files.add(file);
    if (want !== undefined && want !== length) {
      throw badInput(
        `tensor "${t.name}": its external data has ${length} bytes but its dims [${t.dims.join(', ')}] need ` +
          `${want}; the model is corrupted or the data file does not belong to it.`,
      );
    }
    total += length;
    // checked before each read: a model larger than memory fails here, not in the allocator
    if (total > os.freemem()) {
      throw badInput(
        `the model's external data needs more than the ${(os.freemem() / 2 ** 30).toFixed(1)} GiB of memory ` +
          'available; free memory or use a machine with more.',
      );
    }
    setTensorData(t, tensorDims(t), t.dataType, readExternalData(t, baseDir));
  });
  dataFiles.set(model, [...files]);
}

const dataFiles = new WeakMap<Model, string[]>();

/** The external data files a model was read from (real paths), so that no output is written over them. */
export const externalDataFiles = (model: Model): string[] => dataFiles.get(model) ?? [];

/**
 * Decode an ONNX model. With baseDir (the model's folder) external data is inlined; without it
 * external tensors stay references and tensor helpers then need the folder.
 */
export function parseModel(bytes: Uint8Array, baseDir?: string): Model {
  let model: Model;
  try {
    model = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    throw badInput(
      `not a valid ONNX model: protobuf decoding failed (${(e as Error).message}). The file is truncated, ` +
        'corrupted or not an .onnx file; re-export or re-download it.',
      e,
    );
  }
  // Arbitrary bytes sometimes decode as a protobuf with only unknown fields, and a file cut at a
  // field boundary decodes cleanly: require what every real ONNX model has.
  const broken = 'The file is not an ONNX model, or it is truncated or corrupted; re-export or re-download it.';
  if (!model.graph) throw badInput(`the model has no graph. ${broken}`);
  if (model.irVersion <= 0n) throw badInput(`the model has no valid ir_version. ${broken}`);
  if (model.opsetImport.length === 0)
    throw badInput(`the model declares no operator set (opset_import is empty). ${broken}`);
  if (baseDir !== undefined) inlineExternalData(model, baseDir);
  forEachTensor(model, checkStoredSize);
  return model;
}

/** Read an .onnx file; external data files are looked up (only) in the model's folder. */
export function readModel(file: string): Model {
  let bytes: Uint8Array;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw badInput(`cannot read model file ${file}: ${(e as Error).message}`, e);
  }
  try {
    return parseModel(bytes, path.dirname(path.resolve(file)));
  } catch (e) {
    if (e instanceof SubpruneError) e.message = `${file}: ${e.message}`;
    throw e;
  }
}

/** Encode a model. Every tensor must hold its data inline (see inlineExternalData). */
export function serializeModel(model: Model): Uint8Array {
  forEachTensor(model, (t) => {
    if (isExternal(t)) {
      throw badInput(
        `tensor "${t.name}" still refers to external data; load the model with readModel(path) or ` +
          'parseModel(bytes, modelFolder) so its data is inlined before writing.',
      );
    }
  });
  // toBinary's bytes, each weight copied once (toBinary copies it once per message level)
  const bytes = encodeMessage(ModelProtoSchema, model);
  if (bytes.length >= PROTOBUF_LIMIT) {
    throw badInput(
      `the model serializes to ${bytes.length} bytes, over protobuf's 2 GB limit for an .onnx file; write it ` +
        'with its weights in a data file (writeModel, --external-data).',
    );
  }
  return bytes;
}

/** The opset version the model imports for a domain ('' and 'ai.onnx' are the same), if any. */
export function opsetVersion(model: Model, domain = ''): number | undefined {
  const norm = (d: string) => (d === 'ai.onnx' ? '' : d);
  const op = model.opsetImport.find((o) => norm(o.domain) === norm(domain));
  return op === undefined ? undefined : Number(op.version);
}
