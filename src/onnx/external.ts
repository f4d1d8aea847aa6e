// External tensor data (data_location = EXTERNAL). A model file names the data file itself, so a
// hostile model could point at any file on the machine; locations are therefore resolved only
// inside the model's folder: no absolute paths, no `..`, no symlink leading out of the folder.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { badInput } from '../errors.js';
import { TensorProto_DataLocation, type TensorProto } from './gen/onnx_pb.js';

/** Protobuf caps a serialized message (a whole .onnx file) below 2 GiB: a model this size or larger is refused. */
export const PROTOBUF_LIMIT = 2 ** 31;

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

/**
 * Refuses a location that is absolute or contains `..` (even one that would stay inside): the same rule for reading
 * and writing, so a model subprune writes is one it reads.
 */
function checkRelative(loc: string, where: string, rule: string, fix: string): void {
  if (path.isAbsolute(loc) || path.win32.isAbsolute(loc))
    throw badInput(
      `${where} is an absolute path; subprune ${rule} files inside the model's folder. ${fix} and make the ` +
        'location relative.',
    );
  if (loc.split(/[\\/]/).includes('..'))
    throw badInput(`${where} contains "..": subprune ${rule} files inside the model's folder. ${fix}.`);
}

/** `file` (a real path) lies strictly inside the folder `root` (a real path). */
function inside(root: string, file: string): boolean {
  const rel = path.relative(root, file);
  return rel !== '' && rel.split(path.sep)[0] !== '..' && !path.isAbsolute(rel);
}

/**
 * The path to write a model's data file to, `location` relative to the model file's folder: refused if absolute, with
 * `..`, or if its folder leads (through a symlink) out of the model's folder. The folder must exist.
 */
export function dataFileForWrite(modelFile: string, location: string): string {
  const where = `external data location "${location}"`;
  checkRelative(location, where, 'writes external data only to', 'Choose a file name next to the output');
  const dir = path.dirname(path.resolve(modelFile));
  const target = path.resolve(dir, location);
  let root: string, folder: string;
  try {
    root = fs.realpathSync(dir);
    folder = fs.realpathSync(path.dirname(target));
  } catch (e) {
    throw badInput(`${where}: its folder does not exist in ${dir} (${(e as Error).message}); create it first.`, e);
  }
  if (folder !== root && !inside(root, folder))
    throw badInput(
      `${where} leads (through a symlink) to ${folder}, outside the output's folder ${root}; subprune refuses to ` +
        'write there. Choose a file name next to the output.',
    );
  if (target === path.resolve(modelFile)) throw badInput(`${where} is the model file itself; choose another name.`);
  return path.join(folder, path.basename(target));
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
  checkRelative(loc, where, 'reads external data only from', 'Move the data file next to the model');
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
  if (!inside(root, file)) {
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
      // one read call takes at most 2 GiB - 1 bytes; a tensor may be larger
      const got = fs.readSync(fd, out, done, Math.min(length - done, 2 ** 30), offset + done);
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
