/* sb_snapshot: one decoded SnapshotBatch, as the subscriber receives it
 * and sb_fetch returns it.
 *
 * Decoding is done here, by hand, rather than with protobuf-c's unpack:
 * unpack allocates every event and every string apart and costs ~170 ns
 * per event, which on a 2-core machine is a real share of the broker's
 * budget when a subscriber shares it; this decoder costs a few tens of ns
 * and one allocation per batch. It reads the wire format of
 * proto/snapbus.proto (SnapshotBatch, SequencedEvent) with the rules of
 * protobuf: fields in any order, the last of a repeated scalar wins,
 * unknown fields skipped by wire type, and a known field with the wrong
 * wire type skipped as if unknown (as Google's parsers do). Every read is
 * bounds-checked; whatever does not parse is SB_EPROTO and nothing else.
 *
 * Memory. Pass one counts the events; then one block holds the snapshot,
 * its event array and a text area into which pass two copies every
 * string (with its terminating zero) and payload. Strings and payload
 * bytes take at most `len` bytes and each string field costs at least two
 * wire bytes, so len + len / 2 always holds the area. Empty strings point
 * at a shared "". Everything the accessors return lives as long as the
 * snapshot; sb_snapshot_destroy is one free.
 *
 * A snapshot belongs to whoever received it; it is immutable after
 * decode and has no threads. */
#include <stdlib.h>
#include <string.h>

#include "sbc_internal.h"
#include <snapbus/snapbus.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

struct sb_snapshot {
    const char *aggregate;
    uint32_t version;
    int close_reason;
    int has_source_pos;
    uint64_t batch_id;
    uint64_t first_seq;
    uint64_t last_seq;
    uint64_t agg_last_seq;
    uint64_t source_pos;
    uint64_t timestamp_ms;
    uint64_t prev_last_seq;
    size_t n;
    sb_snapshot_event *ev; /* n of them, in this block */
    char *area;            /* copied strings and payloads, in this block */
    char *area_end;
};

/* ---- Wire reader ---------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} s_rd;

static int
s_varint(s_rd *r, uint64_t *v)
{
    return sb_varint_get(&r->p, r->end, v);
}

/* Reads a field's key. */
static int
s_key(s_rd *r, uint32_t *field, int *wt)
{
    uint64_t k;

    if (s_varint(r, &k) != 0 || (k >> 3) == 0 || (k >> 3) > 0x1fffffff)
        return -1;
    *field = (uint32_t)(k >> 3);
    *wt = (int)(k & 7);
    return 0;
}

/* Reads a length-delimited field's bytes. */
static int
s_len(s_rd *r, const uint8_t **b, size_t *n)
{
    uint64_t len;

    if (s_varint(r, &len) != 0 || len > (uint64_t)(r->end - r->p))
        return -1;
    *b = r->p;
    *n = (size_t)len;
    r->p += len;
    return 0;
}

static int
s_skip(s_rd *r, int wt)
{
    uint64_t v;
    const uint8_t *b;
    size_t n;

    switch (wt) {
    case WT_VARINT:
        return s_varint(r, &v);
    case WT_LEN:
        return s_len(r, &b, &n);
    case WT_I64:
        n = 8;
        break;
    case WT_I32:
        n = 4;
        break;
    default:
        return -1; /* groups (3, 4) are not in proto3; 6, 7 invalid */
    }
    if (n > (size_t)(r->end - r->p))
        return -1;
    r->p += n;
    return 0;
}

/* A varint field. With another wire type it is skipped and *v kept. */
static int
s_uint(s_rd *r, int wt, uint64_t *v)
{
    return wt == WT_VARINT ? s_varint(r, v) : s_skip(r, wt);
}

/* A string field, copied into the area with its terminating zero. */
static int
s_str(sb_snapshot *b, s_rd *r, int wt, const char **out)
{
    const uint8_t *s;
    size_t n;

    if (wt != WT_LEN)
        return s_skip(r, wt);
    if (s_len(r, &s, &n) != 0)
        return -1;
    if (n == 0) {
        *out = "";
        return 0;
    }
    if ((size_t)(b->area_end - b->area) < n + 1)
        return -1; /* cannot happen: the area is sized from len */
    memcpy(b->area, s, n);
    b->area[n] = '\0';
    *out = b->area;
    b->area += n + 1;
    return 0;
}

static int
s_bytes(sb_snapshot *b, s_rd *r, int wt, const void **out, size_t *outn)
{
    const uint8_t *s;
    size_t n;

    if (wt != WT_LEN)
        return s_skip(r, wt);
    if (s_len(r, &s, &n) != 0)
        return -1;
    *outn = n;
    if (n == 0) {
        *out = NULL;
        return 0;
    }
    if ((size_t)(b->area_end - b->area) < n)
        return -1;
    memcpy(b->area, s, n);
    *out = b->area;
    b->area += n;
    return 0;
}

/* ---- Decode ----------------------------------------------------------- */

static int
s_event(sb_snapshot *b, const uint8_t *p, size_t len, sb_snapshot_event *e)
{
    s_rd r = {p, p + len};
    uint64_t v = 0;
    uint32_t f;
    int wt, rc;

    memset(e, 0, sizeof *e);
    e->aggregate = e->type = e->event_id = e->producer_id = "";
    while (r.p < r.end) {
        if (s_key(&r, &f, &wt) != 0)
            return -1;
        switch (f) {
        case 1:
            rc = s_uint(&r, wt, &e->seq);
            break;
        case 2:
            rc = s_uint(&r, wt, &e->agg_seq);
            break;
        case 3:
            rc = s_str(b, &r, wt, &e->aggregate);
            break;
        case 4:
            rc = s_str(b, &r, wt, &e->type);
            break;
        case 5:
            rc = s_bytes(b, &r, wt, &e->payload, &e->payload_len);
            break;
        case 6:
            rc = s_str(b, &r, wt, &e->event_id);
            break;
        case 7:
            rc = s_uint(&r, wt, &e->source_pos);
            break;
        case 8:
            rc = s_uint(&r, wt, &e->caused_by);
            break;
        case 9:
            rc = s_str(b, &r, wt, &e->producer_id);
            break;
        case 10:
            rc = s_uint(&r, wt, &e->producer_seq);
            break;
        case 11:
            rc = s_uint(&r, wt, &e->client_ts_ms);
            break;
        case 12:
            v = e->has_source_pos;
            rc = s_uint(&r, wt, &v);
            e->has_source_pos = v != 0;
            break;
        default:
            rc = s_skip(&r, wt);
        }
        if (rc != 0)
            return -1;
    }
    if (!e->has_source_pos)
        e->source_pos = 0;
    return 0;
}

/* Pass one: checks the top-level framing and counts the events. */
static int
s_count(const uint8_t *p, size_t len, size_t *n)
{
    s_rd r = {p, p + len};
    uint32_t f;
    int wt;

    *n = 0;
    while (r.p < r.end) {
        if (s_key(&r, &f, &wt) != 0)
            return -1;
        if (f == 11 && wt == WT_LEN)
            (*n)++;
        if (s_skip(&r, wt) != 0)
            return -1;
    }
    return 0;
}

static int
s_batch(sb_snapshot *b, const uint8_t *p, size_t len)
{
    s_rd r = {p, p + len};
    uint64_t v = 0;
    uint32_t f;
    int wt, rc;
    size_t i = 0;

    while (r.p < r.end) {
        if (s_key(&r, &f, &wt) != 0)
            return -1;
        switch (f) {
        case 1:
            v = b->version;
            rc = s_uint(&r, wt, &v);
            b->version = (uint32_t)v; /* uint32: protobuf truncates */
            break;
        case 2:
            rc = s_str(b, &r, wt, &b->aggregate);
            break;
        case 3:
            rc = s_uint(&r, wt, &b->batch_id);
            break;
        case 4:
            rc = s_uint(&r, wt, &b->first_seq);
            break;
        case 5:
            rc = s_uint(&r, wt, &b->last_seq);
            break;
        case 6:
            rc = s_uint(&r, wt, &b->agg_last_seq);
            break;
        case 7:
            rc = s_uint(&r, wt, &b->source_pos);
            break;
        case 8:
            rc = s_uint(&r, wt, &b->timestamp_ms);
            break;
        case 9:
            rc = s_uint(&r, wt, &b->prev_last_seq);
            break;
        case 10:
            v = (uint64_t)(int64_t)b->close_reason;
            rc = s_uint(&r, wt, &v);
            b->close_reason = (int)(int32_t)v; /* enum: int32 */
            break;
        case 11: {
            const uint8_t *ep;
            size_t en;
            /* s_count counted only LEN-typed field 11s; skip others. */
            if (wt != WT_LEN) {
                rc = s_skip(&r, wt);
                break;
            }
            rc = s_len(&r, &ep, &en);
            if (rc == 0 && i < b->n)
                rc = s_event(b, ep, en, &b->ev[i++]);
            break;
        }
        case 12:
            v = b->has_source_pos;
            rc = s_uint(&r, wt, &v);
            b->has_source_pos = v != 0;
            break;
        default:
            rc = s_skip(&r, wt);
        }
        if (rc != 0)
            return -1;
    }
    if (!b->has_source_pos)
        b->source_pos = 0;
    /* The wire leaves an event's aggregate out when it is the batch's;
     * the batch's may come after its events, so fill in at the end. */
    for (size_t k = 0; k < b->n; k++)
        if (b->ev[k].aggregate[0] == '\0')
            b->ev[k].aggregate = b->aggregate;
    return i == b->n ? 0 : -1;
}

sb_err
sb_snapshot_decode(sb_snapshot **out, const void *data, size_t len)
{
    sb_snapshot *b;
    size_t n, area, evbytes;

    if (out == NULL || (data == NULL && len > 0))
        return SB_EINVAL;
    if (s_count(data, len, &n) != 0)
        return SB_EPROTO;
    /* n <= len / 2 (an event field takes two bytes at least), so none of
     * this overflows for any len a ZeroMQ frame can have. */
    evbytes = n * sizeof(sb_snapshot_event);
    area = len + len / 2 + 1;
    if (len > SIZE_MAX / 4 || (b = malloc(sizeof *b + evbytes + area)) == NULL)
        return len > SIZE_MAX / 4 ? SB_ETOOBIG : SB_ENOMEM;
    memset(b, 0, sizeof *b);
    b->aggregate = "";
    b->n = n;
    b->ev = (sb_snapshot_event *)(b + 1);
    b->area = (char *)b->ev + evbytes;
    b->area_end = b->area + area;
    if (s_batch(b, data, len) != 0 || b->version != SB_PROTOCOL_VERSION) {
        free(b);
        return SB_EPROTO;
    }
    *out = b;
    return SB_OK;
}

void
sb_snapshot_destroy(sb_snapshot **bp)
{
    if (bp == NULL || *bp == NULL)
        return;
    free(*bp); /* one block: header, events, strings */
    *bp = NULL;
}

const char *
sb_snapshot_aggregate(const sb_snapshot *b)
{
    return b->aggregate;
}

uint64_t
sb_snapshot_batch_id(const sb_snapshot *b)
{
    return b->batch_id;
}

uint64_t
sb_snapshot_first_seq(const sb_snapshot *b)
{
    return b->first_seq;
}

uint64_t
sb_snapshot_last_seq(const sb_snapshot *b)
{
    return b->last_seq;
}

uint64_t
sb_snapshot_agg_last_seq(const sb_snapshot *b)
{
    return b->agg_last_seq;
}

uint64_t
sb_snapshot_prev_last_seq(const sb_snapshot *b)
{
    return b->prev_last_seq;
}

uint64_t
sb_snapshot_timestamp_ms(const sb_snapshot *b)
{
    return b->timestamp_ms;
}

int
sb_snapshot_source_pos(const sb_snapshot *b, uint64_t *pos)
{
    if (!b->has_source_pos)
        return 0;
    if (pos != NULL)
        *pos = b->source_pos;
    return 1;
}

sb_close_reason
sb_snapshot_close_reason(const sb_snapshot *b)
{
    return (sb_close_reason)b->close_reason;
}

size_t
sb_snapshot_count(const sb_snapshot *b)
{
    return b->n;
}

sb_err
sb_snapshot_event_get(const sb_snapshot *b, size_t i, sb_snapshot_event *out)
{
    if (b == NULL || out == NULL || i >= b->n)
        return SB_EINVAL;
    *out = b->ev[i];
    return SB_OK;
}
