/* Shared by the log harnesses (fuzz_store, fuzz_logfiles): little-endian
 * byte helpers and the fix-up that makes fuzzed record headers carry the
 * magic and a right CRC, so that the fuzzer's bytes reach the record
 * bodies instead of failing the checksum. */
#ifndef SB_FUZZ_LOG_H
#define SB_FUZZ_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "sb_crc32c.h"
#include "sb_store.h"

static inline uint32_t
fuzz_get32(const uint8_t *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
           (uint32_t) p[3] << 24;
}

static inline void
fuzz_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t) (v >> (8 * i));
}

static inline void
fuzz_put64(uint8_t *p, uint64_t v)
{
    fuzz_put32(p, (uint32_t) v);
    fuzz_put32(p + 4, (uint32_t) (v >> 32));
}

/* Makes every record header in buf[off..len) carry the magic and a right
 * CRC, as far as the lengths chain. */
static inline void
fuzz_fix_records(uint8_t *buf, size_t len, size_t off)
{
    while (len - off >= SB_STORE_REC_HDR) {
        uint8_t *h = buf + off;
        fuzz_put32(h, 0x4C425352u); /* "RSBL" */
        h[16] = h[16] & 1 ? SB_REC_EVENT : SB_REC_BATCH;
        h[17] = h[18] = h[19] = 0;
        uint32_t body = fuzz_get32(h + 4);
        if (body > len - off - SB_STORE_REC_HDR)
            return; /* a torn tail: left as it is */
        uint32_t crc = sb_crc32c(0, h, 20);
        fuzz_put32(h + 20, sb_crc32c(crc, h + SB_STORE_REC_HDR, body));
        off += SB_STORE_REC_HDR + body;
    }
}

#endif
