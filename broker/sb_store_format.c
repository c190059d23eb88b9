/* The on-disk log's formats: the [storage] configuration, the record
 * codec (sb_store_encode_*, sb_store_decode), segment headers, the sparse
 * index files and the listing of a log directory. Pure functions and file
 * reads/writes of whole small files; no state of its own, any thread. */
#include "sb_store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_crc32c.h"
#include "sb_log.h"
#include "sb_os.h"

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
    return SB_STORE_REC_HDR + SBS_EV_FIXED + sb_varint_len(ev->agg_seq) +
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
    size_t n = SB_STORE_REC_HDR + SBS_BATCH_FIXED + b->agg_len;
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

    sbs_put32(rec, SBS_REC_MAGIC);
    sbs_put32(rec + 4, (uint32_t)body_len);
    sbs_put64(rec + 8, key);
    rec[16] = type;
    rec[17] = 0;
    rec[18] = rec[19] = 0;
    crc = sb_crc32c(0, rec, 20);
    crc = sb_crc32c(crc, rec + SB_STORE_REC_HDR, body_len);
    sbs_put32(rec + 20, crc);
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

    b[0] = (uint8_t)((ev->has_source_pos ? SBS_EVF_SOURCE_POS : 0) |
                     (ev->caused_by ? SBS_EVF_CAUSED_BY : 0) |
                     (ev->producer_seq ? SBS_EVF_PRODUCER_SEQ : 0) |
                     (ev->client_ts_ms ? SBS_EVF_CLIENT_TS : 0));
    b[1] = (uint8_t)ev->agg_len;
    b[2] = (uint8_t)ev->type_len;
    b[3] = (uint8_t)ev->event_id_len;
    b[4] = (uint8_t)ev->producer_id_len;
    p = sb_varint_put(b + SBS_EV_FIXED, ev->agg_seq);
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

    sbs_put64(q, b->timestamp_ms);
    sbs_put64(q + 8, b->prev_last_seq);
    sbs_put64(q + 16, b->agg_last_seq);
    sbs_put64(q + 24, b->has_source_pos ? b->source_pos : 0);
    sbs_put64(q + 32, b->bytes);
    sbs_put32(q + 40, b->n);
    q[44] = (uint8_t)b->agg_len;
    q[45] = b->close_reason;
    q[46] = b->has_source_pos ? 1 : 0;
    q[47] = 0;
    p = s_put_bytes(q + SBS_BATCH_FIXED, b->agg, b->agg_len);
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
sb_err
sbs_decode(const uint8_t *buf, size_t avail, sb_store_rec *rec, uint64_t **seqs,
           size_t *cap, size_t *need, int check_crc)
{
    uint32_t body_len, crc;
    const uint8_t *b, *end;

    if (need != NULL)
        *need = 0;
    if (avail < SB_STORE_REC_HDR)
        return SB_EAGAIN;
    body_len = sbs_get32(buf + 4);
    if (sbs_get32(buf) != SBS_REC_MAGIC ||
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
        if (crc != sbs_get32(buf + 20))
            return SB_EPROTO;
    }

    memset(rec, 0, sizeof *rec);
    rec->type = buf[16];
    rec->key = sbs_get64(buf + 8);
    rec->size = SB_STORE_REC_HDR + body_len;
    b = buf + SB_STORE_REC_HDR;
    end = b + body_len;
    if (rec->key == 0)
        return SB_EPROTO; /* seqs and batch ids start at 1 */
    if (rec->type == SB_REC_EVENT) {
        sb_event *ev = &rec->ev;
        uint64_t plen = 0;
        size_t strs;
        const uint8_t *p = b + SBS_EV_FIXED;
        uint8_t fl;
        if (body_len < SBS_EV_FIXED || ((fl = b[0]) & ~SBS_EVF_ALL) != 0)
            return SB_EPROTO;
        ev->seq = rec->key;
        ev->agg_len = b[1];
        ev->type_len = b[2];
        ev->event_id_len = b[3];
        ev->producer_id_len = b[4];
        ev->has_source_pos = (fl & SBS_EVF_SOURCE_POS) != 0;
        if (sbs_get_varint(&p, end, &ev->agg_seq) != 0 ||
            ((fl & SBS_EVF_SOURCE_POS) &&
             sbs_get_varint(&p, end, &ev->source_pos) != 0) ||
            ((fl & SBS_EVF_CAUSED_BY) &&
             sbs_get_varint(&p, end, &ev->caused_by) != 0) ||
            ((fl & SBS_EVF_PRODUCER_SEQ) &&
             sbs_get_varint(&p, end, &ev->producer_seq) != 0) ||
            ((fl & SBS_EVF_CLIENT_TS) &&
             sbs_get_varint(&p, end, &ev->client_ts_ms) != 0) ||
            sbs_get_varint(&p, end, &plen) != 0)
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
    if (body_len < SBS_BATCH_FIXED)
        return SB_EPROTO;
    br->id = rec->key;
    br->timestamp_ms = sbs_get64(b);
    br->prev_last_seq = sbs_get64(b + 8);
    br->agg_last_seq = sbs_get64(b + 16);
    br->source_pos = sbs_get64(b + 24);
    br->bytes = sbs_get64(b + 32);
    br->n = sbs_get32(b + 40);
    br->agg_len = b[44];
    br->close_reason = b[45];
    br->has_source_pos = b[46];
    if (b[46] > 1 || b[47] != 0 || br->close_reason > SB_CLOSE_SHUTDOWN ||
        br->agg_len == 0 || (size_t)SBS_BATCH_FIXED + br->agg_len > body_len)
        return SB_EPROTO;
    br->agg = (const char *)b + SBS_BATCH_FIXED;
    p = b + SBS_BATCH_FIXED + br->agg_len;
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
        if (sbs_get_varint(&p, end, &d) != 0 || d == 0 || prev + d < prev)
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
    return sbs_decode(buf, avail, rec, seqs, cap, need, 1);
}

void
sbs_seg_path(char *buf, size_t n, const char *dir, uint64_t no, const char *ext)
{
    snprintf(buf, n, "%s/%020" PRIu64 ".%s", dir, no, ext);
}

void
sbs_seghdr_encode(uint8_t *p, const sbs_seghdr *h)
{
    memset(p, 0, SB_STORE_SEG_HDR);
    memcpy(p, SBS_SEG_MAGIC, 8);
    sbs_put32(p + 8, SBS_VERSION);
    sbs_put32(p + 12, SB_STORE_SEG_HDR);
    sbs_put64(p + 16, h->no);
    sbs_put64(p + 24, h->base_seq);
    sbs_put64(p + 32, h->base_batch);
    sbs_put64(p + 40, h->created_ms);
    sbs_put32(p + 60, sb_crc32c(0, p, 60));
}

int
sbs_seghdr_decode(const uint8_t *p, size_t n, uint64_t no, sbs_seghdr *h)
{
    if (n < SB_STORE_SEG_HDR || memcmp(p, SBS_SEG_MAGIC, 8) != 0 ||
        sbs_get32(p + 8) != SBS_VERSION ||
        sbs_get32(p + 12) != SB_STORE_SEG_HDR ||
        sbs_get32(p + 60) != sb_crc32c(0, p, 60) || sbs_get64(p + 16) != no ||
        sbs_get64(p + 24) == 0 || sbs_get64(p + 32) == 0)
        return -1;
    h->no = no;
    h->base_seq = sbs_get64(p + 24);
    h->base_batch = sbs_get64(p + 32);
    h->created_ms = sbs_get64(p + 40);
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

sb_err
sbs_list_segments(const char *dir, uint64_t **nos, size_t *n)
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
sb_err
sbs_idx_write(const char *dir, uint64_t no, uint64_t size, const sbs_ient *e,
              size_t n)
{
    size_t len = 40 + n * 24 + 4;
    uint8_t *buf = malloc(len), *p;
    char name[64];
    sb_err rc;

    if (buf == NULL)
        return SB_ENOMEM;
    memcpy(buf, SBS_IDX_MAGIC, 8);
    sbs_put32(buf + 8, SBS_VERSION);
    sbs_put32(buf + 12, 0);
    sbs_put64(buf + 16, no);
    sbs_put64(buf + 24, size);
    sbs_put64(buf + 32, n);
    p = buf + 40;
    for (size_t i = 0; i < n; i++, p += 24) {
        sbs_put64(p, e[i].seq_next);
        sbs_put64(p + 8, e[i].batch_next);
        sbs_put64(p + 16, e[i].off);
    }
    sbs_put32(p, sb_crc32c(0, buf, len - 4));
    snprintf(name, sizeof name, "%020" PRIu64 ".idx", no);
    rc = sb_os_write_file(dir, name, buf, len);
    free(buf);
    return rc;
}

/* Loads an index file if it is whole and matches the segment. */
sb_err
sbs_idx_read(const char *dir, uint64_t no, uint64_t seg_size, sbs_ient **out,
             size_t *nout)
{
    char path[1100];
    uint8_t *buf;
    size_t len, n;
    sbs_ient *e;
    sb_err rc;

    sbs_seg_path(path, sizeof path, dir, no, "idx");
    if ((rc = sb_os_read_file(path, 1u << 30, &buf, &len)) != SB_OK)
        return rc;
    rc = SB_EPROTO;
    if (len < 44 || memcmp(buf, SBS_IDX_MAGIC, 8) != 0 ||
        sbs_get32(buf + 8) != SBS_VERSION || sbs_get64(buf + 16) != no ||
        sbs_get64(buf + 24) != seg_size || (n = sbs_get64(buf + 32)) == 0 ||
        n != (len - 44) / 24 || len != 44 + n * 24 ||
        sbs_get32(buf + len - 4) != sb_crc32c(0, buf, len - 4))
        goto out;
    rc = SB_ENOMEM;
    if ((e = malloc(n * sizeof *e)) == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = buf + 40 + i * 24;
        e[i] = (sbs_ient){sbs_get64(p), sbs_get64(p + 8), sbs_get64(p + 16)};
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

sb_err
sbs_ient_push(sbs_ient **v, size_t *n, size_t *cap, sbs_ient e)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        sbs_ient *v2 = realloc(*v, c * sizeof *v2);
        if (v2 == NULL)
            return SB_ENOMEM;
        *v = v2;
        *cap = c;
    }
    (*v)[(*n)++] = e;
    return SB_OK;
}
