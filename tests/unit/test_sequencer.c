/* Sequencer: gap-free global seqs, per-aggregate seqs, refused events get
 * none, and the actor forwards and acks without loss through tiny links. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sb_msg.h"
#include "sb_sequencer.h"

static sb_req *
s_req(uint32_t n, const char **aggs, int ack)
{
    sb_req *r;
    uint8_t *data;

    assert_int_equal(sb_req_new(&r, n, 0, &data), SB_OK);
    for (uint32_t i = 0; i < n; i++) {
        r->ev[i].agg = aggs[i];
        r->ev[i].agg_len = (uint32_t) strlen(aggs[i]);
        r->ev[i].type = "t";
        r->ev[i].type_len = 1;
    }
    r->naccepted = n;
    r->ack = (uint8_t) ack;
    atomic_store(&r->unpublished, n);
    return r;
}

static void
test_assigns_gap_free(void **state)
{
    sb_sequencer *s;
    const char *aggs[] = {"a", "b", "a", "c", "a"};
    sb_req *r = s_req(5, aggs, 0);

    assert_int_equal(sb_sequencer_new(&s, 1), SB_OK);
    r->ev[3].status = SB_EINVAL; /* refused: no seq */
    assert_int_equal(sb_sequencer_assign(s, r), SB_OK);
    assert_int_equal(r->ev[0].seq, 1);
    assert_int_equal(r->ev[1].seq, 2);
    assert_int_equal(r->ev[2].seq, 3);
    assert_int_equal(r->ev[3].seq, 0);
    assert_int_equal(r->ev[4].seq, 4);
    assert_int_equal(r->ev[0].agg_seq, 1);
    assert_int_equal(r->ev[1].agg_seq, 1);
    assert_int_equal(r->ev[2].agg_seq, 2);
    assert_int_equal(r->ev[4].agg_seq, 3);
    assert_int_equal(sb_sequencer_last_seq(s), 4);
    assert_int_equal(sb_sequencer_aggregates(s), 2);
    sb_req_unref(r);

    /* Numbering continues from a restored point. */
    sb_sequencer_destroy(&s);
    assert_int_equal(sb_sequencer_new(&s, 1000), SB_OK);
    assert_int_equal(sb_sequencer_set_agg(s, "a", 1, 41), SB_OK);
    r = s_req(1, aggs, 0);
    sb_sequencer_assign(s, r);
    assert_int_equal(r->ev[0].seq, 1000);
    assert_int_equal(r->ev[0].agg_seq, 42);
    sb_req_unref(r);
    sb_sequencer_destroy(&s);
    assert_null(s);
}

static void
test_actor_tiny_links(void **state)
{
    sb_link *in, *rep, *out;
    sb_sequencer_actor *a;
    const char *aggs[] = {"x", "y"};
    enum { REQS = 20000 };
    uint64_t next = 1;
    int sent = 0, got = 0, replies = 0, eofs = 0;

    assert_int_equal(sb_link_new(&in, "in", sizeof(sb_item), 1), SB_OK);
    assert_int_equal(sb_link_new(&rep, "rep", sizeof(sb_item), 1), SB_OK);
    assert_int_equal(sb_link_new(&out, "out", sizeof(sb_item), 1), SB_OK);
    sb_sequencer_actor_args args = {1, in, rep, out, NULL, NULL, NULL, {NULL, NULL}};
    assert_int_equal(sb_sequencer_actor_new(&a, &args), SB_OK);

    /* One thread plays both neighbours: send when there is room, read both
     * outputs; every link holds a single item, so the actor parks often. */
    while (eofs < 2) {
        sb_item it;
        if (sent < REQS) {
            sb_item r = {SB_ITEM_REQ, s_req(2, aggs, sent % 2 ? SB_ACK_SEQUENCED : 0)};
            if (sb_link_send(in, &r) == SB_OK)
                sent++;
            else
                sb_req_unref(r.ptr);
        } else if (sent == REQS) {
            sb_item e = {SB_ITEM_EOF, NULL};
            if (sb_link_send(in, &e) == SB_OK)
                sent++;
        }
        if (sb_link_recv(rep, &it) == SB_OK) {
            if (it.kind == SB_ITEM_EOF) {
                eofs++;
            } else {
                sb_reply *rp = it.ptr;
                assert_int_equal(rp->n, 2);
                assert_int_equal(rp->r[1].seq, rp->r[0].seq + 1);
                replies++;
                free(rp);
            }
        }
        if (sb_link_recv(out, &it) == SB_OK) {
            if (it.kind == SB_ITEM_EOF) {
                eofs++;
            } else {
                sb_req *r = it.ptr;
                assert_int_equal(r->ev[0].seq, next);
                assert_int_equal(r->ev[1].seq, next + 1);
                next += 2;
                got++;
                sb_req_unref(r);
            }
        }
    }
    assert_int_equal(got, REQS);
    assert_int_equal(replies, REQS / 2);
    assert_int_equal(sb_sequencer_actor_last_seq(a), 2 * REQS);
    sb_sequencer_actor_destroy(&a);
    sb_link_destroy(&in);
    sb_link_destroy(&rep);
    sb_link_destroy(&out);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_assigns_gap_free),
        cmocka_unit_test(test_actor_tiny_links),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
