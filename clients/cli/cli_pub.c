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
    uint64_t printed; /* tokens printed so far */
    sb_ack ack;
    int refused;
    int oom;
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
    printf("error: %s", sb_strerror(a->err));
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
    /* Print the run of finished outcomes at the front, then drop it. */
    size_t k = 0;
    while (k < o->cap && o->v[k].done)
        s_print(o, &o->v[k++].a);
    if (k > 0) {
        memmove(o->v, o->v + k, (o->cap - k) * sizeof *o->v);
        memset(o->v + o->cap - k, 0, k * sizeof *o->v);
        o->base += k;
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
        "  -T, --timeout-ms MS   longest wait for the broker (default 10000)\n"
        "  -P, --producer-id ID  idempotent publishing: this producer id (or\n"
        "                        SNAPBUS_PRODUCER_ID) and producer seqs from\n"
        "  --producer-seq-start N  (default 1): a resend of the same events\n"
        "                        prints their original seqs, 'duplicate'\n"
        "                        (docs/PUBLISHING.md)\n"
        CLI_CURVE_HELP
        "  -h, --help            this help\n"
        "\n"
        "With --ack none a refusal may come back after a short grace time\n"
        "or not be seen at all: fire-and-forget is not a delivery report.\n"
        "\n"
        "exit codes: 0 every event taken (or a duplicate of one taken\n"
        "before), 1 the broker (or the library, before sending) refused\n"
        "some event, 2 usage, 3 no broker answered or timed out (the fate\n"
        "of unanswered events is unknown).\n");
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
s_publish(sb_publisher *p, sb_pub_event *ev, const void *data, size_t len)
{
    ev->payload = data;
    ev->payload_len = len;
    sb_err rc = sb_publisher_publish(p, ev, 0, NULL);
    if (rc != SB_OK) {
        const char *why = sb_publisher_last_error(p);
        fprintf(stderr, "snapbus pub: %s%s%s\n", sb_strerror(rc),
                why[0] ? ": " : "", why);
        return rc == SB_EINVAL || rc == SB_ETOOBIG ? CLI_REFUSED : CLI_FAILED;
    }
    return CLI_OK;
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

    if (optind < argc) {
        for (int i = optind; i < argc && rc == CLI_OK; i++)
            rc = s_publish(p, &ev, argv[i], strlen(argv[i]));
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (rc == CLI_OK && (n = getline(&line, &cap, stdin)) >= 0) {
            if (n > 0 && line[n - 1] == '\n')
                n--;
            if (n > 0 && line[n - 1] == '\r')
                n--;
            rc = s_publish(p, &ev, line, (size_t)n);
        }
        free(line);
    }

    e = sb_publisher_wait_all(p, po.timeout_ms);
    if (e != SB_OK) {
        fprintf(stderr, "snapbus pub: waiting for the broker: %s\n",
                sb_strerror(e));
        /* A refused CURVE handshake looks like silence from here. */
        if (e == SB_ETIMEDOUT)
            fprintf(stderr, "snapbus pub: %s\n",
                    po.curve.server_key != NULL
                        ? "with CURVE: is --server-key the broker's, and this "
                          "client's key on its publisher list?"
                        : "a broker running CURVE refuses plain clients "
                          "(--server-key, --client-key)");
        rc = CLI_FAILED;
    } else if (po.ack == SB_ACK_NONE) {
        /* A refusal of a fire-and-forget request needs a round trip to
         * come back; wait that long before giving up on hearing it. */
        uint64_t end = cli_now_ns() + 200 * 1000000ull;
        while (cli_now_ns() < end)
            (void)sb_publisher_poll(p, 50);
    }
    /* Unanswered events are reported (SB_ETIMEDOUT/SB_ECLOSED) here. */
    sb_publisher_destroy(&p);
    free(out.v);
    fflush(stdout);
    if (rc == CLI_OK && (out.refused || out.oom))
        rc = CLI_REFUSED;
    return rc;
}
