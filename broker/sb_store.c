/* The on-disk log: codec, state, writer (append, write, sync, seal,
 * recovery, retention, checkpoint) and reader (seek, iterate, rebuild).
 * The contract is in sb_store.h, the byte layout in docs/STORAGE.md.
 *
 * Files in the log directory:
 *   NNNNNNNNNNNNNNNNNNNN.seg  segments, numbered from 1 (the number, not a
 *                             seq, names them: a segment may hold no event)
 *   NNNNNNNNNNNNNNNNNNNN.idx  sparse index of a sealed segment; a cache
 *                             (checked by CRC, rebuilt by scanning if bad)
 *   checkpoint               the state at a log position (see below)
 *   spare                    the next segment, its space reserved ahead
 *                            (fallocate), renamed into place at a seal
 *
 * Writer memory: one append buffer. Bytes [0, wlen) are written but not
 * yet synced (kept so that a failed fdatasync can be undone and written
 * again), [wlen, len) are added but not written. The state (aggregates,
 * unbatched seqs) and the active segment's index follow the *committed*
 * position: what is synced, or with keep_unsynced off, what is written.
 * So a rollback never has to undo state, and a checkpoint taken when a
 * segment seals describes exactly the log up to the new segment's start.
 *
 * Ownership: the writer belongs to one thread (the log store actor); a
 * reader belongs to one thread (the fan-out, the CLI, recovery). They share
 * only the files. Any number of readers may run next to the writer. */
#include "sb_store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_clock.h"
#include "sb_crc32c.h"
#include "sb_log.h"
#include "sb_map.h"
#include "sb_os.h"
#include "sb_varint.h"

#define S_SEG_MAGIC "SBLOGSEG"
#define S_IDX_MAGIC "SBLOGIDX"
#define S_CKP_MAGIC "SBLOGCKP"
#define S_REC_MAGIC 0x4C425352u /* "RSBL" little-endian: 'R','S','B','L' */
#define S_VERSION 1u
#define S_CKP_NAME "checkpoint"
#define S_SPARE_NAME "spare"
#define S_EV_FIXED 5 /* flags, four name lengths; then varints */
/* Event flags: which optional varints follow (zeros are left out). */
#define S_EVF_SOURCE_POS 0x01 /* has_source_pos: source_pos follows */
#define S_EVF_CAUSED_BY 0x02
#define S_EVF_PRODUCER_SEQ 0x04
#define S_EVF_CLIENT_TS 0x08
#define S_EVF_ALL 0x0f
#define S_BATCH_FIXED 48
#define S_READ_CHUNK (256u << 10)
#define S_READER_INDEX_EVERY (64u << 10)
#define S_MAX_CKP (1u << 30)
#define S_UB_SHIFT 8 /* 256 seqs per page of the unbatched set */
#define S_UB_WORDS ((1u << S_UB_SHIFT) / 64)

/* ---- little-endian and varint helpers ---------------------------------- */

static inline void
s_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void
s_put64(uint8_t *p, uint64_t v)
{
    s_put32(p, (uint32_t)v);
    s_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t
s_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t
s_get64(const uint8_t *p)
{
    return (uint64_t)s_get32(p) | (uint64_t)s_get32(p + 4) << 32;
}

/* 0 on success; -1 on a truncated or over-long varint. Our own files
 * never hold bits past the 64th: such a record is damage. */
static int
s_get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *start = *pp;

    if (sb_varint_get(pp, end, v) != 0)
        return -1;
    if (*pp - start == 10 && start[9] > 1) {
        *pp = start;
        return -1;
    }
    return 0;
}

/* ---- configuration ------------------------------------------------------ */

void
sb_store_config_defaults(sb_store_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->segment_bytes = 64u << 20;
    strcpy(cfg->sync, "always");
    cfg->sync_interval_ms = 10;
    cfg->retain_bytes = 0;
    cfg->retain_age_s = 7u * 24 * 3600;
    cfg->index_every = 64u << 10;
}

int
sb_store_sync_parse(const char *s)
{
    if (strcmp(s, "always") == 0)
        return SB_SYNC_ALWAYS;
    if (strcmp(s, "interval") == 0)
        return SB_SYNC_INTERVAL;
    if (strcmp(s, "none") == 0)
        return SB_SYNC_NONE;
    return -1;
}

sb_err
sb_store_config_check(const sb_store_config *cfg, char *why, size_t n)
{
    char buf[600];

    buf[0] = '\0';
    if (sb_store_sync_parse(cfg->sync) < 0)
        snprintf(buf, sizeof buf,
                 "storage.sync = \"%s\": one of always, "
                 "interval, none",
                 cfg->sync);
    else if (cfg->segment_bytes < 4096)
        snprintf(buf, sizeof buf,
                 "storage.segment_bytes = %" PRIu64 ": at least 4096",
                 cfg->segment_bytes);
    else if (cfg->index_every == 0)
        snprintf(buf, sizeof buf, "storage.index_every: at least 1");
    else if (cfg->sync_interval_ms == 0)
        snprintf(buf, sizeof buf, "storage.sync_interval_ms: at least 1");
    if (buf[0] == '\0')
        return SB_OK;
    if (why != NULL && n > 0)
        snprintf(why, n, "%s", buf);
    return SB_EINVAL;
}

/* ---- record codec ------------------------------------------------------- */

size_t
sb_store_event_size(const sb_event *ev)
{
    return SB_STORE_REC_HDR + S_EV_FIXED + sb_varint_len(ev->agg_seq) +
           (ev->has_source_pos ? sb_varint_len(ev->source_pos) : 0) +
           (ev->caused_by ? sb_varint_len(ev->caused_by) : 0) +
           (ev->producer_seq ? sb_varint_len(ev->producer_seq) : 0) +
           (ev->client_ts_ms ? sb_varint_len(ev->client_ts_ms) : 0) +
           sb_varint_len(ev->payload_len) + (size_t)ev->agg_len + ev->type_len +
           ev->event_id_len + ev->producer_id_len + ev->payload_len;
}

size_t
sb_store_batch_size(const sb_batch *b)
{
    size_t n = SB_STORE_REC_HDR + S_BATCH_FIXED + b->agg_len;
    uint64_t prev = 0;

    for (uint32_t i = 0; i < b->n; i++) {
        n += sb_varint_len(b->ev[i]->seq - prev);
        prev = b->ev[i]->seq;
    }
    return n;
}

/* Header: magic u32 | body_len u32 | key u64 | type u8 | flags u8 |
 * reserved u16 | crc32c u32, the CRC over bytes 0..19 and the body. */
static void
s_seal_header(uint8_t *rec, uint8_t type, uint64_t key, size_t body_len)
{
    uint32_t crc;

    s_put32(rec, S_REC_MAGIC);
    s_put32(rec + 4, (uint32_t)body_len);
    s_put64(rec + 8, key);
    rec[16] = type;
    rec[17] = 0;
    rec[18] = rec[19] = 0;
    crc = sb_crc32c(0, rec, 20);
    crc = sb_crc32c(crc, rec + SB_STORE_REC_HDR, body_len);
    s_put32(rec + 20, crc);
}

static uint8_t *
s_put_bytes(uint8_t *p, const void *s, size_t n)
{
    if (n > 0)
        memcpy(p, s, n);
    return p + n;
}

/* Event body: flags u8 | agg_len u8 | type_len u8 | event_id_len u8 |
 * producer_id_len u8 | agg_seq | [source_pos] [caused_by] [producer_seq]
 * [client_ts_ms] (varints, present per flag) | payload_len (varint) |
 * aggregate | type | event id | producer id | payload. Most optional
 * fields are zero, so a typical event body is a few bytes plus its
 * strings: fewer bytes to copy, checksum, write and sync. */
void
sb_store_encode_event(uint8_t *buf, const sb_event *ev)
{
    uint8_t *b = buf + SB_STORE_REC_HDR, *p;

    b[0] = (uint8_t)((ev->has_source_pos ? S_EVF_SOURCE_POS : 0) |
                     (ev->caused_by ? S_EVF_CAUSED_BY : 0) |
                     (ev->producer_seq ? S_EVF_PRODUCER_SEQ : 0) |
                     (ev->client_ts_ms ? S_EVF_CLIENT_TS : 0));
    b[1] = (uint8_t)ev->agg_len;
    b[2] = (uint8_t)ev->type_len;
    b[3] = (uint8_t)ev->event_id_len;
    b[4] = (uint8_t)ev->producer_id_len;
    p = sb_varint_put(b + S_EV_FIXED, ev->agg_seq);
    if (ev->has_source_pos)
        p = sb_varint_put(p, ev->source_pos);
    if (ev->caused_by)
        p = sb_varint_put(p, ev->caused_by);
    if (ev->producer_seq)
        p = sb_varint_put(p, ev->producer_seq);
    if (ev->client_ts_ms)
        p = sb_varint_put(p, ev->client_ts_ms);
    p = sb_varint_put(p, ev->payload_len);
    p = s_put_bytes(p, ev->agg, ev->agg_len);
    p = s_put_bytes(p, ev->type, ev->type_len);
    p = s_put_bytes(p, ev->event_id, ev->event_id_len);
    p = s_put_bytes(p, ev->producer_id, ev->producer_id_len);
    p = s_put_bytes(p, ev->payload, ev->payload_len);
    s_seal_header(buf, SB_REC_EVENT, ev->seq, (size_t)(p - b));
}

void
sb_store_encode_batch(uint8_t *buf, const sb_batch *b)
{
    uint8_t *q = buf + SB_STORE_REC_HDR, *p;
    uint64_t prev = 0;

    s_put64(q, b->timestamp_ms);
    s_put64(q + 8, b->prev_last_seq);
    s_put64(q + 16, b->agg_last_seq);
    s_put64(q + 24, b->has_source_pos ? b->source_pos : 0);
    s_put64(q + 32, b->bytes);
    s_put32(q + 40, b->n);
    q[44] = (uint8_t)b->agg_len;
    q[45] = b->close_reason;
    q[46] = b->has_source_pos ? 1 : 0;
    q[47] = 0;
    p = s_put_bytes(q + S_BATCH_FIXED, b->agg, b->agg_len);
    /* The first seq as is, then gaps: a batch's seqs are ascending and
     * usually close together, so most take one byte. */
    for (uint32_t i = 0; i < b->n; i++) {
        p = sb_varint_put(p, b->ev[i]->seq - prev);
        prev = b->ev[i]->seq;
    }
    s_seal_header(buf, SB_REC_BATCH, b->id, (size_t)(p - q));
}

/* check_crc 0: bytes this process encoded a moment ago (commit), whose
 * CRC was just computed; everything read from disk is checked. */
static sb_err
s_decode(const uint8_t *buf, size_t avail, sb_store_rec *rec, uint64_t **seqs,
         size_t *cap, size_t *need, int check_crc)
{
    uint32_t body_len, crc;
    const uint8_t *b, *end;

    if (need != NULL)
        *need = 0;
    if (avail < SB_STORE_REC_HDR)
        return SB_EAGAIN;
    body_len = s_get32(buf + 4);
    if (s_get32(buf) != S_REC_MAGIC ||
        (buf[16] != SB_REC_EVENT && buf[16] != SB_REC_BATCH) || buf[17] != 0 ||
        buf[18] != 0 || buf[19] != 0 ||
        body_len > SB_STORE_MAX_RECORD - SB_STORE_REC_HDR)
        return SB_EPROTO;
    if (need != NULL)
        *need = SB_STORE_REC_HDR + (size_t)body_len;
    if (avail < SB_STORE_REC_HDR + (size_t)body_len)
        return SB_EAGAIN;
    if (check_crc) {
        crc = sb_crc32c(0, buf, 20);
        crc = sb_crc32c(crc, buf + SB_STORE_REC_HDR, body_len);
        if (crc != s_get32(buf + 20))
            return SB_EPROTO;
    }

    memset(rec, 0, sizeof *rec);
    rec->type = buf[16];
    rec->key = s_get64(buf + 8);
    rec->size = SB_STORE_REC_HDR + body_len;
    b = buf + SB_STORE_REC_HDR;
    end = b + body_len;
    if (rec->key == 0)
        return SB_EPROTO; /* seqs and batch ids start at 1 */
    if (rec->type == SB_REC_EVENT) {
        sb_event *ev = &rec->ev;
        uint64_t plen = 0;
        size_t strs;
        const uint8_t *p = b + S_EV_FIXED;
        uint8_t fl;
        if (body_len < S_EV_FIXED || ((fl = b[0]) & ~S_EVF_ALL) != 0)
            return SB_EPROTO;
        ev->seq = rec->key;
        ev->agg_len = b[1];
        ev->type_len = b[2];
        ev->event_id_len = b[3];
        ev->producer_id_len = b[4];
        ev->has_source_pos = (fl & S_EVF_SOURCE_POS) != 0;
        if (s_get_varint(&p, end, &ev->agg_seq) != 0 ||
            ((fl & S_EVF_SOURCE_POS) &&
             s_get_varint(&p, end, &ev->source_pos) != 0) ||
            ((fl & S_EVF_CAUSED_BY) &&
             s_get_varint(&p, end, &ev->caused_by) != 0) ||
            ((fl & S_EVF_PRODUCER_SEQ) &&
             s_get_varint(&p, end, &ev->producer_seq) != 0) ||
            ((fl & S_EVF_CLIENT_TS) &&
             s_get_varint(&p, end, &ev->client_ts_ms) != 0) ||
            s_get_varint(&p, end, &plen) != 0)
            return SB_EPROTO;
        strs = (size_t)ev->agg_len + ev->type_len + ev->event_id_len +
               ev->producer_id_len;
        if (plen > UINT32_MAX || (uint64_t)(end - p) != strs + plen ||
            ev->agg_len == 0)
            return SB_EPROTO;
        ev->payload_len = (uint32_t)plen;
        b = p;
        ev->agg = (const char *)b;
        b += ev->agg_len;
        ev->type = (const char *)b;
        b += ev->type_len;
        ev->event_id = ev->event_id_len ? (const char *)b : NULL;
        b += ev->event_id_len;
        ev->producer_id = ev->producer_id_len ? (const char *)b : NULL;
        b += ev->producer_id_len;
        ev->payload = b;
        return SB_OK;
    }

    sb_store_batch_rec *br = &rec->batch;
    uint64_t prev = 0;
    const uint8_t *p;
    if (body_len < S_BATCH_FIXED)
        return SB_EPROTO;
    br->id = rec->key;
    br->timestamp_ms = s_get64(b);
    br->prev_last_seq = s_get64(b + 8);
    br->agg_last_seq = s_get64(b + 16);
    br->source_pos = s_get64(b + 24);
    br->bytes = s_get64(b + 32);
    br->n = s_get32(b + 40);
    br->agg_len = b[44];
    br->close_reason = b[45];
    br->has_source_pos = b[46];
    if (b[46] > 1 || b[47] != 0 || br->close_reason > SB_CLOSE_SHUTDOWN ||
        br->agg_len == 0 || (size_t)S_BATCH_FIXED + br->agg_len > body_len)
        return SB_EPROTO;
    br->agg = (const char *)b + S_BATCH_FIXED;
    p = b + S_BATCH_FIXED + br->agg_len;
    /* Every seq takes at least one byte: that bounds n before we allocate
     * anything for it. */
    if (br->n == 0 || br->n > (size_t)(end - p))
        return SB_EPROTO;
    if (*cap < br->n) {
        uint64_t *s2 = realloc(*seqs, (size_t)br->n * sizeof *s2);
        if (s2 == NULL)
            return SB_ENOMEM;
        *seqs = s2;
        *cap = br->n;
    }
    for (uint32_t i = 0; i < br->n; i++) {
        uint64_t d;
        if (s_get_varint(&p, end, &d) != 0 || d == 0 || prev + d < prev)
            return SB_EPROTO;
        prev += d;
        (*seqs)[i] = prev;
    }
    if (p != end)
        return SB_EPROTO;
    br->seqs = *seqs;
    return SB_OK;
}

sb_err
sb_store_decode(const uint8_t *buf, size_t avail, sb_store_rec *rec,
                uint64_t **seqs, size_t *cap, size_t *need)
{
    return s_decode(buf, avail, rec, seqs, cap, need, 1);
}

/* ---- state: aggregates and unbatched seqs ------------------------------- */

typedef struct {
    uint64_t agg_seq;
    uint64_t topic_last_seq;
    uint64_t source_pos;
    uint8_t has_source_pos;
    uint32_t len;
    char name[]; /* NUL-terminated; the map's key bytes */
} s_agg;

typedef struct {
    uint64_t no;
    uint32_t live;
    uint64_t bits[S_UB_WORDS];
} s_ubpage;

typedef struct {
    uint64_t last_seq;
    uint64_t last_batch;
    sb_map *aggs;
    s_agg *cached;
    size_t agg_name_bytes;
    sb_map *ub; /* page number → s_ubpage */
    s_ubpage *ub_cached;
    uint64_t ub_count;
    uint64_t ub_low; /* no page below this holds a seq */
} s_state;

static sb_err
s_state_init(s_state *st)
{
    memset(st, 0, sizeof *st);
    if (sb_map_new(&st->aggs, 1024) != SB_OK)
        return SB_ENOMEM;
    if (sb_map_new(&st->ub, 256) != SB_OK) {
        sb_map_destroy(&st->aggs);
        return SB_ENOMEM;
    }
    return SB_OK;
}

static void
s_free_value(void *v, void *ctx)
{
    (void)ctx;
    free(v);
}

static void
s_state_fini(s_state *st)
{
    if (st->aggs != NULL)
        sb_map_each(st->aggs, s_free_value, NULL);
    if (st->ub != NULL)
        sb_map_each(st->ub, s_free_value, NULL);
    sb_map_destroy(&st->aggs);
    sb_map_destroy(&st->ub);
}

static s_agg *
s_agg_get(s_state *st, const char *name, uint32_t len, int create)
{
    s_agg *a = st->cached;

    if (a != NULL && a->len == len && memcmp(a->name, name, len) == 0)
        return a;
    if ((a = sb_map_get(st->aggs, name, len)) == NULL && create) {
        if ((a = calloc(1, sizeof *a + len + 1)) == NULL)
            return NULL;
        memcpy(a->name, name, len);
        a->len = len;
        if (sb_map_put(st->aggs, a->name, len, a) != SB_OK) {
            free(a);
            return NULL;
        }
        st->agg_name_bytes += len + 1;
    }
    if (a != NULL)
        st->cached = a;
    return a;
}

static s_ubpage *
s_ub_page(s_state *st, uint64_t no, int create)
{
    s_ubpage *p = st->ub_cached;

    if (p != NULL && p->no == no)
        return p;
    if ((p = sb_map_get(st->ub, &no, sizeof no)) == NULL && create) {
        if ((p = calloc(1, sizeof *p)) == NULL)
            return NULL;
        p->no = no;
        if (sb_map_put(st->ub, &p->no, sizeof p->no, p) != SB_OK) {
            free(p);
            return NULL;
        }
    }
    if (p != NULL)
        st->ub_cached = p;
    return p;
}

static sb_err
s_ub_add(s_state *st, uint64_t seq)
{
    uint64_t no = seq >> S_UB_SHIFT, bit = seq & ((1u << S_UB_SHIFT) - 1);
    s_ubpage *p = s_ub_page(st, no, 1);

    if (p == NULL)
        return SB_ENOMEM;
    if (p->bits[bit / 64] & (1ull << (bit % 64)))
        return SB_OK;
    if (st->ub_count == 0 || no < st->ub_low)
        st->ub_low = no;
    p->bits[bit / 64] |= 1ull << (bit % 64);
    p->live++;
    st->ub_count++;
    return SB_OK;
}

/* 1 if seq was in the set. */
static int
s_ub_del(s_state *st, uint64_t seq)
{
    uint64_t no = seq >> S_UB_SHIFT, bit = seq & ((1u << S_UB_SHIFT) - 1);
    s_ubpage *p = s_ub_page(st, no, 0);

    if (p == NULL || !(p->bits[bit / 64] & (1ull << (bit % 64))))
        return 0;
    p->bits[bit / 64] &= ~(1ull << (bit % 64));
    st->ub_count--;
    if (--p->live == 0) {
        sb_map_del(st->ub, &p->no, sizeof p->no);
        if (st->ub_cached == p)
            st->ub_cached = NULL;
        free(p);
    }
    return 1;
}

/* The smallest unbatched seq, or last_seq + 1 if there is none. Pages
 * below ub_low are all empty, and ub_low only moves up, so the walk costs
 * one lookup per page over the whole run. */
static uint64_t
s_ub_min(s_state *st)
{
    s_ubpage *p;

    if (st->ub_count == 0)
        return st->last_seq + 1;
    while ((p = s_ub_page(st, st->ub_low, 0)) == NULL)
        st->ub_low++;
    for (unsigned w = 0; w < S_UB_WORDS; w++)
        if (p->bits[w] != 0)
            return (p->no << S_UB_SHIFT) + w * 64 +
                   (uint64_t)__builtin_ctzll(p->bits[w]);
    return st->last_seq + 1; /* unreachable: live > 0 */
}

static void
s_collect_page(void *v, void *ctx)
{
    s_ubpage ***pp = ctx;

    *(*pp)++ = v;
}

static int
s_page_cmp(const void *a, const void *b)
{
    const s_ubpage *x = *(s_ubpage *const *)a, *y = *(s_ubpage *const *)b;

    return x->no < y->no ? -1 : x->no > y->no;
}

/* The unbatched seqs, ascending, in a malloc'd array. */
static sb_err
s_ub_list(s_state *st, uint64_t **out, size_t *n)
{
    size_t np = sb_map_size(st->ub), k = 0;
    s_ubpage **pages = malloc((np ? np : 1) * sizeof *pages), **pp = pages;
    uint64_t *seqs = malloc((st->ub_count ? st->ub_count : 1) * sizeof *seqs);

    if (pages == NULL || seqs == NULL) {
        free(pages);
        free(seqs);
        return SB_ENOMEM;
    }
    sb_map_each(st->ub, s_collect_page, &pp);
    qsort(pages, np, sizeof *pages, s_page_cmp);
    for (size_t i = 0; i < np; i++)
        for (unsigned w = 0; w < S_UB_WORDS; w++)
            for (uint64_t bits = pages[i]->bits[w]; bits; bits &= bits - 1)
                seqs[k++] = (pages[i]->no << S_UB_SHIFT) + w * 64 +
                            (uint64_t)__builtin_ctzll(bits);
    free(pages);
    *out = seqs;
    *n = k;
    return SB_OK;
}

/* Applies one committed record. Wrong keys are damage (SB_EPROTO): seqs
 * are gap-free and batch ids increase. */
static sb_err
s_apply(s_state *st, const sb_store_rec *rec)
{
    if (rec->type == SB_REC_EVENT) {
        const sb_event *ev = &rec->ev;
        s_agg *a;
        if (ev->seq != st->last_seq + 1)
            return SB_EPROTO;
        if ((a = s_agg_get(st, ev->agg, ev->agg_len, 1)) == NULL ||
            s_ub_add(st, ev->seq) != SB_OK)
            return SB_ENOMEM;
        a->agg_seq = ev->agg_seq;
        st->last_seq = ev->seq;
        return SB_OK;
    }
    const sb_store_batch_rec *br = &rec->batch;
    s_agg *a;
    if (br->id <= st->last_batch || br->seqs[br->n - 1] > st->last_seq)
        return SB_EPROTO;
    if ((a = s_agg_get(st, br->agg, br->agg_len, 1)) == NULL)
        return SB_ENOMEM;
    /* Seqs older than the scan (retention, or a lost checkpoint) are not
     * in the set: nothing to remove, nothing to worry about. */
    for (uint32_t i = 0; i < br->n; i++)
        (void)s_ub_del(st, br->seqs[i]);
    a->topic_last_seq = br->seqs[br->n - 1];
    a->source_pos = br->source_pos;
    a->has_source_pos = br->has_source_pos;
    st->last_batch = br->id;
    return SB_OK;
}

/* ---- segment files ------------------------------------------------------ */

typedef struct {
    uint64_t seq_next;   /* every event before `off` has a smaller seq */
    uint64_t batch_next; /* every batch record before `off` a smaller id */
    uint64_t off;
} s_ient;

typedef struct {
    uint64_t no;
    uint64_t base_seq;
    uint64_t base_batch;
    uint64_t created_ms;
} s_seghdr;

static void
s_seg_path(char *buf, size_t n, const char *dir, uint64_t no, const char *ext)
{
    snprintf(buf, n, "%s/%020" PRIu64 ".%s", dir, no, ext);
}

static void
s_seghdr_encode(uint8_t *p, const s_seghdr *h)
{
    memset(p, 0, SB_STORE_SEG_HDR);
    memcpy(p, S_SEG_MAGIC, 8);
    s_put32(p + 8, S_VERSION);
    s_put32(p + 12, SB_STORE_SEG_HDR);
    s_put64(p + 16, h->no);
    s_put64(p + 24, h->base_seq);
    s_put64(p + 32, h->base_batch);
    s_put64(p + 40, h->created_ms);
    s_put32(p + 60, sb_crc32c(0, p, 60));
}

static int
s_seghdr_decode(const uint8_t *p, size_t n, uint64_t no, s_seghdr *h)
{
    if (n < SB_STORE_SEG_HDR || memcmp(p, S_SEG_MAGIC, 8) != 0 ||
        s_get32(p + 8) != S_VERSION || s_get32(p + 12) != SB_STORE_SEG_HDR ||
        s_get32(p + 60) != sb_crc32c(0, p, 60) || s_get64(p + 16) != no ||
        s_get64(p + 24) == 0 || s_get64(p + 32) == 0)
        return -1;
    h->no = no;
    h->base_seq = s_get64(p + 24);
    h->base_batch = s_get64(p + 32);
    h->created_ms = s_get64(p + 40);
    return 0;
}

/* "<20 digits>.seg" → number; 0 if the name is something else. */
static uint64_t
s_seg_no(const char *name, const char *ext)
{
    uint64_t no = 0;
    size_t i;

    for (i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        no = no * 10 + (uint64_t)(name[i] - '0');
    }
    if (name[20] != '.' || strcmp(name + 21, ext) != 0)
        return 0;
    return no;
}

typedef struct {
    uint64_t *nos;
    size_t n, cap;
    int nomem;
} s_nolist;

static int
s_list_cb(const char *name, void *ctx)
{
    s_nolist *l = ctx;
    uint64_t no = s_seg_no(name, "seg");

    if (no == 0)
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        uint64_t *n2 = realloc(l->nos, cap * sizeof *n2);
        if (n2 == NULL) {
            l->nomem = 1;
            return 1;
        }
        l->nos = n2;
        l->cap = cap;
    }
    l->nos[l->n++] = no;
    return 0;
}

static int
s_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static sb_err
s_list_segments(const char *dir, uint64_t **nos, size_t *n)
{
    s_nolist l = {0};
    sb_err rc = sb_os_list_dir(dir, s_list_cb, &l);

    if (rc == SB_OK && l.nomem)
        rc = SB_ENOMEM;
    if (rc != SB_OK) {
        free(l.nos);
        return rc;
    }
    if (l.n > 1) /* qsort(NULL, 0, ...) is undefined */
        qsort(l.nos, l.n, sizeof *l.nos, s_u64_cmp);
    *nos = l.nos;
    *n = l.n;
    return SB_OK;
}

/* Index file: magic[8] | version u32 | reserved u32 | seg no u64 |
 * covered bytes u64 | count u64 | count × (seq_next, batch_next, off) |
 * crc32c u32 over all before it. */
static sb_err
s_idx_write(const char *dir, uint64_t no, uint64_t size, const s_ient *e,
            size_t n)
{
    size_t len = 40 + n * 24 + 4;
    uint8_t *buf = malloc(len), *p;
    char name[64];
    sb_err rc;

    if (buf == NULL)
        return SB_ENOMEM;
    memcpy(buf, S_IDX_MAGIC, 8);
    s_put32(buf + 8, S_VERSION);
    s_put32(buf + 12, 0);
    s_put64(buf + 16, no);
    s_put64(buf + 24, size);
    s_put64(buf + 32, n);
    p = buf + 40;
    for (size_t i = 0; i < n; i++, p += 24) {
        s_put64(p, e[i].seq_next);
        s_put64(p + 8, e[i].batch_next);
        s_put64(p + 16, e[i].off);
    }
    s_put32(p, sb_crc32c(0, buf, len - 4));
    snprintf(name, sizeof name, "%020" PRIu64 ".idx", no);
    rc = sb_os_write_file(dir, name, buf, len);
    free(buf);
    return rc;
}

/* Loads an index file if it is whole and matches the segment. */
static sb_err
s_idx_read(const char *dir, uint64_t no, uint64_t seg_size, s_ient **out,
           size_t *nout)
{
    char path[1100];
    uint8_t *buf;
    size_t len, n;
    s_ient *e;
    sb_err rc;

    s_seg_path(path, sizeof path, dir, no, "idx");
    if ((rc = sb_os_read_file(path, 1u << 30, &buf, &len)) != SB_OK)
        return rc;
    rc = SB_EPROTO;
    if (len < 44 || memcmp(buf, S_IDX_MAGIC, 8) != 0 ||
        s_get32(buf + 8) != S_VERSION || s_get64(buf + 16) != no ||
        s_get64(buf + 24) != seg_size || (n = s_get64(buf + 32)) == 0 ||
        n != (len - 44) / 24 || len != 44 + n * 24 ||
        s_get32(buf + len - 4) != sb_crc32c(0, buf, len - 4))
        goto out;
    rc = SB_ENOMEM;
    if ((e = malloc(n * sizeof *e)) == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = buf + 40 + i * 24;
        e[i] = (s_ient){s_get64(p), s_get64(p + 8), s_get64(p + 16)};
        if (e[i].off < SB_STORE_SEG_HDR || e[i].off > seg_size ||
            (i > 0 &&
             (e[i].off <= e[i - 1].off || e[i].seq_next < e[i - 1].seq_next ||
              e[i].batch_next < e[i - 1].batch_next))) {
            free(e);
            rc = SB_EPROTO;
            goto out;
        }
    }
    *out = e;
    *nout = n;
    rc = SB_OK;
out:
    free(buf);
    return rc;
}

static sb_err
s_ient_push(s_ient **v, size_t *n, size_t *cap, s_ient e)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        s_ient *v2 = realloc(*v, c * sizeof *v2);
        if (v2 == NULL)
            return SB_ENOMEM;
        *v = v2;
        *cap = c;
    }
    (*v)[(*n)++] = e;
    return SB_OK;
}

/* ---- reader ------------------------------------------------------------- */

typedef struct {
    s_seghdr h;
    uint64_t size;
    uint64_t mtime_ms;
    int fd;
    int has_idx_file;
    int idx_loaded; /* idx covers the whole sealed segment */
    s_ient *idx;
    size_t nidx, capidx;
    uint64_t indexed_to; /* records up to here are checked and indexed */
    uint64_t ix_seq_next, ix_batch_next;
    int seen;
} s_rseg;

struct sb_store_reader {
    char dir[512];
    s_rseg *segs;
    size_t nsegs, capsegs;
    int strict;
    /* cursor */
    size_t cur;
    uint64_t off;
    uint64_t last_event_seq; /* of the last event record returned */
    /* read window over one segment */
    uint8_t *buf;
    size_t bcap, blen;
    uint64_t boff;
    uint64_t bseg; /* segment number the window holds (0: none) */
    uint64_t *seqs;
    size_t seqs_cap;
    /* for sb_store_reader_load */
    uint8_t *tmp;
    size_t tcap;
    sb_event *tev;
    size_t tevcap;
    size_t nopen; /* segment descriptors open now */
};

/* At most this many segment files stay open per reader: a long log must
 * not exhaust descriptors. */
#define S_MAX_OPEN_FDS 8
/* And at most this many segment indexes stay loaded (an index of a 64 MiB
 * segment at one entry per 64 KiB is 24 KiB). */
#define S_MAX_INDEXES 64

static void
s_rseg_free(sb_store_reader *r, s_rseg *g)
{
    if (g->fd >= 0)
        r->nopen--;
    sb_os_close(&g->fd);
    free(g->idx);
    g->idx = NULL;
}

/* The segment's descriptor, opened on first use; others are closed when
 * too many are open (the current and the last segment are kept). */
static sb_err
s_rseg_fd(sb_store_reader *r, s_rseg *g)
{
    char path[1100];
    sb_err rc;

    if (g->fd >= 0)
        return SB_OK;
    if (r->nopen >= S_MAX_OPEN_FDS)
        for (size_t i = 0; i + 1 < r->nsegs; i++)
            if (&r->segs[i] != g && i != r->cur && r->segs[i].fd >= 0) {
                sb_os_close(&r->segs[i].fd);
                r->nopen--;
            }
    s_seg_path(path, sizeof path, r->dir, g->h.no, "seg");
    if ((rc = sb_os_open_read(&g->fd, path)) != SB_OK)
        return rc; /* ENOENT: retention removed it meanwhile */
    r->nopen++;
    return SB_OK;
}

sb_err
sb_store_reader_open(sb_store_reader **out, const char *dir)
{
    sb_store_reader *r = calloc(1, sizeof *r);
    sb_err rc;

    if (r == NULL)
        return SB_ENOMEM;
    if (strlen(dir) >= sizeof r->dir) {
        free(r);
        return SB_EINVAL;
    }
    strcpy(r->dir, dir);
    if ((rc = sb_store_reader_refresh(r)) != SB_OK) {
        sb_store_reader_close(&r);
        return rc;
    }
    *out = r;
    return SB_OK;
}

void
sb_store_reader_close(sb_store_reader **rp)
{
    sb_store_reader *r = *rp;

    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nsegs; i++)
        s_rseg_free(r, &r->segs[i]);
    free(r->segs);
    free(r->buf);
    free(r->seqs);
    free(r->tmp);
    free(r->tev);
    free(r);
    *rp = NULL;
}

void
sb_store_reader_set_strict(sb_store_reader *r, int strict)
{
    r->strict = strict;
}

/* Opens a segment new to the reader: header checked, or skipped (a torn
 * header is a segment being created, or left half-created by a crash). */
static int
s_rseg_open(sb_store_reader *r, uint64_t no, s_rseg *g)
{
    char path[1100];
    uint8_t hdr[SB_STORE_SEG_HDR];
    size_t got;

    memset(g, 0, sizeof *g);
    g->fd = -1;
    s_seg_path(path, sizeof path, r->dir, no, "seg");
    if (sb_os_open_read(&g->fd, path) != SB_OK)
        return -1;
    if (sb_os_pread_full(g->fd, hdr, sizeof hdr, 0, &got) != SB_OK ||
        s_seghdr_decode(hdr, got, no, &g->h) != 0 ||
        sb_os_fstat(g->fd, &g->size, &g->mtime_ms) != SB_OK) {
        sb_os_close(&g->fd);
        return -1;
    }
    sb_os_close(&g->fd); /* reopened when read (s_rseg_fd) */
    s_seg_path(path, sizeof path, r->dir, no, "idx");
    g->has_idx_file = sb_os_stat(path, NULL, NULL) == SB_OK;
    g->indexed_to = SB_STORE_SEG_HDR;
    g->ix_seq_next = g->h.base_seq;
    g->ix_batch_next = g->h.base_batch;
    return 0;
}

sb_err
sb_store_reader_refresh(sb_store_reader *r)
{
    uint64_t *nos = NULL, cur_no = 0;
    size_t n = 0, k = 0;
    s_rseg *segs;
    sb_err rc;

    if (r->cur < r->nsegs)
        cur_no = r->segs[r->cur].h.no;
    if ((rc = s_list_segments(r->dir, &nos, &n)) != SB_OK)
        return rc;
    if ((segs = calloc(n ? n : 1, sizeof *segs)) == NULL) {
        free(nos);
        return SB_ENOMEM;
    }
    /* Merge: both lists are sorted by number. Sealed segments never
     * change; only the one that was last may have grown since. */
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        while (j < r->nsegs && r->segs[j].h.no < nos[i])
            s_rseg_free(r, &r->segs[j++]);
        if (j < r->nsegs && r->segs[j].h.no == nos[i]) {
            int was_last = j + 1 == r->nsegs;
            segs[k] = r->segs[j++];
            if (was_last) {
                char path[1100];
                s_seg_path(path, sizeof path, r->dir, nos[i], "seg");
                (void)sb_os_stat(path, &segs[k].size, &segs[k].mtime_ms);
            }
            k++;
        } else if (s_rseg_open(r, nos[i], &segs[k]) == 0) {
            k++;
        }
    }
    while (j < r->nsegs)
        s_rseg_free(r, &r->segs[j++]);
    free(r->segs);
    free(nos);
    r->segs = segs;
    r->nsegs = k;
    r->capsegs = n;
    r->bseg = 0;
    r->blen = 0;
    r->cur = r->nsegs;
    for (size_t i = 0; i < r->nsegs; i++)
        if (r->segs[i].h.no == cur_no)
            r->cur = i;
    return SB_OK;
}

size_t
sb_store_reader_segments(const sb_store_reader *r)
{
    return r->nsegs;
}

sb_err
sb_store_reader_segment(const sb_store_reader *r, size_t i,
                        sb_store_seg_info *out)
{
    if (i >= r->nsegs)
        return SB_ENOENT;
    const s_rseg *g = &r->segs[i];
    *out = (sb_store_seg_info){g->h.no,         g->h.base_seq, g->h.base_batch,
                               g->h.created_ms, g->size,       g->mtime_ms,
                               g->has_idx_file};
    return SB_OK;
}

uint64_t
sb_store_reader_first_seq(const sb_store_reader *r)
{
    return r->nsegs ? r->segs[0].h.base_seq : 0;
}

uint64_t
sb_store_reader_first_batch(const sb_store_reader *r)
{
    return r->nsegs ? r->segs[0].h.base_batch : 0;
}

/* Makes [off, off+len) of segment g readable at *p; *got < len at the end
 * of the file. */
static sb_err
s_rd_window(sb_store_reader *r, s_rseg *g, uint64_t off, size_t len,
            const uint8_t **p, size_t *got)
{
    size_t want, n;
    sb_err rc;

    if (r->bseg == g->h.no && off >= r->boff &&
        off + len <= r->boff + r->blen) {
        *p = r->buf + (off - r->boff);
        *got = len;
        return SB_OK;
    }
    /* A whole chunk, but no more than the file holds past off: the tail
     * of a log (or a small segment) needs no S_READ_CHUNK buffer, and a
     * damaged length field no buffer of its size, only the bytes there
     * are (fewer than len: the caller sees a cut-off record). */
    if (off + len > g->size && s_rseg_fd(r, g) == SB_OK)
        (void)sb_os_fstat(g->fd, &g->size, &g->mtime_ms); /* grown? */
    uint64_t avail = g->size > off ? g->size - off : 0;
    want = avail < S_READ_CHUNK ? (size_t)avail : S_READ_CHUNK;
    if (want < len && len <= avail)
        want = len;
    if (want < SB_STORE_REC_HDR)
        want = SB_STORE_REC_HDR;
    if (r->bcap < want) {
        uint8_t *b2 = realloc(r->buf, want);
        if (b2 == NULL)
            return SB_ENOMEM;
        r->buf = b2;
        r->bcap = want;
    }
    r->bseg = 0;
    if ((rc = s_rseg_fd(r, g)) != SB_OK ||
        (rc = sb_os_pread_full(g->fd, r->buf, want, off, &n)) != SB_OK)
        return rc;
    r->bseg = g->h.no;
    r->boff = off;
    r->blen = n;
    *p = r->buf;
    *got = n < len ? n : len;
    return SB_OK;
}

/* Reads and decodes the record at off of g. SB_EAGAIN: the file ends in
 * the middle of it (or right at off: *got_any 0). */
static sb_err
s_rd_record(sb_store_reader *r, s_rseg *g, uint64_t off, sb_store_rec *rec)
{
    const uint8_t *p;
    size_t got, need;
    sb_err rc;

    if ((rc = s_rd_window(r, g, off, SB_STORE_REC_HDR, &p, &got)) != SB_OK)
        return rc;
    rc = sb_store_decode(p, got, rec, &r->seqs, &r->seqs_cap, &need);
    if (rc == SB_EAGAIN && need > got) {
        if ((rc = s_rd_window(r, g, off, need, &p, &got)) != SB_OK)
            return rc;
        rc = sb_store_decode(p, got, rec, &r->seqs, &r->seqs_cap, &need);
    }
    if (rc == SB_OK) {
        rec->seg_no = g->h.no;
        rec->offset = off;
    }
    return rc;
}

static void
s_rseg_drop_index(s_rseg *g)
{
    free(g->idx);
    g->idx = NULL;
    g->nidx = g->capidx = 0;
    g->idx_loaded = 0;
    g->indexed_to = SB_STORE_SEG_HDR;
    g->ix_seq_next = g->h.base_seq;
    g->ix_batch_next = g->h.base_batch;
}

/* Extends g's index over records not yet looked at (up to its size). A
 * segment with an index file loads that instead, once. */
static sb_err
s_rseg_index(sb_store_reader *r, s_rseg *g)
{
    sb_store_rec rec;
    uint64_t last;
    sb_err rc;

    if (g->idx_loaded)
        return SB_OK;
    if (g->nidx == 0) {
        size_t loaded = 0;
        for (size_t i = 0; i < r->nsegs; i++)
            loaded += r->segs[i].nidx > 0;
        if (loaded >= S_MAX_INDEXES)
            for (size_t i = 0; i + 1 < r->nsegs; i++)
                if (&r->segs[i] != g && i != r->cur)
                    s_rseg_drop_index(&r->segs[i]);
    }
    last = g->nidx ? g->idx[g->nidx - 1].off : 0;
    if (g->has_idx_file && g->nidx == 0) {
        s_ient *e;
        size_t n;
        if (s_idx_read(r->dir, g->h.no, g->size, &e, &n) == SB_OK) {
            g->idx = e;
            g->nidx = g->capidx = n;
            g->idx_loaded = 1;
            g->indexed_to = g->size;
            return SB_OK;
        }
        g->has_idx_file = 0; /* damaged: a cache only, so rebuild it */
    }
    if (g->nidx == 0 &&
        (rc = s_ient_push(&g->idx, &g->nidx, &g->capidx,
                          (s_ient){g->h.base_seq, g->h.base_batch,
                                   SB_STORE_SEG_HDR})) != SB_OK)
        return rc;
    while (g->indexed_to < g->size) {
        rc = s_rd_record(r, g, g->indexed_to, &rec);
        if (rc == SB_EAGAIN || rc == SB_EPROTO)
            break; /* the end, as far as this reader can tell now */
        if (rc != SB_OK)
            return rc;
        if (g->indexed_to - last >= S_READER_INDEX_EVERY) {
            if ((rc = s_ient_push(&g->idx, &g->nidx, &g->capidx,
                                  (s_ient){g->ix_seq_next, g->ix_batch_next,
                                           g->indexed_to})) != SB_OK)
                return rc;
            last = g->indexed_to;
        }
        if (rec.type == SB_REC_EVENT)
            g->ix_seq_next = rec.key + 1;
        else
            g->ix_batch_next = rec.key + 1;
        g->indexed_to += rec.size;
    }
    return SB_OK;
}

sb_err
sb_store_reader_seek_start(sb_store_reader *r)
{
    if (r->nsegs == 0)
        return SB_ENOENT;
    r->cur = 0;
    r->off = SB_STORE_SEG_HDR;
    r->last_event_seq = 0;
    return SB_OK;
}

/* Shared by the two seeks: which = 0 by seq, 1 by batch id. */
static sb_err
s_seek(sb_store_reader *r, uint64_t key, int which)
{
    size_t lo, hi, i;
    s_rseg *g;
    sb_err rc;

    if (r->nsegs == 0 ||
        key < (which ? r->segs[0].h.base_batch : r->segs[0].h.base_seq))
        return SB_ENOENT;
    /* The last segment whose base is <= key. */
    lo = 0;
    hi = r->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        uint64_t base =
            which ? r->segs[mid].h.base_batch : r->segs[mid].h.base_seq;
        if (base <= key)
            lo = mid;
        else
            hi = mid;
    }
    g = &r->segs[lo];
    if ((rc = s_rseg_index(r, g)) != SB_OK)
        return rc;
    /* The last entry whose next key is <= key. */
    i = 0;
    hi = g->nidx;
    while (hi - i > 1) {
        size_t mid = (i + hi) / 2;
        uint64_t k = which ? g->idx[mid].batch_next : g->idx[mid].seq_next;
        if (k <= key)
            i = mid;
        else
            hi = mid;
    }
    r->cur = lo;
    r->off = g->nidx ? g->idx[i].off : SB_STORE_SEG_HDR;
    r->last_event_seq = 0;
    return SB_OK;
}

sb_err
sb_store_reader_seek_seq(sb_store_reader *r, uint64_t seq)
{
    return s_seek(r, seq, 0);
}

sb_err
sb_store_reader_seek_batch(sb_store_reader *r, uint64_t id)
{
    return s_seek(r, id, 1);
}

/* Positions at an exact place (recovery). */
static sb_err
s_seek_pos(sb_store_reader *r, uint64_t no, uint64_t off)
{
    for (size_t i = 0; i < r->nsegs; i++)
        if (r->segs[i].h.no == no) {
            r->cur = i;
            r->off = off;
            return SB_OK;
        }
    return SB_ENOENT;
}

sb_err
sb_store_reader_next(sb_store_reader *r, sb_store_rec *rec)
{
    for (;;) {
        s_rseg *g;
        int last;
        sb_err rc;

        if (r->cur >= r->nsegs)
            return SB_ENOENT;
        g = &r->segs[r->cur];
        last = r->cur + 1 == r->nsegs;
        if (r->off >= g->size && last && s_rseg_fd(r, g) == SB_OK)
            (void)sb_os_fstat(g->fd, &g->size, &g->mtime_ms); /* grown? */
        if (r->off >= g->size) {
            if (last)
                return SB_ENOENT;
            r->cur++;
            r->off = SB_STORE_SEG_HDR;
            continue;
        }
        rc = s_rd_record(r, g, r->off, rec);
        if (rc == SB_OK) {
            r->off += rec->size;
            if (rec->type == SB_REC_EVENT)
                r->last_event_seq = rec->key;
            return SB_OK;
        }
        if (rc != SB_EAGAIN && rc != SB_EPROTO)
            return rc;
        /* A half-written or torn record. At the end of the last segment it
         * is the writer's tail (or a crash's, which recovery truncates); a
         * strict reader reports it all the same. */
        memset(rec, 0, sizeof *rec);
        rec->seg_no = g->h.no;
        rec->offset = r->off;
        if (last && !r->strict)
            return SB_ENOENT;
        return SB_EPROTO;
    }
}

/* Appends bytes to the reader's scratch area, returning their offset. */
static sb_err
s_tmp_put(sb_store_reader *r, size_t *len, const void *p, size_t n, size_t *at)
{
    if (*len + n + 1 > r->tcap) {
        size_t c = r->tcap ? r->tcap : 4096;
        while (c < *len + n + 1)
            c *= 2;
        uint8_t *t2 = realloc(r->tmp, c);
        if (t2 == NULL)
            return SB_ENOMEM;
        r->tmp = t2;
        r->tcap = c;
    }
    *at = *len;
    if (n > 0)
        memcpy(r->tmp + *len, p, n);
    r->tmp[*len + n] = 0; /* strings come out NUL-terminated */
    *len += n + 1;
    return SB_OK;
}

sb_err
sb_store_reader_load(sb_store_reader *r, const uint64_t *seqs, uint32_t n,
                     sb_req **out)
{
    size_t len = 0;
    sb_store_rec rec;
    sb_req *req;
    uint8_t *data;
    sb_err rc;

    if (n == 0)
        return SB_EINVAL;
    if (r->tevcap < n) {
        sb_event *t2 = realloc(r->tev, (size_t)n * sizeof *t2);
        if (t2 == NULL)
            return SB_ENOMEM;
        r->tev = t2;
        r->tevcap = n;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint64_t want = seqs[i];
        size_t at[5];
        /* Scan on when the event is just ahead; otherwise jump there
         * through the index. */
        if (i == 0 || want <= r->last_event_seq ||
            want - r->last_event_seq > 256)
            if ((rc = sb_store_reader_seek_seq(r, want)) != SB_OK)
                return rc;
        for (;;) {
            if ((rc = sb_store_reader_next(r, &rec)) != SB_OK)
                return rc == SB_EPROTO ? SB_EPROTO : SB_ENOENT;
            if (rec.type != SB_REC_EVENT || rec.key < want)
                continue;
            if (rec.key > want)
                return SB_ENOENT;
            break;
        }
        sb_event *ev = &r->tev[i];
        *ev = rec.ev;
        if ((rc = s_tmp_put(r, &len, ev->agg, ev->agg_len, &at[0])) != SB_OK ||
            (rc = s_tmp_put(r, &len, ev->type, ev->type_len, &at[1])) !=
                SB_OK ||
            (rc = s_tmp_put(r, &len, ev->event_id, ev->event_id_len, &at[2])) !=
                SB_OK ||
            (rc = s_tmp_put(r, &len, ev->producer_id, ev->producer_id_len,
                            &at[3])) != SB_OK ||
            (rc = s_tmp_put(r, &len, ev->payload, ev->payload_len, &at[4])) !=
                SB_OK)
            return rc;
        /* Offsets for now; pointers once the request exists. */
        ev->agg = (const char *)(uintptr_t)at[0];
        ev->type = (const char *)(uintptr_t)at[1];
        ev->event_id = ev->event_id_len ? (const char *)(uintptr_t)at[2] : NULL;
        ev->producer_id =
            ev->producer_id_len ? (const char *)(uintptr_t)at[3] : NULL;
        ev->payload = (const uint8_t *)(uintptr_t)at[4];
    }
    if ((rc = sb_req_new(&req, n, len, &data)) != SB_OK)
        return rc;
    memcpy(data, r->tmp, len);
    for (uint32_t i = 0; i < n; i++) {
        sb_event *ev = &req->ev[i];
        const sb_event *t = &r->tev[i];
        *ev = *t;
        ev->req = req;
        ev->agg = (const char *)data + (uintptr_t)t->agg;
        ev->type = (const char *)data + (uintptr_t)t->type;
        ev->event_id =
            t->event_id ? (const char *)data + (uintptr_t)t->event_id : NULL;
        ev->producer_id = t->producer_id
                              ? (const char *)data + (uintptr_t)t->producer_id
                              : NULL;
        ev->payload = data + (uintptr_t)t->payload;
        ev->status = SB_OK;
        ev->batch_id = 0;
    }
    req->ack = SB_ACK_NONE;
    req->naccepted = n;
    atomic_init(&req->unpublished, n);
    *out = req;
    return SB_OK;
}

sb_err
sb_store_reader_batch(sb_store_reader *r, const sb_store_batch_rec *br,
                      sb_batch **out)
{
    sb_req *req;
    sb_batch *b;
    sb_err rc;
    uint64_t *seqs = malloc((size_t)br->n * sizeof *seqs);
    sb_store_batch_rec h = *br;

    /* br->seqs lives in the reader, which loading moves on: copy first. */
    if (seqs == NULL)
        return SB_ENOMEM;
    memcpy(seqs, br->seqs, (size_t)br->n * sizeof *seqs);
    char *agg = malloc(br->agg_len + 1);
    if (agg == NULL) {
        free(seqs);
        return SB_ENOMEM;
    }
    memcpy(agg, br->agg, br->agg_len);
    rc = sb_store_reader_load(r, seqs, h.n, &req);
    free(seqs);
    if (rc != SB_OK) {
        free(agg);
        return rc;
    }
    rc = sb_batch_new(&b, agg, h.agg_len);
    free(agg);
    if (rc != SB_OK) {
        sb_req_unref(req);
        return rc;
    }
    for (uint32_t i = 0; i < h.n && rc == SB_OK; i++) {
        sb_event *ev = &req->ev[i];
        ev->batch_id = h.id;
        /* Not in the log: an event of another aggregate joined this batch
         * (caused_by); the encoder writes its aggregate only when marked. */
        ev->joined = ev->agg_len != b->agg_len ||
                     memcmp(ev->agg, b->agg, b->agg_len) != 0;
        rc = sb_batch_push(b, ev);
    }
    sb_req_unref(req); /* the batch holds a reference per event */
    if (rc != SB_OK) {
        sb_batch_destroy(&b);
        return rc;
    }
    b->id = h.id;
    b->timestamp_ms = h.timestamp_ms;
    b->prev_last_seq = h.prev_last_seq;
    b->agg_last_seq = h.agg_last_seq;
    b->source_pos = h.source_pos;
    b->has_source_pos = h.has_source_pos;
    b->close_reason = h.close_reason;
    *out = b;
    return SB_OK;
}

/* ---- writer ------------------------------------------------------------- */

typedef struct {
    s_seghdr h;
    uint64_t bytes;
    uint64_t mtime_ms;
} s_wseg;

struct sb_store {
    sb_store_config cfg;
    char dir[512];
    s_state st;
    /* what was added (validation); the state follows commits */
    uint64_t add_seq;
    uint64_t add_batch;
    /* segments, oldest first; the last is the active one */
    s_wseg *segs;
    size_t nsegs, capsegs;
    int fd;
    uint64_t size;   /* bytes in the active file */
    uint64_t synced; /* of which durable */
    s_ient *idx;     /* active segment's index (committed records) */
    size_t nidx, capidx;
    uint64_t ix_seq_next, ix_batch_next, ix_last;
    /* append buffer: [0, wlen) written, unsynced; [wlen, len) pending */
    uint8_t *buf;
    size_t len, cap, wlen;
    int keep_unsynced;
    /* last checkpoint */
    uint64_t ckpt_seg, ckpt_off, ckpt_min_ub;
    int need_ckpt;
    /* The next segment, reserved: -1 while the disk has no room for it. */
    int spare_fd;
    sb_store_stats stats;
};

static s_wseg *
s_active(sb_store *s)
{
    return &s->segs[s->nsegs - 1];
}

static sb_err
s_wseg_push(sb_store *s, s_wseg seg)
{
    if (s->nsegs == s->capsegs) {
        size_t c = s->capsegs ? s->capsegs * 2 : 16;
        s_wseg *v = realloc(s->segs, c * sizeof *v);
        if (v == NULL)
            return SB_ENOMEM;
        s->segs = v;
        s->capsegs = c;
    }
    s->segs[s->nsegs++] = seg;
    return SB_OK;
}

static sb_err
s_buf_reserve(sb_store *s, size_t more)
{
    if (s->len + more <= s->cap)
        return SB_OK;
    size_t c = s->cap ? s->cap : 1u << 20;
    while (c < s->len + more)
        c *= 2;
    uint8_t *b = realloc(s->buf, c);
    if (b == NULL)
        return SB_ENOMEM;
    s->buf = b;
    s->cap = c;
    return SB_OK;
}

/* Drops [0, n) of the buffer (committed). */
static void
s_buf_drop(sb_store *s, size_t n)
{
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
    s->wlen -= n;
    /* A burst can grow the buffer a lot; give it back once quiet. */
    if (s->len == 0 && s->cap > (16u << 20)) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
}

/* Makes records [p, p+n), which sit at file offset `off` of the active
 * segment, part of the state and the index. */
static void
s_commit(sb_store *s, const uint8_t *p, size_t n, uint64_t off)
{
    uint64_t *seqs = NULL;
    size_t cap = 0, done = 0;

    while (done < n) {
        sb_store_rec rec;
        sb_err rc = s_decode(p + done, n - done, &rec, &seqs, &cap, NULL, 0);
        if (rc != SB_OK) {
            /* We encoded these bytes ourselves a moment ago. */
            SB_LOG(SB_LOG_ERR, "store.commit_decode", "off=%" PRIu64 " err=%s",
                   off + done, sb_strerror(rc));
            break;
        }
        if (s->nidx == 0 || off + done - s->ix_last >= s->cfg.index_every) {
            if (s_ient_push(&s->idx, &s->nidx, &s->capidx,
                            (s_ient){s->ix_seq_next, s->ix_batch_next,
                                     off + done}) == SB_OK)
                s->ix_last = off + done;
        }
        if ((rc = s_apply(&s->st, &rec)) != SB_OK)
            SB_LOG(SB_LOG_ERR, "store.state", "key=%" PRIu64 " err=%s", rec.key,
                   sb_strerror(rc));
        if (rec.type == SB_REC_EVENT)
            s->ix_seq_next = rec.key + 1;
        else
            s->ix_batch_next = rec.key + 1;
        done += rec.size;
    }
    free(seqs);
}

static void
s_ckpt_agg(void *v, void *ctx)
{
    const s_agg *a = v;
    uint8_t **pp = ctx, *p = *pp;

    *p++ = (uint8_t)a->len;
    memcpy(p, a->name, a->len);
    p += a->len;
    p = sb_varint_put(p, a->agg_seq);
    p = sb_varint_put(p, a->topic_last_seq);
    p = sb_varint_put(p, a->source_pos);
    *p++ = a->has_source_pos;
    *pp = p;
}

/* Checkpoint: magic[8] | version u32 | reserved u32 | segment no u64 |
 * offset u64 | last seq u64 | last batch id u64 | unbatched count u64 |
 * aggregate count u64 | unbatched seqs (varint gaps) | per aggregate: name
 * length u8, name, agg seq, topic last seq, source pos (varints),
 * has_source_pos u8 | crc32c u32 over all before it. */
static sb_err
s_encode_ckpt(sb_store *s, uint8_t **out, size_t *outlen)
{
    uint64_t *ub = NULL, prev = 0;
    size_t nub = 0, len, naggs = sb_map_size(s->st.aggs);
    uint8_t *buf, *p;
    sb_err rc;

    if ((rc = s_ub_list(&s->st, &ub, &nub)) != SB_OK)
        return rc;
    len = 64 + nub * 10 + naggs * (1 + 10 * 3 + 1) + s->st.agg_name_bytes + 4;
    if ((buf = malloc(len)) == NULL) {
        free(ub);
        return SB_ENOMEM;
    }
    memcpy(buf, S_CKP_MAGIC, 8);
    s_put32(buf + 8, S_VERSION);
    s_put32(buf + 12, 0);
    s_put64(buf + 16, s_active(s)->h.no);
    s_put64(buf + 24, s->synced);
    s_put64(buf + 32, s->st.last_seq);
    s_put64(buf + 40, s->st.last_batch);
    s_put64(buf + 48, nub);
    s_put64(buf + 56, naggs);
    p = buf + 64;
    for (size_t i = 0; i < nub; i++) {
        p = sb_varint_put(p, ub[i] - prev);
        prev = ub[i];
    }
    free(ub);
    sb_map_each(s->st.aggs, s_ckpt_agg, &p);
    s_put32(p, sb_crc32c(0, buf, (size_t)(p - buf)));
    *out = buf;
    *outlen = (size_t)(p - buf) + 4;
    return SB_OK;
}

/* Writes the checkpoint for (active segment, synced): the state is the
 * committed state, which is exactly the log up to there. */
static sb_err
s_write_ckpt(sb_store *s)
{
    uint8_t *buf;
    size_t len;
    sb_err rc;

    if ((rc = s_encode_ckpt(s, &buf, &len)) != SB_OK)
        return rc;
    rc = sb_os_write_file(s->dir, S_CKP_NAME, buf, len);
    free(buf);
    if (rc != SB_OK) {
        SB_LOG(SB_LOG_WARN, "store.checkpoint_failed", "dir=%s err=%s errno=%d",
               s->dir, sb_strerror(rc), sb_os_errno());
        return rc;
    }
    s->ckpt_seg = s_active(s)->h.no;
    s->ckpt_off = s->synced;
    s->ckpt_min_ub = s_ub_min(&s->st);
    s->need_ckpt = 0;
    s->stats.checkpoints++;
    return SB_OK;
}

/* Loads a checkpoint into st. SB_ENOENT: none. SB_EPROTO: damaged. */
static sb_err
s_read_ckpt(const char *dir, s_state *st, uint64_t *seg, uint64_t *off)
{
    char path[1100];
    uint8_t *buf;
    size_t len;
    uint64_t nub, naggs, prev = 0;
    const uint8_t *p, *end;
    sb_err rc;

    snprintf(path, sizeof path, "%s/%s", dir, S_CKP_NAME);
    if ((rc = sb_os_read_file(path, S_MAX_CKP, &buf, &len)) != SB_OK)
        return rc == SB_ENOENT ? SB_ENOENT : rc;
    rc = SB_EPROTO;
    if (len < 68 || memcmp(buf, S_CKP_MAGIC, 8) != 0 ||
        s_get32(buf + 8) != S_VERSION ||
        s_get32(buf + len - 4) != sb_crc32c(0, buf, len - 4))
        goto out;
    *seg = s_get64(buf + 16);
    *off = s_get64(buf + 24);
    st->last_seq = s_get64(buf + 32);
    st->last_batch = s_get64(buf + 40);
    nub = s_get64(buf + 48);
    naggs = s_get64(buf + 56);
    p = buf + 64;
    end = buf + len - 4;
    if (nub > (uint64_t)(end - p) || naggs > (uint64_t)(end - p))
        goto out;
    for (uint64_t i = 0; i < nub; i++) {
        uint64_t d;
        if (s_get_varint(&p, end, &d) != 0 || d == 0 || prev + d > st->last_seq)
            goto out;
        prev += d;
        if (s_ub_add(st, prev) != SB_OK) {
            rc = SB_ENOMEM;
            goto out;
        }
    }
    for (uint64_t i = 0; i < naggs; i++) {
        uint32_t alen;
        s_agg *a;
        if (p >= end || (alen = *p++) == 0 || (size_t)(end - p) < alen)
            goto out;
        if ((a = s_agg_get(st, (const char *)p, alen, 1)) == NULL) {
            rc = SB_ENOMEM;
            goto out;
        }
        p += alen;
        if (s_get_varint(&p, end, &a->agg_seq) != 0 ||
            s_get_varint(&p, end, &a->topic_last_seq) != 0 ||
            s_get_varint(&p, end, &a->source_pos) != 0 || p >= end || *p > 1)
            goto out;
        a->has_source_pos = *p++;
    }
    rc = p == end ? SB_OK : SB_EPROTO;
out:
    free(buf);
    return rc;
}

/* Reserves the next segment's space now, in a file of its own, so that a
 * disk filling up is noticed a whole segment before the log runs out: the
 * log store then refuses new publishes while what is in flight still
 * fits. Where the file system cannot reserve, the spare is just a file. */
static sb_err
s_prepare_spare(sb_store *s)
{
    char path[1100];
    int fd = -1;
    sb_err rc;

    if (s->spare_fd >= 0)
        return SB_OK;
    snprintf(path, sizeof path, "%s/%s", s->dir, S_SPARE_NAME);
    (void)sb_os_unlink(path);
    if ((rc = sb_os_create(&fd, path)) != SB_OK)
        return rc;
    rc = sb_os_preallocate(fd, s->cfg.segment_bytes);
    if (rc != SB_OK && rc != SB_ENOTSUP) {
        sb_os_close(&fd);
        (void)sb_os_unlink(path);
        return rc;
    }
    s->spare_fd = fd;
    return SB_OK;
}

/* Creates segment `no` with the next seq/batch as its base, durably: the
 * spare renamed into place if there is one, a new file otherwise. */
static sb_err
s_create_segment(sb_store *s, uint64_t no, int *fdp, s_seghdr *h)
{
    char path[1100], spare[1100];
    uint8_t hdr[SB_STORE_SEG_HDR];
    int fd = -1;
    sb_err rc;

    *h = (s_seghdr){no, s->st.last_seq + 1, s->st.last_batch + 1,
                    sb_clock_wall_ms()};
    s_seghdr_encode(hdr, h);
    s_seg_path(path, sizeof path, s->dir, no, "seg");
    (void)sb_os_unlink(path); /* a leftover of a failed creation */
    if (s->spare_fd >= 0) {
        snprintf(spare, sizeof spare, "%s/%s", s->dir, S_SPARE_NAME);
        fd = s->spare_fd;
        if ((rc = sb_os_pwrite_all(fd, hdr, sizeof hdr, 0)) != SB_OK ||
            (rc = sb_os_fdatasync(fd)) != SB_OK ||
            (rc = sb_os_rename(spare, path)) != SB_OK)
            return rc; /* still the spare: the next try rewrites it */
        s->spare_fd = -1;
        if ((rc = sb_os_sync_dir(s->dir)) != SB_OK) {
            sb_os_close(&fd);
            (void)sb_os_unlink(path);
            return rc;
        }
        *fdp = fd;
        return SB_OK;
    }
    if ((rc = sb_os_create(&fd, path)) != SB_OK)
        return rc;
    (void)sb_os_preallocate(fd, s->cfg.segment_bytes); /* best effort */
    if ((rc = sb_os_pwrite_all(fd, hdr, sizeof hdr, 0)) != SB_OK ||
        (rc = sb_os_fdatasync(fd)) != SB_OK ||
        (rc = sb_os_sync_dir(s->dir)) != SB_OK) {
        sb_os_close(&fd);
        (void)sb_os_unlink(path);
        return rc;
    }
    *fdp = fd;
    return SB_OK;
}

static void
s_reset_index(sb_store *s, const s_seghdr *h)
{
    s->nidx = 0;
    s->ix_seq_next = h->base_seq;
    s->ix_batch_next = h->base_batch;
    s->ix_last = SB_STORE_SEG_HDR;
    (void)s_ient_push(&s->idx, &s->nidx, &s->capidx,
                      (s_ient){h->base_seq, h->base_batch, SB_STORE_SEG_HDR});
}

static sb_err
s_sync_active(sb_store *s)
{
    sb_err rc;

    if (s->synced == s->size)
        return SB_OK;
    if ((rc = sb_os_fdatasync(s->fd)) != SB_OK) {
        int e = sb_os_errno();
        s->stats.sync_failures++;
        SB_LOG(SB_LOG_ERR, "store.sync_failed",
               "seg=%" PRIu64 " errno=%d err=%s rewrite_bytes=%zu",
               s_active(s)->h.no, e, sb_strerror(rc),
               s->keep_unsynced ? s->wlen : (size_t)0);
        if (s->keep_unsynced) {
            /* The kernel may have dropped the pages it failed to write, and
             * a second fsync could then succeed without them: throw the
             * unsynced tail away and write it again from memory. */
            (void)sb_os_ftruncate(s->fd, s->synced);
            (void)sb_os_preallocate(s->fd, s->cfg.segment_bytes);
            s->size = s->synced;
            s->wlen = 0;
            s_active(s)->bytes = s->size;
        }
        return rc;
    }
    s->stats.syncs++;
    if (s->keep_unsynced && s->wlen > 0) {
        s_commit(s, s->buf, s->wlen, s->synced);
        s_buf_drop(s, s->wlen);
    }
    s->synced = s->size;
    return SB_OK;
}

/* Seals the active segment (synced, index written) and starts the next. */
static sb_err
s_roll(sb_store *s)
{
    s_wseg *a = s_active(s);
    s_seghdr h;
    int fd = -1;
    sb_err rc;

    /* Sealed segments are always synced, whatever the policy: recovery
     * then only ever finds damage in the last one. */
    if (s->keep_unsynced)
        rc = s_sync_active(s);
    else if ((rc = sb_os_fdatasync(s->fd)) != SB_OK)
        s->stats.sync_failures++;
    if (rc != SB_OK)
        return rc;
    /* The index file is a cache: without it a reader scans the segment. */
    if (s_idx_write(s->dir, a->h.no, s->size, s->idx, s->nidx) != SB_OK)
        SB_LOG(SB_LOG_WARN, "store.index_write_failed",
               "seg=%" PRIu64 " errno=%d", a->h.no, sb_os_errno());
    if ((rc = s_create_segment(s, a->h.no + 1, &fd, &h)) != SB_OK) {
        s->stats.write_failures++;
        SB_LOG(SB_LOG_ERR, "store.segment_create_failed",
               "seg=%" PRIu64 " errno=%d err=%s", a->h.no + 1, sb_os_errno(),
               sb_strerror(rc));
        return rc;
    }
    a->bytes = s->size;
    a->mtime_ms = sb_clock_wall_ms();
    if ((rc = s_wseg_push(s, (s_wseg){h, SB_STORE_SEG_HDR, h.created_ms})) !=
        SB_OK) {
        sb_os_close(&fd);
        return rc;
    }
    sb_os_close(&s->fd);
    s->fd = fd;
    s->size = s->synced = SB_STORE_SEG_HDR;
    s_reset_index(s, &h);
    s->stats.seals++;
    s->stats.segments = s->nsegs;
    /* The committed state now ends exactly where the new segment starts. */
    (void)s_write_ckpt(s);
    (void)s_prepare_spare(s); /* failing: the log store refuses publishes */
    return SB_OK;
}

sb_err
sb_store_add_event(sb_store *s, const sb_event *ev)
{
    size_t n = sb_store_event_size(ev);
    sb_err rc;

    if (ev->seq != s->add_seq + 1 || ev->agg_len == 0)
        return SB_EINVAL;
    if (ev->agg_len > 255 || ev->type_len > 255 || ev->event_id_len > 255 ||
        ev->producer_id_len > 255 || n > SB_STORE_MAX_RECORD)
        return SB_ETOOBIG;
    if ((rc = s_buf_reserve(s, n)) != SB_OK)
        return rc;
    sb_store_encode_event(s->buf + s->len, ev);
    s->len += n;
    s->add_seq = ev->seq;
    return SB_OK;
}

sb_err
sb_store_add_batch(sb_store *s, const sb_batch *b)
{
    size_t n;
    sb_err rc;

    if (b->n == 0 || b->id <= s->add_batch || b->agg_len == 0 ||
        b->ev[b->n - 1]->seq > s->add_seq)
        return SB_EINVAL;
    for (uint32_t i = 1; i < b->n; i++)
        if (b->ev[i]->seq <= b->ev[i - 1]->seq)
            return SB_EINVAL;
    if (b->agg_len > 255)
        return SB_ETOOBIG;
    if ((n = sb_store_batch_size(b)) > SB_STORE_MAX_RECORD)
        return SB_ETOOBIG;
    if ((rc = s_buf_reserve(s, n)) != SB_OK)
        return rc;
    sb_store_encode_batch(s->buf + s->len, b);
    s->len += n;
    s->add_batch = b->id;
    return SB_OK;
}

sb_err
sb_store_write(sb_store *s)
{
    while (s->wlen < s->len) {
        uint64_t room =
            s->cfg.segment_bytes > s->size ? s->cfg.segment_bytes - s->size : 0;
        size_t chunk = s->len - s->wlen;
        sb_err rc;

        if (chunk > room) {
            /* Whole records up to the segment bound; a record larger than a
             * whole segment goes alone into an empty one. */
            size_t pos = s->wlen;
            chunk = 0;
            while (pos < s->len) {
                size_t rsz = SB_STORE_REC_HDR + s_get32(s->buf + pos + 4);
                if (chunk + rsz > room &&
                    !(chunk == 0 && s->size == SB_STORE_SEG_HDR))
                    break;
                chunk += rsz;
                pos += rsz;
                if (chunk >= room)
                    break;
            }
        }
        if (chunk == 0) {
            if ((rc = s_roll(s)) != SB_OK)
                return rc;
            continue;
        }
        rc = sb_os_pwrite_all(s->fd, s->buf + s->wlen, chunk, s->size);
        if (rc != SB_OK) {
            int e = sb_os_errno();
            /* Whatever part went out is cut off again, so the file ends
             * on a record boundary and the retry writes the same bytes. */
            (void)sb_os_ftruncate(s->fd, s->size);
            (void)sb_os_preallocate(s->fd, s->cfg.segment_bytes);
            s->stats.write_failures++;
            SB_LOG(SB_LOG_DEBUG, "store.write_failed",
                   "seg=%" PRIu64 " off=%" PRIu64 " bytes=%zu errno=%d err=%s",
                   s_active(s)->h.no, s->size, chunk, e, sb_strerror(rc));
            return rc;
        }
        s->stats.writes++;
        s->stats.bytes_written += chunk;
        if (!s->keep_unsynced) {
            s_commit(s, s->buf + s->wlen, chunk, s->size);
            s->size += chunk;
            s->wlen += chunk;
            s_buf_drop(s, s->wlen);
            s->synced = s->size; /* nothing to roll back to: see header */
        } else {
            s->size += chunk;
            s->wlen += chunk;
        }
        s_active(s)->bytes = s->size;
    }
    return SB_OK;
}

sb_err
sb_store_sync(sb_store *s)
{
    sb_err rc;

    if (!s->keep_unsynced) {
        /* Everything written is committed already; the fdatasync still
         * makes it durable (clean shutdown, interval ticks). */
        if ((rc = sb_os_fdatasync(s->fd)) != SB_OK) {
            s->stats.sync_failures++;
            return rc;
        }
        s->stats.syncs++;
    } else if ((rc = s_sync_active(s)) != SB_OK) {
        return rc;
    }
    if (s->need_ckpt && s->len == 0)
        (void)s_write_ckpt(s);
    return SB_OK;
}

size_t
sb_store_pending(const sb_store *s)
{
    return s->len - s->wlen;
}

uint64_t
sb_store_unsynced(const sb_store *s)
{
    return s->size - s->synced;
}

sb_err
sb_store_reserve(sb_store *s)
{
    return s_prepare_spare(s);
}

int
sb_store_reserved(const sb_store *s)
{
    return s->spare_fd >= 0;
}

void
sb_store_set_keep_unsynced(sb_store *s, int keep)
{
    if (!keep && s->keep_unsynced && s->wlen > 0) {
        s_commit(s, s->buf, s->wlen, s->synced);
        s->synced = s->size;
        s_buf_drop(s, s->wlen);
    }
    s->keep_unsynced = keep;
}

sb_err
sb_store_checkpoint(sb_store *s)
{
    if (s->len > 0 || s->synced != s->size)
        return SB_EAGAIN;
    /* The active segment's index too: with both, the next start reads no
     * record at all. (A later append makes this index file stale; its
     * recorded size tells, and it is then rebuilt.) */
    if (s_idx_write(s->dir, s_active(s)->h.no, s->size, s->idx, s->nidx) !=
        SB_OK)
        SB_LOG(SB_LOG_WARN, "store.index_write_failed",
               "seg=%" PRIu64 " errno=%d", s_active(s)->h.no, sb_os_errno());
    return s_write_ckpt(s);
}

static uint64_t
s_total_bytes(const sb_store *s)
{
    uint64_t t = 0;

    for (size_t i = 0; i < s->nsegs; i++)
        t += s->segs[i].bytes;
    return t;
}

sb_err
sb_store_retain(sb_store *s, uint64_t now_ms, uint32_t *deleted)
{
    uint32_t n = 0;
    uint64_t total = s_total_bytes(s);

    while (s->nsegs > 1) {
        const s_wseg *g = &s->segs[0], *next = &s->segs[1];
        int over_bytes =
            s->cfg.retain_bytes != 0 && total > s->cfg.retain_bytes;
        int too_old = s->cfg.retain_age_s != 0 &&
                      g->mtime_ms + s->cfg.retain_age_s * 1000u < now_ms;
        char path[1100];
        /* Recovery starts at the checkpoint and needs the events of open
         * batches: both must stay. */
        int needed = s->ckpt_seg == 0 || g->h.no >= s->ckpt_seg ||
                     next->h.base_seq > s->ckpt_min_ub;
        if ((!over_bytes && !too_old) || needed)
            break;
        s_seg_path(path, sizeof path, s->dir, g->h.no, "seg");
        if (sb_os_unlink(path) != SB_OK && sb_os_errno() != ENOENT) {
            SB_LOG(SB_LOG_WARN, "store.retention_failed", "path=%s errno=%d",
                   path, sb_os_errno());
            break;
        }
        s_seg_path(path, sizeof path, s->dir, g->h.no, "idx");
        (void)sb_os_unlink(path);
        SB_LOG(SB_LOG_INFO, "store.segment_deleted",
               "seg=%" PRIu64 " bytes=%" PRIu64 " reason=%s", g->h.no, g->bytes,
               over_bytes ? "bytes" : "age");
        total -= g->bytes;
        memmove(s->segs, s->segs + 1, (s->nsegs - 1) * sizeof *s->segs);
        s->nsegs--;
        n++;
    }
    if (n > 0) {
        (void)sb_os_sync_dir(s->dir);
        s->stats.segments_deleted += n;
    }
    if (deleted != NULL)
        *deleted = n;
    return SB_OK;
}

void
sb_store_stats_get(const sb_store *s, sb_store_stats *st)
{
    *st = s->stats;
    st->segments = s->nsegs;
    st->bytes = s_total_bytes(s);
    st->first_seq = s->nsegs ? s->segs[0].h.base_seq : 0;
    st->last_seq = s->add_seq;
    st->last_batch_id = s->add_batch;
    st->unbatched = s->st.ub_count;
}

const char *
sb_store_dir(const sb_store *s)
{
    return s->dir;
}

uint64_t
sb_store_last_seq(const sb_store *s)
{
    return s->add_seq;
}

uint64_t
sb_store_last_batch_id(const sb_store *s)
{
    return s->add_batch;
}

void
sb_store_close(sb_store **sp)
{
    sb_store *s = *sp;

    if (s == NULL)
        return;
    sb_os_close(&s->fd);
    sb_os_close(&s->spare_fd);
    s_state_fini(&s->st);
    free(s->segs);
    free(s->idx);
    free(s->buf);
    free(s);
    *sp = NULL;
}

/* ---- recovery ----------------------------------------------------------- */

void
sb_store_recovery_free(sb_store_recovery *rec)
{
    if (rec == NULL)
        return;
    free(rec->aggs);
    free(rec->unbatched);
    free(rec->mem);
    memset(rec, 0, sizeof *rec);
}

typedef struct {
    sb_store_agg *out;
    char *names;
    size_t i;
} s_aggcopy;

static void
s_copy_agg(void *v, void *ctx)
{
    const s_agg *a = v;
    s_aggcopy *c = ctx;

    memcpy(c->names, a->name, a->len + 1);
    c->out[c->i++] =
        (sb_store_agg){c->names,          a->len,        a->agg_seq,
                       a->topic_last_seq, a->source_pos, a->has_source_pos};
    c->names += a->len + 1;
}

static sb_err
s_fill_recovery(sb_store *s, sb_store_recovery *rec)
{
    size_t naggs = sb_map_size(s->st.aggs);
    s_aggcopy c;

    rec->last_seq = s->st.last_seq;
    rec->last_batch_id = s->st.last_batch;
    rec->first_seq = s->segs[0].h.base_seq;
    rec->segments = s->nsegs;
    rec->bytes = s_total_bytes(s);
    rec->aggs = calloc(naggs ? naggs : 1, sizeof *rec->aggs);
    rec->mem = malloc(s->st.agg_name_bytes + 1);
    if (rec->aggs == NULL || rec->mem == NULL)
        return SB_ENOMEM;
    c = (s_aggcopy){rec->aggs, rec->mem, 0};
    sb_map_each(s->st.aggs, s_copy_agg, &c);
    rec->naggs = c.i;
    return s_ub_list(&s->st, &rec->unbatched, &rec->nunbatched);
}

/* Truncates a torn tail of the last segment at off. */
static sb_err
s_truncate_tail(sb_store *s, uint64_t no, uint64_t off, uint64_t size,
                sb_store_recovery *rec, const char *why)
{
    char path[1100];
    int fd = -1;
    sb_err rc;

    s_seg_path(path, sizeof path, s->dir, no, "seg");
    SB_LOG(SB_LOG_WARN, "store.torn_tail",
           "seg=%" PRIu64 " offset=%" PRIu64 " dropped_bytes=%" PRIu64
           " why=%s",
           no, off, size - off, why);
    if ((rc = sb_os_open_write(&fd, path)) != SB_OK)
        return rc;
    if ((rc = sb_os_ftruncate(fd, off)) == SB_OK)
        rc = sb_os_fdatasync(fd);
    sb_os_close(&fd);
    rec->torn++;
    rec->torn_bytes += size - off;
    return rc;
}

/* Scans from (start_no, start_off) to the end, applying records at or past
 * (apply_no, apply_off) and indexing the last segment. */
static sb_err
s_replay(sb_store *s, uint64_t start_no, uint64_t apply_no, uint64_t apply_off,
         sb_store_recovery *rec)
{
    sb_store_reader *r = NULL;
    sb_store_rec x;
    uint64_t cur_no = 0, last_no = s_active(s)->h.no;
    sb_err rc;

    if ((rc = sb_store_reader_open(&r, s->dir)) != SB_OK)
        return rc;
    sb_store_reader_set_strict(r, 1);
    if ((rc = s_seek_pos(r, start_no, SB_STORE_SEG_HDR)) != SB_OK)
        goto out;
    for (;;) {
        rc = sb_store_reader_next(r, &x);
        if (rc == SB_ENOENT) {
            rc = SB_OK;
            break;
        }
        uint64_t no = x.seg_no;
        if (no != cur_no && no != 0) {
            /* Entering a segment: its base must continue the state. */
            const s_rseg *g = NULL;
            for (size_t i = 0; i < r->nsegs; i++)
                if (r->segs[i].h.no == no)
                    g = &r->segs[i];
            cur_no = no;
            if (g != NULL && no > apply_no &&
                (g->h.base_seq != s->st.last_seq + 1 ||
                 g->h.base_batch != s->st.last_batch + 1)) {
                SB_LOG(SB_LOG_ERR, "store.corrupt",
                       "seg=%" PRIu64 " why=\"base seq %" PRIu64
                       " does not follow %" PRIu64 "\"",
                       no, g->h.base_seq, s->st.last_seq);
                rc = SB_EPROTO;
                goto out;
            }
            if (no == last_no)
                s_reset_index(s, &g->h);
        }
        const char *why = "bad record";
        if (rc == SB_OK) {
            rec->records_scanned++;
            int apply =
                no > apply_no || (no == apply_no && x.offset >= apply_off);
            if (apply && (rc = s_apply(&s->st, &x)) == SB_OK) {
                s->add_seq = s->st.last_seq;
                s->add_batch = s->st.last_batch;
            } else if (apply && rc == SB_EPROTO) {
                why = x.type == SB_REC_EVENT ? "seq out of order"
                                             : "batch id out of order";
            } else if (apply) {
                goto out; /* ENOMEM */
            }
            if (rc == SB_OK) {
                if (no == last_no) {
                    if (x.offset - s->ix_last >= s->cfg.index_every &&
                        s_ient_push(&s->idx, &s->nidx, &s->capidx,
                                    (s_ient){s->ix_seq_next, s->ix_batch_next,
                                             x.offset}) == SB_OK)
                        s->ix_last = x.offset;
                    if (x.type == SB_REC_EVENT)
                        s->ix_seq_next = x.key + 1;
                    else
                        s->ix_batch_next = x.key + 1;
                }
                continue;
            }
        } else if (rc != SB_EPROTO) {
            goto out;
        }
        /* A damaged record at x.seg_no / x.offset. */
        if (no != last_no) {
            SB_LOG(SB_LOG_ERR, "store.corrupt",
                   "seg=%" PRIu64 " offset=%" PRIu64 " why=\"%s in a sealed "
                   "segment\" hint=\"snapbus log verify %s\"",
                   no, x.offset, why, s->dir);
            rc = SB_EPROTO;
            goto out;
        }
        uint64_t size = 0;
        for (size_t i = 0; i < r->nsegs; i++)
            if (r->segs[i].h.no == no)
                size = r->segs[i].size;
        rc = s_truncate_tail(s, no, x.offset, size, rec, why);
        break;
    }
out:
    sb_store_reader_close(&r);
    return rc;
}

sb_err
sb_store_open(sb_store **out, const sb_store_config *cfg,
              sb_store_recovery *recp)
{
    sb_store *s = calloc(1, sizeof *s);
    sb_store_recovery rec_local, *rec = recp ? recp : &rec_local;
    uint64_t *nos = NULL, ckpt_seg = 0, ckpt_off = 0, t0 = sb_clock_mono_ns();
    size_t n = 0;
    char path[1100];
    sb_err rc;

    memset(rec, 0, sizeof *rec);
    if (s == NULL)
        return SB_ENOMEM;
    s->cfg = *cfg;
    s->fd = -1;
    s->spare_fd = -1;
    s->keep_unsynced = 1;
    if (strlen(cfg->dir) >= sizeof s->dir) {
        free(s);
        return SB_EINVAL;
    }
    strcpy(s->dir, cfg->dir);
    if ((rc = s_state_init(&s->st)) != SB_OK) {
        free(s);
        return rc;
    }
    if ((rc = sb_os_mkdirs(s->dir)) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "store.mkdir", "dir=%s errno=%d", s->dir,
               sb_os_errno());
        goto fail;
    }
    if ((rc = s_list_segments(s->dir, &nos, &n)) != SB_OK)
        goto fail;

    /* Headers first: a bad one is a torn creation if it is the last
     * segment, damage anywhere else. */
    for (size_t i = 0; i < n; i++) {
        uint8_t hdr[SB_STORE_SEG_HDR];
        size_t got = 0;
        int fd = -1;
        s_wseg g = {0};
        s_seg_path(path, sizeof path, s->dir, nos[i], "seg");
        if ((rc = sb_os_open_read(&fd, path)) != SB_OK)
            goto fail;
        rc = sb_os_pread_full(fd, hdr, sizeof hdr, 0, &got);
        if (rc == SB_OK)
            rc = sb_os_fstat(fd, &g.bytes, &g.mtime_ms);
        sb_os_close(&fd);
        if (rc != SB_OK)
            goto fail;
        if (s_seghdr_decode(hdr, got, nos[i], &g.h) != 0) {
            if (i + 1 < n) {
                SB_LOG(SB_LOG_ERR, "store.corrupt",
                       "seg=%" PRIu64 " why=\"bad segment header\"", nos[i]);
                rc = SB_EPROTO;
                goto fail;
            }
            SB_LOG(SB_LOG_WARN, "store.torn_segment",
                   "seg=%" PRIu64 " bytes=%" PRIu64
                   " why=\"header incomplete\"",
                   nos[i], g.bytes);
            (void)sb_os_unlink(path);
            (void)sb_os_sync_dir(s->dir);
            rec->torn++;
            rec->torn_bytes += g.bytes;
            continue;
        }
        if (s->nsegs > 0 && g.h.base_seq < s_active(s)->h.base_seq) {
            SB_LOG(SB_LOG_ERR, "store.corrupt",
                   "seg=%" PRIu64 " why=\"base seq goes back\"", nos[i]);
            rc = SB_EPROTO;
            goto fail;
        }
        if ((rc = s_wseg_push(s, g)) != SB_OK)
            goto fail;
    }

    rc = s_read_ckpt(s->dir, &s->st, &ckpt_seg, &ckpt_off);
    if (rc == SB_OK) {
        /* It must point into what is here: its segment, within its size
         * (or the start of a segment that was never created). */
        int ok = 0;
        for (size_t i = 0; i < s->nsegs && !ok; i++)
            ok = s->segs[i].h.no == ckpt_seg && ckpt_off <= s->segs[i].bytes;
        if (!ok && s->nsegs > 0 && ckpt_seg == s_active(s)->h.no + 1 &&
            ckpt_off == SB_STORE_SEG_HDR)
            ok = 2;
        if (s->nsegs == 0 && ckpt_off == SB_STORE_SEG_HDR)
            ok = 2;
        if (!ok) {
            SB_LOG(SB_LOG_WARN, "store.checkpoint_ignored",
                   "seg=%" PRIu64 " offset=%" PRIu64 " why=\"beyond the log\"",
                   ckpt_seg, ckpt_off);
            s_state_fini(&s->st);
            if ((rc = s_state_init(&s->st)) != SB_OK)
                goto fail;
            ckpt_seg = 0;
        } else {
            rec->from_checkpoint = 1;
            s->ckpt_seg = ckpt_seg;
            s->ckpt_off = ckpt_off;
            s->ckpt_min_ub = s_ub_min(&s->st);
        }
    } else if (rc == SB_EPROTO) {
        SB_LOG(SB_LOG_WARN, "store.checkpoint_ignored", "why=damaged");
        s_state_fini(&s->st);
        if ((rc = s_state_init(&s->st)) != SB_OK)
            goto fail;
    } else if (rc != SB_ENOENT) {
        goto fail;
    }
    if (!rec->from_checkpoint && s->nsegs > 0) {
        /* The whole log is scanned; what came before it is unknown. */
        s->st.last_seq = s->segs[0].h.base_seq - 1;
        s->st.last_batch = s->segs[0].h.base_batch - 1;
    }
    s->add_seq = s->st.last_seq;
    s->add_batch = s->st.last_batch;

    if (s->nsegs > 0) {
        uint64_t start = rec->from_checkpoint && ckpt_seg <= s_active(s)->h.no
                             ? ckpt_seg
                             : s->segs[0].h.no;
        uint64_t apply_no = rec->from_checkpoint ? ckpt_seg : 0;
        uint64_t apply_off = rec->from_checkpoint ? ckpt_off : 0;
        if (rec->from_checkpoint && ckpt_seg > s_active(s)->h.no)
            start = s_active(s)->h.no; /* index only: nothing to apply */
        s_reset_index(s, &s_active(s)->h);
        s_ient *e = NULL;
        size_t ne = 0;
        if (rec->from_checkpoint && ckpt_seg == s_active(s)->h.no &&
            ckpt_off == s_active(s)->bytes &&
            s_idx_read(s->dir, ckpt_seg, ckpt_off, &e, &ne) == SB_OK) {
            /* A clean stop: the checkpoint is at the very end and the
             * active segment's index is whole. Nothing to read. */
            free(s->idx);
            s->idx = e;
            s->nidx = s->capidx = ne;
            s->ix_seq_next = s->st.last_seq + 1;
            s->ix_batch_next = s->st.last_batch + 1;
            s->ix_last = e[ne - 1].off;
        } else if ((rc = s_replay(s, start, apply_no, apply_off, rec)) !=
                   SB_OK) {
            goto fail;
        }
        /* Open the last segment for appending. */
        s_wseg *a = s_active(s);
        s_seg_path(path, sizeof path, s->dir, a->h.no, "seg");
        if ((rc = sb_os_open_write(&s->fd, path)) != SB_OK ||
            (rc = sb_os_fstat(s->fd, &a->bytes, &a->mtime_ms)) != SB_OK)
            goto fail;
        /* What a crash left in the page cache is made durable now, so the
         * re-published events of open batches are on disk too. */
        if ((rc = sb_os_fdatasync(s->fd)) != SB_OK)
            goto fail;
        s->size = s->synced = a->bytes;
        (void)sb_os_preallocate(s->fd, s->cfg.segment_bytes);
    } else {
        s_seghdr h;
        uint64_t no = ckpt_seg ? ckpt_seg : 1;
        if ((rc = s_create_segment(s, no, &s->fd, &h)) != SB_OK)
            goto fail;
        if ((rc = s_wseg_push(
                 s, (s_wseg){h, SB_STORE_SEG_HDR, h.created_ms})) != SB_OK)
            goto fail;
        s->size = s->synced = SB_STORE_SEG_HDR;
        s_reset_index(s, &h);
    }
    s->stats.segments = s->nsegs;
    if (s_prepare_spare(s) != SB_OK)
        SB_LOG(SB_LOG_WARN, "store.no_reserve",
               "dir=%s bytes=%" PRIu64 " errno=%d why=\"no room for the next "
               "segment: publishes are refused until there is\"",
               s->dir, s->cfg.segment_bytes, sb_os_errno());
    if ((rc = s_fill_recovery(s, rec)) != SB_OK)
        goto fail;
    rec->recovery_ns = sb_clock_mono_ns() - t0;
    SB_LOG(SB_LOG_NOTICE, "store.recovered",
           "dir=%s segments=%" PRIu64 " bytes=%" PRIu64 " last_seq=%" PRIu64
           " last_batch_id=%" PRIu64 " aggregates=%zu unbatched=%zu "
           "scanned=%" PRIu64 " torn=%" PRIu64 " torn_bytes=%" PRIu64
           " checkpoint=%d ms=%.1f",
           s->dir, rec->segments, rec->bytes, rec->last_seq, rec->last_batch_id,
           rec->naggs, rec->nunbatched, rec->records_scanned, rec->torn,
           rec->torn_bytes, rec->from_checkpoint, rec->recovery_ns / 1e6);
    free(nos);
    if (recp == NULL)
        sb_store_recovery_free(&rec_local);
    *out = s;
    return SB_OK;
fail:
    free(nos);
    sb_store_recovery_free(rec);
    sb_store_close(&s);
    return rc;
}
