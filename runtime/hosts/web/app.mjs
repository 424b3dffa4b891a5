// The page (index.html): fetches the manifest and the artifact beside it (served by `ms-ddpm web`, or any static
// file server from a `ms-ddpm bundle --host web` folder), runs the sampler-step loop (sampler.mjs) on
// onnxruntime-web's wasm execution provider and draws the grid after every step.
//
// URL parameters:
//   ?threads=N  wasm threads; default min(4, cores) when the page is cross-origin isolated (the server's
//               COOP/COEP headers), else 1 (browsers allow wasm threads only under isolation)
//   ?test=1     test hook for the browser tests (tests/test_web.py through drive.mjs): the page keeps
//               window.msDdpmTest = { state: "loading" | "ready" | "running" | "done" | "error", error, backend,
//               timings, stepMs, result: the last batch as a Float32Array (n, C, H, W) }. Off without ?test.
import { gridPixels } from "./grid.mjs";
import { denoise, openSession, parseSeed, samplerSpec } from "./sampler.mjs";

// Every URL is relative to the page, so the folder can be served from any path (`ms-ddpm bundle --host web`).
const ORT = new URL("ort/ort.wasm.bundle.min.mjs", document.baseURI).href;
const MAX_IMAGES = 64;
const params = new URLSearchParams(location.search);
const hook = params.has("test") ? (window.msDdpmTest = { state: "loading", timings: {} }) : null;
const $ = (id) => document.getElementById(id);

function report(fields) {
  if (hook) Object.assign(hook, fields);
}

function fail(error) {
  const message = error instanceof Error ? error.message : String(error);
  $("error").textContent = `Error: ${message}`;
  $("status").textContent = "Stopped by an error.";
  report({ state: "error", error: message });
}

function threadCount() {
  const asked = params.get("threads");
  if (asked !== null && !/^[1-9]\d*$/.test(asked)) throw new Error(`?threads= must be a positive integer, got "${asked}"`);
  if (!crossOriginIsolated) return 1;
  return asked !== null ? Number(asked) : Math.min(4, navigator.hardwareConcurrency || 1);
}

async function download(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${what} (${url}): HTTP ${response.status}`);
  return response;
}

async function loadManifest() {
  const text = await (await download("model.json", "the manifest")).text();
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`the manifest is not valid JSON: ${error.message}`);
  }
}

function showFacts(facts) {
  $("manifest").replaceChildren(...Object.entries(facts).flatMap(([key, value]) => {
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = key;
    detail.textContent = value;
    return [term, detail];
  }));
}

function describe(manifest, spec, bytes, backend) {
  const model = manifest.config?.model ?? {};
  const sampler = manifest.sampler;
  const options = ["eta", "spacing", "clip_x0"].filter((key) => key in sampler).map((key) => `${key} ${sampler[key]}`);
  const gate = manifest.verification ?? {};
  return {
    "Artifact": `${manifest.artifact} (${(bytes / 1e6).toFixed(2)} MB)`,
    "Model": `U-Net dim ${model.dim}, dim_mults ${model.dim_mults}, ${spec.size}x${spec.size}, ${spec.channels} channel(s)`,
    "Schedule": `${manifest.config?.diffusion?.schedule}, T = ${manifest.betas?.length}`,
    "Sampler": [`${spec.name}, ${spec.steps} steps`, ...options].join(", "),
    "Batch": spec.fixedBatch === null ? "any number of images" : `fixed at ${spec.fixedBatch} images`,
    "Numeric gate": gate.skipped ? "not verified (exported with --no-verify)"
      : gate.passed ? `passed (worst max abs ${Number(gate.worst_max_abs).toExponential(1)})` : "unknown",
    "Runs on": backend,
  };
}

function draw(x, n, spec) {
  const { width, height, pixels } = gridPixels(x, n, spec.channels, spec.size);
  const canvas = $("canvas");
  if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
  canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
}

function imageCount(spec) {
  const n = Number($("count").value);
  if (spec.fixedBatch !== null && n !== spec.fixedBatch) throw new Error(`this artifact takes exactly ${spec.fixedBatch} images`);
  if (!Number.isInteger(n) || n < 1 || n > MAX_IMAGES) throw new Error(`the number of images must be 1 to ${MAX_IMAGES}`);
  return n;
}

async function generate(ort, session, spec) {
  $("error").textContent = "";
  const n = imageCount(spec);
  const seed = parseSeed($("seed").value);
  $("generate").disabled = $("download").disabled = true;
  Object.assign($("progress"), { max: spec.steps, value: 0 });
  report({ state: "running", result: null, stepMs: [] });
  const stepMs = [];
  let x = null;
  for await (const step of denoise(ort, session, spec, n, seed)) {
    x = step.x;
    stepMs.push(step.ms);
    draw(x, n, spec);
    if (hook && hook.timings.firstImage === undefined) hook.timings.firstImage = performance.now();
    $("progress").value = step.index + 1;
    const mean = stepMs.reduce((a, b) => a + b) / stepMs.length;
    $("timing").textContent = `step ${step.index + 1}/${spec.steps}: ${step.ms.toFixed(1)} ms (mean ${mean.toFixed(1)} ms per step)`;
    await new Promise(requestAnimationFrame); // let the browser paint this step
  }
  $("status").textContent = `Done: ${n} images, seed ${seed}.`;
  $("download").dataset.name = `ms-ddpm-${spec.name}${spec.steps}-seed${seed}.png`;
  $("generate").disabled = $("download").disabled = false;
  report({ state: "done", result: Float32Array.from(x), stepMs });
}

function savePng() {
  $("canvas").toBlob((blob) => {
    const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: $("download").dataset.name });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 0);
  }, "image/png");
}

async function main() {
  const threads = threadCount();
  const ort = await import(ORT);
  // the .wasm only: this bundle carries its own loader (a path prefix would make it fetch a separate one)
  ort.env.wasm.wasmPaths = { wasm: new URL("ort/ort-wasm-simd-threaded.wasm", document.baseURI).href };
  ort.env.wasm.numThreads = threads;
  const manifest = await loadManifest();
  const spec = samplerSpec(manifest);
  const bytes = new Uint8Array(await (await download("model.onnx", "the artifact")).arrayBuffer());
  const backend = `wasm execution provider, ${threads} thread${threads > 1 ? "s" : ""}` +
    (crossOriginIsolated ? "" : " (single-threaded: the server sends no cross-origin isolation headers, " +
      "COOP/COEP, which wasm threads need)");
  showFacts(describe(manifest, spec, bytes.length, backend));
  let session;
  try {
    session = await openSession(ort, bytes);
  } catch (error) {
    throw new Error(`the artifact failed to load: ${error instanceof Error ? error.message : error}`);
  }
  if (spec.fixedBatch !== null) Object.assign($("count"), { value: spec.fixedBatch, readOnly: true });
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    generate(ort, session, spec).catch((error) => {
      fail(error);
      $("generate").disabled = false; // the model is still loaded: fix the input and try again
    });
  });
  $("download").addEventListener("click", savePng);
  $("generate").disabled = false;
  $("status").textContent = `Ready: ${spec.name}, ${spec.steps} steps on the ${backend}.`;
  report({ state: "ready", backend, threads, timings: { ready: performance.now() } });
}

main().catch(fail);
