// Images as a grid of pixels, as runtime/images.py writes them: to_uint8, make_grid (pad 2, ceil(sqrt(n))
// columns, black background) and the nearest-neighbour enlargement of save_grid (x max(1, 48 // size)).

// One value on the [-1, 1] scale -> uint8: clip((x + 1) * 127.5 + 0.5, 0, 255), truncated, in float32 like numpy.
export function toUint8(value) {
  const scaled = Math.fround(Math.fround(Math.fround(value + 1) * 127.5) + 0.5);
  return Math.trunc(Math.min(255, Math.max(0, scaled)));
}

// The enlargement save_grid applies to images of this size.
export function gridScale(size) {
  return Math.max(1, Math.floor(48 / size));
}

// x: a Float32Array (n, channels, size, size) -> { width, height, pixels: RGBA Uint8ClampedArray }, enlarged.
export function gridPixels(x, n, channels, size, pad = 2) {
  if (!x.every(Number.isFinite)) throw new Error("the samples contain NaN/Inf values: the model or its weights are broken");
  const columns = Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / columns);
  const scale = gridScale(size);
  const width = (columns * (size + pad) + pad) * scale;
  const height = (rows * (size + pad) + pad) * scale;
  const pixels = new Uint8ClampedArray(width * height * 4);
  for (let k = 3; k < pixels.length; k += 4) pixels[k] = 255;
  const plane = size * size;
  for (let image = 0; image < n; image++) {
    const top = pad + Math.floor(image / columns) * (size + pad);
    const left = pad + (image % columns) * (size + pad);
    for (let y = 0; y < size; y++) {
      for (let xPos = 0; xPos < size; xPos++) {
        const rgb = [0, 1, 2].map((c) => toUint8(x[(image * channels + Math.min(c, channels - 1)) * plane + y * size + xPos]));
        fill(pixels, width, (left + xPos) * scale, (top + y) * scale, scale, rgb);
      }
    }
  }
  return { width, height, pixels };
}

// A scale x scale square of one colour at (px, py).
function fill(pixels, width, px, py, scale, rgb) {
  for (let dy = 0; dy < scale; dy++) {
    for (let dx = 0; dx < scale; dx++) {
      const at = ((py + dy) * width + px + dx) * 4;
      pixels[at] = rgb[0];
      pixels[at + 1] = rgb[1];
      pixels[at + 2] = rgb[2];
    }
  }
}
