// External tensor data (data_location = EXTERNAL). A model file names the data file itself, so a
// hostile model could point at any file on the machine; locations are therefore resolved only
// inside the model's folder: no absolute paths, no `..`, no symlink leading out of the folder.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { badInput } from '../errors.js';
import { TensorProto_DataLocation, type TensorProto } from './gen/onnx_pb.js';

/** Protobuf caps a serialized model at 2 GB; inlined external data must stay well below that. */
export const MAX_INLINE_BYTES = 1.5 * 2 ** 30;

export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === TensorProto_DataLocation.EXTERNAL;
}

function entryInt(t: TensorProto, value: string | undefined, key: string): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw badInput(
      `tensor "${t.name}": external data ${key} "${value}" is not a non-negative integer; the model is corrupted.`,
    );
  }
  return n;
}

/** Where the tensor's bytes live: a checked real path inside baseDir, an offset and a length. */
export function externalDataLocation(
  t: TensorProto,
  baseDir: string,
): { file: string; offset: number; length: number } {
  const entries = new Map(t.externalData.map((e) => [e.key, e.value]));
  const loc = entries.get('location');
  const where = `tensor "${t.name}": external data location "${loc}"`;
  if (!loc) throw badInput(`tensor "${t.name}" is marked EXTERNAL but names no location; the model is corrupted.`);
  if (path.isAbsolute(loc) || path.win32.isAbsolute(loc)) {
    throw badInput(
      `${where} is an absolute path; subprune reads external data only from files inside the model's folder. ` +
        'Move the data file next to the model and make the location relative.',
    );
  }
  if (loc.split(/[\\/]/).includes('..')) {
    throw badInput(
      `${where} contains "..": subprune reads external data only from files inside the model's folder. Move ` +
        'the data file next to the model.',
    );
  }
  let file: string;
  let root: string;
  try {
    root = fs.realpathSync(baseDir);
    file = fs.realpathSync(path.resolve(baseDir, loc));
  } catch (e) {
    throw badInput(
      `${where}: the file cannot be found in the model's folder ${baseDir} (${(e as Error).message}). Keep the ` +
        'data file next to the model.',
      e,
    );
  }
  const rel = path.relative(root, file);
  if (rel === '' || rel.split(path.sep)[0] === '..' || path.isAbsolute(rel)) {
    throw badInput(
      `${where} resolves (through a symlink) to ${file}, outside the model's folder ${root}; subprune refuses ` +
        `to read it. Copy the data file into the model's folder.`,
    );
  }
  const stat = fs.statSync(file);
  if (!stat.isFile()) throw badInput(`${where} is not a regular file.`);
  const offset = entryInt(t, entries.get('offset'), 'offset') ?? 0;
  const length = entryInt(t, entries.get('length'), 'length') ?? stat.size - offset;
  // Check before allocating: a corrupted length must not turn into a huge allocation.
  if (offset + length > stat.size || length < 0) {
    throw badInput(
      `${where}: offset ${offset} + length ${length} runs past the end of the ${stat.size}-byte file; the data ` +
        'file is truncated or does not belong to this model.',
    );
  }
  return { file, offset, length };
}

/** Read an external tensor's bytes from a file inside baseDir. */
export function readExternalData(t: TensorProto, baseDir: string): Uint8Array {
  const { file, offset, length } = externalDataLocation(t, baseDir);
  const out = new Uint8Array(length);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < length) {
      const got = fs.readSync(fd, out, done, length - done, offset + done);
      if (got === 0)
        throw badInput(
          `tensor "${t.name}": external data file ${file} ended early; it was truncated while being read.`,
        );
      done += got;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}
