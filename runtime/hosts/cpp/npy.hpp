// float32 .npy files (NumPy format 1.0-3.0, little-endian, C order): the host's noise input and float dump.
#pragma once

#include <cstdint>
#include <cstring>
#include <regex>
#include <string>
#include <vector>

#include "files.hpp"

namespace ddpm {

struct FloatArray {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

inline std::string shape_text(const std::vector<int64_t>& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + (shape.size() == 1 ? ",)" : ")");
}

inline FloatArray read_npy(const std::string& path) {
    const std::vector<unsigned char> bytes = read_bytes(path, "noise file");
    const auto bad = [&](const std::string& why) { return Failure("noise file " + path + ": " + why); };
    if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0 || bytes[6] < 1 || bytes[6] > 3)
        throw bad("not a .npy file");
    const size_t length_bytes = bytes[6] == 1 ? 2 : 4;
    size_t header_length = 0;
    for (size_t i = 0; i < length_bytes; ++i) header_length |= size_t(bytes[8 + i]) << (8 * i);
    const size_t start = 8 + length_bytes + header_length;
    if (start > bytes.size()) throw bad("truncated header");
    const std::string header(bytes.begin() + 8 + length_bytes, bytes.begin() + start);
    std::smatch descr, order, shape;
    if (!std::regex_search(header, descr, std::regex("'descr':\\s*'([^']*)'")) || descr[1] != "<f4")
        throw bad("must hold float32 ('<f4'), got " + (descr.empty() ? std::string("no dtype") : descr[1].str()));
    if (!std::regex_search(header, order, std::regex("'fortran_order':\\s*(True|False)")) || order[1] != "False")
        throw bad("must be in C order");
    if (!std::regex_search(header, shape, std::regex("'shape':\\s*\\(([0-9,\\s]*)\\)"))) throw bad("no shape");
    FloatArray array;
    const std::string dims = shape[1], digits = "0123456789";
    size_t count = 1;
    for (size_t pos = dims.find_first_of(digits); pos != std::string::npos; pos = dims.find_first_of(digits, pos)) {
        const size_t end = dims.find_first_not_of(digits, pos);
        const std::string dim = dims.substr(pos, end - pos);
        if (dim.size() > 9) throw bad("shape too large");
        array.shape.push_back(std::stoll(dim));
        count *= size_t(array.shape.back());  // < 2^30 times at most the file size: no overflow
        if (count > bytes.size()) throw bad("holds fewer values than its shape " + dims);
        pos = end;
    }
    if (bytes.size() - start != count * sizeof(float))
        throw bad("holds " + std::to_string(bytes.size() - start) + " data bytes for shape " + shape_text(array.shape));
    array.data.resize(count);
    std::memcpy(array.data.data(), bytes.data() + start, count * sizeof(float));
    return array;
}

inline void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
    header.append(63 - (10 + header.size()) % 64, ' ');  // magic, version and length take 10 bytes; pad to 64
    header += '\n';
    const unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(header.size()),
                                        static_cast<unsigned char>(header.size() >> 8)};
    size_t count = 1;
    for (int64_t dim : shape) count *= size_t(dim);
    AtomicFile file(path);
    file.write(preamble, sizeof preamble);
    file.write(header.data(), header.size());
    file.write(data, count * sizeof(float));
    file.commit();
}

}  // namespace ddpm
