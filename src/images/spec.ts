import { badInput } from '../errors.js';

// The preprocessing of calibration images, as a plain JSON object (written into a report, read back, re-used) and as
// the text of a command-line flag: `imagenet`, or `resize=256,crop=224,scale=1/255,mean=0.485:0.456:0.406,...`.
// Every field is defined in src/images/README.md; parsePreprocess and checkPreprocess resolve both to one spec.

/** How an image is resized before the crop: see src/images/README.md. */
export type Resize =
  /** The shorter side to `shorter` pixels, the other in proportion (torchvision's Resize(int)). */
  | { shorter: number }
  /**
   * 'stretch': to exactly width × height. 'height': to `height` keeping the aspect ratio, the width rounded up and at
   * most `width`, then padded on the right to `width` with zeros after normalisation (PaddleOCR's rec).
   */
  | { width: number; height: number; fit: 'stretch' | 'height' };

export interface PreprocessSpec {
  resize: Resize | null;
  /** 'pil': Pillow's BILINEAR (antialiased when shrinking), bit-exact. 'linear': bilinear without antialiasing. */
  filter: 'pil' | 'linear';
  /** A centre crop after the resize (torchvision's CenterCrop: zero-padded where larger than the image). */
  crop: { width: number; height: number } | null;
  /** The output channels: RGB, BGR (as OpenCV reads images), or grey (ITU-R 601-2 luma, as PIL's convert('L')). */
  channels: 'rgb' | 'bgr' | 'gray';
  layout: 'nchw' | 'nhwc';
  /** Pixel values 0..255 divided by `divide`, or multiplied by float32(`multiply`), in float32. */
  scale: { divide: number } | { multiply: number };
  /** One per output channel, in the output channel order: out = (scaled - mean) / std, each step in float32. */
  mean: number[];
  std: number[];
}

const IMAGENET = { mean: '0.485:0.456:0.406', std: '0.229:0.224:0.225' };

/** Named specs: a preset is the first item of the flag, and the items after it override its fields. */
export const PRESETS: Record<string, Record<string, string>> = {
  // torchvision's ImageNet classification models (ResNet, VGG, MobileNet, ...), on PIL images
  imagenet: { resize: '256', crop: '224', filter: 'pil', channels: 'rgb', scale: '1/255', ...IMAGENET },
  // PaddleOCR PP-OCRv3/v4 text recognition: height 48, width up to 320, BGR, (x/255 - 0.5)/0.5
  'paddleocr-rec': {
    resize: '320x48',
    fit: 'height',
    filter: 'linear',
    channels: 'bgr',
    scale: '1/255',
    mean: '0.5',
    std: '0.5',
  },
  // PaddleOCR text detection: BGR, x·float32(1/255), ImageNet mean/std in B, G, R order; the size is yours to give
  'paddleocr-det': { filter: 'linear', channels: 'bgr', scale: String(1 / 255), ...IMAGENET },
};

const KEYS = ['resize', 'fit', 'filter', 'crop', 'channels', 'layout', 'scale', 'mean', 'std'] as const;
type Key = (typeof KEYS)[number];

function fail(what: string): never {
  throw badInput(`preprocess: ${what}; see src/images/README.md for the syntax`);
}

const positiveInt = (s: string, key: string): number => {
  if (!/^[1-9]\d{0,5}$/.test(s)) fail(`${key}: "${s}" is not a positive whole number of pixels`);
  return Number(s);
};

/** `S` (square) or `WxH`. */
function size(s: string, key: string): { width: number; height: number } {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (m) return { width: positiveInt(m[1], key), height: positiveInt(m[2], key) };
  const n = positiveInt(s, key);
  return { width: n, height: n };
}

function numbers(s: string, key: string): number[] {
  const v = s.split(':').map((t) => (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t.trim()) ? Number(t) : NaN));
  if (v.some((x) => !Number.isFinite(x))) fail(`${key}: "${s}" is not a list of numbers separated by ':'`);
  return v;
}

function oneOf<T extends string>(s: string, key: string, options: readonly T[]): T {
  if (!options.includes(s as T)) fail(`${key}: "${s}" is not one of ${options.join(', ')}`);
  return s as T;
}

/** The spec a flag's text names (see src/images/README.md for every field and the presets). */
export function parsePreprocess(text: string): PreprocessSpec {
  const items = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s);
  const fields: Partial<Record<Key, string>> = {},
    given = new Set<string>();
  items.forEach((item, i) => {
    const eq = item.indexOf('=');
    if (eq < 0) {
      if (i > 0) fail(`"${item}" has no '=': a preset (${Object.keys(PRESETS).join(', ')}) comes first`);
      if (!PRESETS[item]) fail(`unknown preset "${item}"; presets: ${Object.keys(PRESETS).join(', ')}`);
      Object.assign(fields, PRESETS[item]);
      return;
    }
    const key = item.slice(0, eq).trim(),
      value = item.slice(eq + 1).trim();
    if (!(KEYS as readonly string[]).includes(key)) fail(`unknown key "${key}"; keys: ${KEYS.join(', ')}`);
    if (given.has(key)) fail(`${key} is given twice`);
    given.add(key);
    fields[key as Key] = value;
  });
  return resolve(fields);
}

/** The spec of flag fields (a preset's merged with the flag's). */
function resolve(f: Partial<Record<Key, string>>): PreprocessSpec {
  const channels = oneOf(f.channels ?? 'rgb', 'channels', ['rgb', 'bgr', 'gray'] as const),
    c = channels === 'gray' ? 1 : 3;
  let resize: Resize | null = null;
  if (f.resize !== undefined) {
    const fit = oneOf(f.fit ?? 'stretch', 'fit', ['stretch', 'height'] as const);
    if (/x/.test(f.resize)) resize = { ...size(f.resize, 'resize'), fit };
    else if (f.fit !== undefined) fail(`fit=${f.fit} needs resize=WxH (width x height)`);
    else resize = { shorter: positiveInt(f.resize, 'resize') };
  } else if (f.fit !== undefined) fail(`fit=${f.fit} needs resize=WxH (width x height)`);
  const perChannel = (s: string, key: string) => {
    const v = numbers(s, key);
    if (v.length !== 1 && v.length !== c) fail(`${key}: ${v.length} values for ${c} channels (${channels})`);
    return v.length === 1 ? new Array<number>(c).fill(v[0]) : v;
  };
  const scaleM = /^1\/(.+)$/.exec(f.scale ?? '1');
  const scale = scaleM ? { divide: numbers(scaleM[1], 'scale')[0] } : { multiply: numbers(f.scale ?? '1', 'scale')[0] };
  return check({
    resize,
    filter: oneOf(f.filter ?? 'pil', 'filter', ['pil', 'linear'] as const),
    crop: f.crop === undefined ? null : size(f.crop, 'crop'),
    channels,
    layout: oneOf(f.layout ?? 'nchw', 'layout', ['nchw', 'nhwc'] as const),
    scale,
    mean: perChannel(f.mean ?? '0', 'mean'),
    std: perChannel(f.std ?? '1', 'std'),
  });
}

/** Refuses what no image can be preprocessed with: a zero divisor or std, a single-element scale list. */
function check(s: PreprocessSpec): PreprocessSpec {
  if ('divide' in s.scale && s.scale.divide === 0) fail('scale: 1/0 divides by zero');
  if (s.std.some((v) => v === 0)) fail('std: a standard deviation of 0 divides by zero');
  if (s.resize && 'fit' in s.resize && s.resize.fit === 'height' && s.crop)
    fail('fit=height pads to the width: a crop after it is not supported');
  return s;
}

const FIELDS = ['channels', 'crop', 'filter', 'layout', 'mean', 'resize', 'scale', 'std'];

/** A spec read back from JSON (a report): it must be exactly what parsePreprocess returns for some flag. */
export function checkPreprocess(value: unknown): PreprocessSpec {
  if (!value || typeof value !== 'object' || Array.isArray(value)) fail('the spec is not a JSON object');
  const keys = Object.keys(value).sort();
  if (keys.join() !== FIELDS.join()) fail(`the spec has the fields ${keys.join(', ')}, not ${FIELDS.join(', ')}`);
  let spec: PreprocessSpec | undefined;
  try {
    spec = parsePreprocess(formatPreprocess(value as PreprocessSpec));
  } catch {
    // a field of the wrong type: said below
  }
  const fields = (s: object) => JSON.stringify(Object.fromEntries(FIELDS.map((k) => [k, (s as never)[k]])));
  if (!spec || fields(spec) !== fields(value))
    fail(`the spec ${JSON.stringify(value)} is not one parsePreprocess gives (a field has a wrong type or value)`);
  return spec;
}

/** The flag text of a spec: parsePreprocess(formatPreprocess(s)) equals s. */
export function formatPreprocess(s: PreprocessSpec): string {
  const r = s.resize,
    items: string[] = [];
  if (r && 'shorter' in r) items.push(`resize=${r.shorter}`);
  else if (r) items.push(`resize=${r.width}x${r.height}`, `fit=${r.fit}`);
  items.push(`filter=${s.filter}`);
  if (s.crop) items.push(`crop=${s.crop.width}x${s.crop.height}`);
  items.push(`channels=${s.channels}`, `layout=${s.layout}`);
  items.push('divide' in s.scale ? `scale=1/${s.scale.divide}` : `scale=${s.scale.multiply}`);
  items.push(`mean=${s.mean.join(':')}`, `std=${s.std.join(':')}`);
  return items.join(',');
}
