// Test driver for noise.mjs (Node): writes a seed's stream to a file (raw little-endian) for Python to compare.
//
//   node noise_dump.mjs philox C0 C1 C2 C3 K0 K1        print Philox4x32-10 of one counter/key (hex words)
//   node noise_dump.mjs words SEED COUNT OUT            the first COUNT uint32 words of the stream (blocks 0, 1, ...)
//   node noise_dump.mjs normals SEED COUNT OUT [CHUNK]  the first COUNT normals as float32, drawn CHUNK at a time
import { writeFileSync } from "node:fs";
import { NoiseStream, blockWords, philox4x32, seedKey } from "./noise.mjs";

const hex = (s) => parseInt(s, 16) >>> 0;

function words(seed, count) {
  const key = seedKey(seed);
  const out = new Uint32Array(count);
  for (let b = 0; 4 * b < count; b++) {
    const block = blockWords(key, b);
    out.set(block.subarray(0, Math.min(4, count - 4 * b)), 4 * b);
  }
  return out;
}

function normals(seed, count, chunk) {
  const stream = new NoiseStream(seed);
  const out = new Float32Array(count);
  for (let start = 0; start < count; start += chunk) out.set(stream.draw(Math.min(chunk, count - start)), start);
  return out;
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "philox" && args.length === 6) {
  const out = philox4x32(args.slice(0, 4).map(hex), args.slice(4).map(hex));
  console.log(Array.from(out, (w) => w.toString(16).padStart(8, "0")).join(" "));
} else if (mode === "words" && args.length === 3) {
  writeFileSync(args[2], words(BigInt(args[0]), Number(args[1])));
} else if (mode === "normals" && (args.length === 3 || args.length === 4) && Number(args[3] ?? 1) > 0) {
  const count = Number(args[1]);
  writeFileSync(args[2], normals(BigInt(args[0]), count, Number(args[3] ?? count)));
} else {
  console.error("usage: node noise_dump.mjs philox C0 C1 C2 C3 K0 K1 | words SEED COUNT OUT | normals SEED COUNT OUT [CHUNK]");
  process.exit(2);
}
