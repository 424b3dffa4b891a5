// Portable Gaussian noise for C++ hosts (e.g. on MindSpore Lite): the same seed gives the same
// normals as runtime/noise.py and runtime/hosts/web/noise.mjs. Spec and test vectors: docs/noise.md.
//
//   Philox4x32-10 keyed by the seed (key = low, high 32 bits); block b has the counter
//   (b low, b high, 0, 0) and gives 4 uint32 words w -> u = (w + 0.5) / 2^32 (double);
//   Box-Muller on pairs (u1, u2): r = sqrt(-2 ln u1), r cos(2 pi u2), r sin(2 pi u2) -> float.
//
//   ddpm::NoiseStream stream(seed);
//   stream.draw(x_T, n * C * H * W);   // then stream.draw(z, n * C * H * W) per stochastic step
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace ddpm {

using Philox4x32Counter = std::array<uint32_t, 4>;
using Philox4x32Key = std::array<uint32_t, 2>;

// Philox4x32-10 (Salmon et al. 2011, Random123) of one counter under one key.
inline Philox4x32Counter philox4x32(Philox4x32Counter c, Philox4x32Key k) {
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = uint64_t{0xD2511F53u} * c[0];
        const uint64_t p1 = uint64_t{0xCD9E8D57u} * c[2];
        c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1], uint32_t(p0)};
        k = {k[0] + 0x9E3779B9u, k[1] + 0xBB67AE85u};
    }
    return c;
}

// The 4 words of block b of a seed's stream.
inline Philox4x32Counter noise_block_words(uint64_t seed, uint64_t block) {
    return philox4x32({uint32_t(block), uint32_t(block >> 32), 0u, 0u}, {uint32_t(seed), uint32_t(seed >> 32)});
}

// Normals 4b .. 4b+3 of a seed's stream.
inline std::array<float, 4> noise_block(uint64_t seed, uint64_t block) {
    const double two_pi = 6.283185307179586;  // 2 pi rounded to double, as in every host
    const Philox4x32Counter w = noise_block_words(seed, block);
    std::array<float, 4> out;
    for (int i = 0; i < 4; i += 2) {
        const double u1 = (double(w[i]) + 0.5) / 4294967296.0;
        const double u2 = (double(w[i + 1]) + 0.5) / 4294967296.0;
        const double r = std::sqrt(-2.0 * std::log(u1));
        out[i] = float(r * std::cos(two_pi * u2));
        out[i + 1] = float(r * std::sin(two_pi * u2));
    }
    return out;
}

// A seed's normals, handed out in order: each draw continues where the last one stopped.
class NoiseStream {
public:
    explicit NoiseStream(uint64_t seed) : seed_(seed) {}

    // The next `count` normals into out[0 .. count-1].
    void draw(float* out, size_t count) {
        std::array<float, 4> block;
        for (size_t i = 0; i < count; ++i, ++offset_) {
            if (i == 0 || offset_ % 4 == 0) block = noise_block(seed_, offset_ / 4);
            out[i] = block[offset_ % 4];
        }
    }

    uint64_t offset() const { return offset_; }

private:
    uint64_t seed_;
    uint64_t offset_ = 0;
};

}  // namespace ddpm
