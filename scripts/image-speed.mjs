// Times decodeImage and preprocess (built code: npm run build first) on the images given, for the presets or flags
// given: the median of 7 runs each, in ms. The numbers in src/images/README.md came from
//   node scripts/image-speed.mjs big.jpg big.png -- imagenet paddleocr-rec paddleocr-det,resize=960x736
// with big.jpg/big.png a 640x480 picture (make.py's scene(640, 480), JPEG quality 90 and PNG).
import { readFileSync } from 'node:fs';
import { decodeImage, parsePreprocess, preprocess } from '../dist/src/images/index.js';

const dash = process.argv.indexOf('--');
const files = process.argv.slice(2, dash < 0 ? undefined : dash),
  flags = dash < 0 ? ['imagenet'] : process.argv.slice(dash + 1);
const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1].toFixed(1);
console.log('| image | flag | decode ms | preprocess ms |\n|---|---|---|---|');
for (const file of files)
  for (const flag of flags) {
    const bytes = readFileSync(file),
      spec = parsePreprocess(flag),
      decode = [],
      prep = [];
    for (let k = 0; k < 7; k++) {
      let t = performance.now();
      const img = decodeImage(bytes, file);
      decode.push(performance.now() - t);
      t = performance.now();
      preprocess(img, spec);
      prep.push(performance.now() - t);
    }
    console.log(`| ${file} | ${flag} | ${median(decode)} | ${median(prep)} |`);
  }
