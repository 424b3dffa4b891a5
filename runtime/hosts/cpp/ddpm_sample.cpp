// ddpm-sample: sample images from a sampler-step artifact on MindSpore Lite, with no Python and no diffusion
// math. The artifact (export --sampler NAME --format mslite) holds the U-Net and one scheduler step; its
// manifest <model>.json says how many steps to run and how many of them take noise. The whole loop:
//
//   x = x_T; state = 0
//   for i in 0 .. steps-1:  x, x0, state = model(x, i, z_i if i < noise_steps else 0, state)
//   grid.png = to_uint8(x)
//
// Noise: ddpm::NoiseStream(seed), x_T first, then z_i, each N*C*H*W values in C order; or, with --noise,
// a float32 .npy of shape (1 + noise_steps, N, C, H, W) holding x_T and then z_0, z_1, ...
// Build: `make hosts` at the repository root (runtime/hosts/cpp/Makefile); ship: `ms-ddpm bundle --host cpp`.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "files.hpp"
#include "grid.hpp"
#include "lite_log.hpp"
#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"
#include "noise.hpp"
#include "npy.hpp"
#include "sha256.hpp"

namespace {
namespace ms = mindspore;
using ddpm::Failure;
using Clock = std::chrono::steady_clock;
const int64_t kDefaultImages = 16;

const char* const USAGE =
    "usage: ddpm-sample --model MODEL.lite.mindir --out GRID.png [--n N] [--seed S] [--noise NOISE.npy]\n"
    "                   [--frames DIR] [--dump-float X.npy] [--threads T]\n"
    "  --n N          images (default 16; with --noise, the file's N)\n"
    "  --seed S       seed of the portable noise stream (default 0)\n"
    "  --noise FILE   x_T and each noisy step's z instead: float32 (1 + noise_steps, N, C, H, W)\n"
    "  --frames DIR   also write each step's x0 prediction as DIR/x0_000.png, ...\n"
    "  --dump-float F the final x as float32 (N, C, H, W) .npy\n"
    "  --threads T    Lite's CPU threads (default: Lite's own)\n"
    "  --version      the toolkit's version and the MindSpore Lite version it was built against\n";

struct Options {
    std::string model, out, noise, frames, dump_float;
    int64_t n = -1;  // -1: not given
    unsigned long long seed = 0;
    bool seed_given = false;
    int threads = 0;
};

unsigned long long parse_number(const std::string& flag, const char* text, unsigned long long min, unsigned long long max) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long value = std::strtoull(text, &end, 10);
    if (!*text || *end || errno || text[0] == '-' || value < min || value > max)
        throw Failure(flag + " must be an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "], got '" +
                      text + "'");
    return value;
}

Options parse_args(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::fputs(USAGE, stdout);
            std::exit(0);
        }
        if (flag == "--version") {
            std::printf("ddpm-sample %s (ms-ddpm), built against MindSpore Lite %s\n", DDPM_VERSION, LITE_VERSION);
            std::exit(0);
        }
        if (i + 1 >= argc) throw Failure(flag.rfind("--", 0) == 0 ? flag + " needs a value" : "unexpected argument " + flag);
        const char* value = argv[++i];
        if (flag == "--model") options.model = value;
        else if (flag == "--out") options.out = value;
        else if (flag == "--noise") options.noise = value;
        else if (flag == "--frames") options.frames = value;
        else if (flag == "--dump-float") options.dump_float = value;
        else if (flag == "--n") options.n = parse_number(flag, value, 1, 1u << 20);
        else if (flag == "--seed") options.seed = parse_number(flag, value, 0, ~0ull), options.seed_given = true;
        else if (flag == "--threads") options.threads = int(parse_number(flag, value, 1, 1024));
        else throw Failure("unknown option " + flag + " (see --help)");
    }
    if (options.model.empty() || options.out.empty()) throw Failure("--model and --out are required (see --help)");
    if (options.out.size() < 4 || options.out.compare(options.out.size() - 4, 4, ".png") != 0)
        throw Failure("--out " + options.out + ": the grid is a PNG; name a .png file");
    if (options.seed_given && !options.noise.empty()) throw Failure("give --seed or --noise, not both");
    return options;
}

// What the host needs from the manifest <model>.json.
struct Manifest {
    std::string sha256, sampler;
    int channels = 0, size = 0, steps = 0, noise_steps = 0, slots = 0;
    int64_t fixed_batch = 0;  // 0: any batch
};

Manifest read_manifest(const std::string& path) {
    const std::vector<unsigned char> bytes = ddpm::read_bytes(path, "manifest");
    try {
        const nlohmann::json data = nlohmann::json::parse(bytes.begin(), bytes.end());
        const nlohmann::json& sampler = data.at("sampler");
        const nlohmann::json& model = data.at("config").at("model");
        Manifest manifest;
        manifest.sha256 = data.at("artifact_sha256").get<std::string>();
        manifest.sampler = sampler.at("name").get<std::string>();
        manifest.channels = model.at("channels").get<int>();
        manifest.size = model.at("image_size").get<int>();
        manifest.steps = sampler.at("steps").get<int>();
        manifest.noise_steps = sampler.at("noise_steps").get<int>();
        manifest.slots = sampler.at("state_shape").at(0).get<int>();
        if (data.at("batch").at("policy") == "fixed") manifest.fixed_batch = data["batch"].at("size").get<int64_t>();
        if (manifest.channels < 1 || manifest.size < 1 || manifest.steps < 1 || manifest.slots < 1 ||
            manifest.noise_steps < 0 || manifest.noise_steps > manifest.steps)
            throw Failure("manifest " + path + ": inconsistent sizes (channels, image_size, steps, noise_steps, state_shape)");
        return manifest;
    } catch (const nlohmann::json::exception& exc) {
        throw Failure("manifest " + path + " is not a sampler-step manifest: " + exc.what());
    }
}

std::string describe(const ms::Status& status) {
    const std::string text = status.ToString();
    return text.empty() ? "status code " + std::to_string(static_cast<int>(status.StatusCode())) : text;
}

// The step model on Lite: inputs x, i, z, state; outputs x_next, x0, state_next (found by name). Tensors hold
// (slots, batch, C, H, W) values (slots: the state's K, 1 for the others). A dynamic artifact is resized to all
// n images; a fixed one runs its batch at a time, the last call padded with zeros (as the Python runtime does).
class StepModel {
public:
    StepModel(const std::vector<unsigned char>& bytes, int threads, const Manifest& manifest, int64_t n)
        : n_(n), batch_(manifest.fixed_batch ? manifest.fixed_batch : n),
          image_(size_t(manifest.channels) * manifest.size * manifest.size) {
        auto context = std::make_shared<ms::Context>();
        if (threads > 0) context->SetThreadNum(threads);
        context->MutableDeviceInfo().push_back(std::make_shared<ms::CPUDeviceInfo>());
        const ms::Status status = model_.Build(bytes.data(), bytes.size(), ms::ModelType::kMindIR, context);
        if (!status.IsOk()) throw Failure("MindSpore Lite cannot load the model: " + describe(status));
        if (!manifest.fixed_batch) resize({n, manifest.channels, manifest.size, manifest.size}, manifest.slots);
    }

    // One step over all n images: x and state become x_next and state_next; x0 gets the step's x0 prediction.
    void step(std::vector<float>& x, int index, const std::vector<float>& z, std::vector<float>& state,
              std::vector<float>& x0) {
        for (int64_t first = 0; first < n_; first += batch_) {
            const int64_t count = std::min(batch_, n_ - first);
            std::vector<ms::MSTensor> inputs = model_.GetInputs();
            for (ms::MSTensor& tensor : inputs) {
                const std::string name = tensor.Name();
                if (name == "i") set_index(tensor, index);
                else if (name == "x") put(tensor, x, first, count);
                else if (name == "z") put(tensor, z, first, count);
                else if (name == "state") put(tensor, state, first, count);
                else throw Failure("the model has an unexpected input '" + name + "': not a sampler-step artifact");
            }
            std::vector<ms::MSTensor> outputs;
            const ms::Status status = model_.Predict(inputs, &outputs);
            if (!status.IsOk())
                throw Failure("MindSpore Lite inference failed at step " + std::to_string(index) + ": " + describe(status));
            take(output(outputs, "x_next"), x, first, count);
            take(output(outputs, "x0"), x0, first, count);
            take(output(outputs, "state_next"), state, first, count);
        }
    }

private:
    void resize(const std::vector<int64_t>& image, int slots) {
        std::vector<int64_t> state{slots};
        state.insert(state.end(), image.begin(), image.end());
        const std::vector<ms::MSTensor> inputs = model_.GetInputs();
        std::vector<std::vector<int64_t>> shapes;
        for (const ms::MSTensor& tensor : inputs) {
            const std::string name = tensor.Name();
            shapes.push_back(name == "i" ? std::vector<int64_t>{1} : name == "state" ? state : image);
        }
        const ms::Status status = model_.Resize(inputs, shapes);
        if (!status.IsOk()) throw Failure("MindSpore Lite cannot resize the model: " + describe(status));
    }

    static void set_index(ms::MSTensor& tensor, int index) {
        if (tensor.DataType() == ms::DataType::kNumberTypeInt32 && tensor.DataSize() == sizeof(int32_t)) {
            const int32_t value = index;
            std::memcpy(tensor.MutableData(), &value, sizeof value);
        } else if (tensor.DataType() == ms::DataType::kNumberTypeInt64 && tensor.DataSize() == sizeof(int64_t)) {
            const int64_t value = index;
            std::memcpy(tensor.MutableData(), &value, sizeof value);
        } else {
            throw Failure("the model's step index input 'i' is not one int32 or int64");
        }
    }

    static ms::MSTensor& output(std::vector<ms::MSTensor>& outputs, const std::string& name) {
        for (ms::MSTensor& tensor : outputs)
            if (tensor.Name() == name) return tensor;
        throw Failure("the model has no output '" + name + "': not a sampler-step artifact");
    }

    // The tensor's data, if it holds the float32 (slots, batch, C, H, W) of `all`'s (slots, n, C, H, W).
    float* data(ms::MSTensor& tensor, const std::vector<float>& all) const {
        const size_t values = all.size() / n_ * batch_;
        if (tensor.DataType() != ms::DataType::kNumberTypeFloat32 || tensor.DataSize() != values * sizeof(float))
            throw Failure("the model's tensor '" + tensor.Name() + "' does not have the manifest's shape (float32, " +
                          std::to_string(values) + " values)");
        return static_cast<float*>(tensor.MutableData());
    }

    // Calls copy(offset in all, offset in the tensor, values) for images first .. first+count-1 of each slot.
    template <typename Copy>
    void each_slot(const std::vector<float>& all, int64_t first, int64_t count, Copy copy) const {
        for (size_t k = 0; k < all.size() / (n_ * image_); ++k)
            copy((k * n_ + first) * image_, k * batch_ * image_, count * image_);
    }

    void put(ms::MSTensor& tensor, const std::vector<float>& all, int64_t first, int64_t count) const {
        float* target = data(tensor, all);
        std::fill_n(target, all.size() / n_ * batch_, 0.0f);
        each_slot(all, first, count, [&](size_t from, size_t to, size_t values) {
            std::copy_n(all.data() + from, values, target + to);
        });
    }

    void take(ms::MSTensor& tensor, std::vector<float>& all, int64_t first, int64_t count) const {
        const float* source = data(tensor, all);
        each_slot(all, first, count, [&](size_t from, size_t to, size_t values) {
            std::copy_n(source + to, values, all.data() + from);
        });
    }

    ms::Model model_;
    const int64_t n_, batch_;
    const size_t image_;
};

// x_T and each noisy step's z: from the seed's stream, or from a .npy.
class Noise {
public:
    Noise(const Options& options, const Manifest& manifest, int64_t& n) : stream_(options.seed) {
        if (options.noise.empty()) return;
        file_ = ddpm::read_npy(options.noise);
        if (n < 0) n = file_.shape.size() == 5 ? file_.shape[1] : kDefaultImages;
        const std::vector<int64_t> expected{1 + manifest.noise_steps, n, manifest.channels, manifest.size, manifest.size};
        if (file_.shape != expected)
            throw Failure("noise file " + options.noise + " has shape " + ddpm::shape_text(file_.shape) + ", expected " +
                          ddpm::shape_text(expected) + " (x_T, then z for each of the " +
                          std::to_string(manifest.noise_steps) + " noisy steps)");
    }

    void draw(std::vector<float>& out) {
        if (file_.data.empty()) return stream_.draw(out.data(), out.size());
        std::copy_n(file_.data.begin() + offset_, out.size(), out.begin());
        offset_ += out.size();
    }

private:
    ddpm::NoiseStream stream_;
    ddpm::FloatArray file_;
    size_t offset_ = 0;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string frame_path(const std::string& dir, int step) {
    char name[32];
    std::snprintf(name, sizeof name, "/x0_%03d.png", step);
    return dir + name;
}

int run(const Options& options) {
    const Clock::time_point started = Clock::now();
    const std::vector<unsigned char> bytes = ddpm::read_bytes(options.model, "model");
    const Manifest manifest = read_manifest(options.model + ".json");
    if (ddpm::sha256_hex(bytes) != manifest.sha256)
        throw Failure("the model " + options.model + " does not match its manifest (sha256 differs from artifact_sha256)");
    int64_t n = options.n;
    Noise noise(options, manifest, n);
    if (n < 0) n = kDefaultImages;
    ddpm::check_writable(options.out);
    if (!options.dump_float.empty()) ddpm::check_writable(options.dump_float);
    if (!options.frames.empty()) {
        if (mkdir(options.frames.c_str(), 0777) != 0 && errno != EEXIST)
            throw Failure("cannot create the frames directory " + options.frames + " (" + ddpm::reason() + ")");
        ddpm::check_writable(frame_path(options.frames, 0));
    }

    const int c = manifest.channels, h = manifest.size, w = manifest.size;
    StepModel model(bytes, options.threads, manifest, n);
    const double load_s = seconds_since(started);

    const size_t count = size_t(n) * c * h * w;
    std::vector<float> x(count), z(count, 0.0f), x0(count), state(count * manifest.slots, 0.0f);
    noise.draw(x);
    const Clock::time_point loop_start = Clock::now();
    for (int i = 0; i < manifest.steps; ++i) {
        if (i < manifest.noise_steps) noise.draw(z);
        else std::fill(z.begin(), z.end(), 0.0f);
        model.step(x, i, z, state, x0);
        if (!options.frames.empty()) ddpm::save_grid(frame_path(options.frames, i), ddpm::to_uint8(x0.data(), n, c, h, w), n, c, h, w);
    }
    const double loop_s = seconds_since(loop_start);

    ddpm::save_grid(options.out, ddpm::to_uint8(x.data(), n, c, h, w), n, c, h, w);
    if (!options.dump_float.empty()) ddpm::write_npy(options.dump_float, {n, c, h, w}, x.data());
    std::printf("%lld images, %s, %d steps: load %.3f s, %.2f ms/step, %.3f s in all -> %s\n", static_cast<long long>(n),
                manifest.sampler.c_str(), manifest.steps, load_s, 1e3 * loop_s / manifest.steps,
                seconds_since(started), options.out.c_str());
    return 0;
}
}  // namespace

int main(int argc, char** argv) {
    ddpm::LiteLog log;
    try {
        return run(parse_args(argc, argv));
    } catch (const std::exception& exc) {  // a Failure, or the library's own (e.g. std::bad_alloc)
        const std::string logged = log.stop();
        std::fprintf(stderr, "error: %s%s\n", exc.what(), logged.empty() ? "" : (" (" + logged + ")").c_str());
    }
    return 2;
}
