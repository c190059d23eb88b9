/* snapbus pub: publishes each PAYLOAD argument, or each line of stdin, as
 * one event, and for acked levels prints each event's outcome in publish
 * order. Outcomes can come back out of order (one reply per request), so
 * they are held in s_outcomes until every earlier one is printed. */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "cli.h"
#include <snapbus/snapbus.h>

typedef struct {
    int done;
    sb_ack_info a;
} s_outcome;

typedef struct {
    s_outcome *v; /* by token - 1 - base */
    size_t cap;
    uint64_t base;    /* tokens before v[0] were printed and dropped */
    size_t head;      /* v[0..head) are printed too */
    uint64_t printed; /* tokens printed so far */
    sb_ack ack;
    int refused;
    int oom;
    uint64_t n_acked, n_refused, n_unknown; /* for the summary */
} s_outcomes;

static void
s_print(const s_outcomes *o, const sb_ack_info *a)
{
    if (a->err == SB_OK || a->err == SB_EDUP) {
        /* A duplicate was accepted before: its original seq, a success. */
        printf("seq=%" PRIu64 " agg_seq=%" PRIu64, a->seq, a->agg_seq);
        if (o->ack == SB_ACK_PUBLISHED && a->err == SB_OK)
            printf(" batch=%" PRIu64, a->batch_id);
        if (a->err == SB_EDUP)
            printf(" duplicate");
        putchar('\n');
        return;
    }
    /* No answer is not a refusal: the broker may have taken it. */
    printf("error: %s", a->err == SB_ETIMEDOUT ? "timed out, fate unknown"
                                               : sb_strerror(a->err));
    /* The broker's reason names the field, the value and the limit. */
    if (a->detail != NULL && a->detail[0] != '\0' &&
        strcmp(a->detail, sb_strerror(a->err)) != 0)
        printf(": %s", a->detail);
    if (a->err == SB_EDUP && a->seq != 0) /* the original's seq */
        printf(" seq=%" PRIu64, a->seq);
    putchar('\n');
}

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    s_outcomes *o = ctx;

    if (a->err != SB_OK && a->err != SB_EDUP)
        o->refused = 1;
    if (a->err == SB_OK || a->err == SB_EDUP)
        o->n_acked++;
    else if (a->err == SB_ETIMEDOUT)
        o->n_unknown++;
    else
        o->n_refused++;
    if (o->ack == SB_ACK_NONE) {
        /* Only refusals come back; print them as they come. */
        printf("event %" PRIu64 " ", a->token);
        s_print(o, a);
        return;
    }
    if (a->token <= o->base) /* cannot happen: one outcome per token */
        return;
    size_t i = (size_t)(a->token - 1 - o->base);
    if (i >= o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap <= i)
            cap *= 2;
        s_outcome *v = realloc(o->v, cap * sizeof *v);
        if (v == NULL) {
            o->oom = 1;
            s_print(o, a);
            return;
        }
        memset(v + o->cap, 0, (cap - o->cap) * sizeof *v);
        o->v = v;
        o->cap = cap;
    }
    o->v[i].done = 1;
    o->v[i].a = *a;
    /* Print the run of finished outcomes at the front; drop the printed
     * ones only once they are half the array, so that a backlog of
     * replies costs O(1) each, not a move of the whole array. */
    while (o->head < o->cap && o->v[o->head].done)
        s_print(o, &o->v[o->head++].a);
    if (o->head > 0 && o->head >= o->cap / 2) {
        size_t k = o->head;
        memmove(o->v, o->v + k, (o->cap - k) * sizeof *o->v);
        memset(o->v + o->cap - k, 0, k * sizeof *o->v);
        o->base += k;
        o->head = 0;
    }
}

static void
s_help(FILE *f)
{
    fprintf(
        f,
        "usage: snapbus pub [OPTIONS] [PAYLOAD...]\n"
        "\n"
        "Publishes each PAYLOAD as one event, or each line of stdin if no\n"
        "PAYLOAD is given. For acked levels prints one line per event, in\n"
        "order: 'seq=N agg_seq=N' (plus ' batch=N' with --ack published)\n"
        "or 'error: REASON'.\n"
        "\n"
        "options:\n"
        "  -e, --endpoint EP     broker ingest (default tcp://127.0.0.1:7701)\n"
        "  -a, --ack LEVEL       none|sequenced|published|durable\n"
        "                        (default sequenced)\n"
        "  -g, --aggregate NAME  aggregate (default 'cli')\n"
        "  -t, --type T          event type (default 'message')\n"
        "  -c, --caused-by SEQ   seq of the causing event\n"
        "  -s, --source-pos N    source position (e.g. a block height)\n"
        "  -T, --timeout-ms MS   the whole wait for the broker: its hello,\n"
        "                        taking the events, their acks (default\n"
        "                        10000)\n"
        "  -P, --producer-id ID  idempotent publishing: this producer id (or\n"
        "                        SNAPBUS_PRODUCER_ID) and producer seqs from\n"
        "  --producer-seq-start N  (default 1): a resend of the same events\n"
        "                        prints their original seqs, 'duplicate'\n"
        "                        (docs/PUBLISHING.md)\n"
        CLI_CURVE_HELP
        "  -h, --help            this help\n"
        "\n"
        "With --ack none a refusal may come back after a short grace time\n"
        "or not be seen at all: fire-and-forget is not a delivery report;\n"
        "a hello after the events shows the broker has read them.\n"
        "\n"
        "exit codes: 0 every event taken, 1 the broker refused some event,\n"
        "2 usage, 3 no broker answered within -T, or an event's fate is\n"
        "unknown (timed out); a summary line (sent, acked, refused, fate\n"
        "unknown) then goes to stderr.\n");
}

static int
s_parse_ack(const char *s, sb_ack *out)
{
    static const struct {
        const char *name;
        sb_ack ack;
    } t[] = {{"none", SB_ACK_NONE},
             {"sequenced", SB_ACK_SEQUENCED},
             {"durable", SB_ACK_DURABLE},
             {"published", SB_ACK_PUBLISHED}};

    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (!strcmp(s, t[i].name)) {
            *out = t[i].ack;
            return 0;
        }
    }
    return -1;
}

static int
s_publish(sb_publisher *p, sb_pub_event *ev, const void *data, size_t len,
          uint64_t *sent)
{
    ev->payload = data;
    ev->payload_len = len;
    sb_err rc = sb_publisher_publish(p, ev, 0, NULL);
    if (rc == SB_ETIMEDOUT) {
        fprintf(stderr, "snapbus pub: timed out: the broker took no more "
                        "events within --timeout-ms\n");
        return CLI_FAILED;
    }
    if (rc != SB_OK) {
        const char *why = sb_publisher_last_error(p);
        fprintf(stderr, "snapbus pub: %s%s%s\n", sb_strerror(rc),
                why[0] ? ": " : "", why);
        return rc == SB_EINVAL || rc == SB_ETOOBIG ? CLI_REFUSED : CLI_FAILED;
    }
    (*sent)++;
    return CLI_OK;
}

/* What is left of the whole wait; -1: none set. */
static int
s_left(int timeout_ms, uint64_t t0)
{
    if (timeout_ms < 0)
        return -1;
    uint64_t el = (cli_now_ns() - t0) / 1000000;
    return el >= (uint64_t)timeout_ms ? 0 : (int)((uint64_t)timeout_ms - el);
}

int
cli_pub(int argc, char **argv)
{
    static const struct option lo[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"ack", required_argument, NULL, 'a'},
        {"aggregate", required_argument, NULL, 'g'},
        {"type", required_argument, NULL, 't'},
        {"caused-by", required_argument, NULL, 'c'},
        {"source-pos", required_argument, NULL, 's'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"producer-id", required_argument, NULL, 'P'},
        {"producer-seq-start", required_argument, NULL, 'S'},
        CLI_CURVE_LONGOPTS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    sb_publisher_opts po;
    cli_curve ck = {0};
    sb_pub_event ev = {0};
    s_outcomes out = {0};
    int c, rc = CLI_OK;

    sb_publisher_opts_defaults(&po);
    po.timeout_ms = 10000;
    ev.aggregate = "cli";
    ev.type = "message";
    po.producer_id = getenv("SNAPBUS_PRODUCER_ID");
    if (po.producer_id != NULL && po.producer_id[0] == '\0')
        po.producer_id = NULL;
    while ((c = getopt_long(argc, argv, "e:a:g:t:c:s:T:P:h", lo, NULL)) != -1) {
        if (cli_curve_opt(&ck, c, optarg))
            continue;
        switch (c) {
        case 'e':
            po.endpoint = optarg;
            break;
        case 'a':
            if (s_parse_ack(optarg, &po.ack) != 0) {
                fprintf(stderr, "snapbus pub: bad --ack '%s'\n", optarg);
                return CLI_USAGE;
            }
            break;
        case 'g':
            ev.aggregate = optarg;
            break;
        case 't':
            ev.type = optarg;
            break;
        case 'c':
            if (cli_parse_u64(optarg, &ev.caused_by) != 0) {
                fprintf(stderr, "snapbus pub: bad --caused-by\n");
                return CLI_USAGE;
            }
            break;
        case 's':
            if (cli_parse_u64(optarg, &ev.source_pos) != 0) {
                fprintf(stderr, "snapbus pub: bad --source-pos\n");
                return CLI_USAGE;
            }
            ev.has_source_pos = 1;
            break;
        case 'T':
            if (cli_parse_int(optarg, -1, 86400000, &po.timeout_ms) != 0) {
                fprintf(stderr, "snapbus pub: bad --timeout-ms\n");
                return CLI_USAGE;
            }
            break;
        case 'P':
            po.producer_id = optarg;
            break;
        case 'S':
            if (cli_parse_u64(optarg, &po.producer_seq_start) != 0) {
                fprintf(stderr, "snapbus pub: bad --producer-seq-start\n");
                return CLI_USAGE;
            }
            break;
        case 'h':
            s_help(stdout);
            return CLI_OK;
        default:
            s_help(stderr);
            return CLI_USAGE;
        }
    }
    out.ack = po.ack;
    if (cli_curve_load(&ck, "snapbus pub", &po.curve) != 0)
        return CLI_USAGE;

    sb_publisher *p;
    sb_err e = sb_publisher_new(&p, &po);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus pub: %s: %s\n", po.endpoint, sb_strerror(e));
        return e == SB_EINVAL ? CLI_USAGE : CLI_FAILED;
    }
    sb_publisher_on_ack(p, s_on_ack, &out);

    /* -T is the whole wait: a broker that is not there is told apart
     * from one that is slow before any event is taken. */
    uint64_t t0 = cli_now_ns(), sent = 0;
    e = sb_publisher_hello(p, s_left(po.timeout_ms, t0));
    if (e != SB_OK) {
        if (e == SB_ETIMEDOUT)
            fprintf(stderr, "snapbus pub: no broker answered at %s within %d ms%s\n",
                    po.endpoint, po.timeout_ms,
                    po.curve.server_key != NULL
                        ? " (with CURVE: is --server-key the broker's, and this "
                          "client's key on its publisher list?)"
                        : "");
        else
            fprintf(stderr, "snapbus pub: %s: %s\n", po.endpoint, sb_strerror(e));
        rc = CLI_FAILED;
    }
    if (rc == CLI_OK && optind < argc) {
        for (int i = optind; i < argc && rc == CLI_OK; i++)
            rc = s_publish(p, &ev, argv[i], strlen(argv[i]), &sent);
    } else if (rc == CLI_OK) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (rc == CLI_OK && (n = getline(&line, &cap, stdin)) >= 0) {
            if (n > 0 && line[n - 1] == '\n')
                n--;
            if (n > 0 && line[n - 1] == '\r')
                n--;
            rc = s_publish(p, &ev, line, (size_t)n, &sent);
        }
        free(line);
    }

    if (rc != CLI_FAILED) {
        sb_publisher_set_timeout(p, s_left(po.timeout_ms, t0));
        e = sb_publisher_wait_all(p, s_left(po.timeout_ms, t0));
        if (e == SB_OK && po.ack == SB_ACK_NONE) {
            /* Fire-and-forget: a hello behind the events shows the broker
             * read them, and gives a refusal the time to come back. */
            e = sb_publisher_hello(p, s_left(po.timeout_ms, t0));
            (void)sb_publisher_poll(p, 0);
        }
        if (e == SB_ETIMEDOUT) {
            fprintf(stderr, "snapbus pub: timed out, fate unknown: no answer "
                            "from %s within %d ms\n",
                    po.endpoint, po.timeout_ms);
            rc = CLI_FAILED;
        } else if (e != SB_OK) {
            fprintf(stderr, "snapbus pub: %s: %s\n", po.endpoint, sb_strerror(e));
            rc = CLI_FAILED;
        }
    }
    /* Destroy waits no longer than what is left of -T; it reports the
     * events still without an answer (SB_ETIMEDOUT: fate unknown). */
    sb_publisher_set_timeout(p, s_left(po.timeout_ms, t0));
    sb_publisher_destroy(&p);
    fflush(stdout);
    if (rc == CLI_FAILED || out.n_unknown > 0) {
        if (po.ack == SB_ACK_NONE)
            fprintf(stderr, "snapbus pub: sent=%" PRIu64 " acked=- refused=%" PRIu64
                            " fate unknown=%" PRIu64 "\n",
                    sent, out.n_refused, rc == CLI_FAILED ? sent - out.n_refused : 0);
        else
            fprintf(stderr, "snapbus pub: sent=%" PRIu64 " acked=%" PRIu64
                            " refused=%" PRIu64 " fate unknown=%" PRIu64 "\n",
                    sent, out.n_acked, out.n_refused,
                    sent - out.n_acked - out.n_refused);
        rc = CLI_FAILED;
    }
    free(out.v);
    fflush(stdout);
    if (rc == CLI_OK && (out.refused || out.oom))
        rc = CLI_REFUSED;
    return rc;
}
