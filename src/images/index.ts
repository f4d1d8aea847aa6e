// Calibration samples from PNG and JPEG images: decode, preprocess by a spec, batch. See src/images/README.md.
export { decodeImage, type Image } from './decode.js';
export { resizePil, resizeLinear, centerCrop } from './resize.js';
export {
  parsePreprocess,
  checkPreprocess,
  formatPreprocess,
  PRESETS,
  type PreprocessSpec,
  type Resize,
} from './spec.js';
export { preprocess, loadImages, loadImageFolder, imageFiles, type Sample, type ImageBatch } from './preprocess.js';
