// The data a command runs a model on, as the flags name it: one .npy file (a model with one input), an .npz file with
// one array per input (numpy.savez), NAME=FILE.npy once per input, or a folder of images with --preprocess.
import { statSync } from 'node:fs';
import { badInput } from '../errors.js';
import { encodeNpy, npyFromBytes, openNpy, type NpyFile } from '../npy.js';
import { openNpz } from '../npz.js';
import { checkPreprocess, loadImageFolder, parsePreprocess, type PreprocessSpec } from '../images/index.js';

/** Opened data: one file, or arrays by input name; and the resolved preprocessing when it came from images. */
export interface Inputs {
  data: NpyFile | Map<string, NpyFile>;
  /** Every file behind it (for messages and for refusing to write over them). */
  paths: string[];
  preprocess?: PreprocessSpec;
  close(): void;
}

const isDir = (p: string) => {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/**
 * Opens what `flag`'s values name (see the file's header); `preprocess` is the --preprocess flag, for images. A file
 * given with it is refused (the flag would do nothing), unless `shared`: --verify shares --calib's --preprocess, and
 * either may be a folder.
 */
export function openInputs(values: string[], flag: string, preprocess?: string, shared = false): Inputs {
  if (!values.length) throw badInput(`${flag} needs a file`);
  const named = values.filter((v) => /^[^=/\\]+=/.test(v));
  if (named.length && named.length !== values.length)
    throw badInput(`${flag}: give either one file or NAME=FILE.npy for every input, not both`);
  if (named.length) {
    const arrays = new Map<string, NpyFile>();
    try {
      for (const v of named) {
        const at = v.indexOf('='),
          name = v.slice(0, at);
        if (arrays.has(name)) throw badInput(`${flag} names input ${name} twice`);
        arrays.set(name, openNpy(v.slice(at + 1)));
      }
    } catch (e) {
      for (const a of arrays.values()) a.close();
      throw e;
    }
    return { data: arrays, paths: named.map((v) => v.slice(v.indexOf('=') + 1)), close: () => closeAll(arrays) };
  }
  if (values.length > 1) throw badInput(`${flag} is given ${values.length} times; name each input: NAME=FILE.npy`);
  const path = values[0]!;
  if (isDir(path)) {
    if (!preprocess)
      throw badInput(
        `${flag} ${path} is a folder of images: give --preprocess (e.g. --preprocess imagenet, or ` +
          'resize=28x28,channels=gray,scale=1/255,mean=0.286,std=0.353; see the README)',
      );
    const spec = preprocessFlag(preprocess),
      b = loadImageFolder(path, spec);
    return { data: npyFromBytes(encodeNpy(b.data, b.shape), path), paths: [path], preprocess: spec, close: () => {} };
  }
  if (preprocess && !shared) throw badInput(`--preprocess is for a folder of images; ${path} is a file`);
  if (path.endsWith('.npz')) {
    const arrays = openNpz(path);
    return { data: arrays, paths: [path], close: () => closeAll(arrays) };
  }
  const f = openNpy(path);
  return { data: f, paths: [path], close: () => f.close() };
}

/** --preprocess: a preset and key=value items, or the JSON spec a report recorded (to repeat a run exactly). */
function preprocessFlag(text: string): PreprocessSpec {
  if (!text.trim().startsWith('{')) return parsePreprocess(text);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw badInput(`--preprocess: ${(e as Error).message}; give a preset and key=value items, or a report's JSON spec`);
  }
  return checkPreprocess(json);
}

function closeAll(arrays: Map<string, NpyFile>): void {
  for (const a of arrays.values()) a.close();
}

/** Help text for a data flag. */
export const inputsHelp = (flag: string, what: string) =>
  `  ${flag.padEnd(18)}${what}: FILE.npy (the model's one input, first axis = samples), FILE.npz
                      (numpy.savez, one array per input, named as the inputs), NAME=FILE.npy once per input
                      (token ids and masks as integers), or a folder of PNG/JPEG images with --preprocess`;
