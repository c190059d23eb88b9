/* The protobuf wire format, the one hand-written copy: field keys, sizes,
 * writers and a field reader, used by the broker's batch encoder and
 * request decoder (broker/sb_wire.c), the client's request encoder and
 * batch decoder (sb_publisher.c, sb_snapshot.c) and the CLI's replay
 * files. These hot paths write and read bytes directly instead of going
 * through protobuf-c; everything else uses protobuf-c. Field numbers come
 * named from the schema (sb_pbfields.h, generated from proto/snapbus.proto
 * at build time): SB_PB_<MESSAGE>_<FIELD>.
 *
 * All functions are inline (the callers are per-event loops) and pure.
 * Writers assume room: callers size the buffer first with the _size
 * functions, which count exactly what the writers write. Proto3 rules: a
 * zero number and an empty string are left out. */
#ifndef SB_PBWIRE_H
#define SB_PBWIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sb_pbfields.h"
#include "sb_varint.h"

typedef enum {
    SB_PB_VARINT = 0,
    SB_PB_I64 = 1,
    SB_PB_LEN = 2,
    SB_PB_I32 = 5
} sb_pb_wiretype;

/* Largest field number protobuf allows. */
#define SB_PB_MAX_FIELD 0x1fffffffu

/* ---- writing ------------------------------------------------------------ */

static inline size_t
sb_pb_key_size(uint32_t field)
{
    return sb_varint_len((uint64_t)field << 3);
}

static inline uint8_t *
sb_pb_put_key(uint8_t *p, uint32_t field, sb_pb_wiretype wt)
{
    return sb_varint_put(p, (uint64_t)field << 3 | (uint64_t)wt);
}

/* A varint field: 0 if v is 0 (left out). */
static inline size_t
sb_pb_uint_size(uint32_t field, uint64_t v)
{
    return v ? sb_pb_key_size(field) + sb_varint_len(v) : 0;
}

static inline uint8_t *
sb_pb_put_uint(uint8_t *p, uint32_t field, uint64_t v)
{
    if (v == 0)
        return p;
    p = sb_pb_put_key(p, field, SB_PB_VARINT);
    return sb_varint_put(p, v);
}

/* A length-delimited field of n bytes: 0 if n is 0 (left out). */
static inline size_t
sb_pb_bytes_size(uint32_t field, size_t n)
{
    return n ? sb_pb_key_size(field) + sb_varint_len(n) + n : 0;
}

static inline uint8_t *
sb_pb_put_bytes(uint8_t *p, uint32_t field, const void *s, size_t n)
{
    if (n == 0)
        return p;
    p = sb_pb_put_key(p, field, SB_PB_LEN);
    p = sb_varint_put(p, n);
    memcpy(p, s, n);
    return p + n;
}

/* An embedded message of n bytes, written even when empty: its key and
 * length; the caller writes the n bytes after. */
static inline size_t
sb_pb_msg_size(uint32_t field, size_t n)
{
    return sb_pb_key_size(field) + sb_varint_len(n) + n;
}

static inline uint8_t *
sb_pb_put_msg_head(uint8_t *p, uint32_t field, size_t n)
{
    p = sb_pb_put_key(p, field, SB_PB_LEN);
    return sb_varint_put(p, n);
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} sb_pb_reader;

/* One field as read: its number and wire type; for VARINT and I64 its
 * value in v, for LEN its bytes in ptr/len (v = len); I32 is skipped
 * (no field of snapbus.proto has that type). */
typedef struct {
    uint32_t num;
    uint32_t wt;
    uint64_t v;
    const uint8_t *ptr;
    size_t len;
} sb_pb_field;

static inline void
sb_pb_reader_init(sb_pb_reader *r, const void *buf, size_t len)
{
    r->p = (const uint8_t *)buf;
    r->end = r->p + len;
}

/* The next field: 1, or 0 at the end of the input, or -1 if malformed (a
 * cut-off field, field number 0 or too large, a group or unknown wire
 * type: proto3 has no groups). */
static inline int
sb_pb_next(sb_pb_reader *r, sb_pb_field *f)
{
    uint64_t key;

    if (r->p == r->end)
        return 0;
    if (sb_varint_get(&r->p, r->end, &key) < 0 || (key >> 3) == 0 ||
        (key >> 3) > SB_PB_MAX_FIELD)
        return -1;
    f->num = (uint32_t)(key >> 3);
    f->wt = (uint32_t)(key & 7);
    switch (f->wt) {
    case SB_PB_VARINT:
        return sb_varint_get(&r->p, r->end, &f->v) < 0 ? -1 : 1;
    case SB_PB_I64:
        if (r->end - r->p < 8)
            return -1;
        f->v = 0;
        for (int i = 7; i >= 0; i--)
            f->v = f->v << 8 | r->p[i]; /* little-endian on the wire */
        r->p += 8;
        return 1;
    case SB_PB_I32:
        if (r->end - r->p < 4)
            return -1;
        r->p += 4;
        return 1;
    case SB_PB_LEN:
        if (sb_varint_get(&r->p, r->end, &f->v) < 0 ||
            f->v > (uint64_t)(r->end - r->p))
            return -1;
        f->ptr = r->p;
        f->len = (size_t)f->v;
        r->p += f->len;
        return 1;
    default:
        return -1;
    }
}

#endif
