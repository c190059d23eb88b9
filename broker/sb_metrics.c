/* Metrics endpoint. Owns the libmicrohttpd daemon and its one thread, and
 * a copy of the sources it reads. Every response body is rendered afresh
 * into a malloc'd buffer that libmicrohttpd frees once sent; nothing is
 * cached, so a scrape always sees the counters as they are.
 *
 * Consistency: each counter is read once, atomically, but not all of them
 * at the same instant, so a scrape taken while events flow can show, say,
 * a histogram count a batch ahead of its sum. Counters only ever grow, so
 * rates computed from successive scrapes stay right. */
#include "sb_metrics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "sb_clock.h"
#include "sb_log.h"
#include "sb_wire.h"

/* ---- text buffer ------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} s_buf;

static void s_put(s_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
s_put(s_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p != NULL && (size_t) n < room) {
            b->len += (size_t) n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 16384;
        while (cap < b->len + (size_t) n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (q == NULL) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

static void
s_head(s_buf *b, const char *name, const char *type, const char *help)
{
    s_put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
s_metric(s_buf *b, const char *name, const char *type, const char *help,
         uint64_t v)
{
    s_head(b, name, type, help);
    s_put(b, "%s %llu\n", name, (unsigned long long) v);
}

#define S_LOAD(p) ((uint64_t) atomic_load(&(p)))

/* Label values may hold anything; the format escapes \, " and newline. */
static void
s_label_value(s_buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            s_put(b, "\\%c", *v);
        else if (*v == '\n')
            s_put(b, "\\n");
        else
            s_put(b, "%c", *v);
    }
}

/* One histogram sample set (the family's head written by the caller):
 * cumulative buckets at sb_hist_bounds_s, +Inf, _sum in seconds, _count.
 * labels: "" or 'queue="x",' style text ending in a comma. */
static void
s_hist(s_buf *b, const char *name, const char *labels, const sb_hist *h)
{
    uint64_t cum = 0;
    size_t ll = strlen(labels);

    for (size_t i = 0; i <= SB_HIST_N; i++) {
        cum += S_LOAD(h->n[i]);
        if (i < SB_HIST_N)
            s_put(b, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, sb_hist_bounds_s[i],
                  (unsigned long long) cum);
        else
            s_put(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels,
                  (unsigned long long) cum);
    }
    /* Without labels the sum and count take none; with them, the same
     * labels minus the trailing comma. */
    if (ll == 0) {
        s_put(b, "%s_sum %.9f\n%s_count %llu\n", name, (double) S_LOAD(h->sum_ns) / 1e9,
              name, (unsigned long long) cum);
    } else {
        s_put(b, "%s_sum{%.*s} %.9f\n%s_count{%.*s} %llu\n", name, (int) ll - 1, labels,
              (double) S_LOAD(h->sum_ns) / 1e9, name, (int) ll - 1, labels,
              (unsigned long long) cum);
    }
}

/* ---- families --------------------------------------------------------- */

/* Indexed by the wire ErrorCode, as sb_ingest_stats.refused_by is. */
static const char *const s_reasons[SB_WERR_COUNT] = {
    "none",         "invalid",     "too_large",     "unauthorized",
    "duplicate",    "storage_full", "shutting_down", "unsupported",
    "bad_version",  "out_of_retention", "beyond_dedup_horizon",
    "wrong_shard"};

/* Indexed by sb_close_reason. */
static const char *const s_close[5] = {"delay", "immediate", "max_events",
                                       "max_bytes", "shutdown"};

const char *
sb_metrics_reason_name(unsigned werr)
{
    return werr < sizeof s_reasons / sizeof s_reasons[0] ? s_reasons[werr]
                                                         : "unknown";
}

static void
s_render_ingest(s_buf *b, const sb_ingest_stats *in)
{
    s_metric(b, "snapbus_requests_total", "counter",
             "Publish requests decoded by the ingest.", S_LOAD(in->requests));
    s_metric(b, "snapbus_events_accepted_total", "counter",
             "Events accepted and handed to the sequencer.",
             S_LOAD(in->events_in));
    s_metric(b, "snapbus_events_refused_total", "counter",
             "Events of well-formed requests refused one by one (all reasons).",
             S_LOAD(in->events_refused));
    s_head(b, "snapbus_refusals_total", "counter",
           "Error replies by reason: one per refused event, or one per request "
           "refused whole (bad frame, bad version, shutting down).");
    for (size_t i = 1; i < sizeof s_reasons / sizeof s_reasons[0]; i++)
        s_put(b, "snapbus_refusals_total{reason=\"%s\"} %llu\n", s_reasons[i],
              (unsigned long long) S_LOAD(in->refused_by[i]));
    s_metric(b, "snapbus_bad_requests_total", "counter",
             "Requests refused whole: undecodable, unknown version, over a limit, "
             "wrong kind.",
             S_LOAD(in->bad_requests));
    s_metric(b, "snapbus_bad_frames_total", "counter",
             "Messages with the wrong number of frames.",
             S_LOAD(in->bad_frames));
    s_metric(b, "snapbus_replies_sent_total", "counter",
             "Replies sent to publishers.", S_LOAD(in->replies));
    s_metric(b, "snapbus_replies_lost_total", "counter",
             "Replies not sent: the publisher was gone or not reading.",
             S_LOAD(in->replies_lost));
    s_metric(b, "snapbus_hellos_total", "counter", "Hello requests answered.",
             S_LOAD(in->hellos));
    s_metric(b, "snapbus_ingest_parked_total", "counter",
             "Times the ingest held a request because the sequencer's queue was "
             "full (backpressure reaching the publishers).",
             S_LOAD(in->parked));
    s_head(b, "snapbus_ack_latency_seconds", "histogram",
           "Publish request read by the ingest -> its reply sent, by the "
           "request's ack level (none: refusals only).");
    static const char *const levels[4] = {"none", "sequenced", "durable", "published"};
    for (size_t i = 0; i < 4; i++) {
        char l[40];
        snprintf(l, sizeof l, "ack=\"%s\",", levels[i]);
        s_hist(b, "snapbus_ack_latency_seconds", l, &in->ack_latency[i]);
    }
}

static void
s_render_router(s_buf *b, sb_router_actor *r)
{
    sb_router_stats st;

    sb_router_actor_stats(r, &st);
    s_head(b, "snapbus_batches_flushed_total", "counter",
           "Batches the router closed, by reason.");
    for (size_t i = 0; i < sizeof s_close / sizeof s_close[0]; i++)
        s_put(b, "snapbus_batches_flushed_total{reason=\"%s\"} %llu\n",
              s_close[i], (unsigned long long) st.by_reason[i]);
    s_metric(b, "snapbus_router_events_total", "counter",
             "Events the router put into batches.", st.events);
    s_metric(b, "snapbus_caused_by_joins_total", "counter",
             "Events that joined their cause's open batch.",
             st.caused_by_joins);
    s_metric(b, "snapbus_router_waits_total", "counter",
             "Times the router waited because max_open_batches or "
             "max_open_bytes was reached.",
             st.waits);
    s_metric(b, "snapbus_open_batches", "gauge", "Batches open now.",
             st.open_batches);
    s_metric(b, "snapbus_open_bytes", "gauge",
             "Bytes held in open batches now.", st.open_bytes);
    s_metric(b, "snapbus_aggregates", "gauge",
             "Aggregates the router has seen.", st.aggregates);
}

static void
s_render_fanout(s_buf *b, const sb_fanout_stats *f)
{
    uint64_t cum = 0;

    s_metric(b, "snapbus_batches_published_total", "counter",
             "Snapshot batches sent on the PUB socket.", S_LOAD(f->batches));
    s_metric(b, "snapbus_events_published_total", "counter",
             "Events sent in snapshot batches.", S_LOAD(f->events));
    s_metric(b, "snapbus_published_bytes_total", "counter",
             "Encoded snapshot batch bytes sent.", S_LOAD(f->bytes));
    s_head(b, "snapbus_batch_events", "histogram",
           "Events per published snapshot batch.");
    for (size_t i = 0; i < SB_FANOUT_SIZE_BUCKETS; i++) {
        cum += S_LOAD(f->size_buckets[i]);
        if (i + 1 < SB_FANOUT_SIZE_BUCKETS)
            s_put(b, "snapbus_batch_events_bucket{le=\"%u\"} %llu\n",
                  sb_fanout_size_bounds[i], (unsigned long long) cum);
        else
            s_put(b, "snapbus_batch_events_bucket{le=\"+Inf\"} %llu\n",
                  (unsigned long long) cum);
    }
    s_put(b, "snapbus_batch_events_sum %llu\nsnapbus_batch_events_count %llu\n",
          (unsigned long long) S_LOAD(f->events), (unsigned long long) cum);
    s_metric(b, "snapbus_last_batch_id", "gauge",
             "Id of the last published batch.", S_LOAD(f->last_batch_id));
    s_metric(b, "snapbus_last_published_seq", "gauge",
             "Highest seq sent to subscribers.", S_LOAD(f->last_seq));
    s_metric(b, "snapbus_retained_batches", "gauge",
             "Batches kept in memory for fetch (gap fill, resume).",
             S_LOAD(f->retained_batches));
    s_metric(b, "snapbus_retained_bytes", "gauge",
             "Bytes kept in memory for fetch.", S_LOAD(f->retained_bytes));
    s_metric(b, "snapbus_fetches_total", "counter",
             "Fetch requests on the query socket.", S_LOAD(f->fetches));
    s_metric(b, "snapbus_fetch_batches_total", "counter",
             "Batches sent in fetch replies.", S_LOAD(f->fetch_batches));
    s_metric(b, "snapbus_fetch_refused_total", "counter",
             "Fetch requests refused (malformed, out of retention).",
             S_LOAD(f->fetch_refused));
    s_metric(b, "snapbus_fetch_lost_total", "counter",
             "Fetch replies the peer did not take.", S_LOAD(f->fetch_lost));
    s_metric(b, "snapbus_fanout_parked_total", "counter",
             "Times the fan-out held acks because the ingest's queue was full.",
             S_LOAD(f->parked));
    s_head(b, "snapbus_batch_hold_seconds", "histogram",
           "A batch's first event in the router -> the batch sent on the PUB "
           "socket (the delay, plus the log and the queues).");
    s_hist(b, "snapbus_batch_hold_seconds", "", &f->batch_hold);
    s_head(b, "snapbus_fetch_duration_seconds", "histogram",
           "A fetch request read on the query socket -> its reply sent "
           "(memory ring or on-disk log).");
    s_hist(b, "snapbus_fetch_duration_seconds", "", &f->fetch);
}

static void
s_render_dedup(s_buf *b, const sb_dedup_stats *d)
{
    s_head(b, "snapbus_dedup_duplicates_total", "counter",
           "Events answered ERR_DUPLICATE with their original seq, by what "
           "recognised them.");
    s_put(b, "snapbus_dedup_duplicates_total{by=\"producer_seq\"} %llu\n",
          (unsigned long long) S_LOAD(d->dup_producer));
    s_put(b, "snapbus_dedup_duplicates_total{by=\"event_id\"} %llu\n",
          (unsigned long long) S_LOAD(d->dup_event_id));
    s_metric(b, "snapbus_dedup_beyond_horizon_total", "counter",
             "Events refused ERR_BEYOND_DEDUP_HORIZON: a producer seq older "
             "than the index remembers.",
             S_LOAD(d->beyond));
    s_head(b, "snapbus_dedup_evictions_total", "counter",
           "Entries the bounded index let go: producer (LRU, leaves a "
           "tombstone), tombstone, event_id (count bound), event_id_age.");
    s_put(b, "snapbus_dedup_evictions_total{kind=\"producer\"} %llu\n",
          (unsigned long long) S_LOAD(d->prod_evicted));
    s_put(b, "snapbus_dedup_evictions_total{kind=\"tombstone\"} %llu\n",
          (unsigned long long) S_LOAD(d->tomb_evicted));
    s_put(b, "snapbus_dedup_evictions_total{kind=\"event_id\"} %llu\n",
          (unsigned long long) S_LOAD(d->id_evicted));
    s_put(b, "snapbus_dedup_evictions_total{kind=\"event_id_age\"} %llu\n",
          (unsigned long long) S_LOAD(d->id_expired));
    s_metric(b, "snapbus_dedup_unindexed_total", "counter",
             "Events accepted but not indexed for lack of memory.",
             S_LOAD(d->nomem));
    s_metric(b, "snapbus_dedup_producers", "gauge",
             "Producers in the de-duplication index.", S_LOAD(d->producers));
    s_metric(b, "snapbus_dedup_tombstones", "gauge",
             "Evicted producers still remembered by their highest seq.",
             S_LOAD(d->tombs));
    s_metric(b, "snapbus_dedup_event_ids", "gauge",
             "Event ids in the de-duplication index.", S_LOAD(d->ids));
    s_metric(b, "snapbus_dedup_memory_bytes", "gauge",
             "Memory held by the de-duplication index, near enough.",
             S_LOAD(d->mem_bytes));
    s_metric(b, "snapbus_dedup_rebuild_events", "gauge",
             "Events read from the log to rebuild the index at start.",
             S_LOAD(d->rebuild_events));
    s_head(b, "snapbus_dedup_rebuild_seconds", "gauge",
           "Time the rebuild at start took.");
    s_put(b, "snapbus_dedup_rebuild_seconds %.3f\n", (double) S_LOAD(d->rebuild_ms) / 1e3);
}

static void
s_render_log(s_buf *b, const sb_logstore_stats *l)
{
    s_metric(b, "snapbus_log_fsyncs_total", "counter",
             "fdatasync calls of the on-disk log that released acks or batches.",
             S_LOAD(l->fsyncs));
    s_head(b, "snapbus_log_fsync_seconds_total", "counter",
           "Time spent in those fdatasync calls.");
    s_put(b, "snapbus_log_fsync_seconds_total %.6f\n",
          (double) S_LOAD(l->fsync_ns) / 1e9);
    s_metric(b, "snapbus_log_synced_events_total", "counter",
             "Events made durable by those calls (divided by fsyncs: events "
             "per fsync, the group commit).",
             S_LOAD(l->events_synced));
    s_metric(b, "snapbus_log_events_written_total", "counter",
             "Event records written to the log.", S_LOAD(l->events));
    s_metric(b, "snapbus_log_batches_written_total", "counter",
             "Batch records written to the log.", S_LOAD(l->batches));
    s_metric(b, "snapbus_log_written_bytes_total", "counter",
             "Bytes written to the log.", S_LOAD(l->bytes));
    s_metric(b, "snapbus_log_writes_total", "counter",
             "write(2) calls of the log (one per group of records).",
             S_LOAD(l->writes));
    s_metric(b, "snapbus_log_segments", "gauge", "Segment files in the log.",
             S_LOAD(l->segments));
    s_metric(b, "snapbus_log_bytes", "gauge", "Bytes in the log's segments.",
             S_LOAD(l->log_bytes));
    s_metric(b, "snapbus_log_segments_deleted_total", "counter",
             "Segments deleted by retention.", S_LOAD(l->segments_deleted));
    s_metric(b, "snapbus_log_torn_truncations_total", "counter",
             "Torn or damaged tails truncated by recovery at start.",
             S_LOAD(l->torn_truncations));
    s_metric(b, "snapbus_log_storage_refusals_total", "counter",
             "Writes or syncs the disk refused, and times no space could be "
             "reserved for the next segment.",
             S_LOAD(l->storage_refusals));
    s_metric(b, "snapbus_log_storage_full", "gauge",
             "1 while publishes are refused with ERR_STORAGE_FULL.",
             S_LOAD(l->storage_full));
    s_metric(b, "snapbus_log_durable_acks_total", "counter",
             "Durable replies sent, each after the fsync covering it.",
             S_LOAD(l->acks));
    s_metric(b, "snapbus_log_rebatched_events_total", "counter",
             "Events in no batch at the last crash, published after the start.",
             S_LOAD(l->rebatched));
    s_metric(b, "snapbus_log_parked_total", "counter",
             "Times the log store waited for room on an output queue.",
             S_LOAD(l->parked));
    s_head(b, "snapbus_log_fsync_duration_seconds", "histogram",
           "Each fdatasync of the on-disk log that released acks or batches.");
    s_hist(b, "snapbus_log_fsync_duration_seconds", "", &l->fsync);
}

/* The log's file system, read at each scrape, so "storage near full" can
 * be alerted on from the broker's own metrics. */
static void
s_render_disk(s_buf *b, const char *dir)
{
    struct statvfs fs;

    if (statvfs(dir, &fs) != 0)
        return;
    s_metric(b, "snapbus_log_disk_size_bytes", "gauge",
             "Size of the file system holding the on-disk log.",
             (uint64_t) fs.f_blocks * fs.f_frsize);
    s_metric(b, "snapbus_log_disk_free_bytes", "gauge",
             "Bytes free for the broker on that file system (statvfs f_bavail).",
             (uint64_t) fs.f_bavail * fs.f_frsize);
}

static void
s_render_auth(s_buf *b, const sb_auth_stats *a)
{
    s_head(b, "snapbus_auth_refused_total", "counter",
           "Connections refused, by socket role and reason: key (not on the "
           "role's allowlist) or handshake (no CURVE, a wrong server key).");
    for (int r = 0; r < SB_ROLE_COUNT; r++) {
        s_put(b, "snapbus_auth_refused_total{role=\"%s\",reason=\"key\"} %llu\n",
              sb_auth_role_name((sb_auth_role) r),
              (unsigned long long) S_LOAD(a->refused_key[r]));
        s_put(b, "snapbus_auth_refused_total{role=\"%s\",reason=\"handshake\"} %llu\n",
              sb_auth_role_name((sb_auth_role) r),
              (unsigned long long) S_LOAD(a->refused_handshake[r]));
    }
    s_head(b, "snapbus_auth_admitted_total", "counter",
           "Connections admitted by the allowlists, by socket role.");
    for (int r = 0; r < SB_ROLE_COUNT; r++)
        s_put(b, "snapbus_auth_admitted_total{role=\"%s\"} %llu\n",
              sb_auth_role_name((sb_auth_role) r),
              (unsigned long long) S_LOAD(a->admitted[r]));
    s_head(b, "snapbus_auth_keys", "gauge",
           "Keys in each allowlist now (query: the query-only list).");
    for (int r = 0; r < SB_ROLE_COUNT; r++)
        s_put(b, "snapbus_auth_keys{role=\"%s\"} %llu\n",
              sb_auth_role_name((sb_auth_role) r),
              (unsigned long long) S_LOAD(a->keys[r]));
    s_metric(b, "snapbus_auth_reloads_total", "counter",
             "Allowlist reloads applied (SIGHUP).", S_LOAD(a->reloads));
    s_metric(b, "snapbus_auth_reload_failures_total", "counter",
             "Reloads refused because a list was bad; the old lists stayed.",
             S_LOAD(a->reload_failures));
}

/* The memory budget: its plan's terms and what each measurable part holds
 * now (docs/ARCHITECTURE.md, "Memory budget"). */
static void
s_render_memory(s_buf *b, const sb_metrics_sources *src)
{
    const sb_budget_plan *p = src->budget;
    const char *name;
    uint64_t v;

    s_metric(b, "snapbus_memory_budget_bytes", "gauge",
             "broker.memory_budget: bytes held for work in flight, at most.",
             p->budget);
    s_head(b, "snapbus_memory_term_bytes", "gauge",
           "The budget's formula: each part's bound, bytes.");
    for (size_t i = 0; (name = sb_budget_term(p, i, &v, NULL)) != NULL; i++)
        s_put(b, "snapbus_memory_term_bytes{part=\"%s\"} %llu\n", name,
              (unsigned long long) v);
    s_put(b, "snapbus_memory_term_bytes{part=\"requests\"} %llu\n",
          (unsigned long long) p->requests);
    s_put(b, "snapbus_memory_term_bytes{part=\"replies\"} %llu\n",
          (unsigned long long) p->replies);
    s_head(b, "snapbus_memory_used_bytes", "gauge",
           "Bytes each measured part holds now.");
    if (src->credit != NULL) {
        sb_credit_stats cs;
        sb_credit_stats_get(src->credit, &cs);
        s_put(b, "snapbus_memory_used_bytes{part=\"requests\"} %llu\n",
              (unsigned long long) cs.used);
    }
    if (src->fanout != NULL) {
        uint64_t all = S_LOAD(src->fanout->blob_bytes);
        uint64_t ring = S_LOAD(src->fanout->retained_bytes);
        s_put(b, "snapbus_memory_used_bytes{part=\"ring\"} %llu\n",
              (unsigned long long) ring);
        s_put(b, "snapbus_memory_used_bytes{part=\"outgoing\"} %llu\n",
              (unsigned long long) (all > ring ? all - ring : 0));
    }
    if (src->dedup != NULL)
        s_put(b, "snapbus_memory_used_bytes{part=\"dedup\"} %llu\n",
              (unsigned long long) S_LOAD(src->dedup->mem_bytes));
    if (src->credit != NULL) {
        sb_credit_stats cs;
        sb_credit_stats_get(src->credit, &cs);
        s_metric(b, "snapbus_memory_requests_high_bytes", "gauge",
                 "Highest bytes requests in flight held.", cs.high);
        s_metric(b, "snapbus_memory_waits_total", "counter",
                 "Times the ingest stopped reading: requests in flight held "
                 "their whole credit.", cs.waits);
        s_head(b, "snapbus_memory_wait_seconds_total", "counter",
               "Time the ingest spent not reading for want of credit.");
        s_put(b, "snapbus_memory_wait_seconds_total %.6f\n",
              (double) cs.wait_ns / 1e9);
    }
    if (src->fanout != NULL) {
        s_metric(b, "snapbus_pub_skipped_total", "counter",
                 "Batches not sent live because ZeroMQ held the outgoing "
                 "share; subscribers fetch them.",
                 S_LOAD(src->fanout->pub_skipped));
        s_metric(b, "snapbus_fetch_shortened_total", "counter",
                 "Fetch pages cut to one batch because ZeroMQ held the "
                 "outgoing share.", S_LOAD(src->fanout->fetch_shortened));
    }
}

/* One family per field, each with a sample per queue, as the format asks
 * (a family's samples must be together). */
static void
s_render_links(s_buf *b, sb_link *const *links, size_t n)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"snapbus_queue_depth", "gauge", "Items in the queue now."},
        {"snapbus_queue_capacity", "gauge",
         "The queue's bound, items (broker.queue)."},
        {"snapbus_queue_high_water", "gauge", "Highest depth seen."},
        {"snapbus_queue_sent_total", "counter", "Items the queue accepted."},
        {"snapbus_queue_full_total", "counter",
         "Sends refused because the queue was full: the sender waited."},
        {"snapbus_queue_wait_seconds_total", "counter",
         "Time the sender spent waiting for room."},
    };
    sb_link_stats st[SB_METRICS_MAX_LINKS];

    for (size_t i = 0; i < n; i++)
        sb_link_stats_get(links[i], &st[i]);
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        s_head(b, fam[f].name, fam[f].type, fam[f].help);
        for (size_t i = 0; i < n; i++) {
            s_put(b, "%s{queue=\"", fam[f].name);
            s_label_value(b, st[i].name);
            switch (f) {
            case 0: s_put(b, "\"} %zu\n", st[i].depth); break;
            case 1: s_put(b, "\"} %zu\n", st[i].capacity); break;
            case 2: s_put(b, "\"} %zu\n", st[i].high); break;
            case 3: s_put(b, "\"} %llu\n", (unsigned long long) st[i].sent); break;
            case 4: s_put(b, "\"} %llu\n", (unsigned long long) st[i].full); break;
            default: s_put(b, "\"} %.6f\n", (double) st[i].wait_ns / 1e9); break;
            }
        }
    }
    s_head(b, "snapbus_queue_wait_seconds", "histogram",
           "Each wait of a queue's sender for room (the queue was full), from "
           "the refused send to the one that went in.");
    for (size_t i = 0; i < n; i++) {
        char l[96];
        size_t k = (size_t) snprintf(l, sizeof l, "queue=\"");
        /* queue names are fixed identifiers, but escape them all the same */
        for (const char *v = st[i].name; *v && k + 4 < sizeof l; v++) {
            if (*v == '\\' || *v == '"' || *v == '\n')
                l[k++] = '\\';
            l[k++] = *v == '\n' ? 'n' : *v;
        }
        snprintf(l + k, sizeof l - k, "\",");
        if (st[i].wait_hist != NULL)
            s_hist(b, "snapbus_queue_wait_seconds", l, st[i].wait_hist);
    }
}

static void
s_render_all(s_buf *b, const sb_metrics_sources *src, sb_metrics_state st,
             const char *version)
{
    s_head(b, "snapbus_build_info", "gauge", "Version of this broker.");
    s_put(b, "snapbus_build_info{version=\"");
    s_label_value(b, version != NULL ? version : "");
    s_put(b, "\",protocol=\"%d\"} 1\n", SB_WIRE_VERSION);
    s_metric(b, "snapbus_ready", "gauge",
             "1 while every actor runs, intake is open and the log has room "
             "(/readyz is 200).",
             st == SB_METRICS_READY &&
                 (src == NULL || src->log == NULL || S_LOAD(src->log->storage_full) == 0));
    s_metric(b, "snapbus_draining", "gauge",
             "1 after SIGTERM while open batches are flushed and acks sent.",
             st == SB_METRICS_DRAINING);
    if (src == NULL)
        return;
    if (src->last_seq != NULL)
        s_metric(b, "snapbus_last_seq", "gauge",
                 "Highest seq assigned by the sequencer.",
                 (uint64_t) atomic_load(src->last_seq));
    if (src->ingest != NULL)
        s_render_ingest(b, src->ingest);
    if (src->router != NULL)
        s_render_router(b, src->router);
    if (src->fanout != NULL)
        s_render_fanout(b, src->fanout);
    if (src->log != NULL)
        s_render_log(b, src->log);
    if (src->log_dir != NULL)
        s_render_disk(b, src->log_dir);
    if (src->auth != NULL)
        s_render_auth(b, src->auth);
    if (src->dedup != NULL)
        s_render_dedup(b, src->dedup);
    if (src->nlinks > 0)
        s_render_links(b, src->links, src->nlinks);
    if (src->budget != NULL)
        s_render_memory(b, src);
}

sb_err
sb_metrics_render(const sb_metrics_sources *src, sb_metrics_state st,
                  const char *version, char **out, size_t *len)
{
    s_buf b = {0};

    s_render_all(&b, src, st, version);
    s_put(&b, "%s", ""); /* a NUL even when nothing was written */
    if (b.oom) {
        free(b.p);
        return SB_ENOMEM;
    }
    *out = b.p;
    *len = b.len;
    return SB_OK;
}

/* The standard process_* metrics Prometheus client libraries export, so
 * the usual dashboards work. Linux /proc; left out where unreadable. */
static void
s_render_process(s_buf *b, double start_s)
{
    struct timespec cpu;
    long pages = 0, resident = 0;
    FILE *f;
    DIR *d;

    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu) == 0) {
        s_head(b, "process_cpu_seconds_total", "counter",
               "User and system CPU time spent, seconds.");
        s_put(b, "process_cpu_seconds_total %.3f\n",
              (double) cpu.tv_sec + (double) cpu.tv_nsec / 1e9);
    }
    if ((f = fopen("/proc/self/statm", "r")) != NULL) {
        if (fscanf(f, "%ld %ld", &pages, &resident) == 2) {
            s_head(b, "process_resident_memory_bytes", "gauge",
                   "Resident memory size, bytes.");
            s_put(b, "process_resident_memory_bytes %lld\n",
                  (long long) resident * sysconf(_SC_PAGESIZE));
        }
        fclose(f);
    }
    if ((d = opendir("/proc/self/fd")) != NULL) {
        long n = 0;
        while (readdir(d) != NULL)
            n++;
        closedir(d);
        s_head(b, "process_open_fds", "gauge", "Open file descriptors.");
        s_put(b, "process_open_fds %ld\n", n > 3 ? n - 3 : 0); /* ., .., dirfd */
    }
    s_head(b, "process_start_time_seconds", "gauge",
           "Start time of the process since the epoch, seconds.");
    s_put(b, "process_start_time_seconds %.3f\n", start_s);
}

/* ---- listen address --------------------------------------------------- */

sb_err
sb_metrics_parse_listen(const char *listen, char *host, size_t hostn,
                        uint16_t *port, char *why, size_t n)
{
    const char *colon, *h = listen;
    size_t hl;
    char *end;
    unsigned long p;
    unsigned char addr[sizeof(struct in6_addr)];
    char tmp[INET6_ADDRSTRLEN + 1];

    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(why, n, "expected [IPV6]:PORT");
            return SB_EINVAL;
        }
        h = listen + 1;
        hl = (size_t) (close - h);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (colon == NULL) {
            snprintf(why, n, "expected HOST:PORT, e.g. 127.0.0.1:7704");
            return SB_EINVAL;
        }
        hl = (size_t) (colon - listen);
    }
    if (colon[1] < '0' || colon[1] > '9') {
        snprintf(why, n, "the port must be a number from 0 to 65535");
        return SB_EINVAL;
    }
    p = strtoul(colon + 1, &end, 10);
    if (*end != '\0' || p > 65535) {
        snprintf(why, n, "the port must be a number from 0 to 65535");
        return SB_EINVAL;
    }
    if (hl == 0 || (hl == 1 && h[0] == '*')) {
        h = "0.0.0.0";
        hl = 7;
    }
    if (hl >= sizeof tmp || hl >= hostn) {
        snprintf(why, n, "expected a numeric IP address before the port");
        return SB_EINVAL;
    }
    memcpy(tmp, h, hl);
    tmp[hl] = '\0';
    if (inet_pton(listen[0] == '[' ? AF_INET6 : AF_INET, tmp, addr) != 1) {
        snprintf(why, n, "expected a numeric IP address before the port "
                         "(0.0.0.0 or * for every interface)");
        return SB_EINVAL;
    }
    memcpy(host, tmp, hl + 1);
    *port = (uint16_t) p;
    return SB_OK;
}

/* ---- HTTP shell --------------------------------------------------------- */

struct sb_metrics {
    struct MHD_Daemon *d;
    char url[96];
    char version[32];
    double start_s;
    sb_metrics_sources src; /* valid once attached is 1 */
    atomic_int attached;
    atomic_int state;
};

static void
s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[256];

    (void) cls;
    vsnprintf(line, sizeof line, fmt, ap);
    /* One logfmt value: no newline, no double quote. */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '"')
            *p = *p == '"' ? '\'' : ' ';
    for (size_t l = strlen(line); l > 0 && line[l - 1] == ' ';)
        line[--l] = '\0';
    SB_LOG(SB_LOG_WARN, "metrics.http", "error=\"%s\"", line);
}

static enum MHD_Result
s_reply(struct MHD_Connection *c, unsigned code, const char *type, char *body,
        size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    enum MHD_Result rc;

    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result
s_text(struct MHD_Connection *c, unsigned code, const char *text)
{
    char *body = strdup(text);

    if (body == NULL)
        return MHD_NO;
    return s_reply(c, code, "text/plain; charset=utf-8", body, strlen(body));
}

/* 1 while the log refuses publishes for lack of disk: not ready, so an
 * orchestrator sends publishers elsewhere and an operator sees why. */
static int
s_storage_full(const sb_metrics *m)
{
    return atomic_load(&m->attached) && m->src.log != NULL &&
           S_LOAD(m->src.log->storage_full) != 0;
}

static enum MHD_Result
s_handle(void *cls, struct MHD_Connection *c, const char *url,
         const char *method, const char *version, const char *upload,
         size_t *upload_len, void **con_cls)
{
    sb_metrics *m = cls;
    sb_metrics_state st = (sb_metrics_state) atomic_load(&m->state);

    (void) version;
    (void) upload;
    (void) upload_len;
    (void) con_cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
        strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return s_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET or HEAD only\n");
    if (strcmp(url, "/healthz") == 0)
        return s_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        if (st == SB_METRICS_READY && s_storage_full(m))
            return s_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "storage full: publishes are refused (free space, or "
                          "lower storage.segment_bytes)\n");
        if (st == SB_METRICS_READY)
            return s_text(c, MHD_HTTP_OK, "ready\n");
        return s_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                      st == SB_METRICS_DRAINING ? "draining\n" : "starting\n");
    }
    if (strcmp(url, "/metrics") == 0) {
        s_buf b = {0};
        s_render_all(&b, atomic_load(&m->attached) ? &m->src : NULL, st,
                     m->version);
        s_render_process(&b, m->start_s);
        s_put(&b, "%s", "");
        if (b.oom) {
            free(b.p);
            return s_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        return s_reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                       b.p, b.len);
    }
    return s_text(c, MHD_HTTP_NOT_FOUND, "not found: /metrics /healthz /readyz\n");
}

sb_err
sb_metrics_new(sb_metrics **out, const char *listen, const char *version)
{
    char host[INET6_ADDRSTRLEN + 1], why[128];
    uint16_t port;
    struct sockaddr_storage sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
                     MHD_USE_ERROR_LOG;
    sb_metrics *m;
    const union MHD_DaemonInfo *info;

    if (sb_metrics_parse_listen(listen, host, sizeof host, &port, why,
                                sizeof why) != SB_OK) {
        SB_LOG(SB_LOG_ERR, "metrics.listen", "address=%s error=\"%s\"", listen,
               why);
        return SB_EINVAL;
    }
    memset(&sa, 0, sizeof sa);
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *) &sa;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        inet_pton(AF_INET6, host, &a6->sin6_addr);
        flags |= MHD_USE_IPv6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *) &sa;
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        inet_pton(AF_INET, host, &a4->sin_addr);
    }
    if ((m = calloc(1, sizeof *m)) == NULL)
        return SB_ENOMEM;
    snprintf(m->version, sizeof m->version, "%s", version ? version : "");
    m->start_s = (double) sb_clock_wall_ms() / 1000.0;
    /* A scrape is tiny and rare: a few connections and a short timeout are
     * enough, and bound what a misbehaving client can hold. */
    m->d = MHD_start_daemon(
        flags, 0, NULL, NULL, s_handle, m, MHD_OPTION_EXTERNAL_LOGGER,
        s_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned) 32,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) 10, MHD_OPTION_END);
    if (m->d == NULL) {
        SB_LOG(SB_LOG_ERR, "metrics.listen",
               "address=%s error=\"cannot bind (port in use?)\"", listen);
        free(m);
        return SB_ESYS;
    }
    info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
    if (info != NULL && info->port != 0)
        port = info->port;
    if (strchr(host, ':') != NULL)
        snprintf(m->url, sizeof m->url, "http://[%s]:%u", host, port);
    else
        snprintf(m->url, sizeof m->url, "http://%s:%u", host, port);
    SB_LOG(SB_LOG_NOTICE, "metrics.listening", "url=%s", m->url);
    *out = m;
    return SB_OK;
}

const char *
sb_metrics_url(const sb_metrics *m)
{
    return m->url;
}

void
sb_metrics_attach(sb_metrics *m, const sb_metrics_sources *src)
{
    if (atomic_load(&m->attached))
        return;
    m->src = *src;
    if (m->src.nlinks > SB_METRICS_MAX_LINKS)
        m->src.nlinks = SB_METRICS_MAX_LINKS;
    atomic_store(&m->attached, 1); /* publishes src to the server thread */
}

void
sb_metrics_set_state(sb_metrics *m, sb_metrics_state st)
{
    if (m != NULL)
        atomic_store(&m->state, (int) st);
}

void
sb_metrics_destroy(sb_metrics **mp)
{
    sb_metrics *m = *mp;

    if (m == NULL)
        return;
    if (m->d != NULL)
        MHD_stop_daemon(m->d); /* joins the thread: no reads after this */
    free(m);
    *mp = NULL;
}
