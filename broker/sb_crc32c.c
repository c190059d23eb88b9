/* CRC32C: the SSE4.2 instruction where the CPU has it, slicing-by-8
 * tables elsewhere (see sb_crc32c.h). The tables and the choice are made
 * once, under pthread_once; after that everything is read-only. */
#include "sb_crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define S_HAVE_X86 1
#else
#define S_HAVE_X86 0
#endif

#define S_POLY 0x82F63B78u /* Castagnoli, bit-reflected */

static uint32_t s_tab[8][256];
static int s_hw;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void
s_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ S_POLY : c >> 1;
        s_tab[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = s_tab[0][n];
        for (int k = 1; k < 8; k++) {
            c = s_tab[0][c & 0xff] ^ (c >> 8);
            s_tab[k][n] = c;
        }
    }
#if S_HAVE_X86
    __builtin_cpu_init();
    s_hw = __builtin_cpu_supports("sse4.2") != 0;
#endif
}

uint32_t
sb_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    pthread_once(&s_once, s_init);
    crc = ~crc;
    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        crc = s_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* Eight bytes per step: the word's low four bytes fold in the CRC. */
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = s_tab[7][w & 0xff] ^ s_tab[6][(w >> 8) & 0xff] ^
              s_tab[5][(w >> 16) & 0xff] ^ s_tab[4][(w >> 24) & 0xff] ^
              s_tab[3][(w >> 32) & 0xff] ^ s_tab[2][(w >> 40) & 0xff] ^
              s_tab[1][(w >> 48) & 0xff] ^ s_tab[0][w >> 56];
        p += 8;
        len -= 8;
    }
#endif
    while (len-- > 0)
        crc = s_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if S_HAVE_X86
__attribute__((target("sse4.2"))) static uint32_t
s_crc_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = (uint32_t)~crc;

    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len-- > 0)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

int
sb_crc32c_hw_available(void)
{
    pthread_once(&s_once, s_init);
    return s_hw;
}

uint32_t
sb_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
#if S_HAVE_X86
    if (sb_crc32c_hw_available())
        return s_crc_sse42(crc, buf, len);
#endif
    return sb_crc32c_sw(crc, buf, len);
}

uint32_t
sb_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&s_once, s_init);
#if S_HAVE_X86
    if (s_hw)
        return s_crc_sse42(crc, buf, len);
#endif
    return sb_crc32c_sw(crc, buf, len);
}
