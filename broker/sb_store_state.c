/* The log's in-memory state: the last seq and batch id, per aggregate its
 * last aggregate seq and topic position, and the set of seqs in the log
 * but in no batch record (a paged bitmap). Built by applying committed
 * records (sbs_apply); owned by the writer, or by recovery while it runs. */
#include "sb_store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_log.h"

sb_err
sbs_state_init(sbs_state *st)
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

void
sbs_state_fini(sbs_state *st)
{
    if (st->aggs != NULL)
        sb_map_each(st->aggs, s_free_value, NULL);
    if (st->ub != NULL)
        sb_map_each(st->ub, s_free_value, NULL);
    sb_map_destroy(&st->aggs);
    sb_map_destroy(&st->ub);
}

sbs_agg *
sbs_agg_get(sbs_state *st, const char *name, uint32_t len, int create)
{
    sbs_agg *a = st->cached;

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

static sbs_ubpage *
s_ub_page(sbs_state *st, uint64_t no, int create)
{
    sbs_ubpage *p = st->ub_cached;

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

sb_err
sbs_ub_add(sbs_state *st, uint64_t seq)
{
    uint64_t no = seq >> SBS_UB_SHIFT, bit = seq & ((1u << SBS_UB_SHIFT) - 1);
    sbs_ubpage *p = s_ub_page(st, no, 1);

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
s_ub_del(sbs_state *st, uint64_t seq)
{
    uint64_t no = seq >> SBS_UB_SHIFT, bit = seq & ((1u << SBS_UB_SHIFT) - 1);
    sbs_ubpage *p = s_ub_page(st, no, 0);

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
uint64_t
sbs_ub_min(sbs_state *st)
{
    sbs_ubpage *p;

    if (st->ub_count == 0)
        return st->last_seq + 1;
    while ((p = s_ub_page(st, st->ub_low, 0)) == NULL)
        st->ub_low++;
    for (unsigned w = 0; w < SBS_UB_WORDS; w++)
        if (p->bits[w] != 0)
            return (p->no << SBS_UB_SHIFT) + w * 64 +
                   (uint64_t)__builtin_ctzll(p->bits[w]);
    return st->last_seq + 1; /* unreachable: live > 0 */
}

static void
s_collect_page(void *v, void *ctx)
{
    sbs_ubpage ***pp = ctx;

    *(*pp)++ = v;
}

static int
s_page_cmp(const void *a, const void *b)
{
    const sbs_ubpage *x = *(sbs_ubpage *const *)a, *y = *(sbs_ubpage *const *)b;

    return x->no < y->no ? -1 : x->no > y->no;
}

/* The unbatched seqs, ascending, in a malloc'd array. */
sb_err
sbs_ub_list(sbs_state *st, uint64_t **out, size_t *n)
{
    size_t np = sb_map_size(st->ub), k = 0;
    sbs_ubpage **pages = malloc((np ? np : 1) * sizeof *pages), **pp = pages;
    uint64_t *seqs = malloc((st->ub_count ? st->ub_count : 1) * sizeof *seqs);

    if (pages == NULL || seqs == NULL) {
        free(pages);
        free(seqs);
        return SB_ENOMEM;
    }
    sb_map_each(st->ub, s_collect_page, &pp);
    qsort(pages, np, sizeof *pages, s_page_cmp);
    for (size_t i = 0; i < np; i++)
        for (unsigned w = 0; w < SBS_UB_WORDS; w++)
            for (uint64_t bits = pages[i]->bits[w]; bits; bits &= bits - 1)
                seqs[k++] = (pages[i]->no << SBS_UB_SHIFT) + w * 64 +
                            (uint64_t)__builtin_ctzll(bits);
    free(pages);
    *out = seqs;
    *n = k;
    return SB_OK;
}

/* Applies one committed record. Wrong keys are damage (SB_EPROTO): seqs
 * are gap-free and batch ids increase. */
sb_err
sbs_apply(sbs_state *st, const sb_store_rec *rec)
{
    if (rec->type == SB_REC_EVENT) {
        const sb_event *ev = &rec->ev;
        sbs_agg *a;
        if (ev->seq != st->last_seq + 1)
            return SB_EPROTO;
        if ((a = sbs_agg_get(st, ev->agg, ev->agg_len, 1)) == NULL ||
            sbs_ub_add(st, ev->seq) != SB_OK)
            return SB_ENOMEM;
        a->agg_seq = ev->agg_seq;
        st->last_seq = ev->seq;
        return SB_OK;
    }
    const sb_store_batch_rec *br = &rec->batch;
    sbs_agg *a;
    if (br->id <= st->last_batch || br->seqs[br->n - 1] > st->last_seq)
        return SB_EPROTO;
    if ((a = sbs_agg_get(st, br->agg, br->agg_len, 1)) == NULL)
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
