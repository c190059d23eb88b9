/* snapbusd: loads the configuration, starts the actors downstream first,
 * waits for SIGTERM or SIGINT, then drains: the ingest stops intake and
 * sends an end marker down the pipeline, every open batch is flushed and
 * published, every pending ack is sent, and the actors stop in order. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "sb_config.h"
#include "sb_ingest.h"
#include "sb_link.h"
#include "sb_log.h"
#include "sb_msg.h"
#include "sb_fanout.h"
#include "sb_router.h"
#include "sb_sequencer.h"
#include "sb_timelock.h"

#define SB_VERSION "0.1.0"
#define S_DRAIN_MS 60000

extern char **environ;

typedef struct {
    sb_link *to_seq, *seq_replies, *to_router, *to_timelock, *dues,
        *to_publisher, *pub_replies;
} s_links;

static sb_err
s_links_new(s_links *l, uint32_t q)
{
    sb_err rc;

    if ((rc = sb_link_new(&l->to_seq, "ingest->sequencer", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->seq_replies, "sequencer->ingest", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->to_router, "sequencer->router", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->to_timelock, "router->timelock", sizeof(sb_timer_cmd), q)) ||
        (rc = sb_link_new(&l->dues, "timelock->router", sizeof(sb_timer_cmd), q)) ||
        (rc = sb_link_new(&l->to_publisher, "router->publisher", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->pub_replies, "publisher->ingest", sizeof(sb_item), q)))
        return rc;
    return SB_OK;
}

static void
s_links_destroy(s_links *l)
{
    sb_link_destroy(&l->to_seq);
    sb_link_destroy(&l->seq_replies);
    sb_link_destroy(&l->to_router);
    sb_link_destroy(&l->to_timelock);
    sb_link_destroy(&l->dues);
    sb_link_destroy(&l->to_publisher);
    sb_link_destroy(&l->pub_replies);
}

static int
s_mkdirs(const char *path)
{
    char buf[512];

    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int
s_write_ready(const char *path, const char *ingest, const char *pub,
              const char *query)
{
    char tmp[600];
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if ((f = fopen(tmp, "w")) == NULL)
        return -1;
    fprintf(f, "ingest=%s\npub=%s\nquery=%s\npid=%ld\n", ingest, pub, query,
            (long) getpid());
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path); /* readers never see half a file */
}

int
main(int argc, char **argv)
{
    sb_config cfg;
    char why[768];
    const char *file;
    int check = 0;
    sigset_t sigs;
    void *ctx = NULL;
    s_links l = {0};
    sb_fanout *pub = NULL;
    sb_timelock_actor *tl = NULL;
    sb_router_actor *router = NULL;
    sb_sequencer_actor *seq = NULL;
    sb_ingest *ingest = NULL;
    sb_clock clock = sb_clock_system();
    int status = 1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            sb_config_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("snapbusd %s (protocol %d)\n", SB_VERSION, SB_WIRE_VERSION);
            return 0;
        }
        check |= strcmp(argv[i], "--check-config") == 0;
    }
    sb_config_defaults(&cfg);
    if (((file = sb_config_file_arg(argc, argv)) != NULL &&
         sb_config_load_file(&cfg, file, why, sizeof why) != SB_OK) ||
        sb_config_load_env(&cfg, environ, why, sizeof why) != SB_OK ||
        sb_config_load_args(&cfg, argc, argv, why, sizeof why) != SB_OK ||
        sb_config_check(&cfg, why, sizeof why) != SB_OK) {
        fprintf(stderr, "snapbusd: configuration: %s\n", why);
        return 2;
    }
    if (check) {
        printf("configuration ok\n");
        return 0;
    }
    sb_log_set_level((sb_log_level) sb_log_level_parse(cfg.log_level));

    /* Signals are taken by this thread alone, with sigwait: every actor
     * thread inherits the blocked mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (s_mkdirs(cfg.data_dir) != 0) {
        SB_LOG(SB_LOG_ERR, "broker.data_dir", "path=%s error=\"%s\"", cfg.data_dir,
               strerror(errno));
        return 1;
    }
    if ((ctx = zmq_ctx_new()) == NULL || s_links_new(&l, cfg.queue) != SB_OK)
        goto out;

    sb_fanout_args pa = {ctx, cfg.pub, cfg.query, (int) cfg.hwm,
                            cfg.retain_batches, cfg.retain_bytes,
                            cfg.fetch_max_batches, cfg.fetch_max_bytes,
                            cfg.fetch_max_scan, l.to_publisher, l.pub_replies};
    if (sb_fanout_new(&pub, &pa) != SB_OK)
        goto out;
    if (sb_timelock_actor_new(&tl, &clock, cfg.router.max_open_batches,
                              l.to_timelock, l.dues) != SB_OK)
        goto out;
    sb_router_actor_args ra = {cfg.router, clock, 1, l.to_router, l.dues,
                               l.to_timelock, l.to_publisher};
    if (sb_router_actor_new(&router, &ra) != SB_OK)
        goto out;
    sb_sequencer_actor_args sa = {1, l.to_seq, l.seq_replies, l.to_router};
    if (sb_sequencer_actor_new(&seq, &sa) != SB_OK)
        goto out;
    sb_fanout_stats *ps = sb_fanout_stats_get(pub);
    sb_ingest_args ia = {ctx, cfg.ingest, (int) cfg.hwm, cfg.limits,
                         "snapbusd " SB_VERSION, l.to_seq, l.seq_replies,
                         l.pub_replies, sb_sequencer_actor_last_seq_ref(seq),
                         &ps->last_batch_id};
    if (sb_ingest_new(&ingest, &ia) != SB_OK)
        goto out;

    if (cfg.ready_file[0] != '\0' &&
        s_write_ready(cfg.ready_file, sb_ingest_endpoint(ingest),
                      sb_fanout_pub_endpoint(pub),
                      sb_fanout_query_endpoint(pub)) != 0) {
        SB_LOG(SB_LOG_ERR, "broker.ready_file", "path=%s error=\"%s\"",
               cfg.ready_file, strerror(errno));
        goto out;
    }
    SB_LOG(SB_LOG_NOTICE, "broker.started",
           "version=%s ingest=%s pub=%s query=%s data_dir=%s queue=%u hwm=%u",
           SB_VERSION, sb_ingest_endpoint(ingest), sb_fanout_pub_endpoint(pub),
           sb_fanout_query_endpoint(pub), cfg.data_dir, cfg.queue, cfg.hwm);

    int sig = 0;
    while (sig != SIGTERM && sig != SIGINT)
        if (sigwait(&sigs, &sig) != 0)
            break;
    SB_LOG(SB_LOG_NOTICE, "broker.stopping", "signal=%d", sig);
    if (sb_ingest_drain(ingest, S_DRAIN_MS) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "broker.drain_timeout", "ms=%d", S_DRAIN_MS);
        goto out;
    }
    status = 0;
    SB_LOG(SB_LOG_NOTICE, "broker.stopped", "batches=%llu events=%llu last_seq=%llu",
           (unsigned long long) atomic_load(&ps->batches),
           (unsigned long long) atomic_load(&ps->events),
           (unsigned long long) atomic_load(&ps->last_seq));
out:
    sb_ingest_destroy(&ingest);
    sb_sequencer_actor_destroy(&seq);
    sb_router_actor_destroy(&router);
    sb_timelock_actor_destroy(&tl);
    sb_fanout_destroy(&pub);
    s_links_destroy(&l);
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    if (cfg.ready_file[0] != '\0')
        unlink(cfg.ready_file);
    return status;
}
