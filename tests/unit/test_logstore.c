/* The log store actor on fake links: group commit (requests queued
 * together share one write and one fdatasync), durable replies only after
 * the fdatasync that covers them, a refusing disk holds everything in
 * order and raises the full flag, batches go on only once their record is
 * synced, re-batched events go first, and both end markers come through
 * after a final sync and checkpoint. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_util.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_log.h"
#include "sb_logstore.h"
#include "sb_os.h"
#include "sb_store.h"

#define Q 64

typedef struct {
    atomic_int fail_write;
    atomic_int fail_sync;
    atomic_int syncs;
    atomic_int writes;
} faults;

typedef struct {
    char dir[64];
    sb_store_config cfg;
    sb_link *in, *out, *bin, *bout, *rep;
    sb_logstore *ls;
    uint64_t next_seq;
    uint64_t agg_seq[8];
    faults fx;
    sb_sync_policy sync;       /* for s_start; 0 = always */
    _Atomic uint64_t fake_now; /* ms, when use_fake_clock */
    int use_fake_clock;
} fx_t;

static uint64_t
s_fake_now(void *ctx)
{
    return atomic_load((_Atomic uint64_t *) ctx);
}

static int
s_fault(sb_os_op op, size_t *len, void *ctx)
{
    faults *f = ctx;

    (void)len;
    if (op == SB_OS_OP_WRITE) {
        atomic_fetch_add(&f->writes, 1);
        return atomic_load(&f->fail_write) ? ENOSPC : 0;
    }
    if (op == SB_OS_OP_SYNC) {
        if (atomic_load(&f->fail_sync))
            return EIO;
        atomic_fetch_add(&f->syncs, 1);
    }
    return 0;
}

static int
setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);

    sbt_tmpdir(f->dir, sizeof f->dir, "ls");
    sb_store_config_defaults(&f->cfg);
    snprintf(f->cfg.dir, sizeof f->cfg.dir, "%s/log", f->dir);
    f->cfg.segment_bytes = 1u << 20;
    assert_int_equal(sb_link_new(&f->in, "in", sizeof(sb_item), Q), SB_OK);
    assert_int_equal(sb_link_new(&f->out, "out", sizeof(sb_item), Q), SB_OK);
    assert_int_equal(sb_link_new(&f->bin, "bin", sizeof(sb_item), Q), SB_OK);
    assert_int_equal(sb_link_new(&f->bout, "bout", sizeof(sb_item), Q), SB_OK);
    assert_int_equal(sb_link_new(&f->rep, "rep", sizeof(sb_item), Q), SB_OK);
    f->next_seq = 1;
    sbt_log_quiet();
    sb_os_set_fault(s_fault, &f->fx);
    *state = f;
    return 0;
}

static void
s_drain_free(sb_link *l)
{
    sb_item it;

    while (sb_link_recv(l, &it) == SB_OK) {
        if (it.kind == SB_ITEM_REQ)
            sb_req_unref(it.ptr);
        else if (it.kind == SB_ITEM_REPLY)
            free(it.ptr);
        else if (it.kind == SB_ITEM_BATCH) {
            sb_batch *b = it.ptr;
            sb_batch_destroy(&b);
        }
    }
}

static int
teardown(void **state)
{
    fx_t *f = *state;

    sb_logstore_destroy(&f->ls);
    sb_os_set_fault(NULL, NULL);
    s_drain_free(f->out);
    s_drain_free(f->bout);
    s_drain_free(f->rep);
    sb_link_destroy(&f->in);
    sb_link_destroy(&f->out);
    sb_link_destroy(&f->bin);
    sb_link_destroy(&f->bout);
    sb_link_destroy(&f->rep);
    sbt_rmtree(f->dir);
    sbt_log_restore();
    free(f);
    return 0;
}

static void
s_start(fx_t *f, const uint64_t *rebatch, size_t nrebatch)
{
    sb_store *store;
    sb_store_recovery rec;

    assert_int_equal(sb_store_open(&store, &f->cfg, &rec), SB_OK);
    f->next_seq = rec.last_seq + 1;
    sb_logstore_args a = {.store = store,
                          .rebatch = rebatch,
                          .nrebatch = nrebatch,
                          .sync = f->sync,
                          .sync_interval_ms = 10,
                          .max_held = 2 * Q + 8,
                          .clock = f->use_fake_clock
                                       ? (sb_clock){s_fake_now,
                                                    (void *) &f->fake_now}
                                       : sb_clock_system(),
                          .in = f->in,
                          .out = f->out,
                          .batch_in = f->bin,
                          .batch_out = f->bout,
                          .replies = f->rep};
    sb_store_recovery_free(&rec);
    assert_int_equal(sb_logstore_new(&f->ls, &a), SB_OK);
}

/* A request of n events of aggregate "t/<a>", with the next seqs. */
static sb_req *
s_req(fx_t *f, uint32_t n, int a, uint8_t ack, uint64_t id)
{
    sb_req *req;
    uint8_t *data;

    assert_int_equal(sb_req_new(&req, n, (size_t)n * 32, &data), SB_OK);
    req->ack = ack;
    req->request_id = id;
    req->naccepted = n;
    for (uint32_t i = 0; i < n; i++) {
        sb_event *ev = &req->ev[i];
        char *p = (char *)data + i * 32;
        ev->agg = p;
        ev->agg_len = (uint32_t)sprintf(p, "t/%d", a);
        ev->type = p + 8;
        ev->type_len = (uint32_t)sprintf(p + 8, "T");
        ev->payload = (uint8_t *)p + 16;
        ev->payload_len =
            (uint32_t)sprintf(p + 16, "%llu", (unsigned long long)f->next_seq);
        ev->seq = f->next_seq++;
        ev->agg_seq = ++f->agg_seq[a];
    }
    atomic_init(&req->unpublished, n);
    return req;
}

static void
s_send(sb_link *l, uint32_t kind, void *ptr)
{
    sb_item it = {kind, ptr};

    assert_int_equal(sb_link_send_wait(l, &it, 5000), SB_OK);
}

static sb_item
s_recv(sb_link *l)
{
    sb_item it = {0};

    assert_int_equal(sb_link_recv_wait(l, &it, 5000), SB_OK);
    return it;
}

static void
s_no_item(sb_link *l, int ms)
{
    sb_item it;

    assert_int_equal(sb_link_recv_wait(l, &it, ms), SB_EAGAIN);
}

static void
test_group_commit_acks_after_one_fsync(void **state)
{
    fx_t *f = *state;
    sb_req *reqs[40];

    /* Queued before the actor runs: one group. */
    for (int i = 0; i < 40; i++) {
        reqs[i] = s_req(f, 10, i % 3, SB_ACK_DURABLE, (uint64_t)i + 1);
        s_send(f->in, SB_ITEM_REQ, reqs[i]);
    }
    int syncs0 = atomic_load(&f->fx.syncs);
    s_start(f, NULL, 0);
    for (int i = 0; i < 40; i++) {
        sb_item it = s_recv(f->out);
        assert_int_equal(it.kind, SB_ITEM_REQ);
        assert_ptr_equal(it.ptr, reqs[i]); /* in order, the same object */
        sb_req_unref(it.ptr);
        it = s_recv(f->rep);
        assert_int_equal(it.kind, SB_ITEM_REPLY);
        sb_reply *rp = it.ptr;
        assert_int_equal(rp->request_id, (uint64_t)i + 1);
        assert_int_equal(rp->ack, SB_ACK_DURABLE);
        assert_int_equal(rp->n, 10);
        assert_int_equal(rp->r[0].seq, (uint64_t)i * 10 + 1);
        free(rp);
    }
    sb_logstore_stats *st = sb_logstore_stats_get(f->ls);
    assert_int_equal(atomic_load(&st->events), 400);
    /* An ack is counted once its link took it, so the last one can be
     * here a moment before its count. */
    for (int i = 0; i < 500 && atomic_load(&st->acks) < 40; i++)
        poll(NULL, 0, 10);
    assert_int_equal(atomic_load(&st->acks), 40);
    /* 40 acks, one fsync of the log (the rest: segment and spare setup). */
    assert_int_equal(atomic_load(&st->fsyncs), 1);
    assert_int_equal(atomic_load(&st->events_synced), 400);
    assert_true(atomic_load(&f->fx.syncs) - syncs0 >= 1);
}

static void
test_no_ack_before_sync_then_all(void **state)
{
    fx_t *f = *state;

    s_start(f, NULL, 0);
    atomic_store(&f->fx.fail_sync, 1);
    sb_req *r1 = s_req(f, 3, 0, SB_ACK_DURABLE, 1);
    sb_req *r2 = s_req(f, 2, 1, SB_ACK_SEQUENCED, 2); /* no durable reply */
    s_send(f->in, SB_ITEM_REQ, r1);
    s_send(f->in, SB_ITEM_REQ, r2);
    /* Written, so on to the router; but the sync fails: no ack yet. */
    sb_item it = s_recv(f->out);
    assert_ptr_equal(it.ptr, r1);
    sb_req_unref(it.ptr);
    it = s_recv(f->out);
    assert_ptr_equal(it.ptr, r2);
    sb_req_unref(it.ptr);
    s_no_item(f->rep, 300);
    assert_int_equal(atomic_load(sb_logstore_full_flag(f->ls)), 1);
    atomic_store(&f->fx.fail_sync, 0);
    it = s_recv(f->rep);
    assert_int_equal(((sb_reply *)it.ptr)->request_id, 1);
    free(it.ptr);
    s_no_item(f->rep, 100);
    /* The flag clears with the first write that works. */
    for (int i = 0; i < 50 && atomic_load(sb_logstore_full_flag(f->ls)); i++)
        poll(NULL, 0, 10);
    assert_int_equal(atomic_load(sb_logstore_full_flag(f->ls)), 0);
}

static void
test_refusing_disk_holds_in_order_then_resumes(void **state)
{
    fx_t *f = *state;
    sb_req *reqs[10];

    s_start(f, NULL, 0);
    atomic_store(&f->fx.fail_write, 1);
    for (int i = 0; i < 10; i++) {
        reqs[i] = s_req(f, 5, i % 2, SB_ACK_DURABLE, (uint64_t)i + 1);
        s_send(f->in, SB_ITEM_REQ, reqs[i]);
    }
    /* Nothing is forwarded or acked; the flag tells the ingest. */
    s_no_item(f->out, 400);
    s_no_item(f->rep, 10);
    assert_int_equal(atomic_load(sb_logstore_full_flag(f->ls)), 1);
    /* The input was read all the same (held), so upstream is not stuck. */
    assert_int_equal(sb_link_depth(f->in), 0);
    sb_logstore_stats *st = sb_logstore_stats_get(f->ls);
    assert_true(atomic_load(&st->storage_refusals) >= 1);
    atomic_store(&f->fx.fail_write, 0);
    for (int i = 0; i < 10; i++) {
        sb_item it = s_recv(f->out);
        assert_ptr_equal(it.ptr, reqs[i]);
        sb_req_unref(it.ptr);
        it = s_recv(f->rep);
        assert_int_equal(((sb_reply *)it.ptr)->request_id, (uint64_t)i + 1);
        free(it.ptr);
    }
    assert_int_equal(atomic_load(sb_logstore_full_flag(f->ls)), 0);
}

static void
test_batches_pass_after_their_record_and_eofs_drain(void **state)
{
    fx_t *f = *state;
    sb_store_reader *r;
    sb_store_rec rec;

    s_start(f, NULL, 0);
    sb_req *req = s_req(f, 4, 2, SB_ACK_NONE, 9);
    sb_req_ref(req); /* ours, for the batch */
    s_send(f->in, SB_ITEM_REQ, req);
    sb_item it = s_recv(f->out);
    sb_req_unref(it.ptr);
    sb_batch *b;
    assert_int_equal(sb_batch_new(&b, "t/2", 3), SB_OK);
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(sb_batch_push(b, &req->ev[i]), SB_OK);
    sb_req_unref(req);
    b->id = 1;
    b->agg_last_seq = 4;
    s_send(f->bin, SB_ITEM_BATCH, b);
    it = s_recv(f->bout);
    assert_int_equal(it.kind, SB_ITEM_BATCH);
    assert_ptr_equal(it.ptr, b);
    sb_batch_destroy(&b);
    /* Both end markers, then the thread ends by itself. */
    s_send(f->in, SB_ITEM_EOF, NULL);
    s_send(f->bin, SB_ITEM_EOF, NULL);
    assert_int_equal(s_recv(f->out).kind, SB_ITEM_EOF);
    assert_int_equal(s_recv(f->rep).kind, SB_ITEM_EOF);
    assert_int_equal(s_recv(f->bout).kind, SB_ITEM_EOF);
    assert_int_equal(sb_logstore_wait(f->ls, 5000), SB_OK);
    /* The batch record is in the log, after its events. */
    assert_int_equal(sb_store_reader_open(&r, f->cfg.dir), SB_OK);
    assert_int_equal(sb_store_reader_seek_start(r), SB_OK);
    int events = 0, batches = 0;
    while (sb_store_reader_next(r, &rec) == SB_OK) {
        if (rec.type == SB_REC_EVENT)
            events++;
        else {
            assert_int_equal(events, 4);
            assert_int_equal(rec.batch.n, 4);
            batches++;
        }
    }
    assert_int_equal(batches, 1);
    sb_store_reader_close(&r);
    /* Clean stop: the next open starts from the checkpoint, scans nothing. */
    sb_logstore_destroy(&f->ls);
    sb_store *s;
    sb_store_recovery rv;
    assert_int_equal(sb_store_open(&s, &f->cfg, &rv), SB_OK);
    assert_int_equal(rv.from_checkpoint, 1);
    assert_int_equal(rv.records_scanned, 0); /* index file written too */
    assert_int_equal(rv.last_seq, 4);
    assert_int_equal(rv.last_batch_id, 1);
    assert_int_equal(rv.nunbatched, 0);
    sb_store_recovery_free(&rv);
    sb_store_close(&s);
}

static void
test_rebatched_events_go_first(void **state)
{
    fx_t *f = *state;
    sb_store *s;
    sb_store_recovery rec;

    /* A log with 6 events and no batch record: a crash with them open. */
    assert_int_equal(sb_store_open(&s, &f->cfg, NULL), SB_OK);
    sb_req *old = s_req(f, 6, 1, SB_ACK_NONE, 1);
    for (uint32_t i = 0; i < 6; i++)
        assert_int_equal(sb_store_add_event(s, &old->ev[i]), SB_OK);
    assert_int_equal(sb_store_write(s), SB_OK);
    assert_int_equal(sb_store_sync(s), SB_OK);
    sb_store_close(&s);
    sb_req_unref(old);
    assert_int_equal(sb_store_open(&s, &f->cfg, &rec), SB_OK);
    sb_store_close(&s);
    assert_int_equal(rec.nunbatched, 6);
    sb_req *fresh = s_req(f, 1, 1, SB_ACK_NONE, 2);
    s_send(f->in, SB_ITEM_REQ, fresh);
    s_start(f, rec.unbatched, rec.nunbatched);
    sb_store_recovery_free(&rec);
    sb_item it = s_recv(f->out);
    sb_req *rb = it.ptr;
    assert_int_equal(rb->nevents, 6);
    for (uint32_t i = 0; i < 6; i++) {
        assert_int_equal(rb->ev[i].seq, i + 1);
        assert_int_equal(rb->ev[i].agg_seq, i + 1);
        assert_int_equal(rb->ev[i].payload_len, 1);
        assert_int_equal(rb->ev[i].payload[0], '1' + (int)i);
    }
    assert_int_equal(rb->ack, SB_ACK_NONE);
    sb_req_unref(rb);
    it = s_recv(f->out);
    assert_ptr_equal(it.ptr, fresh);
    sb_req_unref(it.ptr);
    assert_int_equal(atomic_load(&sb_logstore_stats_get(f->ls)->rebatched), 6);
}

static void
test_interval_acks_on_the_tick(void **state)
{
    fx_t *f = *state;

    f->sync = SB_SYNC_INTERVAL;
    f->use_fake_clock = 1;
    atomic_store(&f->fake_now, 1000);
    s_start(f, NULL, 0);
    sb_logstore_stats *st = sb_logstore_stats_get(f->ls);
    for (int i = 0; i < 5; i++)
        s_send(f->in, SB_ITEM_REQ, s_req(f, 2, 0, SB_ACK_DURABLE, i + 1));
    /* Written and passed on at once... */
    for (int i = 0; i < 5; i++) {
        sb_item it = s_recv(f->out);
        sb_req_unref(it.ptr);
    }
    /* ...but acked only on the tick: the clock has not moved. */
    s_no_item(f->rep, 200);
    assert_int_equal(atomic_load(&st->fsyncs), 0);
    atomic_store(&f->fake_now, 1010);
    for (int i = 0; i < 5; i++) {
        sb_item it = s_recv(f->rep);
        assert_int_equal(((sb_reply *) it.ptr)->request_id, (uint64_t) i + 1);
        free(it.ptr);
    }
    assert_int_equal(atomic_load(&st->fsyncs), 1);
    assert_int_equal(atomic_load(&st->events_synced), 10);
}

static void
test_sync_none_acks_after_the_write(void **state)
{
    fx_t *f = *state;

    f->sync = SB_SYNC_NONE;
    s_start(f, NULL, 0);
    s_send(f->in, SB_ITEM_REQ, s_req(f, 3, 1, SB_ACK_DURABLE, 7));
    sb_item it = s_recv(f->out);
    sb_req_unref(it.ptr);
    it = s_recv(f->rep);
    assert_int_equal(((sb_reply *) it.ptr)->request_id, 7);
    free(it.ptr);
    assert_int_equal(atomic_load(&sb_logstore_stats_get(f->ls)->fsyncs), 0);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(test_group_commit_acks_after_one_fsync,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_ack_before_sync_then_all, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_refusing_disk_holds_in_order_then_resumes, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_batches_pass_after_their_record_and_eofs_drain, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_rebatched_events_go_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_interval_acks_on_the_tick, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sync_none_acks_after_the_write,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
