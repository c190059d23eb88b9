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

#include "sb_pbwire.h"
#include "sbc_internal.h"
#include <snapbus/snapbus.h>

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

/* ---- Field values --------------------------------------------------- */

/* A varint field's value; a field of another wire type keeps *v (protobuf
 * treats a wrong wire type as an unknown field). */
static void
s_uint(const sb_pb_field *f, uint64_t *v)
{
    if (f->wt == SB_PB_VARINT)
        *v = f->v;
}

/* A string field, copied into the area with its terminating zero. */
static int
s_str(sb_snapshot *b, const sb_pb_field *f, const char **out)
{
    if (f->wt != SB_PB_LEN)
        return 0;
    if (f->len == 0) {
        *out = "";
        return 0;
    }
    if ((size_t)(b->area_end - b->area) < f->len + 1)
        return -1; /* cannot happen: the area is sized from len */
    memcpy(b->area, f->ptr, f->len);
    b->area[f->len] = '\0';
    *out = b->area;
    b->area += f->len + 1;
    return 0;
}

static int
s_bytes(sb_snapshot *b, const sb_pb_field *f, const void **out, size_t *outn)
{
    if (f->wt != SB_PB_LEN)
        return 0;
    *outn = f->len;
    if (f->len == 0) {
        *out = NULL;
        return 0;
    }
    if ((size_t)(b->area_end - b->area) < f->len)
        return -1;
    memcpy(b->area, f->ptr, f->len);
    *out = b->area;
    b->area += f->len;
    return 0;
}

/* ---- Decode ----------------------------------------------------------- */

static int
s_event(sb_snapshot *b, const uint8_t *p, size_t len, sb_snapshot_event *e)
{
    sb_pb_reader r;
    sb_pb_field f = {0}; /* gcc -O3 cannot see the reader always fills it */
    uint64_t v;
    int got, rc;

    memset(e, 0, sizeof *e);
    e->aggregate = e->type = e->event_id = e->producer_id = "";
    sb_pb_reader_init(&r, p, len);
    while ((got = sb_pb_next(&r, &f)) == 1) {
        rc = 0;
        switch (f.num) {
        case SB_PB_SEQUENCED_EVENT_SEQ:
            s_uint(&f, &e->seq);
            break;
        case SB_PB_SEQUENCED_EVENT_AGGREGATE_SEQ:
            s_uint(&f, &e->agg_seq);
            break;
        case SB_PB_SEQUENCED_EVENT_AGGREGATE:
            rc = s_str(b, &f, &e->aggregate);
            break;
        case SB_PB_SEQUENCED_EVENT_TYPE:
            rc = s_str(b, &f, &e->type);
            break;
        case SB_PB_SEQUENCED_EVENT_PAYLOAD:
            rc = s_bytes(b, &f, &e->payload, &e->payload_len);
            break;
        case SB_PB_SEQUENCED_EVENT_EVENT_ID:
            rc = s_str(b, &f, &e->event_id);
            break;
        case SB_PB_SEQUENCED_EVENT_SOURCE_POS:
            s_uint(&f, &e->source_pos);
            break;
        case SB_PB_SEQUENCED_EVENT_CAUSED_BY:
            s_uint(&f, &e->caused_by);
            break;
        case SB_PB_SEQUENCED_EVENT_PRODUCER_ID:
            rc = s_str(b, &f, &e->producer_id);
            break;
        case SB_PB_SEQUENCED_EVENT_PRODUCER_SEQ:
            s_uint(&f, &e->producer_seq);
            break;
        case SB_PB_SEQUENCED_EVENT_CLIENT_TS_MS:
            s_uint(&f, &e->client_ts_ms);
            break;
        case SB_PB_SEQUENCED_EVENT_HAS_SOURCE_POS:
            v = (uint64_t)e->has_source_pos;
            s_uint(&f, &v);
            e->has_source_pos = v != 0;
            break;
        default:
            break; /* unknown: skipped */
        }
        if (rc != 0)
            return -1;
    }
    if (got < 0)
        return -1;
    if (!e->has_source_pos)
        e->source_pos = 0;
    return 0;
}

/* Pass one: checks the top-level framing and counts the events. */
static int
s_count(const uint8_t *p, size_t len, size_t *n)
{
    sb_pb_reader r;
    sb_pb_field f = {0}; /* gcc -O3 cannot see the reader always fills it */
    int got;

    *n = 0;
    sb_pb_reader_init(&r, p, len);
    while ((got = sb_pb_next(&r, &f)) == 1)
        if (f.num == SB_PB_SNAPSHOT_BATCH_EVENTS && f.wt == SB_PB_LEN)
            (*n)++;
    return got;
}

static int
s_batch(sb_snapshot *b, const uint8_t *p, size_t len)
{
    sb_pb_reader r;
    sb_pb_field f = {0}; /* gcc -O3 cannot see the reader always fills it */
    uint64_t v;
    int got, rc;
    size_t i = 0;

    sb_pb_reader_init(&r, p, len);
    while ((got = sb_pb_next(&r, &f)) == 1) {
        rc = 0;
        switch (f.num) {
        case SB_PB_SNAPSHOT_BATCH_VERSION:
            v = b->version;
            s_uint(&f, &v);
            b->version = (uint32_t)v; /* uint32: protobuf truncates */
            break;
        case SB_PB_SNAPSHOT_BATCH_AGGREGATE:
            rc = s_str(b, &f, &b->aggregate);
            break;
        case SB_PB_SNAPSHOT_BATCH_BATCH_ID:
            s_uint(&f, &b->batch_id);
            break;
        case SB_PB_SNAPSHOT_BATCH_FIRST_SEQ:
            s_uint(&f, &b->first_seq);
            break;
        case SB_PB_SNAPSHOT_BATCH_LAST_SEQ:
            s_uint(&f, &b->last_seq);
            break;
        case SB_PB_SNAPSHOT_BATCH_AGGREGATE_LAST_SEQ:
            s_uint(&f, &b->agg_last_seq);
            break;
        case SB_PB_SNAPSHOT_BATCH_SOURCE_POS:
            s_uint(&f, &b->source_pos);
            break;
        case SB_PB_SNAPSHOT_BATCH_TIMESTAMP_MS:
            s_uint(&f, &b->timestamp_ms);
            break;
        case SB_PB_SNAPSHOT_BATCH_PREV_LAST_SEQ:
            s_uint(&f, &b->prev_last_seq);
            break;
        case SB_PB_SNAPSHOT_BATCH_CLOSE_REASON:
            v = (uint64_t)(int64_t)b->close_reason;
            s_uint(&f, &v);
            b->close_reason = (int)(int32_t)v; /* enum: int32 */
            break;
        case SB_PB_SNAPSHOT_BATCH_EVENTS:
            /* s_count counted only LEN-typed events fields. */
            if (f.wt == SB_PB_LEN && i < b->n)
                rc = s_event(b, f.ptr, f.len, &b->ev[i++]);
            break;
        case SB_PB_SNAPSHOT_BATCH_HAS_SOURCE_POS:
            v = (uint64_t)b->has_source_pos;
            s_uint(&f, &v);
            b->has_source_pos = v != 0;
            break;
        default:
            break; /* unknown: skipped */
        }
        if (rc != 0)
            return -1;
    }
    if (got < 0)
        return -1;
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
