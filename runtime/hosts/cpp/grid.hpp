// Samples to a PNG grid, byte for byte as runtime/images.py (Pillow) writes it: to_uint8 (clip((x + 1) * 127.5 + 0.5,
// 0, 255), truncated), make_grid (ceil(sqrt(N)) columns, 2 px black padding), nearest enlargement by
// max(1, 48 / H), grey, RGB or RGBA by channel count.
#pragma once

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "files.hpp"

namespace ddpm {

// (N, C, H, W) floats -> (N, H, W, C) uint8; refuses non-finite values.
inline std::vector<uint8_t> to_uint8(const float* x, int n, int c, int h, int w) {
    std::vector<uint8_t> images(size_t(n) * c * h * w);
    size_t bad = 0;
    for (int b = 0; b < n; ++b)
        for (int ch = 0; ch < c; ++ch)
            for (int y = 0; y < h; ++y)
                for (int col = 0; col < w; ++col) {
                    const float v = x[((size_t(b) * c + ch) * h + y) * w + col];
                    if (!std::isfinite(v)) ++bad;
                    const float scaled = std::min(std::max((v + 1.0f) * 127.5f + 0.5f, 0.0f), 255.0f);
                    images[((size_t(b) * h + y) * w + col) * c + ch] = std::isfinite(v) ? uint8_t(scaled) : 0;
                }
    if (bad) throw Failure("samples contain " + std::to_string(bad) + " NaN/Inf values: the model or its weights are broken");
    return images;
}

inline void save_grid(const std::string& path, const std::vector<uint8_t>& images, int n, int c, int h, int w) {
    static const int color_types[5] = {-1, PNG_COLOR_TYPE_GRAY, -1, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGBA};
    if (c < 1 || c > 4 || color_types[c] < 0) throw Failure("a PNG grid needs 1, 3 or 4 channels, got " + std::to_string(c));
    const int pad = 2, columns = int(std::ceil(std::sqrt(double(n)))), rows = (n + columns - 1) / columns;
    const int scale = std::max(1, 48 / h);
    const int height = rows * (h + pad) + pad, width = columns * (w + pad) + pad;
    std::vector<uint8_t> grid(size_t(height) * width * c, 0);
    for (int b = 0; b < n; ++b) {
        const int top = pad + (b / columns) * (h + pad), left = pad + (b % columns) * (w + pad);
        for (int y = 0; y < h; ++y)
            std::copy_n(&images[(size_t(b) * h + y) * w * c], size_t(w) * c, &grid[(size_t(top + y) * width + left) * c]);
    }
    std::vector<uint8_t> row(size_t(width) * scale * c);
    AtomicFile file(path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        throw Failure("cannot write the PNG " + path);
    }
    png_init_io(png, file.get());
    // Pillow's zlib memory level (libpng's own is 8) and IDAT size (its encoder's buffer): the bytes runtime/images.py writes.
    png_set_compression_mem_level(png, 9);
    png_set_compression_buffer_size(png, std::max<size_t>(65536, size_t(width) * scale * 4));
    png_set_IHDR(png, info, width * scale, height * scale, 8, color_types[c], PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height * scale; ++y) {
        const uint8_t* source = &grid[size_t(y / scale) * width * c];
        for (int x = 0; x < width * scale; ++x) std::copy_n(source + size_t(x / scale) * c, c, &row[size_t(x) * c]);
        png_write_row(png, row.data());
    }
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    file.commit();
}

}  // namespace ddpm
