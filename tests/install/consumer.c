/* A program built outside the source tree against an installed snapbus:
 * publishes one event to a real broker, waits until it is published in a
 * batch, and reads that batch back with a fetch. Uses only the installed
 * headers and library.
 * Usage: consumer INGEST_ENDPOINT QUERY_ENDPOINT AGGREGATE */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <snapbus/snapbus.h>

typedef struct {
    const char *agg;
    int found;
} seen;

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    *(sb_err *)ctx = a->err;
}

static void
s_on_batch(sb_snapshot *b, void *ctx)
{
    seen *s = ctx;
    sb_snapshot_event ev;

    if (strcmp(sb_snapshot_aggregate(b), s->agg) == 0 &&
        sb_snapshot_count(b) == 1 &&
        sb_snapshot_event_get(b, 0, &ev) == SB_OK &&
        ev.payload_len == 5 && memcmp(ev.payload, "hello", 5) == 0 &&
        sb_snapshot_close_reason(b) <= SB_CLOSE_SHUTDOWN) {
        printf("read back: batch %" PRIu64 " seq %" PRIu64 " of %s\n",
               sb_snapshot_batch_id(b), ev.seq, s->agg);
        s->found = 1;
    }
    sb_snapshot_destroy(&b);
}

int
main(int argc, char **argv)
{
    sb_publisher_opts po;
    sb_publisher *p = NULL;
    sb_pub_event ev;
    sb_fetch_opts fo;
    sb_fetch_info info;
    seen s = {NULL, 0};
    sb_err rc, acked = SB_ETIMEDOUT;

    if (argc != 4) {
        fprintf(stderr, "usage: consumer INGEST QUERY AGGREGATE\n");
        return 2;
    }
    s.agg = argv[3];
    sb_publisher_opts_defaults(&po);
    po.endpoint = argv[1];
    po.ack = SB_ACK_PUBLISHED;
    po.timeout_ms = 30000;
    if ((rc = sb_publisher_new(&p, &po)) != SB_OK) {
        fprintf(stderr, "sb_publisher_new: %s\n", sb_strerror(rc));
        return 1;
    }
    sb_publisher_on_ack(p, s_on_ack, &acked);
    memset(&ev, 0, sizeof ev);
    ev.aggregate = argv[3];
    ev.type = "installed";
    ev.payload = "hello";
    ev.payload_len = 5;
    if ((rc = sb_publisher_publish(p, &ev, 0, NULL)) != SB_OK ||
        (rc = sb_publisher_wait_all(p, 30000)) != SB_OK) {
        fprintf(stderr, "publish: %s\n", sb_strerror(rc));
        sb_publisher_destroy(&p);
        return 1;
    }
    sb_publisher_destroy(&p);
    if (acked != SB_OK) {
        fprintf(stderr, "ack: %s\n", sb_strerror(acked));
        return 1;
    }

    sb_fetch_opts_defaults(&fo);
    fo.prefix = argv[3];
    fo.exact = 1;
    if ((rc = sb_fetch(argv[2], &fo, s_on_batch, &s, &info, 30000)) != SB_OK) {
        fprintf(stderr, "sb_fetch: %s\n", sb_strerror(rc));
        return 1;
    }
    if (!s.found) {
        fprintf(stderr, "the published batch of %s was not fetched back\n",
                argv[3]);
        return 1;
    }
    return 0;
}
