// The host loop of a sampler-step artifact (export/sampler_step.py) on onnxruntime-web. No diffusion math:
//
//   x = noise(seed).draw(n*C*H*W); state = zeros(K, n, C, H, W)
//   for i in 0..S-1: z = next draw if i < noise_steps else zeros; x, x0, state = run(x, [i], z, state)
//
// with the noise of noise.mjs, so a seed gives the same images as the Python runtime and the C++ host.
import { NoiseStream } from "./noise.mjs";

const INPUTS = ["x", "i", "z", "state"];
const OUTPUTS = ["x_next", "x0", "state_next"];
const SEED_LIMIT = 1n << 64n;

// What the loop needs from a manifest (ms-ddpm export --sampler ...): throws a readable Error otherwise.
export function samplerSpec(manifest) {
  const sampler = manifest?.sampler;
  if (typeof sampler !== "object" || sampler === null) {
    throw new Error("this artifact is not a sampler artifact: its manifest has no sampler section " +
      "(export one with `ms-ddpm export --format onnx --sampler NAME`)");
  }
  const model = manifest.config?.model ?? {};
  const spec = {
    name: sampler.name, steps: sampler.steps, noiseSteps: sampler.noise_steps, slots: sampler.state_shape?.[0],
    channels: model.channels, size: model.image_size,
    fixedBatch: manifest.batch?.policy === "fixed" ? manifest.batch.size : null,
  };
  const bad = ["steps", "noiseSteps", "slots", "channels", "size"].filter((key) => !Number.isInteger(spec[key]) || spec[key] < 0);
  if (bad.length) throw new Error(`the manifest's sampler section is incomplete or invalid (${bad.join(", ")})`);
  return spec;
}

// A session on the artifact's bytes; refuses a model that is not a sampler step.
export async function openSession(ort, bytes) {
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  if (INPUTS.some((name) => !session.inputNames.includes(name)) || OUTPUTS.some((name) => !session.outputNames.includes(name))) {
    const signature = `${session.inputNames.join(", ")} -> ${session.outputNames.join(", ")}`;
    await session.release();
    throw new Error(`this artifact is not a sampler artifact: the model takes ${signature}, ` +
      `a sampler step takes ${INPUTS.join(", ")} -> ${OUTPUTS.join(", ")}`);
  }
  return session;
}

// A seed from text: a decimal integer in [0, 2^64 - 1], as a BigInt.
export function parseSeed(text) {
  const seed = /^\s*\d+\s*$/.test(text) ? BigInt(text.trim()) : -1n;
  if (seed < 0n || seed >= SEED_LIMIT) throw new Error(`the seed must be an integer in [0, 2^64 - 1], got "${text}"`);
  return seed;
}

// The denoising loop: yields { index, x (Float32Array, n*C*H*W), ms (this step's session.run) } after each step.
export async function* denoise(ort, session, spec, n, seed) {
  const shape = [n, spec.channels, spec.size, spec.size];
  const count = shape.reduce((a, b) => a * b);
  const noise = new NoiseStream(seed);
  const tensor = (data, dims = shape) => new ort.Tensor("float32", data, dims);
  let x = tensor(noise.draw(count));
  let state = tensor(new Float32Array(spec.slots * count), [spec.slots, ...shape]);
  const zeros = tensor(new Float32Array(count));
  for (let i = 0; i < spec.steps; i++) {
    const z = i < spec.noiseSteps ? tensor(noise.draw(count)) : zeros;
    const index = new ort.Tensor("int64", BigInt64Array.of(BigInt(i)), [1]);
    const start = performance.now();
    const out = await session.run({ x, i: index, z, state }, ["x_next", "state_next"]);
    const ms = performance.now() - start;
    x = out.x_next;
    state = out.state_next;
    yield { index: i, x: x.data, ms };
  }
}
