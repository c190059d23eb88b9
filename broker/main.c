/* snapbusd: loads the configuration, starts the actors downstream first,
 * waits for SIGTERM or SIGINT, then drains: the ingest stops intake and
 * sends an end marker down the pipeline, every open batch is flushed and
 * published, every pending ack is sent, and the actors stop in order.
 *
 * Before any actor starts, the on-disk log is opened and recovered: seqs,
 * aggregate seqs, batch ids and each topic's last seq continue from what
 * it holds, and the events that were in no published batch at the crash
 * are handed to the log store, which feeds them to the router again. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "sb_auth.h"
#include "sb_budget.h"
#include "sb_clock.h"
#include "sb_config.h"
#include "sb_ingest.h"
#include "sb_keys.h"
#include "sb_link.h"
#include "sb_log.h"
#include "sb_logstore.h"
#include "sb_metrics.h"
#include "sb_msg.h"
#include "sb_os.h"
#include "sb_fanout.h"
#include "sb_router.h"
#include "sb_sequencer.h"
#include "sb_store.h"
#include "sb_timelock.h"

#define SB_VERSION "0.1.0"
#define S_DRAIN_MS 60000
/* Descriptors: connections are refused while fewer than S_FD_HEADROOM are
 * left, and S_FD_SPARE of those are held open for the log's own use
 * (docs/SECURITY.md, "Descriptors"). */
#define S_FD_HEADROOM 64
#define S_FD_SPARE 16

extern char **environ;

typedef struct {
    sb_link *to_seq, *seq_replies, *to_router, *to_timelock, *dues,
        *to_publisher, *pub_replies, *to_log, *log_batches, *log_replies;
} s_links;

static sb_err
s_links_new(s_links *l, uint32_t q)
{
    sb_err rc;

    if ((rc = sb_link_new(&l->to_seq, "ingest->sequencer", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->seq_replies, "sequencer->ingest", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->to_router, "logstore->router", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->to_timelock, "router->timelock", sizeof(sb_timer_cmd), q)) ||
        (rc = sb_link_new(&l->dues, "timelock->router", sizeof(sb_timer_cmd), q)) ||
        (rc = sb_link_new(&l->to_publisher, "logstore->publisher", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->pub_replies, "publisher->ingest", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->to_log, "sequencer->logstore", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->log_batches, "router->logstore", sizeof(sb_item), q)) ||
        (rc = sb_link_new(&l->log_replies, "logstore->ingest", sizeof(sb_item), q)))
        return rc;
    return SB_OK;
}

/* The link called name, for [debug] hold; NULL if none. s_links holds
 * only sb_link pointers, so it is walked as an array and every link added
 * to it can be held. */
static sb_link *
s_link_named(s_links *l, const char *name)
{
    sb_link **v = (sb_link **) l;

    for (size_t i = 0; i < sizeof *l / sizeof *v; i++)
        if (v[i] != NULL && strcmp(sb_link_name(v[i]), name) == 0)
            return v[i];
    return NULL;
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
    sb_link_destroy(&l->to_log);
    sb_link_destroy(&l->log_batches);
    sb_link_destroy(&l->log_replies);
}

/* Recovery hands every aggregate's last seq to the sequencer... */
static sb_err
s_restore_seq(sb_sequencer *s, void *ctx)
{
    const sb_store_recovery *rec = ctx;
    sb_err rc;

    for (size_t i = 0; i < rec->naggs; i++)
        if ((rc = sb_sequencer_set_agg(s, rec->aggs[i].name, rec->aggs[i].len,
                                       rec->aggs[i].agg_seq)) != SB_OK)
            return rc;
    return SB_OK;
}

/* ...and every topic's last published seq and source position to the
 * router, so prev_last_seq runs on across the restart. */
static sb_err
s_restore_router(sb_router *r, void *ctx)
{
    const sb_store_recovery *rec = ctx;
    sb_err rc;

    for (size_t i = 0; i < rec->naggs; i++) {
        const sb_store_agg *a = &rec->aggs[i];
        if (a->topic_last_seq == 0 && !a->has_source_pos)
            continue;
        if ((rc = sb_router_set_agg(r, a->name, a->len, a->topic_last_seq,
                                    a->source_pos, a->has_source_pos)) != SB_OK)
            return rc;
    }
    return SB_OK;
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
              const char *query, const char *metrics)
{
    char tmp[600];
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if ((f = fopen(tmp, "w")) == NULL)
        return -1;
    fprintf(f, "ingest=%s\npub=%s\nquery=%s\npid=%ld\n", ingest, pub, query,
            (long) getpid());
    if (metrics[0] != '\0')
        fprintf(f, "metrics=%s\n", metrics);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path); /* readers never see half a file */
}

/* The log directory is locked too, even when it lies inside data_dir:
 * another broker's storage.dir may name it. */
static int
s_lock_dir(const char *dir, int *fd)
{
    long holder = 0;
    sb_err rc = sb_os_mkdirs(dir);

    if (rc == SB_OK)
        rc = sb_os_lock_dir(dir, fd, &holder);
    if (rc == SB_EAGAIN) {
        SB_LOG(SB_LOG_ERR, "broker.dir_locked",
               "dir=%s pid=%ld why=\"another broker (PID %ld) holds %s/LOCK: "
               "stop it, or give this broker its own --data-dir and storage.dir\"",
               dir, holder, holder, dir);
        return -1;
    }
    if (rc != SB_OK) {
        SB_LOG(SB_LOG_ERR, "broker.dir_lock", "dir=%s err=\"%s\"", dir,
               strerror(sb_os_errno()));
        return -1;
    }
    return 0;
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
    sb_metrics *metrics = NULL;
    sb_store *store = NULL;
    sb_store_recovery rec = {0};
    sb_logstore *logstore = NULL;
    sb_auth *auth = NULL;
    sb_credit *credit = NULL;
    sb_budget_plan plan;
    char secret[SB_KEY_Z85_LEN + 1] = "";
    sb_clock clock = sb_clock_system();
    int status = 1;
    int lock_fd[2] = {-1, -1}; /* held, never closed: the kernel drops them at exit */

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
    /* Requests and batches are large and short-lived, allocated by one
     * actor and freed by another: keep them on the heap rather than mmap
     * and munmap each one. free() hands memory back only when 16 MiB lie
     * free at the top of a heap: not after every request, but after a
     * burst, such as frames peers dropped half-way through their handshake
     * (docs/SECURITY.md). A higher threshold keeps such memory for good:
     * the heaps of libzmq's I/O thread are at most 64 MiB each, so their top
     * never reaches 256 MiB, and malloc_trim does not shrink them. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 16 << 20);
    sb_config_defaults(&cfg);
    if (((file = sb_config_file_arg(argc, argv)) != NULL &&
         sb_config_load_file(&cfg, file, why, sizeof why) != SB_OK) ||
        sb_config_load_env(&cfg, environ, why, sizeof why) != SB_OK ||
        sb_config_load_args(&cfg, argc, argv, why, sizeof why) != SB_OK ||
        sb_config_check(&cfg, why, sizeof why) != SB_OK) {
        fprintf(stderr, "snapbusd: configuration: %s\n", why);
        return 2;
    }
    /* Key files are part of the configuration: a bad one is refused here,
     * by --check-config too, before anything is bound. */
    char perms_why[768] = "";
    if (cfg.secret_key_file[0] != '\0') {
        const char *lists[] = {cfg.publisher_keys, cfg.subscriber_keys,
                               cfg.query_keys};
        /* As ssh and sshd: a secret others can read is refused, unless
         * told otherwise (volume mounts that cannot set 0600). */
        sb_err prc = sb_key_check_private(cfg.secret_key_file, perms_why,
                                          sizeof perms_why);
        if (prc == SB_EINVAL && !cfg.insecure_key_permissions) {
            fprintf(stderr, "snapbusd: configuration: security.secret_key_file: "
                    "%s (or accept it with --insecure-key-permissions, "
                    "security.insecure_key_permissions = 1)\n", perms_why);
            return 2;
        }
        if (prc == SB_EINVAL && check)
            fprintf(stderr, "snapbusd: warning: security.secret_key_file: %s "
                    "(accepted: security.insecure_key_permissions = 1)\n",
                    perms_why);
        if (prc != SB_EINVAL)
            perms_why[0] = '\0';
        if (sb_key_read_file(cfg.secret_key_file, secret, why, sizeof why) != SB_OK) {
            fprintf(stderr, "snapbusd: configuration: security.secret_key_file: %s\n", why);
            return 2;
        }
        for (size_t i = 0; i < 3; i++) {
            sb_keyset *ks = NULL;
            if (lists[i][0] != '\0' &&
                sb_keyset_load(&ks, lists[i], why, sizeof why) != SB_OK) {
                fprintf(stderr, "snapbusd: configuration: allowlist %s\n", why);
                explicit_bzero(secret, sizeof secret);
                return 2;
            }
            sb_keyset_destroy(&ks);
        }
    }
    /* sb_config_check made the same plan: it cannot fail here. */
    if (sb_budget_plan_make(&plan, &cfg, why, sizeof why) != SB_OK) {
        fprintf(stderr, "snapbusd: configuration: %s\n", why);
        return 2;
    }
    if (check) {
        explicit_bzero(secret, sizeof secret);
        if (cfg.deprecated[0] != '\0')
            fprintf(stderr, "snapbusd: warning: deprecated: %s: %s\n",
                    cfg.deprecated, sb_config_deprecated_hint());
        printf("configuration ok\n");
        return 0;
    }
    sb_log_set_level((sb_log_level) sb_log_level_parse(cfg.log_level));
    sb_log_set_format((sb_log_format) sb_log_format_parse(cfg.log_format));
    sb_log_set_rate(cfg.log_rate);
    sb_config_log_ignored_env(environ);
    if (cfg.deprecated[0] != '\0')
        SB_LOG(SB_LOG_WARN, "config.deprecated", "spellings=\"%s\" hint=\"%s\"",
               cfg.deprecated, sb_config_deprecated_hint());
    SB_LOG(SB_LOG_INFO, "broker.config",
           "file=%s queue=%u hwm=%u max_message_bytes=%u max_payload_bytes=%u "
           "default_delay_ms=%u delay_rules=%u max_batch_events=%u "
           "max_batch_bytes=%u max_open_batches=%u ring_batches=%llu "
           "ring_bytes=%llu log_retain_bytes=%llu metrics=%s log_level=%s log_format=%s log_rate=%u",
           file ? file : "-", cfg.queue, cfg.hwm, cfg.limits.max_message_bytes,
           cfg.limits.max_payload_bytes, cfg.router.default_delay_ms,
           cfg.router.nrules, cfg.router.max_batch_events,
           cfg.router.max_batch_bytes, cfg.router.max_open_batches,
           (unsigned long long) cfg.retain_batches,
           (unsigned long long) cfg.retain_bytes,
           (unsigned long long) cfg.storage.retain_bytes,
           cfg.metrics[0] ? cfg.metrics : "off", cfg.log_level, cfg.log_format,
           cfg.log_rate);
    SB_LOG(SB_LOG_INFO, "broker.memory_budget",
           "budget=%llu requests=%llu replies=%llu ring=%llu outgoing=%llu "
           "fetch=%llu dedup=%llu log_buffer=%llu zmq=%llu requests_over=%llu "
           "ingest_rcvhwm=%d ingest_sndhwm=%d ingest_maxmsgsize=%lld",
           (unsigned long long) plan.budget, (unsigned long long) plan.requests,
           (unsigned long long) plan.replies, (unsigned long long) plan.ring,
           (unsigned long long) plan.outgoing, (unsigned long long) plan.fetch,
           (unsigned long long) plan.dedup, (unsigned long long) plan.log_buffer,
           (unsigned long long) plan.zmq,
           (unsigned long long) plan.requests_over, plan.ingest_rcvhwm,
           plan.ingest_sndhwm, (long long) plan.ingest_maxmsgsize);
    if (perms_why[0] != '\0')
        SB_LOG(SB_LOG_WARN, "security.insecure_key_permissions",
               "why=\"%s\" accepted=\"security.insecure_key_permissions = 1\"",
               perms_why);
    if (cfg.metrics[0] != '\0' && !sb_config_metrics_local(&cfg))
        SB_LOG(SB_LOG_WARN, "security.metrics_exposed",
               "metrics=%s why=\"plaintext HTTP without authentication on an "
               "address beyond loopback: it tells anyone who reaches it how "
               "busy the broker is; keep it on a monitoring network (e.g. a "
               "Kubernetes NetworkPolicy admitting only the scraper)\"",
               cfg.metrics);
    /* Before any thread: every thread shares the limit, and the spare
     * descriptors are the lowest numbers. */
    sb_os_fd_info fds;
    if (sb_os_fd_init(S_FD_SPARE, &fds) == SB_OK)
        SB_LOG(fds.soft < 1024 ? SB_LOG_WARN : SB_LOG_INFO, "broker.fds",
               "limit=%llu was=%llu hard=%llu spare=%u headroom=%u "
               "max_handshakes=%u handshake_ms=%u%s",
               (unsigned long long) fds.soft,
               (unsigned long long) fds.soft_before,
               (unsigned long long) fds.hard, fds.reserve, S_FD_HEADROOM,
               cfg.max_handshakes, cfg.handshake_ms,
               fds.soft < 1024 ? " why=\"fewer than 1024 descriptors: raise "
                                 "LimitNOFILE / ulimit -n (docs/SECURITY.md)\""
                               : "");

    /* Signals are taken by this thread alone, with sigwait: every actor
     * thread inherits the blocked mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGUSR1); /* [debug] hold: release */
    sigaddset(&sigs, SIGUSR2); /* [debug] hold: hold again */
    sigaddset(&sigs, SIGHUP);  /* reread the allowlists */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (s_mkdirs(cfg.data_dir) != 0) {
        SB_LOG(SB_LOG_ERR, "broker.data_dir", "path=%s error=\"%s\"", cfg.data_dir,
               strerror(errno));
        return 1;
    }
    if (cfg.storage.dir[0] == '\0' &&
        (size_t) snprintf(cfg.storage.dir, sizeof cfg.storage.dir, "%s/log",
                          cfg.data_dir) >= sizeof cfg.storage.dir) {
        SB_LOG(SB_LOG_ERR, "broker.storage_dir", "why=\"data_dir too long\"");
        return 1;
    }
    /* One broker per directory, before anything is bound or read: two
     * brokers appending to one log overwrite each other's acked events. */
    if (s_lock_dir(cfg.data_dir, &lock_fd[0]) != 0 ||
        s_lock_dir(cfg.storage.dir, &lock_fd[1]) != 0)
        return 1;
    /* Metrics first, with signals blocked (its thread inherits the mask),
     * so /healthz answers while the rest starts. */
    if (cfg.metrics[0] != '\0' &&
        sb_metrics_new(&metrics, cfg.metrics, SB_VERSION) != SB_OK)
        goto out;
    /* The log before anything else: every number the actors start from
     * comes out of its recovery. */
    sb_err src = sb_store_open(&store, &cfg.storage, &rec);
    if (src != SB_OK) {
        SB_LOG(SB_LOG_ERR, "broker.storage", "dir=%s err=\"%s\" errno=%d why=\"%s\"",
               cfg.storage.dir, sb_strerror(src),
               src == SB_ESYS || src == SB_ESTORAGE ? sb_os_errno() : 0,
               src == SB_ESTORAGE ? "no room for the first segment: free space, or lower "
                                    "storage.segment_bytes"
                                  : "cannot open the on-disk log");
        goto out;
    }
    if ((ctx = zmq_ctx_new()) == NULL || s_links_new(&l, cfg.queue) != SB_OK ||
        sb_credit_new(&credit, plan.requests) != SB_OK)
        goto out;
    /* The ZAP handler before any CURVE socket: libzmq admits every CURVE
     * client while none is bound. The connection guard in the same actor
     * watches every socket, with CURVE or without. */
    sb_auth_args aa = {ctx, {cfg.publisher_keys, cfg.subscriber_keys,
                             cfg.query_keys}, secret[0] != '\0',
                       cfg.handshake_ms, cfg.max_handshakes, S_FD_HEADROOM};
    if (sb_auth_new(&auth, &aa, why, sizeof why) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "auth.start", "why=\"%s\"", why);
        goto out;
    }
    if (secret[0] == '\0' && sb_config_exposed(&cfg)) {
        SB_LOG(SB_LOG_WARN, "security.insecure",
               "ingest=%s pub=%s query=%s why=\"no CURVE: anyone who can reach "
               "these addresses may publish and read (security.insecure = 1)\"",
               cfg.ingest, cfg.pub, cfg.query);
    }
    /* Fault injection (tests): this link's consumer sees nothing until
     * SIGUSR1, so backpressure builds as behind a stalled stage. */
    sb_link *held = NULL;
    if (cfg.debug_hold[0] != '\0') {
        if ((held = s_link_named(&l, cfg.debug_hold)) == NULL) {
            SB_LOG(SB_LOG_ERR, "broker.debug_hold", "link=%s why=\"no such link\"",
                   cfg.debug_hold);
            goto out;
        }
        sb_link_set_hold(held, 1);
        SB_LOG(SB_LOG_WARN, "broker.hold", "link=%s held=1", cfg.debug_hold);
    }
    /* A new epoch at every start lets clients tell a restarted broker. */
    uint64_t epoch = sb_clock_wall_ms();
    if (getrandom(&epoch, sizeof epoch, 0) != (ssize_t) sizeof epoch)
        epoch ^= (uint64_t) getpid() << 32;

    sb_fanout_args pa = {ctx, cfg.pub, cfg.query, (int) cfg.hwm,
                            cfg.retain_batches, cfg.retain_bytes,
                            cfg.fetch_max_batches, cfg.fetch_max_bytes,
                            cfg.fetch_max_scan, cfg.limits, "snapbusd " SB_VERSION,
                            epoch, l.to_publisher, l.pub_replies,
                            cfg.storage.dir, rec.last_seq, rec.last_batch_id,
                            secret[0] != '\0' ? secret : NULL, plan.outgoing,
                            cfg.shutdown_linger_ms};
    if (sb_fanout_new(&pub, &pa) != SB_OK)
        goto out;
    if (sb_timelock_actor_new(&tl, &clock, cfg.router.max_open_batches,
                              l.to_timelock, l.dues) != SB_OK)
        goto out;
    sb_router_actor_args ra = {cfg.router, clock, rec.last_batch_id + 1,
                               l.to_router, l.dues, l.to_timelock,
                               l.log_batches, s_restore_router, &rec};
    if (sb_router_actor_new(&router, &ra) != SB_OK)
        goto out;
    sb_logstore_args la = {
        .store = store, .rebatch = rec.unbatched, .nrebatch = rec.nunbatched,
        .sync = (sb_sync_policy) sb_store_sync_parse(cfg.storage.sync),
        .sync_interval_ms = cfg.storage.sync_interval_ms,
        /* Everything in flight when the disk fills is held, not parked:
         * then the ingest can go on answering ERR_STORAGE_FULL. */
        .max_held = 2 * cfg.queue + 8, .max_held_bytes = plan.log_group,
        .clock = clock, .in = l.to_log,
        .out = l.to_router, .batch_in = l.log_batches,
        .batch_out = l.to_publisher, .replies = l.log_replies};
    store = NULL; /* the log store has it now, even if it fails */
    if (sb_logstore_new(&logstore, &la) != SB_OK)
        goto out;
    atomic_store(&sb_logstore_stats_get(logstore)->torn_truncations, rec.torn);
    /* The de-duplication index is rebuilt from the log before any publish
     * is read, so a restart forgets no original it can still answer for. */
    sb_dedup *dedup = NULL;
    sb_dedup_stats *dedup_stats = NULL;
    cfg.dedup.max_bytes = plan.dedup;
    if (sb_dedup_new(&dedup, &cfg.dedup) != SB_OK ||
        sb_dedup_rebuild(dedup, cfg.storage.dir, rec.last_seq,
                         sb_clock_now(&clock)) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "broker.dedup", "dir=%s why=\"rebuild failed\"",
               cfg.storage.dir);
        sb_dedup_destroy(&dedup);
        goto out;
    }
    dedup_stats = sb_dedup_stats_get(dedup);
    sb_sequencer_actor_args sa = {rec.last_seq + 1, l.to_seq, l.seq_replies,
                                  l.to_log, s_restore_seq, &rec, dedup, clock};
    if (sb_sequencer_actor_new(&seq, &sa) != SB_OK)
        goto out;
    sb_fanout_stats *ps = sb_fanout_stats_get(pub);
    sb_ingest_args ia = {ctx, cfg.ingest, (int) cfg.hwm, cfg.limits,
                         "snapbusd " SB_VERSION, epoch, l.to_seq, l.seq_replies,
                         l.pub_replies, sb_sequencer_actor_last_seq_ref(seq),
                         &ps->last_batch_id, l.log_replies,
                         sb_logstore_full_flag(logstore), pa.curve_secret,
                         credit, plan.ingest_rcvhwm, plan.ingest_sndhwm,
                         plan.ingest_maxmsgsize};
    if (sb_ingest_new(&ingest, &ia) != SB_OK)
        goto out;
    /* Every socket holds its own copy now. */
    int secret_on = secret[0] != '\0';
    explicit_bzero(secret, sizeof secret);

    if (metrics != NULL) {
        sb_metrics_sources ms = {
            .ingest = sb_ingest_stats_get(ingest), .fanout = ps,
            .router = router, .last_seq = sb_sequencer_actor_last_seq_ref(seq),
            .links = {l.to_seq, l.seq_replies, l.to_router, l.to_timelock,
                      l.dues, l.to_publisher, l.pub_replies, l.to_log,
                      l.log_batches, l.log_replies},
            .nlinks = 10, .log = sb_logstore_stats_get(logstore),
            .auth = sb_auth_stats_get(auth),
            .dedup = dedup_stats, .budget = &plan, .credit = credit,
            .log_dir = cfg.storage.dir};
        sb_metrics_attach(metrics, &ms);
    }
    if (cfg.ready_file[0] != '\0' &&
        s_write_ready(cfg.ready_file, sb_ingest_endpoint(ingest),
                      sb_fanout_pub_endpoint(pub), sb_fanout_query_endpoint(pub),
                      metrics != NULL ? sb_metrics_url(metrics) : "") != 0) {
        SB_LOG(SB_LOG_ERR, "broker.ready_file", "path=%s error=\"%s\"",
               cfg.ready_file, strerror(errno));
        goto out;
    }
    sb_metrics_set_state(metrics, SB_METRICS_READY);
    SB_LOG(SB_LOG_NOTICE, "broker.started",
           "version=%s ingest=%s pub=%s query=%s data_dir=%s queue=%u hwm=%u "
           "curve=%s",
           SB_VERSION, sb_ingest_endpoint(ingest), sb_fanout_pub_endpoint(pub),
           sb_fanout_query_endpoint(pub), cfg.data_dir, cfg.queue, cfg.hwm,
           secret_on ? "on" : "off");

    int sig = 0;
    while (sig != SIGTERM && sig != SIGINT) {
        if (sigwait(&sigs, &sig) != 0)
            break;
        if (sig == SIGHUP) {
            if (secret_on)
                sb_auth_reload(auth); /* the outcome is logged by auth.* */
            else
                SB_LOG(SB_LOG_NOTICE, "auth.reload_ignored", "why=\"no CURVE configured\"");
        }
        if ((sig == SIGUSR1 || sig == SIGUSR2) && held != NULL) {
            sb_link_set_hold(held, sig == SIGUSR2);
            SB_LOG(SB_LOG_WARN, "broker.hold", "link=%s held=%d", cfg.debug_hold,
                   sig == SIGUSR2);
        }
    }
    SB_LOG(SB_LOG_NOTICE, "broker.stopping", "signal=%d", sig);
    if (held != NULL) /* a clean stop drains everything: let it through */
        sb_link_set_hold(held, 0);
    sb_metrics_set_state(metrics, SB_METRICS_DRAINING);
    uint64_t drain_ns = sb_clock_mono_ns();
    if (sb_ingest_drain(ingest, S_DRAIN_MS) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "broker.drain_timeout", "ms=%d", S_DRAIN_MS);
        goto out;
    }
    /* Every batch is out and acked; the fan-out still serves fetches for
     * the shutdown linger, so subscribers can fetch the tail they missed
     * (longer while some are still catching up; it ends early once no
     * subscriber is connected). */
    int linger_max = (int) cfg.shutdown_linger_ms + SB_FANOUT_LINGER_CAP_MS + 10000;
    if (sb_fanout_wait(pub, linger_max) != SB_OK)
        SB_LOG(SB_LOG_WARN, "broker.linger_timeout", "ms=%d", linger_max);
    status = 0;
    SB_LOG(SB_LOG_NOTICE, "broker.stopped", "batches=%llu events=%llu last_seq=%llu drain_ms=%llu",
           (unsigned long long) atomic_load(&ps->batches),
           (unsigned long long) atomic_load(&ps->events),
           (unsigned long long) atomic_load(&ps->last_seq),
           (unsigned long long) ((sb_clock_mono_ns() - drain_ns) / 1000000));
out:
    sb_metrics_destroy(&metrics); /* before the stats it reads go away */
    sb_ingest_destroy(&ingest);
    sb_sequencer_actor_destroy(&seq);
    sb_logstore_destroy(&logstore);
    sb_store_close(&store); /* only if the log store never took it */
    sb_store_recovery_free(&rec);
    sb_router_actor_destroy(&router);
    sb_timelock_actor_destroy(&tl);
    sb_fanout_stop(pub); /* freed after zmq_ctx_term: see sb_fanout_stop */
    sb_auth_destroy(&auth); /* after every CURVE socket is closed */
    explicit_bzero(secret, sizeof secret);
    s_links_destroy(&l);
    sb_credit_destroy(&credit); /* every request is freed by now */
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    sb_fanout_destroy(&pub);
    if (cfg.ready_file[0] != '\0')
        unlink(cfg.ready_file);
    sb_log_flush(); /* what the rate limit still holds back */
    return status;
}
