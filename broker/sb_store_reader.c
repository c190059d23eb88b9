/* Reader (sb_store_reader_*): read-only, its own descriptors, one thread
 * per reader (the fan-out, the CLI, recovery). It sees whatever complete
 * records are in the files; a record half-written by the appender fails its
 * CRC and reads as the end of the log. Segment descriptors and loaded
 * indexes are bounded per reader (S_MAX_OPEN_FDS, S_MAX_INDEXES). */
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

/* At most this many segment files stay open per reader: a long log must
 * not exhaust descriptors. */
#define S_MAX_OPEN_FDS 8
/* And at most this many segment indexes stay loaded (an index of a 64 MiB
 * segment at one entry per 64 KiB is 24 KiB). */
#define S_MAX_INDEXES 64

static void
s_rseg_free(sb_store_reader *r, sbs_rseg *g)
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
s_rseg_fd(sb_store_reader *r, sbs_rseg *g)
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
    sbs_seg_path(path, sizeof path, r->dir, g->h.no, "seg");
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
s_rseg_open(sb_store_reader *r, uint64_t no, sbs_rseg *g)
{
    char path[1100];
    uint8_t hdr[SB_STORE_SEG_HDR];
    size_t got;

    memset(g, 0, sizeof *g);
    g->fd = -1;
    sbs_seg_path(path, sizeof path, r->dir, no, "seg");
    if (sb_os_open_read(&g->fd, path) != SB_OK)
        return -1;
    if (sb_os_pread_full(g->fd, hdr, sizeof hdr, 0, &got) != SB_OK ||
        sbs_seghdr_decode(hdr, got, no, &g->h) != 0 ||
        sb_os_fstat(g->fd, &g->size, &g->mtime_ms) != SB_OK) {
        sb_os_close(&g->fd);
        return -1;
    }
    sb_os_close(&g->fd); /* reopened when read (s_rseg_fd) */
    sbs_seg_path(path, sizeof path, r->dir, no, "idx");
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
    sbs_rseg *segs;
    sb_err rc;

    if (r->cur < r->nsegs)
        cur_no = r->segs[r->cur].h.no;
    if ((rc = sbs_list_segments(r->dir, &nos, &n)) != SB_OK)
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
                sbs_seg_path(path, sizeof path, r->dir, nos[i], "seg");
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
    const sbs_rseg *g = &r->segs[i];
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
s_rd_window(sb_store_reader *r, sbs_rseg *g, uint64_t off, size_t len,
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
     * of a log (or a small segment) needs no SBS_READ_CHUNK buffer, and a
     * damaged length field no buffer of its size, only the bytes there
     * are (fewer than len: the caller sees a cut-off record). */
    if (off + len > g->size && s_rseg_fd(r, g) == SB_OK)
        (void)sb_os_fstat(g->fd, &g->size, &g->mtime_ms); /* grown? */
    uint64_t avail = g->size > off ? g->size - off : 0;
    want = avail < SBS_READ_CHUNK ? (size_t)avail : SBS_READ_CHUNK;
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
s_rd_record(sb_store_reader *r, sbs_rseg *g, uint64_t off, sb_store_rec *rec)
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
s_rseg_drop_index(sbs_rseg *g)
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
s_rseg_index(sb_store_reader *r, sbs_rseg *g)
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
        sbs_ient *e;
        size_t n;
        if (sbs_idx_read(r->dir, g->h.no, g->size, &e, &n) == SB_OK) {
            g->idx = e;
            g->nidx = g->capidx = n;
            g->idx_loaded = 1;
            g->indexed_to = g->size;
            return SB_OK;
        }
        g->has_idx_file = 0; /* damaged: a cache only, so rebuild it */
    }
    if (g->nidx == 0 &&
        (rc = sbs_ient_push(&g->idx, &g->nidx, &g->capidx,
                            (sbs_ient){g->h.base_seq, g->h.base_batch,
                                       SB_STORE_SEG_HDR})) != SB_OK)
        return rc;
    while (g->indexed_to < g->size) {
        rc = s_rd_record(r, g, g->indexed_to, &rec);
        if (rc == SB_EAGAIN || rc == SB_EPROTO)
            break; /* the end, as far as this reader can tell now */
        if (rc != SB_OK)
            return rc;
        if (g->indexed_to - last >= SBS_READER_INDEX_EVERY) {
            if ((rc = sbs_ient_push(&g->idx, &g->nidx, &g->capidx,
                                    (sbs_ient){g->ix_seq_next, g->ix_batch_next,
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
    sbs_rseg *g;
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
sb_err
sbs_seek_pos(sb_store_reader *r, uint64_t no, uint64_t off)
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
        sbs_rseg *g;
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
