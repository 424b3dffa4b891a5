// Portable Gaussian noise for browser hosts (e.g. on onnxruntime-web): the same seed gives the same
// normals as runtime/noise.py and runtime/hosts/cpp/noise.hpp. Spec and test vectors: docs/noise.md.
//
//   Philox4x32-10 keyed by the seed (key = low, high 32 bits); block b has the counter
//   (b low, b high, 0, 0) and gives 4 uint32 words w -> u = (w + 0.5) / 2^32 (double);
//   Box-Muller on pairs (u1, u2): r = sqrt(-2 ln u1), r cos(2 pi u2), r sin(2 pi u2) -> float32.
//
//   const stream = new NoiseStream(seed);          // Number (safe integer) or BigInt in [0, 2^64 - 1]
//   const xT = stream.draw(n * C * H * W);         // Float32Array; then stream.draw(...) per stochastic step

const TWO_32 = 4294967296;
const TWO_PI = 6.283185307179586; // 2 pi rounded to double, as in every host

// High 32 bits of the 64-bit product of two uint32 (b split in 16-bit halves: each partial product is exact).
function mulhi32(a, b) {
  const low = a * (b & 0xffff);
  const high = a * (b >>> 16);
  return Math.floor((high + Math.floor(low / 65536)) / 65536) >>> 0;
}

// Philox4x32-10 (Salmon et al. 2011, Random123): counter [c0..c3], key [k0, k1] -> out [4 uint32].
export function philox4x32(counter, key, out = new Uint32Array(4)) {
  let [c0, c1, c2, c3] = counter;
  let [k0, k1] = key;
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi32(0xd2511f53, c0);
    const lo0 = Math.imul(0xd2511f53, c0) >>> 0;
    const hi1 = mulhi32(0xcd9e8d57, c2);
    const lo1 = Math.imul(0xcd9e8d57, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
  return out;
}

// The Philox key [low, high] of a seed: a safe-integer Number or a BigInt in [0, 2^64 - 1].
export function seedKey(seed) {
  if (typeof seed === "bigint" && seed >= 0n && seed < 1n << 64n) {
    return [Number(seed & 0xffffffffn), Number(seed >> 32n)];
  }
  if (Number.isSafeInteger(seed) && seed >= 0) return [seed % TWO_32, Math.floor(seed / TWO_32)];
  throw new RangeError(`the noise seed must be an integer in [0, 2^64 - 1] (a BigInt above 2^53 - 1), got ${seed}`);
}

// The 4 words of block b of a seed's stream (key from seedKey).
export function blockWords(key, b, out = new Uint32Array(4)) {
  return philox4x32([b % TWO_32, Math.floor(b / TWO_32), 0, 0], key, out);
}

// 4 uint32 words -> 4 normals: pairs (w0, w1) and (w2, w3) through Box-Muller in double.
function boxMuller(words, out) {
  for (let i = 0; i < 4; i += 2) {
    const u1 = (words[i] + 0.5) / TWO_32;
    const u2 = (words[i + 1] + 0.5) / TWO_32;
    const r = Math.sqrt(-2.0 * Math.log(u1));
    out[i] = r * Math.cos(TWO_PI * u2);
    out[i + 1] = r * Math.sin(TWO_PI * u2);
  }
}

// A seed's normals, handed out in order: each draw continues where the last one stopped.
export class NoiseStream {
  constructor(seed) {
    this.key = seedKey(seed);
    this.offset = 0; // a Number: exact up to 2^53 normals
  }

  // The next `count` normals as a Float32Array.
  draw(count) {
    const out = new Float32Array(count);
    const words = new Uint32Array(4);
    const block = new Float32Array(4);
    for (let i = 0; i < count; i++, this.offset++) {
      const index = this.offset % 4;
      if (i === 0 || index === 0) boxMuller(blockWords(this.key, Math.floor(this.offset / 4), words), block);
      out[i] = block[index];
    }
    return out;
  }
}
