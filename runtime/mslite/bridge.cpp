// A C ABI over the MindSpore Lite 2.0.0 C++ API, for Python (ctypes) where the wheel's own
// pybind11 binding cannot load (it is built for CPython 3.7 only).
//
// Rules: every entry point catches every C++ exception and reports failure through its return
// value plus msl_last_error(); only the std::vector<char> overloads of the API are linked (the
// libraries use the old std::string ABI, see dual_abi_helper.h: the public std::string overloads are
// inline wrappers over them). Build with `python -m runtime.mslite.build`.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"
#include "include/registry/converter_context.h"

namespace mindspore {
struct ConverterPara;
// converter.h is not shipped with the wheel: this declaration mirrors the exported symbols of
// libmindspore_converter.so (`nm -DC`), whose only data member is a shared_ptr<ConverterPara>.
class Converter {
 public:
  Converter(converter::FmkType fmk_type, const std::vector<char> &model_file, const std::vector<char> &output_file,
            const std::vector<char> &weight_file);
  void SetSaveType(ModelType save_type);
  void SetNoFusion(bool no_fusion);
  Status Convert();

 private:
  std::shared_ptr<ConverterPara> data_;
};
}  // namespace mindspore

namespace {
namespace ms = mindspore;

thread_local std::string g_error;

struct Handle {
  ms::Model model;
  std::vector<ms::MSTensor> outputs;
};

std::vector<char> Chars(const char *text) { return std::vector<char>(text, text + std::strlen(text)); }

std::string Describe(const ms::Status &status) {
  std::string message = status.ToString();
  return message.empty() ? "status code " + std::to_string(static_cast<int>(status.StatusCode())) : message;
}

// Runs `body`; on a failed Status or any exception, records the reason and returns -1.
template <typename Body>
int Guard(const char *what, Body body) {
  try {
    ms::Status status = body();
    if (status.IsOk()) return 0;
    g_error = std::string(what) + ": " + Describe(status);
  } catch (const std::exception &exc) {
    g_error = std::string(what) + ": " + exc.what();
  } catch (...) {
    g_error = std::string(what) + ": unknown C++ exception";
  }
  return -1;
}

ms::Status Invalid(const std::string &message) { return ms::Status(ms::kLiteParamInvalid, message); }

std::vector<ms::MSTensor> Inputs(void *handle) { return static_cast<Handle *>(handle)->model.GetInputs(); }

std::vector<ms::MSTensor> Outputs(void *handle) { return static_cast<Handle *>(handle)->model.GetOutputs(); }

// Copies a tensor's name (NUL-terminated) into `buffer`; returns its length, or -1 if it does not fit.
int CopyName(const ms::MSTensor &tensor, char *buffer, int capacity) {
  const std::string name = tensor.Name();  // inline, over the vector<char> overload
  if (static_cast<int>(name.size()) >= capacity) return -1;
  std::copy(name.begin(), name.end(), buffer);
  buffer[name.size()] = '\0';
  return static_cast<int>(name.size());
}

int CopyShape(const ms::MSTensor &tensor, int64_t *dims, int capacity) {
  const std::vector<int64_t> &shape = tensor.Shape();
  if (static_cast<int>(shape.size()) > capacity) return -1;
  std::copy(shape.begin(), shape.end(), dims);
  return static_cast<int>(shape.size());
}
}  // namespace

extern "C" {

const char *msl_last_error() { return g_error.c_str(); }

// Loads a cloud MindIR (`model_type` 0) or device .ms (4) model for CPU; `threads` <= 0 keeps Lite's default.
void *msl_model_load(const char *path, int model_type, int threads) {
  Handle *result = nullptr;
  Guard("cannot load the Lite model", [&] {
    auto handle = std::make_unique<Handle>();
    auto context = std::make_shared<ms::Context>();
    if (threads > 0) context->SetThreadNum(threads);
    context->MutableDeviceInfo().push_back(std::make_shared<ms::CPUDeviceInfo>());
    ms::Status status = handle->model.Build(std::string(path), static_cast<ms::ModelType>(model_type), context);
    if (status.IsOk()) result = handle.release();
    return status;
  });
  return result;
}

void msl_model_free(void *handle) { delete static_cast<Handle *>(handle); }

// Returns the number of inputs (`output` 0) or outputs (1), or -1.
int msl_num_tensors(void *handle, int output) {
  int count = -1;
  Guard("cannot list the model's tensors", [&] {
    count = static_cast<int>((output ? Outputs(handle) : Inputs(handle)).size());
    return ms::Status();
  });
  return count;
}

// Writes input `index`'s shape into `dims`; returns its rank, or -1.
int msl_input_shape(void *handle, int index, int64_t *dims, int capacity) {
  int rank = -1;
  Guard("cannot read an input shape", [&] {
    std::vector<ms::MSTensor> inputs = Inputs(handle);
    if (index < 0 || index >= static_cast<int>(inputs.size())) return Invalid("no such input");
    rank = CopyShape(inputs[index], dims, capacity);
    return rank < 0 ? Invalid("rank too large") : ms::Status();
  });
  return rank;
}

// Writes input (`output` 0) or output (1) `index`'s name into `buffer`; returns its length, or -1.
int msl_tensor_name(void *handle, int output, int index, char *buffer, int capacity) {
  int length = -1;
  Guard("cannot read a tensor name", [&] {
    std::vector<ms::MSTensor> tensors = output ? Outputs(handle) : Inputs(handle);
    if (index < 0 || index >= static_cast<int>(tensors.size())) return Invalid("no such tensor");
    length = CopyName(tensors[index], buffer, capacity);
    return length < 0 ? Invalid("name too long") : ms::Status();
  });
  return length;
}

// Returns input `index`'s data type (a mindspore::DataType code, e.g. 43 float32, 34 int32), or -1.
int msl_input_dtype(void *handle, int index) {
  int dtype = -1;
  Guard("cannot read an input type", [&] {
    std::vector<ms::MSTensor> inputs = Inputs(handle);
    if (index < 0 || index >= static_cast<int>(inputs.size())) return Invalid("no such input");
    dtype = static_cast<int>(inputs[index].DataType());
    return ms::Status();
  });
  return dtype;
}

// Resizes every input: `dims` holds the new shapes back to back, `ranks[i]` the rank of input i.
int msl_resize(void *handle, const int64_t *dims, const int *ranks, int count) {
  return Guard("cannot resize the Lite model", [&] {
    std::vector<ms::MSTensor> inputs = Inputs(handle);
    if (count != static_cast<int>(inputs.size())) return Invalid("wrong number of input shapes");
    std::vector<std::vector<int64_t>> shapes;
    for (int i = 0; i < count; ++i) {
      shapes.emplace_back(dims, dims + ranks[i]);
      dims += ranks[i];
    }
    return static_cast<Handle *>(handle)->model.Resize(inputs, shapes);
  });
}

// Copies `count` input buffers (sizes in bytes) into the model's inputs and runs it; the outputs
// stay in the handle for msl_output_shape / msl_output_copy.
int msl_predict(void *handle, const void *const *data, const size_t *sizes, int count) {
  return Guard("Lite inference failed", [&] {
    auto *self = static_cast<Handle *>(handle);
    std::vector<ms::MSTensor> inputs = self->model.GetInputs();
    if (count != static_cast<int>(inputs.size())) return Invalid("wrong number of inputs");
    for (int i = 0; i < count; ++i) {
      if (inputs[i].DataSize() != sizes[i]) {
        return Invalid("input " + std::to_string(i) + " holds " + std::to_string(inputs[i].DataSize()) +
                       " bytes, got " + std::to_string(sizes[i]));
      }
      std::memcpy(inputs[i].MutableData(), data[i], sizes[i]);
    }
    self->outputs.clear();
    return self->model.Predict(inputs, &self->outputs);
  });
}

// Writes output `index`'s shape (after msl_predict) into `dims`; returns its rank, or -1.
int msl_output_shape(void *handle, int index, int64_t *dims, int capacity) {
  int rank = -1;
  Guard("cannot read an output shape", [&] {
    auto &outputs = static_cast<Handle *>(handle)->outputs;
    if (index < 0 || index >= static_cast<int>(outputs.size())) return Invalid("no such output (run predict first)");
    rank = CopyShape(outputs[index], dims, capacity);
    return rank < 0 ? Invalid("rank too large") : ms::Status();
  });
  return rank;
}

// Copies output `index` (float32, exactly `size` bytes) into `buffer`.
int msl_output_copy(void *handle, int index, float *buffer, size_t size) {
  return Guard("cannot read the Lite output", [&] {
    auto &outputs = static_cast<Handle *>(handle)->outputs;
    if (index < 0 || index >= static_cast<int>(outputs.size())) return Invalid("no such output (run predict first)");
    ms::MSTensor &output = outputs[index];
    if (output.DataType() != ms::DataType::kNumberTypeFloat32) return Invalid("output is not float32");
    if (output.DataSize() != size) return Invalid("output holds " + std::to_string(output.DataSize()) + " bytes");
    std::memcpy(buffer, output.MutableData(), size);
    return ms::Status();
  });
}

// Converts an ONNX file with the Lite converter; it writes `output_base` + ".mindir" (`save_type` 0)
// or + ".ms" (4), with the converter's general graph optimisations (fusion) on.
int msl_convert_onnx(const char *onnx_path, const char *output_base, int save_type) {
  return Guard("the Lite converter rejected the model", [&] {
    ms::Converter converter(ms::converter::kFmkTypeOnnx, Chars(onnx_path), Chars(output_base), Chars(""));
    converter.SetSaveType(static_cast<ms::ModelType>(save_type));
    converter.SetNoFusion(false);
    return converter.Convert();
  });
}

}  // extern "C"
