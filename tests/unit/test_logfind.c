/* sb_logstore_find: a fetch answered from the on-disk log (the fan-out's
 * fallback when its memory ring no longer holds a range), against a real
 * log written with sb_store. Covers: every published batch, in order, with
 * its events; nothing past `published`; paging by max_batches, max_bytes
 * and max_scan with a cursor that continues exactly; prefix and exact
 * filters; seq ranges; an event that joined another aggregate's batch
 * keeps its own aggregate; a range before the log is SB_ENOENT and says
 * where retention starts. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_fanout.h"
#include "sb_logstore.h"
#include "sb_msg.h"
#include "sb_store.h"
#include "snapbus.pb-c.h"

/* Three aggregates; batch i (1-based) holds the events of request i of
 * its aggregate AGG[(i - 1) % 3], EVS events each. */
#define NBATCH 30
#define EVS 4
static const char *const AGG[] = {"a/0", "a/1", "b/0"};

typedef struct {
    char dir[64];
    sb_store_config cfg;
    sb_req *reqs[NBATCH + 1];
    sb_store_reader *r;
    sb_blob *out[NBATCH + 1];
    uint32_t nout;
} fx;

/* Writes the log: NBATCH batches of EVS events, seqs 1.. in order. Batch
 * 5's last event is b/0's, joined through caused_by. */
static void
s_write_log(fx *f)
{
    sb_store *s = NULL;
    uint64_t seq = 1, agg_seq[3] = {0, 0, 0};

    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    for (int i = 1; i <= NBATCH; i++) {
        int a = (i - 1) % 3;
        uint8_t *data;
        sb_batch *b;
        assert_int_equal(sb_req_new(&f->reqs[i], EVS, EVS * 64, &data), SB_OK);
        assert_int_equal(sb_batch_new(&b, AGG[a], 3), SB_OK);
        for (int k = 0; k < EVS; k++) {
            sb_event *ev = &f->reqs[i]->ev[k];
            int own = i == 5 && k == EVS - 1 ? 2 : a;
            char *p = (char *)data;
            ev->agg = AGG[own];
            ev->agg_len = 3;
            ev->type = "T";
            ev->type_len = 1;
            ev->payload = data;
            ev->payload_len = (uint32_t)sprintf(p, "event-%llu",
                                                (unsigned long long)seq);
            data += 64;
            ev->seq = seq++;
            ev->agg_seq = ++agg_seq[own];
            ev->caused_by = own != a ? ev->seq - 1 : 0;
            assert_int_equal(sb_store_add_event(s, ev), SB_OK);
            assert_int_equal(sb_batch_push(b, ev), SB_OK);
        }
        f->reqs[i]->naccepted = EVS;
        b->id = (uint64_t)i;
        b->timestamp_ms = 1700000000000ull + (uint64_t)i;
        b->agg_last_seq = agg_seq[a];
        b->close_reason = SB_CLOSE_DELAY;
        assert_int_equal(sb_store_add_batch(s, b), SB_OK);
        sb_batch_destroy(&b);
    }
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_sync(s), SB_OK);
    sb_store_close(&s);
}

static int
setup(void **state)
{
    fx *f = calloc(1, sizeof *f);

    sbt_log_quiet();
    sbt_tmpdir(f->dir, sizeof f->dir, "logfind");
    sb_store_config_defaults(&f->cfg);
    snprintf(f->cfg.dir, sizeof f->cfg.dir, "%s/log", f->dir);
    f->cfg.retain_age_s = 0;
    f->cfg.index_every = 128;
    s_write_log(f);
    assert_int_equal(sb_store_reader_open(&f->r, f->cfg.dir), SB_OK);
    *state = f;
    return 0;
}

static void
s_release(fx *f)
{
    for (uint32_t i = 0; i < f->nout; i++)
        sb_blob_unref(f->out[i]);
    f->nout = 0;
}

static int
teardown(void **state)
{
    fx *f = *state;

    s_release(f);
    sb_store_reader_close(&f->r);
    for (int i = 1; i <= NBATCH; i++)
        if (f->reqs[i] != NULL)
            sb_req_unref(f->reqs[i]);
    sbt_rmtree(f->dir);
    sbt_log_restore();
    free(f);
    return 0;
}

static sb_ring_query
s_query(void)
{
    sb_ring_query q = {"", 0, 0, 0, 0, NBATCH, 1u << 30, 100000, 0};
    return q;
}

static sb_err
s_find(fx *f, const sb_ring_query *q, uint64_t published, sb_ring_result *res)
{
    sb_err rc;

    s_release(f);
    rc = sb_logstore_find(f->r, q, published, f->out, res);
    f->nout = res->count;
    return rc;
}

/* The blob decodes to batch `id` with the events of request id. */
static void
s_check_blob(const sb_blob *bl, uint64_t id)
{
    Snapbus__SnapshotBatch *m =
        snapbus__snapshot_batch__unpack(NULL, bl->len, bl->data);

    assert_non_null(m);
    assert_int_equal(bl->batch_id, id);
    assert_int_equal(m->batch_id, id);
    assert_string_equal(m->aggregate, AGG[(id - 1) % 3]);
    assert_int_equal(m->n_events, EVS);
    assert_int_equal(m->first_seq, (id - 1) * EVS + 1);
    assert_int_equal(m->last_seq, id * EVS);
    assert_int_equal(bl->first_seq, m->first_seq);
    assert_int_equal(bl->last_seq, m->last_seq);
    assert_int_equal(m->timestamp_ms, 1700000000000ull + id);
    for (size_t k = 0; k < m->n_events; k++) {
        char want[32];
        snprintf(want, sizeof want, "event-%llu",
                 (unsigned long long)m->events[k]->seq);
        assert_int_equal(m->events[k]->seq, (id - 1) * EVS + 1 + k);
        assert_int_equal(m->events[k]->payload.len, strlen(want));
        assert_memory_equal(m->events[k]->payload.data, want, strlen(want));
        /* Only a joined event names its own aggregate. */
        if (id == 5 && k == EVS - 1)
            assert_string_equal(m->events[k]->aggregate, "b/0");
        else
            assert_string_equal(m->events[k]->aggregate, "");
    }
    snapbus__snapshot_batch__free_unpacked(m, NULL);
}

static void
test_every_published_batch_in_order(void **state)
{
    fx *f = *state;
    sb_ring_query q = s_query();
    sb_ring_result res;

    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, NBATCH);
    assert_int_equal(res.more, 0);
    assert_int_equal(res.last_batch_id, NBATCH);
    assert_int_equal(res.retained_first_seq, 1);
    assert_int_equal(res.retained_first_batch_id, 1);
    for (uint32_t i = 0; i < res.count; i++)
        s_check_blob(f->out[i], i + 1);
}

static void
test_nothing_past_published(void **state)
{
    fx *f = *state;
    sb_ring_query q = s_query();
    sb_ring_result res;

    assert_int_equal(s_find(f, &q, 12, &res), SB_OK);
    assert_int_equal(res.count, 12);
    assert_int_equal(res.last_batch_id, 12);
    assert_int_equal(res.more, 0); /* the ring has the rest */
    assert_int_equal(s_find(f, &q, 0, &res), SB_OK);
    assert_int_equal(res.count, 0);
}

static void
test_pages_by_count_continue_at_the_cursor(void **state)
{
    fx *f = *state;
    sb_ring_query q = s_query();
    sb_ring_result res;
    uint64_t next = 1;

    q.max_batches = 7;
    for (int page = 0; page < 10; page++) {
        assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
        for (uint32_t i = 0; i < res.count; i++)
            s_check_blob(f->out[i], next++);
        q.after_batch_id = res.last_batch_id;
        if (!res.more)
            break;
        assert_int_equal(res.count, 7);
    }
    assert_int_equal(next, NBATCH + 1);
}

static void
test_pages_by_bytes_and_by_scan(void **state)
{
    fx *f = *state;
    sb_ring_query q = s_query();
    sb_ring_result res;

    q.max_bytes = 1; /* one batch always goes: a page is never empty */
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, 1);
    assert_int_equal(res.more, 1);
    assert_int_equal(res.last_batch_id, 1);
    s_check_blob(f->out[0], 1);

    q = s_query();
    q.prefix = "b/";
    q.prefix_len = 2;
    q.max_scan = 4; /* batches 1..4 looked at; only 3 is b/0's */
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, 1);
    assert_int_equal(res.more, 1);
    assert_int_equal(res.last_batch_id, 4);
    s_check_blob(f->out[0], 3);
}

static void
test_prefix_exact_and_seq_range(void **state)
{
    fx *f = *state;
    sb_ring_query q = s_query();
    sb_ring_result res;

    q.prefix = "a/";
    q.prefix_len = 2;
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, 20); /* a/0 and a/1: two of every three */
    for (uint32_t i = 0; i < res.count; i++)
        assert_int_not_equal(f->out[i]->batch_id % 3, 0);

    q.prefix = "a/1";
    q.prefix_len = 3;
    q.exact = 1;
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, 10);
    for (uint32_t i = 0; i < res.count; i++)
        s_check_blob(f->out[i], 2 + 3 * i);
    assert_int_equal(res.last_batch_id, NBATCH); /* looked at all */

    /* Seqs 21..28: batches 6 (21..24) and 7 (25..28); and 8 starts at 29. */
    q = s_query();
    q.from_seq = 21;
    q.to_seq = 28;
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, 2);
    s_check_blob(f->out[0], 6);
    s_check_blob(f->out[1], 7);
    /* A range that starts inside a batch includes that batch. */
    q.from_seq = 22;
    q.to_seq = 22;
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_int_equal(res.count, 1);
    s_check_blob(f->out[0], 6);
}

static void
test_before_the_log_is_refused_with_where_it_starts(void **state)
{
    fx *f = *state;
    sb_ring_query q = s_query();
    sb_ring_result res;
    sb_store *s = NULL;
    uint32_t deleted = 0;

    /* Rewrite the log in small segments and let retention drop the old
     * ones. */
    sb_store_reader_close(&f->r);
    sbt_rmtree(f->cfg.dir);
    f->cfg.segment_bytes = 4096;
    for (int i = 1; i <= NBATCH; i++)
        sb_req_unref(f->reqs[i]);
    s_write_log(f);
    f->cfg.retain_bytes = 1; /* all but the active segment */
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    assert_int_equal(sb_store_retain(s, 0, &deleted), SB_OK);
    sb_store_close(&s);
    assert_true(deleted > 0);
    assert_int_equal(sb_store_reader_open(&f->r, f->cfg.dir), SB_OK);
    assert_int_equal(sb_store_reader_refresh(f->r), SB_OK);
    uint64_t first = sb_store_reader_first_seq(f->r);
    assert_true(first > 1);

    q.from_seq = 1;
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_ENOENT);
    assert_int_equal(res.count, 0);
    assert_true(res.retained_first_seq >= first);
    /* From where it says, the fetch is answered. */
    q.from_seq = res.retained_first_seq;
    assert_int_equal(s_find(f, &q, NBATCH, &res), SB_OK);
    assert_true(res.count > 0);
    assert_true(f->out[0]->first_seq >= q.from_seq ||
                f->out[0]->last_seq >= q.from_seq);
    assert_int_equal(f->out[res.count - 1]->batch_id, NBATCH);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_every_published_batch_in_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing_past_published, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_pages_by_count_continue_at_the_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pages_by_bytes_and_by_scan, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefix_exact_and_seq_range, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_before_the_log_is_refused_with_where_it_starts, setup,
            teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
