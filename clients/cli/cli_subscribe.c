/* What 'snapbus sub' and 'snapbus record' share: the topics given with
 * -p/-x, opening the subscriber on them, stopping on SIGINT/SIGTERM, and
 * telling the user about a loss. */
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

volatile sig_atomic_t cli_stop;

static void
s_on_signal(int sig)
{
    (void)sig;
    cli_stop = 1;
}

void
cli_stop_on_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal; /* no SA_RESTART: the wait must end */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int
cli_topics_init(cli_topics *t, int argc)
{
    /* There can be no more topics than arguments. */
    t->prefix = calloc((size_t)argc + 1, sizeof *t->prefix);
    t->exact = calloc((size_t)argc + 1, sizeof *t->exact);
    t->np = t->nx = 0;
    if (t->prefix == NULL || t->exact == NULL) {
        cli_topics_free(t);
        return -1;
    }
    return 0;
}

void
cli_topics_free(cli_topics *t)
{
    free(t->prefix);
    free(t->exact);
    t->prefix = t->exact = NULL;
}

sb_err
cli_subscriber_open(sb_subscriber **out, const sb_subscriber_opts *so,
                    const cli_topics *t)
{
    sb_subscriber *s;
    sb_err e = sb_subscriber_new(&s, so);

    if (e != SB_OK)
        return e;
    for (int i = 0; i < t->np && e == SB_OK; i++)
        e = sb_subscriber_subscribe(s, t->prefix[i]);
    for (int i = 0; i < t->nx && e == SB_OK; i++)
        e = sb_subscriber_subscribe_exact(s, t->exact[i]);
    if (e == SB_OK && t->np + t->nx == 0)
        e = sb_subscriber_subscribe(s, "");
    if (e != SB_OK) {
        sb_subscriber_destroy(&s);
        return e;
    }
    *out = s;
    return SB_OK;
}

void
cli_report_loss(const char *who, const sb_subscriber *s)
{
    sb_loss l;

    if (sb_subscriber_loss(s, &l) == SB_OK)
        fprintf(stderr,
                "%s: lost (out of retention): aggregate=%s seqs %" PRIu64
                "..%" PRIu64 "\n",
                who, l.aggregate[0] ? l.aggregate : "*", l.from_seq, l.to_seq);
}

int
cli_report_unchecked(const char *who, const sb_subscriber *s)
{
    sb_loss l;

    if (sb_subscriber_unchecked(s, &l) != SB_OK)
        return 0;
    fprintf(stderr,
            "%s: lost: the broker stopped after batch %" PRIu64
            " and batches %" PRIu64 "..%" PRIu64 " (seqs up to %" PRIu64
            ") were not fetched; resume with --resume %" PRIu64
            " when it is back\n",
            who, l.to_batch_id, l.from_batch_id, l.to_batch_id, l.to_seq,
            sb_subscriber_position(s));
    return 1;
}

int
cli_subscriber_start(const char *who, sb_subscriber *s,
                     const sb_subscriber_opts *so, int timeout_ms)
{
    if (so->query_endpoint == NULL || timeout_ms < 0)
        return 0;
    sb_err e = sb_subscriber_start(s, timeout_ms);
    if (e == SB_OK)
        return 0;
    if (e == SB_ETIMEDOUT)
        fprintf(stderr, "%s: no broker answered at %s within %d ms\n", who,
                so->query_endpoint, timeout_ms);
    else if (e != SB_EAGAIN || !cli_stop)
        fprintf(stderr, "%s: %s: %s\n", who, so->query_endpoint,
                sb_strerror(e));
    return -1;
}
