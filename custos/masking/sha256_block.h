/* HMAC-SHA-256 for the masked-row fast path (row_masker.pyx): pseudonyms in C.
 *
 * A pseudonym is HMAC-SHA-256 of its value (values.py, Masker.material); here it is made
 * from the key's inner and outer states, computed once, so a short value costs two
 * compressions. The compression uses the CPU's SHA extensions where it has them (found at
 * run time with CPUID), else portable C: both give FIPS 180-4's SHA-256, which the tests
 * hold to hashlib's. */

#ifndef CUSTOS_SHA256_BLOCK_H
#define CUSTOS_SHA256_BLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define CUSTOS_SHA_EXTENSIONS 1
#endif

static const uint32_t custos_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static const uint32_t custos_sha256_iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define CUSTOS_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void custos_sha256_portable(uint32_t state[8], const uint8_t block[64]) {
    uint32_t w[64];
    uint32_t a, b, c, d, e, f, g, h;
    int i;
    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t)block[4 * i] << 24) | ((uint32_t)block[4 * i + 1] << 16) |
               ((uint32_t)block[4 * i + 2] << 8) | (uint32_t)block[4 * i + 3];
    }
    for (i = 16; i < 64; i++) {
        uint32_t s0 = CUSTOS_ROTR(w[i - 15], 7) ^ CUSTOS_ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = CUSTOS_ROTR(w[i - 2], 17) ^ CUSTOS_ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = state[0], b = state[1], c = state[2], d = state[3];
    e = state[4], f = state[5], g = state[6], h = state[7];
    for (i = 0; i < 64; i++) {
        uint32_t s1 = CUSTOS_ROTR(e, 6) ^ CUSTOS_ROTR(e, 11) ^ CUSTOS_ROTR(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t t1 = h + s1 + choose + custos_sha256_k[i] + w[i];
        uint32_t s0 = CUSTOS_ROTR(a, 2) ^ CUSTOS_ROTR(a, 13) ^ CUSTOS_ROTR(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = s0 + majority;
        h = g, g = f, f = e, e = d + t1;
        d = c, c = b, b = a, a = t1 + t2;
    }
    state[0] += a, state[1] += b, state[2] += c, state[3] += d;
    state[4] += e, state[5] += f, state[6] += g, state[7] += h;
}

#ifdef CUSTOS_SHA_EXTENSIONS
/* Intel's SHA extensions: four rounds per pair of SHA256RNDS2, the message schedule by
 * SHA256MSG1 and SHA256MSG2 (Intel, "New Instructions Supporting the Secure Hash
 * Algorithm on Intel Architecture Processors", 2013). Each round waits for the one before,
 * so `lanes` blocks of independent messages (one or two) are compressed side by side:
 * two take little longer than one. */
__attribute__((target("sha,sse4.1,ssse3"), always_inline)) static inline void
custos_sha256_extensions_lanes(const int lanes, uint32_t *states[2], const uint8_t *blocks[2]) {
    const __m128i byte_order = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i message[2][4];
    __m128i abef[2], cdgh[2], abef_before[2], cdgh_before[2];
    __m128i scheduled[2];
    int group, lane;
    for (lane = 0; lane < lanes; lane++) {
        __m128i dcba = _mm_loadu_si128((const __m128i *)&states[lane][0]);
        __m128i hgfe = _mm_loadu_si128((const __m128i *)&states[lane][4]);
        __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
        __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        abef[lane] = abef_before[lane] = _mm_alignr_epi8(cdab, efgh, 8);
        cdgh[lane] = cdgh_before[lane] = _mm_blend_epi16(efgh, cdab, 0xF0);
    }
    for (group = 0; group < 16; group++) {
        const __m128i constants = _mm_loadu_si128((const __m128i *)&custos_sha256_k[4 * group]);
        for (lane = 0; lane < lanes; lane++) {
            __m128i *words = message[lane];
            if (group < 4) {
                words[group] = _mm_shuffle_epi8(
                    _mm_loadu_si128((const __m128i *)(blocks[lane] + 16 * group)), byte_order);
            }
            scheduled[lane] = _mm_add_epi32(words[group & 3], constants);
            cdgh[lane] = _mm_sha256rnds2_epu32(cdgh[lane], abef[lane], scheduled[lane]);
        }
        for (lane = 0; lane < lanes; lane++) {
            __m128i *words = message[lane];
            if (group >= 3 && group < 15) {
                __m128i shifted = _mm_alignr_epi8(words[group & 3], words[(group + 3) & 3], 4);
                words[(group + 1) & 3] = _mm_sha256msg2_epu32(
                    _mm_add_epi32(words[(group + 1) & 3], shifted), words[group & 3]);
            }
            abef[lane] = _mm_sha256rnds2_epu32(abef[lane], cdgh[lane],
                                               _mm_shuffle_epi32(scheduled[lane], 0x0E));
            if (group >= 1 && group < 13) {
                words[(group + 3) & 3] =
                    _mm_sha256msg1_epu32(words[(group + 3) & 3], words[group & 3]);
            }
        }
    }
    for (lane = 0; lane < lanes; lane++) {
        __m128i feba = _mm_shuffle_epi32(_mm_add_epi32(abef[lane], abef_before[lane]), 0x1B);
        __m128i dchg = _mm_shuffle_epi32(_mm_add_epi32(cdgh[lane], cdgh_before[lane]), 0xB1);
        _mm_storeu_si128((__m128i *)&states[lane][0], _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128((__m128i *)&states[lane][4], _mm_alignr_epi8(dchg, feba, 8));
    }
}

__attribute__((target("sha,sse4.1,ssse3"))) static void custos_sha256_extensions(
    uint32_t state[8], const uint8_t block[64]) {
    uint32_t *states[2] = {state, NULL};
    const uint8_t *blocks[2] = {block, NULL};
    custos_sha256_extensions_lanes(1, states, blocks);
}

__attribute__((target("sha,sse4.1,ssse3"))) static void custos_sha256_extensions_pair(
    uint32_t first[8], const uint8_t first_block[64], uint32_t second[8],
    const uint8_t second_block[64]) {
    uint32_t *states[2] = {first, second};
    const uint8_t *blocks[2] = {first_block, second_block};
    custos_sha256_extensions_lanes(2, states, blocks);
}

static int custos_cpu_asked_for_sha_extensions(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    if (!(ecx & (1u << 19)) || !(ecx & (1u << 9))) return 0; /* SSE4.1, SSSE3 */
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return (ebx >> 29) & 1; /* SHA */
}

/* Asked once: CPUID traps to the hypervisor in a VM, some microseconds a time. */
static int custos_cpu_has_sha_extensions(void) {
    static int known = -1;
    if (known < 0) known = custos_cpu_asked_for_sha_extensions();
    return known;
}
#endif

typedef void (*custos_sha256_compress_fn)(uint32_t state[8], const uint8_t block[64]);
typedef void (*custos_sha256_pair_fn)(uint32_t first[8], const uint8_t first_block[64],
                                      uint32_t second[8], const uint8_t second_block[64]);

static void custos_sha256_portable_pair(uint32_t first[8], const uint8_t first_block[64],
                                        uint32_t second[8], const uint8_t second_block[64]) {
    custos_sha256_portable(first, first_block);
    custos_sha256_portable(second, second_block);
}

/* The compressions this CPU runs best, of one block and of two side by side, chosen
 * together; `portable_only` for the tests of the portable ones. */
typedef struct {
    custos_sha256_compress_fn one;
    custos_sha256_pair_fn pair;
} custos_sha256_engine;

static custos_sha256_engine custos_sha256_engine_for(int portable_only) {
    custos_sha256_engine engine = {custos_sha256_portable, custos_sha256_portable_pair};
#ifdef CUSTOS_SHA_EXTENSIONS
    if (!portable_only && custos_cpu_has_sha_extensions()) {
        engine.one = custos_sha256_extensions;
        engine.pair = custos_sha256_extensions_pair;
    }
#endif
    (void)portable_only;
    return engine;
}

static inline void custos_store_words(const uint32_t h[8], uint8_t out[32]) {
    int i;
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24), out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8), out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* SHA-256 of `prefix` then `data`, continued from `state` after `before` bytes already
 * compressed into it (a multiple of 64); the digest into `out`. */
static void custos_sha256_finish(custos_sha256_compress_fn compress, const uint32_t state[8],
                                 uint64_t before, const uint8_t *prefix, size_t prefix_size,
                                 const uint8_t *data, size_t size, uint8_t out[32]) {
    uint32_t h[8];
    uint8_t block[64];
    size_t filled = 0, i;
    uint64_t bits = (before + prefix_size + size) * 8;
    memcpy(h, state, sizeof(h));
    while (prefix_size || size) {
        const uint8_t **source = prefix_size ? &prefix : &data;
        size_t *left = prefix_size ? &prefix_size : &size;
        size_t take = 64 - filled < *left ? 64 - filled : *left;
        memcpy(block + filled, *source, take);
        *source += take, *left -= take, filled += take;
        if (filled == 64) compress(h, block), filled = 0;
    }
    block[filled++] = 0x80;
    if (filled > 56) {
        memset(block + filled, 0, 64 - filled);
        compress(h, block);
        filled = 0;
    }
    memset(block + filled, 0, 56 - filled);
    for (i = 0; i < 8; i++) block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    compress(h, block);
    custos_store_words(h, out);
}

/* HMAC-SHA-256's keyed states (RFC 2104) from the key's 64-byte block. */
static void custos_hmac_states(custos_sha256_compress_fn compress, const uint8_t key_block[64],
                               uint32_t inner[8], uint32_t outer[8]) {
    uint8_t padded[64];
    int i;
    for (i = 0; i < 64; i++) padded[i] = key_block[i] ^ 0x36;
    memcpy(inner, custos_sha256_iv, 32);
    compress(inner, padded);
    for (i = 0; i < 64; i++) padded[i] = key_block[i] ^ 0x5c;
    memcpy(outer, custos_sha256_iv, 32);
    compress(outer, padded);
}

/* The inner hash's last block of a message that fits one after the key's: false if not. */
static inline int custos_hmac_inner_block(const uint8_t *prefix, size_t prefix_size,
                                          const uint8_t *data, size_t size, uint8_t block[64]) {
    size_t filled = prefix_size + size;
    uint64_t bits = (64 + (uint64_t)filled) * 8;
    int i;
    if (filled > 55) return 0;
    memcpy(block, prefix, prefix_size);
    memcpy(block + prefix_size, data, size);
    block[filled] = 0x80;
    memset(block + filled + 1, 0, 55 - filled);
    for (i = 0; i < 8; i++) block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    return 1;
}

/* The outer hash's one block, around the inner digest in block[0..31]: 96 bytes after the
 * key's. */
static inline void custos_hmac_outer_block(uint8_t block[64]) {
    block[32] = 0x80;
    memset(block + 33, 0, 29);
    block[62] = 0x03; /* 768 bits */
    block[63] = 0x00;
}

/* HMAC-SHA-256 of `prefix` then `data`, from the keyed states. A message that fits one
 * block after the key's (most values) is laid out in place: one compression for the
 * inner hash, one for the outer. */
static void custos_hmac_sha256(custos_sha256_compress_fn compress, const uint32_t inner[8],
                               const uint32_t outer[8], const uint8_t *prefix,
                               size_t prefix_size, const uint8_t *data, size_t size,
                               uint8_t out[32]) {
    uint8_t block[64];
    uint32_t h[8];
    if (custos_hmac_inner_block(prefix, prefix_size, data, size, block)) {
        memcpy(h, inner, sizeof(h));
        compress(h, block);
        custos_store_words(h, block);
    } else {
        custos_sha256_finish(compress, inner, 64, prefix, prefix_size, data, size, block);
    }
    custos_hmac_outer_block(block);
    memcpy(h, outer, sizeof(h));
    compress(h, block);
    custos_store_words(h, out);
}

/* Two HMAC-SHA-256s at once (of `prefix` then `data`, each), side by side where both fit
 * one block after the key's. */
static void custos_hmac_sha256_pair(custos_sha256_compress_fn compress,
                                    custos_sha256_pair_fn compress_pair,
                                    const uint32_t inner[8], const uint32_t outer[8],
                                    const uint8_t *prefixes[2], const size_t prefix_sizes[2],
                                    const uint8_t *datas[2], const size_t sizes[2],
                                    uint8_t *outs[2]) {
    uint8_t first[64], second[64];
    uint32_t h_first[8], h_second[8];
    if (!custos_hmac_inner_block(prefixes[0], prefix_sizes[0], datas[0], sizes[0], first) ||
        !custos_hmac_inner_block(prefixes[1], prefix_sizes[1], datas[1], sizes[1], second)) {
        custos_hmac_sha256(compress, inner, outer, prefixes[0], prefix_sizes[0], datas[0],
                           sizes[0], outs[0]);
        custos_hmac_sha256(compress, inner, outer, prefixes[1], prefix_sizes[1], datas[1],
                           sizes[1], outs[1]);
        return;
    }
    memcpy(h_first, inner, sizeof(h_first));
    memcpy(h_second, inner, sizeof(h_second));
    compress_pair(h_first, first, h_second, second);
    custos_store_words(h_first, first);
    custos_store_words(h_second, second);
    custos_hmac_outer_block(first);
    custos_hmac_outer_block(second);
    memcpy(h_first, outer, sizeof(h_first));
    memcpy(h_second, outer, sizeof(h_second));
    compress_pair(h_first, first, h_second, second);
    custos_store_words(h_first, outs[0]);
    custos_store_words(h_second, outs[1]);
}

/* SHA-256 of `prefix` then `data`. */
static void custos_sha256(custos_sha256_compress_fn compress, const uint8_t *prefix,
                          size_t prefix_size, const uint8_t *data, size_t size, uint8_t out[32]) {
    custos_sha256_finish(compress, custos_sha256_iv, 0, prefix, prefix_size, data, size, out);
}

#endif
