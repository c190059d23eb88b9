/* Protobuf base-128 varints, the one copy used by the broker's wire code
 * and log records, the client library and the command-line tool. */
#ifndef SB_VARINT_H
#define SB_VARINT_H

#include <stddef.h>
#include <stdint.h>

/* Bytes v takes as a varint. */
static inline size_t
sb_varint_len(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Writes v at p; returns the byte after it. */
static inline uint8_t *
sb_varint_put(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Reads a varint at *p (before end) and moves *p past it. 0, or -1 if it
 * is cut short or longer than 10 bytes. As protobuf decoders do, bits
 * past the 64th are ignored; a reader that must refuse them checks the
 * tenth byte itself. */
static inline int
sb_varint_get(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    const uint8_t *q = *p;
    uint64_t x = 0;

    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (q >= end)
            return -1;
        uint8_t b = *q++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *p = q;
            *v = x;
            return 0;
        }
    }
    return -1;
}

#endif
