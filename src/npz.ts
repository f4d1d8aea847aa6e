// NumPy .npz files (numpy.savez / savez_compressed): a zip of .npy files, one per array, named `<array>.npy`. Read
// whole into memory (fflate: pure JavaScript, so it also works in a browser); each array is then an NpyFile.
import { unzipSync } from 'fflate';
import { readFileSync } from 'node:fs';
import { SubpruneError } from './errors.js';
import { npyFromBytes, type NpyFile } from './npy.js';

/** The arrays of an .npz file held in memory, by name; `name` names the file in messages. */
export function npzFromBytes(bytes: Uint8Array, name: string): Map<string, NpyFile> {
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(bytes);
  } catch (e) {
    const why = (e as Error).message;
    throw new SubpruneError('bad-input', `${name}: not a readable .npz (zip) file (${why}); save it with numpy.savez`);
  }
  const out = new Map<string, NpyFile>();
  for (const [entry, data] of Object.entries(files)) {
    if (!entry.endsWith('.npy')) continue;
    const array = entry.slice(0, -4);
    out.set(array, npyFromBytes(data, `${name}[${array}]`));
  }
  if (!out.size)
    throw new SubpruneError('bad-input', `${name} holds no arrays; save them with numpy.savez(path, name=array)`);
  return out;
}

/** Reads an .npz file's arrays. */
export function openNpz(path: string): Map<string, NpyFile> {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new SubpruneError('bad-input', `${path}: cannot open (${(e as NodeJS.ErrnoException).code}); check the path`);
  }
  return npzFromBytes(bytes, path);
}
