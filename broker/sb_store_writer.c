/* Writer: append, write, sync, seal, checkpoint, retention. Belongs to
 * one thread (the log store actor); readers share only the files.
 *
 * Writer memory: one append buffer. Bytes [0, wlen) are written but not
 * yet synced (kept so that a failed fdatasync can be undone and written
 * again), [wlen, len) are added but not written. The state (aggregates,
 * unbatched seqs) and the active segment's index follow the *committed*
 * position: what is synced, or with keep_unsynced off, what is written.
 * So a rollback never has to undo state, and a checkpoint taken when a
 * segment seals describes exactly the log up to the new segment's start. */
#include "sb_store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_clock.h"
#include "sb_crc32c.h"
#include "sb_log.h"
#include "sb_os.h"

sbs_wseg *
sbs_active(sb_store *s)
{
    return &s->segs[s->nsegs - 1];
}

sb_err
sbs_wseg_push(sb_store *s, sbs_wseg seg)
{
    if (s->nsegs == s->capsegs) {
        size_t c = s->capsegs ? s->capsegs * 2 : 16;
        sbs_wseg *v = realloc(s->segs, c * sizeof *v);
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
        sb_err rc = sbs_decode(p + done, n - done, &rec, &seqs, &cap, NULL, 0);
        if (rc != SB_OK) {
            /* We encoded these bytes ourselves a moment ago. */
            SB_LOG(SB_LOG_ERR, "store.commit_decode", "off=%" PRIu64 " err=%s",
                   off + done, sb_strerror(rc));
            break;
        }
        if (s->nidx == 0 || off + done - s->ix_last >= s->cfg.index_every) {
            if (sbs_ient_push(&s->idx, &s->nidx, &s->capidx,
                              (sbs_ient){s->ix_seq_next, s->ix_batch_next,
                                         off + done}) == SB_OK)
                s->ix_last = off + done;
        }
        if ((rc = sbs_apply(&s->st, &rec)) != SB_OK)
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
    const sbs_agg *a = v;
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

    if ((rc = sbs_ub_list(&s->st, &ub, &nub)) != SB_OK)
        return rc;
    len = 64 + nub * 10 + naggs * (1 + 10 * 3 + 1) + s->st.agg_name_bytes + 4;
    if ((buf = malloc(len)) == NULL) {
        free(ub);
        return SB_ENOMEM;
    }
    memcpy(buf, SBS_CKP_MAGIC, 8);
    sbs_put32(buf + 8, SBS_VERSION);
    sbs_put32(buf + 12, 0);
    sbs_put64(buf + 16, sbs_active(s)->h.no);
    sbs_put64(buf + 24, s->synced);
    sbs_put64(buf + 32, s->st.last_seq);
    sbs_put64(buf + 40, s->st.last_batch);
    sbs_put64(buf + 48, nub);
    sbs_put64(buf + 56, naggs);
    p = buf + 64;
    for (size_t i = 0; i < nub; i++) {
        p = sb_varint_put(p, ub[i] - prev);
        prev = ub[i];
    }
    free(ub);
    sb_map_each(s->st.aggs, s_ckpt_agg, &p);
    sbs_put32(p, sb_crc32c(0, buf, (size_t)(p - buf)));
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
    rc = sb_os_write_file(s->dir, SBS_CKP_NAME, buf, len);
    free(buf);
    if (rc != SB_OK) {
        SB_LOG(SB_LOG_WARN, "store.checkpoint_failed", "dir=%s err=%s errno=%d",
               s->dir, sb_strerror(rc), sb_os_errno());
        return rc;
    }
    s->ckpt_seg = sbs_active(s)->h.no;
    s->ckpt_off = s->synced;
    s->ckpt_min_ub = sbs_ub_min(&s->st);
    s->need_ckpt = 0;
    s->stats.checkpoints++;
    return SB_OK;
}

/* Loads a checkpoint into st. SB_ENOENT: none. SB_EPROTO: damaged. */
sb_err
sbs_read_ckpt(const char *dir, sbs_state *st, uint64_t *seg, uint64_t *off)
{
    char path[1100];
    uint8_t *buf;
    size_t len;
    uint64_t nub, naggs, prev = 0;
    const uint8_t *p, *end;
    sb_err rc;

    snprintf(path, sizeof path, "%s/%s", dir, SBS_CKP_NAME);
    if ((rc = sb_os_read_file(path, SBS_MAX_CKP, &buf, &len)) != SB_OK)
        return rc == SB_ENOENT ? SB_ENOENT : rc;
    rc = SB_EPROTO;
    if (len < 68 || memcmp(buf, SBS_CKP_MAGIC, 8) != 0 ||
        sbs_get32(buf + 8) != SBS_VERSION ||
        sbs_get32(buf + len - 4) != sb_crc32c(0, buf, len - 4))
        goto out;
    *seg = sbs_get64(buf + 16);
    *off = sbs_get64(buf + 24);
    st->last_seq = sbs_get64(buf + 32);
    st->last_batch = sbs_get64(buf + 40);
    nub = sbs_get64(buf + 48);
    naggs = sbs_get64(buf + 56);
    p = buf + 64;
    end = buf + len - 4;
    if (nub > (uint64_t)(end - p) || naggs > (uint64_t)(end - p))
        goto out;
    for (uint64_t i = 0; i < nub; i++) {
        uint64_t d;
        if (sbs_get_varint(&p, end, &d) != 0 || d == 0 ||
            prev + d > st->last_seq)
            goto out;
        prev += d;
        if (sbs_ub_add(st, prev) != SB_OK) {
            rc = SB_ENOMEM;
            goto out;
        }
    }
    for (uint64_t i = 0; i < naggs; i++) {
        uint32_t alen;
        sbs_agg *a;
        if (p >= end || (alen = *p++) == 0 || (size_t)(end - p) < alen)
            goto out;
        if ((a = sbs_agg_get(st, (const char *)p, alen, 1)) == NULL) {
            rc = SB_ENOMEM;
            goto out;
        }
        p += alen;
        if (sbs_get_varint(&p, end, &a->agg_seq) != 0 ||
            sbs_get_varint(&p, end, &a->topic_last_seq) != 0 ||
            sbs_get_varint(&p, end, &a->source_pos) != 0 || p >= end || *p > 1)
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
sb_err
sbs_prepare_spare(sb_store *s)
{
    char path[1100];
    int fd = -1;
    sb_err rc;

    if (s->spare_fd >= 0)
        return SB_OK;
    snprintf(path, sizeof path, "%s/%s", s->dir, SBS_SPARE_NAME);
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
sb_err
sbs_create_segment(sb_store *s, uint64_t no, int *fdp, sbs_seghdr *h)
{
    char path[1100], spare[1100];
    uint8_t hdr[SB_STORE_SEG_HDR];
    int fd = -1;
    sb_err rc;

    *h = (sbs_seghdr){no, s->st.last_seq + 1, s->st.last_batch + 1,
                      sb_clock_wall_ms()};
    sbs_seghdr_encode(hdr, h);
    sbs_seg_path(path, sizeof path, s->dir, no, "seg");
    (void)sb_os_unlink(path); /* a leftover of a failed creation */
    if (s->spare_fd >= 0) {
        snprintf(spare, sizeof spare, "%s/%s", s->dir, SBS_SPARE_NAME);
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

void
sbs_reset_index(sb_store *s, const sbs_seghdr *h)
{
    s->nidx = 0;
    s->ix_seq_next = h->base_seq;
    s->ix_batch_next = h->base_batch;
    s->ix_last = SB_STORE_SEG_HDR;
    (void)sbs_ient_push(
        &s->idx, &s->nidx, &s->capidx,
        (sbs_ient){h->base_seq, h->base_batch, SB_STORE_SEG_HDR});
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
               sbs_active(s)->h.no, e, sb_strerror(rc),
               s->keep_unsynced ? s->wlen : (size_t)0);
        if (s->keep_unsynced) {
            /* The kernel may have dropped the pages it failed to write, and
             * a second fsync could then succeed without them: throw the
             * unsynced tail away and write it again from memory. */
            (void)sb_os_ftruncate(s->fd, s->synced);
            (void)sb_os_preallocate(s->fd, s->cfg.segment_bytes);
            s->size = s->synced;
            s->wlen = 0;
            sbs_active(s)->bytes = s->size;
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
    sbs_wseg *a = sbs_active(s);
    sbs_seghdr h;
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
    if (sbs_idx_write(s->dir, a->h.no, s->size, s->idx, s->nidx) != SB_OK)
        SB_LOG(SB_LOG_WARN, "store.index_write_failed",
               "seg=%" PRIu64 " errno=%d", a->h.no, sb_os_errno());
    if ((rc = sbs_create_segment(s, a->h.no + 1, &fd, &h)) != SB_OK) {
        s->stats.write_failures++;
        SB_LOG(SB_LOG_ERR, "store.segment_create_failed",
               "seg=%" PRIu64 " errno=%d err=%s", a->h.no + 1, sb_os_errno(),
               sb_strerror(rc));
        return rc;
    }
    a->bytes = s->size;
    a->mtime_ms = sb_clock_wall_ms();
    if ((rc = sbs_wseg_push(
             s, (sbs_wseg){h, SB_STORE_SEG_HDR, h.created_ms})) != SB_OK) {
        sb_os_close(&fd);
        return rc;
    }
    sb_os_close(&s->fd);
    s->fd = fd;
    s->size = s->synced = SB_STORE_SEG_HDR;
    sbs_reset_index(s, &h);
    s->stats.seals++;
    s->stats.segments = s->nsegs;
    /* The committed state now ends exactly where the new segment starts. */
    (void)s_write_ckpt(s);
    (void)sbs_prepare_spare(s); /* failing: the log store refuses publishes */
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
                size_t rsz = SB_STORE_REC_HDR + sbs_get32(s->buf + pos + 4);
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
                   sbs_active(s)->h.no, s->size, chunk, e, sb_strerror(rc));
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
        sbs_active(s)->bytes = s->size;
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
    return sbs_prepare_spare(s);
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
    if (sbs_idx_write(s->dir, sbs_active(s)->h.no, s->size, s->idx, s->nidx) !=
        SB_OK)
        SB_LOG(SB_LOG_WARN, "store.index_write_failed",
               "seg=%" PRIu64 " errno=%d", sbs_active(s)->h.no, sb_os_errno());
    return s_write_ckpt(s);
}

uint64_t
sbs_total_bytes(const sb_store *s)
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
    uint64_t total = sbs_total_bytes(s);

    while (s->nsegs > 1) {
        const sbs_wseg *g = &s->segs[0], *next = &s->segs[1];
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
        sbs_seg_path(path, sizeof path, s->dir, g->h.no, "seg");
        if (sb_os_unlink(path) != SB_OK && sb_os_errno() != ENOENT) {
            SB_LOG(SB_LOG_WARN, "store.retention_failed", "path=%s errno=%d",
                   path, sb_os_errno());
            break;
        }
        sbs_seg_path(path, sizeof path, s->dir, g->h.no, "idx");
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
    st->bytes = sbs_total_bytes(s);
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
    sbs_state_fini(&s->st);
    free(s->segs);
    free(s->idx);
    free(s->buf);
    free(s);
    *sp = NULL;
}
