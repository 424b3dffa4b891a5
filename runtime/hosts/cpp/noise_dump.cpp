// Test driver for noise.hpp: writes a seed's stream to a file (raw little-endian) for Python to compare.
//
//   noise_dump philox C0 C1 C2 C3 K0 K1      print Philox4x32-10 of one counter/key (hex words)
//   noise_dump words SEED COUNT OUT          the first COUNT uint32 words of the stream (blocks 0, 1, ...)
//   noise_dump normals SEED COUNT OUT [CHUNK]  the first COUNT normals as float32, drawn CHUNK at a time
//
// Build: g++ -O2 -std=c++17 noise_dump.cpp -o noise_dump
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "noise.hpp"

static uint32_t hex32(const char* s) { return uint32_t(std::strtoul(s, nullptr, 16)); }

static int write_file(const char* path, const void* data, size_t bytes) {
    std::FILE* f = std::fopen(path, "wb");
    if (!f || std::fwrite(data, 1, bytes, f) != bytes || std::fclose(f) != 0) {
        std::fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    return 0;
}

static int dump_words(uint64_t seed, size_t count, const char* path) {
    std::vector<uint32_t> words(count);
    for (size_t i = 0; i < count; ++i) words[i] = ddpm::noise_block_words(seed, i / 4)[i % 4];
    return write_file(path, words.data(), count * sizeof(uint32_t));
}

static int dump_normals(uint64_t seed, size_t count, const char* path, size_t chunk) {
    std::vector<float> normals(count);
    ddpm::NoiseStream stream(seed);
    for (size_t start = 0; start < count; start += chunk) stream.draw(normals.data() + start, std::min(chunk, count - start));
    return write_file(path, normals.data(), count * sizeof(float));
}

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "philox" && argc == 8) {
        const auto out = ddpm::philox4x32({hex32(argv[2]), hex32(argv[3]), hex32(argv[4]), hex32(argv[5])},
                                          {hex32(argv[6]), hex32(argv[7])});
        std::printf("%08" PRIx32 " %08" PRIx32 " %08" PRIx32 " %08" PRIx32 "\n", out[0], out[1], out[2], out[3]);
        return 0;
    }
    if ((mode == "words" && argc == 5) || (mode == "normals" && (argc == 5 || argc == 6))) {
        const uint64_t seed = std::strtoull(argv[2], nullptr, 10);
        const size_t count = std::strtoull(argv[3], nullptr, 10);
        const size_t chunk = argc == 6 ? std::strtoull(argv[5], nullptr, 10) : count;
        if (mode == "words") return dump_words(seed, count, argv[4]);
        if (chunk > 0) return dump_normals(seed, count, argv[4], chunk);
    }
    std::fprintf(stderr, "usage: noise_dump philox C0 C1 C2 C3 K0 K1 | words SEED COUNT OUT | normals SEED COUNT OUT [CHUNK]\n");
    return 2;
}
