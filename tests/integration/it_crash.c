/* Crash test: the broker is killed with SIGKILL at random moments while a
 * publisher sends with `durable` acks, and restarted on the same data
 * directory, SNAPBUS_CRASH_ROUNDS times (default 20; the documented long
 * run is 50). Every seq acked as durable is recorded with its payload.
 *
 * At the end, after one last clean start and stop:
 * - `snapbus log verify` passes;
 * - the log's seqs are 1..N, gap-free and increasing, and every
 *   aggregate's seqs run 1, 2, 3... (seqs never reused across crashes);
 * - every acked event is in the log exactly once, at the seq its ack gave;
 * - every event is in exactly one batch record, batch ids run 1, 2, 3...,
 *   and each topic's prev_last_seq chain is unbroken (events that were in
 *   open batches at a crash were published after the restart, once);
 * - a fetch from seq 1 over the query socket (served from the log: the
 *   memory ring of the last run holds none of it) returns exactly those
 *   batches.
 * SNAPBUS_CRASH_SEED makes a run repeatable; the seed is printed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include <snapbus/snapbus.h>

#define AGGS 16
#define MAX_EVENTS (4u << 20)

typedef struct {
    uint32_t round;
    uint32_t token;
    uint64_t seq;
} acked;

static char s_data[128];
static char s_log_dir[160];

/* Everything acked, over all rounds. */
static acked *s_acked;
static size_t s_nacked;
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    const char *endpoint;
    uint32_t round;
    atomic_int stop;
    uint64_t sent;
    uint64_t refused;
} pub_ctx;

static void
s_on_ack(const sb_ack_info *a, void *arg)
{
    pub_ctx *p = arg;

    if (a->err != SB_OK) {
        p->refused++;
        return;
    }
    pthread_mutex_lock(&s_lock);
    if (s_nacked < MAX_EVENTS)
        s_acked[s_nacked++] = (acked){p->round, (uint32_t)a->token, a->seq};
    pthread_mutex_unlock(&s_lock);
}

static void *
s_publisher(void *arg)
{
    pub_ctx *p = arg;
    sb_publisher_opts o;
    sb_publisher *pub;
    char agg[16], payload[32];

    sb_publisher_opts_defaults(&o);
    o.endpoint = p->endpoint;
    o.ack = SB_ACK_DURABLE;
    o.window = 16;
    o.batch_events = 64;
    o.linger_ms = 1;
    /* Blocking calls give up soon, so a dead broker cannot hang us. */
    o.timeout_ms = 300;
    if (sb_publisher_new(&pub, &o) != SB_OK)
        return NULL;
    sb_publisher_on_ack(pub, s_on_ack, p);
    for (uint64_t i = 0; !atomic_load(&p->stop); i++) {
        sb_pub_event ev = {0};
        uint64_t token;
        snprintf(agg, sizeof agg, "c/%d", (int)(i % AGGS));
        int n = snprintf(payload, sizeof payload, "r%u:%llu", p->round,
                         (unsigned long long)i + 1);
        ev.aggregate = agg;
        ev.type = "T";
        ev.payload = payload;
        ev.payload_len = (size_t)n;
        if (sb_publisher_publish(pub, &ev, 0, &token) != SB_OK)
            break; /* the broker is gone */
        p->sent++;
    }
    sb_publisher_destroy(&pub);
    return NULL;
}

static int
s_start(sbt_broker *b)
{
    const char *extra[] = {"--data-dir", s_data,
                           /* Batches stay open a while, so a kill often
                            * finds some: they must be published later. */
                           "--default-delay-ms", "40", "--segment-bytes",
                           "262144", "--log-level", "notice", NULL};
    return sbt_broker_start(b, extra);
}

static void
s_forget(sbt_broker *b)
{
    char cmd[128];

    snprintf(cmd, sizeof cmd, "rm -rf %s", b->dir);
    (void)system(cmd);
}

/* ---- reading the log back through `snapbus log dump` -------------------- */

typedef struct {
    uint64_t seq, agg_seq;
    int agg;
    uint32_t round, token;
    int in_batches;
} log_event;

typedef struct {
    log_event *ev; /* by seq - 1 */
    size_t nev;
    uint64_t batches;
    uint64_t last_batch;
    uint64_t topic_last[AGGS];
    int violations;
    char first[256];
} log_view;

static void
s_violation(log_view *v, const char *fmt, ...)
{
    va_list ap;

    if (v->violations++ == 0) {
        va_start(ap, fmt);
        vsnprintf(v->first, sizeof v->first, fmt, ap);
        va_end(ap);
    }
}

static const char *
s_field(const char *line, const char *key)
{
    const char *p = strstr(line, key);

    return p ? p + strlen(key) : NULL;
}

static void
s_parse_event(log_view *v, const char *line)
{
    const char *s = s_field(line, " seq="), *as = s_field(line, " agg_seq="),
               *ag = s_field(line, " agg=\"c/"),
               *pl = s_field(line, " payload=\"r");
    uint64_t seq;
    unsigned round;
    unsigned long long token;

    if (s == NULL || as == NULL || ag == NULL || pl == NULL ||
        sscanf(pl, "%u:%llu", &round, &token) != 2) {
        s_violation(v, "unparsable event line: %.120s", line);
        return;
    }
    seq = strtoull(s, NULL, 10);
    if (seq != v->nev + 1) {
        s_violation(v, "seq %llu after %zu", (unsigned long long)seq, v->nev);
        return;
    }
    v->ev[v->nev++] = (log_event){seq,   strtoull(as, NULL, 10), atoi(ag),
                                  round, (uint32_t)token,        0};
}

static void
s_parse_batch(log_view *v, const char *line)
{
    const char *id = s_field(line, "batch id="),
               *ag = s_field(line, " agg=\"c/"),
               *pl = s_field(line, " prev_last="),
               *sq = s_field(line, " seqs=");
    uint64_t bid, prev, last = 0;
    int a;

    if (id == NULL || ag == NULL || pl == NULL || sq == NULL) {
        s_violation(v, "unparsable batch line: %.120s", line);
        return;
    }
    bid = strtoull(id, NULL, 10);
    a = atoi(ag);
    prev = strtoull(pl, NULL, 10);
    if (bid != v->last_batch + 1)
        s_violation(v, "batch id %llu after %llu", (unsigned long long)bid,
                    (unsigned long long)v->last_batch);
    v->last_batch = bid;
    v->batches++;
    if (a < 0 || a >= AGGS || prev != v->topic_last[a])
        s_violation(
            v, "batch %llu of c/%d: prev_last_seq %llu, topic's last %llu",
            (unsigned long long)bid, a, (unsigned long long)prev,
            (unsigned long long)(a >= 0 && a < AGGS ? v->topic_last[a] : 0));
    /* seqs=1-3,7,9-10 */
    const char *p = sq;
    while (*p >= '0' && *p <= '9') {
        char *end;
        uint64_t lo = strtoull(p, &end, 10), hi = lo;
        if (*end == '-')
            hi = strtoull(end + 1, &end, 10);
        for (uint64_t s = lo; s <= hi; s++) {
            if (s == 0 || s > v->nev) {
                s_violation(v, "batch %llu names seq %llu not logged before it",
                            (unsigned long long)bid, (unsigned long long)s);
                continue;
            }
            if (v->ev[s - 1].in_batches++ > 0)
                s_violation(v, "seq %llu in two batches",
                            (unsigned long long)s);
            if (v->ev[s - 1].agg != a)
                s_violation(v, "seq %llu of c/%d in a batch of c/%d",
                            (unsigned long long)s, v->ev[s - 1].agg, a);
            last = s;
        }
        p = *end == ',' ? end + 1 : end;
    }
    if (a >= 0 && a < AGGS)
        v->topic_last[a] = last;
}

static void
s_read_log(log_view *v)
{
    char cmd[512], *line = NULL;
    size_t cap = 0;
    FILE *f;

    snprintf(cmd, sizeof cmd, "%s log dump --payload text %s", SNAPBUS_CLI_PATH,
             s_log_dir);
    assert_non_null(f = popen(cmd, "r"));
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "event ", 6) == 0)
            s_parse_event(v, line);
        else if (strncmp(line, "batch ", 6) == 0)
            s_parse_batch(v, line);
        else
            s_violation(v, "unexpected dump line: %.120s", line);
    }
    free(line);
    assert_int_equal(pclose(f), 0);
}

/* ---- fetch from seq 1 -------------------------------------------------- */

typedef struct {
    log_view *v;
    uint64_t batches, events, next_id;
    int bad;
} fetch_ctx;

static void
s_on_batch(sb_snapshot *b, void *arg)
{
    fetch_ctx *c = arg;

    if (sb_snapshot_batch_id(b) != c->next_id && c->bad++ < 5)
        print_message("fetch: batch %llu after %llu\n",
                      (unsigned long long)sb_snapshot_batch_id(b),
                      (unsigned long long)c->next_id - 1);
    c->next_id = sb_snapshot_batch_id(b) + 1;
    c->batches++;
    for (size_t i = 0; i < sb_snapshot_count(b); i++) {
        sb_snapshot_event e;
        unsigned round;
        unsigned long long token;
        char pl[32];
        sb_snapshot_event_get(b, i, &e);
        c->events++;
        /* Payloads are bytes, not C strings. */
        snprintf(pl, sizeof pl, "%.*s", (int)e.payload_len,
                 (const char *)e.payload);
        if ((e.seq == 0 || e.seq > c->v->nev ||
             sscanf(pl, "r%u:%llu", &round, &token) != 2 ||
             c->v->ev[e.seq - 1].round != round ||
             c->v->ev[e.seq - 1].token != token ||
             c->v->ev[e.seq - 1].agg_seq != e.agg_seq) &&
            c->bad++ < 5)
            print_message("fetch: batch %llu event seq=%llu agg_seq=%llu "
                          "payload=%.*s\n",
                          (unsigned long long)sb_snapshot_batch_id(b),
                          (unsigned long long)e.seq,
                          (unsigned long long)e.agg_seq, (int)e.payload_len,
                          (const char *)e.payload);
    }
    sb_snapshot_destroy(&b);
}

static void
s_fetch_all(const sbt_broker *b, log_view *v)
{
    fetch_ctx c = {v, 0, 0, 1, 0};
    sb_fetch_opts o;
    sb_fetch_info info;
    sb_err rc;

    sb_fetch_opts_defaults(&o);
    o.from_seq = 1;
    do {
        rc = sb_fetch(b->query, &o, s_on_batch, &c, &info, 10000);
        assert_int_equal(rc, SB_OK);
        o.after_batch_id = info.last_batch_id;
    } while (info.more);
    print_message("fetched from the log: %llu batches, %llu events\n",
                  (unsigned long long)c.batches, (unsigned long long)c.events);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.batches, v->batches);
    assert_int_equal(c.events, v->nev);
}

static int
s_cmp_acked(const void *x, const void *y)
{
    const acked *a = x, *b = y;

    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static void
test_kill9_loses_nothing_acked(void **state)
{
    const char *env = getenv("SNAPBUS_CRASH_ROUNDS");
    const char *seed_env = getenv("SNAPBUS_CRASH_SEED");
    int rounds = env ? atoi(env) : 20;
    unsigned seed = seed_env ? (unsigned)strtoul(seed_env, NULL, 10)
                             : (unsigned)time(NULL) ^ (unsigned)getpid();
    sbt_broker b;
    uint64_t torn_seen = 0;

    (void)state;
    /* snapbusd refuses SNAPBUS_* variables it does not know. */
    unsetenv("SNAPBUS_CRASH_ROUNDS");
    unsetenv("SNAPBUS_CRASH_SEED");
    if (rounds < 1)
        rounds = 20;
    srand(seed);
    print_message("crash rounds=%d seed=%u\n", rounds, seed);
    strcpy(s_data, "/tmp/sbt-crash.XXXXXX");
    assert_non_null(mkdtemp(s_data));
    snprintf(s_log_dir, sizeof s_log_dir, "%s/log", s_data);
    assert_non_null(s_acked = calloc(MAX_EVENTS, sizeof *s_acked));

    for (int r = 1; r <= rounds; r++) {
        pub_ctx p = {.round = (uint32_t)r};
        pthread_t t;
        int st;

        assert_int_equal(s_start(&b), 0);
        p.endpoint = b.ingest;
        assert_int_equal(pthread_create(&t, NULL, s_publisher, &p), 0);
        usleep((useconds_t)(20000 + rand() % 400000));
        kill(b.pid, SIGKILL);
        waitpid(b.pid, &st, 0);
        assert_true(WIFSIGNALED(st));
        atomic_store(&p.stop, 1);
        pthread_join(t, NULL);
        /* How the restart went shows in the next round's log. */
        char cmd[256];
        snprintf(cmd, sizeof cmd,
                 "grep -c 'torn=[1-9]' %s/broker.log >/dev/null", b.dir);
        if (system(cmd) == 0)
            torn_seen++;
        s_forget(&b);
        if (r % 5 == 0 || r == rounds)
            print_message("round %d: acked so far %zu (this round sent %llu, "
                          "refused %llu)\n",
                          r, s_nacked, (unsigned long long)p.sent,
                          (unsigned long long)p.refused);
    }

    /* One clean run: what was open at the last crash is published, then
     * everything is flushed and synced. */
    assert_int_equal(s_start(&b), 0);
    usleep(300000);
    log_view v = {0};
    assert_non_null(v.ev = calloc(MAX_EVENTS, sizeof *v.ev));
    s_read_log(&v);
    /* Before the stop: fetch from the log over the query socket. Every
     * batch published so far is in it (the dump above may show a batch
     * the fan-out has not sent yet only if one is still open: 300 ms is
     * seven times the delay, so none is). */
    log_view v2 = {0};
    v2.ev = v.ev;
    v2.nev = v.nev;
    v2.batches = v.batches;
    s_fetch_all(&b, &v2);
    assert_int_equal(sbt_broker_stop(&b, 30), 0);
    s_forget(&b);

    /* verify, then the dump once more (after the clean stop). */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s log verify %s", SNAPBUS_CLI_PATH, s_log_dir);
    assert_int_equal(system(cmd), 0);
    memset(&v, 0, sizeof v);
    v.ev = v2.ev;
    memset(v.ev, 0, MAX_EVENTS * sizeof *v.ev);
    s_read_log(&v);
    if (v.violations)
        print_message("first violation: %s\n", v.first);
    assert_int_equal(v.violations, 0);

    /* Aggregate seqs 1, 2, 3... per aggregate, across every restart. */
    uint64_t agg_next[AGGS];
    for (int a = 0; a < AGGS; a++)
        agg_next[a] = 1;
    for (size_t i = 0; i < v.nev; i++) {
        log_event *e = &v.ev[i];
        assert_true(e->agg >= 0 && e->agg < AGGS);
        assert_int_equal(e->agg_seq, agg_next[e->agg]);
        agg_next[e->agg]++;
        /* Every event is in exactly one batch. */
        assert_int_equal(e->in_batches, 1);
    }
    /* Every acked event is there, at its seq, once (payloads are unique,
     * and nothing was ever sent twice). */
    qsort(s_acked, s_nacked, sizeof *s_acked, s_cmp_acked);
    for (size_t i = 0; i < s_nacked; i++) {
        acked *a = &s_acked[i];
        assert_true(i == 0 || a->seq > s_acked[i - 1].seq);
        assert_true(a->seq >= 1 && a->seq <= v.nev);
        assert_int_equal(v.ev[a->seq - 1].round, a->round);
        assert_int_equal(v.ev[a->seq - 1].token, a->token);
    }
    for (size_t i = 1; i < v.nev; i++)
        assert_true(v.ev[i].round > v.ev[i - 1].round ||
                    (v.ev[i].round == v.ev[i - 1].round &&
                     v.ev[i].token > v.ev[i - 1].token));
    print_message("log: %zu events (%zu acked durable), %llu batches, "
                  "%llu restarts found a torn tail\n",
                  v.nev, s_nacked, (unsigned long long)v.batches,
                  (unsigned long long)torn_seen);
    assert_true(s_nacked > 0);
    free(v.ev);
    free(s_acked);
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_data);
    (void)system(cmd);
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_kill9_loses_nothing_acked),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
