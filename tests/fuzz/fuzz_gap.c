/* Fuzzes the subscriber's gap logic: the engine of clients/c/src/sbc_sub.c
 * (compiled in, with the snapshot decoder), which decides what to deliver,
 * what to fetch and what to report lost, behind a transport of function
 * pointers. Here the transport is a fake broker driven by the input, in
 * one of two modes (bit 0 of the first byte):
 *
 *  model    A broker that keeps its promises: events open per-aggregate
 *           batches, flushes publish them (batch ids in flush order, seqs
 *           interleaved across aggregates, low_seq as the broker computes
 *           it), the live stream delivers each matching batch, drops it
 *           or delivers it twice, retention may evict the oldest batches,
 *           the clock moves, and fetch and hello follow PROTOCOL.md
 *           (prefix, exact, seq range, cursor, page and scan bounds,
 *           headers_only, cursor_low_seq). The script is the input. Then
 *           the engine gets time to settle (probes). Checked: every batch
 *           returned is a real one of the subscribed topics from the start
 *           point on, at most once, in order per aggregate; and if nothing
 *           was evicted, nothing was reported lost and every wanted batch
 *           was returned: lossless, exactly once.
 *  hostile  A broker that answers anything: every live batch, hello and
 *           fetch reply (return code, page fields, batches) comes from the
 *           input, within what the transport contract allows (at most
 *           max_batches per page). Checked: no crash, leak or endless
 *           loop, and batches still come out in order per aggregate
 *           between restarts.
 * Time is the transport's clock, which only the harness moves. */
#include <string.h>

#include "fuzz.h"
#include "sbc_sub.h"
#include "snapbus.pb-c.h"

#define S_MAXB 512
#define S_NAMES 5

static const char *const s_names[S_NAMES] = {"a", "ab", "b", "c/1", "c/2"};
static const struct {
    const char *prefix;
    int exact;
} s_subs[5] = {{"", 0}, {"a", 0}, {"ab", 1}, {"c/", 0}, {"b", 1}};

typedef struct {
    int agg;
    uint64_t bid, first, last, prev, low;
} s_batch;

typedef struct {
    /* input */
    const uint8_t *in;
    size_t len, pos;
    int hostile;
    /* model broker */
    s_batch b[S_MAXB];
    size_t n, first;         /* published b[0..n), retained b[first..n) */
    uint64_t horizon, seq;   /* retained_first_seq; last seq assigned */
    uint64_t open_first[S_NAMES], open_last[S_NAMES];
    uint64_t topic_last[S_NAMES];
    uint32_t max_scan;
    size_t live[2 * S_MAXB];
    size_t lhead, ln;
    int evicted;
    int hellos;
    uint64_t c0;             /* batches published at the first hello */
    uint64_t now;
    unsigned calls;
    /* subscriber side */
    int sub[2], nsub;
    uint64_t resume;
    uint8_t delivered[S_MAXB + 1];
    uint64_t agg_last[S_NAMES];
    int losses;
    int stop_policy, stopped; /* SB_LOSS_STOP, and a loss came */
    sbc_sub *eng;
} s_fake;

static s_fake F;

static uint8_t
s_u8(void)
{
    return F.pos < F.len ? F.in[F.pos++] : 0;
}

static uint64_t
s_u64(void)
{
    uint64_t v = 0;
    int n = s_u8() % 9; /* 0 to 8 bytes: small values are likely */
    for (int i = 0; i < n; i++)
        v = v << 8 | s_u8();
    return v;
}

static int
s_agg_index(const char *name)
{
    for (int i = 0; i < S_NAMES; i++)
        if (strcmp(name, s_names[i]) == 0)
            return i;
    return -1;
}

/* Does the topic of aggregate a match subscription k (a SUB filter)? */
static int
s_matches(int a, int k)
{
    const char *p = s_subs[k].prefix, *name = s_names[a];
    if (s_subs[k].exact)
        return strcmp(name, p) == 0;
    return strncmp(name, p, strlen(p)) == 0;
}

static int
s_subscribed(int a)
{
    for (int i = 0; i < F.nsub; i++)
        if (s_matches(a, F.sub[i]))
            return 1;
    return 0;
}

static sb_snapshot *
s_encode(const char *agg, uint64_t bid, uint64_t first, uint64_t last,
         uint64_t prev, int events)
{
    Snapbus__SnapshotBatch m = SNAPBUS__SNAPSHOT_BATCH__INIT;
    Snapbus__SequencedEvent e = SNAPBUS__SEQUENCED_EVENT__INIT;
    Snapbus__SequencedEvent *ev[1] = {&e};
    uint8_t buf[256];
    sb_snapshot *s = NULL;

    m.version = 1;
    m.aggregate = (char *) agg;
    m.batch_id = bid;
    m.first_seq = first;
    m.last_seq = last;
    m.prev_last_seq = prev;
    e.seq = last;
    e.type = "T";
    if (events) {
        m.n_events = 1;
        m.events = ev;
    }
    size_t len = snapbus__snapshot_batch__pack(&m, buf);
    FUZZ_CHECK(sb_snapshot_decode(&s, buf, len) == SB_OK);
    return s;
}

/* ---- the model broker ----------------------------------------------------- */

static uint64_t
s_low_now(void)
{
    uint64_t low = F.seq + 1;
    for (int a = 0; a < S_NAMES; a++)
        if (F.open_first[a] != 0 && F.open_first[a] < low)
            low = F.open_first[a];
    return low;
}

static void
s_event(int a)
{
    F.seq++;
    if (F.open_first[a] == 0)
        F.open_first[a] = F.seq;
    F.open_last[a] = F.seq;
}

/* Flushes aggregate a's open batch; fate 0: live, 1: dropped, 2: twice. */
static void
s_flush(int a, int fate)
{
    if (F.open_first[a] == 0 || F.n == S_MAXB)
        return;
    s_batch *b = &F.b[F.n];
    b->agg = a;
    b->bid = F.n + 1;
    b->first = F.open_first[a];
    b->last = F.open_last[a];
    b->prev = F.topic_last[a];
    F.topic_last[a] = b->last;
    F.open_first[a] = F.open_last[a] = 0;
    b->low = s_low_now();
    F.n++;
    if (!s_subscribed(a) || fate == 1)
        return;
    for (int k = 0; k < (fate == 2 ? 2 : 1); k++)
        F.live[(F.lhead + F.ln++) % (2 * S_MAXB)] = F.n - 1;
}

static void
s_evict(size_t k)
{
    for (; k > 0 && F.first < F.n; k--, F.first++) {
        if (F.b[F.first].last + 1 > F.horizon)
            F.horizon = F.b[F.first].last + 1;
        F.evicted = 1;
    }
}

static uint64_t
s_last_seq(void)
{
    uint64_t m = 0;
    for (size_t i = 0; i < F.n; i++)
        if (F.b[i].last > m)
            m = F.b[i].last;
    return m;
}

/* ---- the transport -------------------------------------------------------- */

/* In hostile mode, once the input is spent (or after many calls) every
 * call is a timeout: recv then returns, and the run ends. */
static int
s_spent(void)
{
    return F.hostile && (F.pos >= F.len || ++F.calls > 20000);
}

static sb_snapshot *
s_random_batch(int events)
{
    int a = s_u8() % S_NAMES;
    uint64_t bid = s_u64(), first = s_u64(), last = s_u64(), prev = s_u64();
    return s_encode(s_names[a], bid, first, last, prev, events);
}

static sb_err
s_t_live(void *ctx, sb_snapshot **out, int wait_ms)
{
    (void) ctx;
    if (F.hostile) {
        if (s_spent())
            goto timeout;
        switch (s_u8() % 6) {
        case 0: goto timeout;
        case 1: return SB_EAGAIN;
        case 2: return SB_ESYS;
        default: *out = s_random_batch(1); return SB_OK;
        }
    }
    if (F.ln > 0) {
        const s_batch *b = &F.b[F.live[F.lhead]];
        F.lhead = (F.lhead + 1) % (2 * S_MAXB);
        F.ln--;
        *out = s_encode(s_names[b->agg], b->bid, b->first, b->last, b->prev, 1);
        return SB_OK;
    }
timeout:
    if (wait_ms < 0)
        return SB_EAGAIN; /* as a signal would: never block */
    F.now += (uint64_t) wait_ms;
    return SB_ETIMEDOUT;
}

static uint64_t
s_t_drain(void *ctx)
{
    uint64_t n = F.ln;
    (void) ctx;
    F.ln = 0;
    return F.hostile ? s_u8() : n;
}

static sb_err
s_t_hello(void *ctx, sbc_hello_info *h, int wait_ms, int fresh)
{
    (void) ctx, (void) fresh;
    if (F.hostile) {
        if (s_spent() || s_u8() % 4 == 0) {
            F.now += wait_ms > 0 ? (uint64_t) wait_ms : 1;
            return SB_ETIMEDOUT;
        }
        h->epoch = 1 + s_u8() % 2;
        h->last_seq = s_u64();
        h->last_batch_id = s_u64();
        h->low_seq = s_u64();
        h->end_bid = s_u8() % 4 == 0 ? s_u64() : 0;
        return s_u8() % 8 == 0 ? SB_EPROTO : SB_OK;
    }
    if (F.hellos++ == 0)
        F.c0 = F.n;
    h->epoch = 77;
    h->last_seq = s_last_seq();
    h->last_batch_id = F.n;
    h->low_seq = s_low_now();
    return SB_OK;
}

static int
s_req_matches(const sbc_fetch_req *q, const s_batch *b)
{
    const char *name = s_names[b->agg];
    size_t plen = strlen(q->prefix);
    return b->last >= q->from_seq && (q->to_seq == 0 || b->first <= q->to_seq) &&
           strncmp(name, q->prefix, plen) == 0 &&
           (!q->exact || strlen(name) == plen);
}

static sb_err
s_t_fetch(void *ctx, const sbc_fetch_req *q, sb_fetch_page *info,
          sb_snapshot **out, int wait_ms, int fresh)
{
    (void) ctx, (void) fresh;
    FUZZ_CHECK(q->prefix != NULL);
    FUZZ_CHECK(q->max_batches >= 1 && q->max_batches <= SBC_PAGE);
    FUZZ_CHECK(q->to_seq == 0 || q->to_seq >= q->from_seq);
    memset(info, 0, sizeof *info);
    if (F.hostile) {
        if (s_spent()) {
            F.now += wait_ms > 0 ? (uint64_t) wait_ms : 1;
            return SB_ETIMEDOUT;
        }
        uint8_t what = s_u8();
        info->epoch = what & 0x80 ? 2 : (what & 0x40 ? 0 : 1);
        info->last_batch_id = s_u8() % 2 ? q->after_batch_id + s_u8() : s_u64();
        info->more = s_u8() & 1;
        info->retained_first_seq = s_u64();
        info->retained_first_batch_id = s_u64();
        info->last_seq = s_u64();
        info->last_batch_id_published = s_u64();
        info->cursor_low_seq = s_u64();
        info->end_batch_id = what & 0x20 ? s_u64() : 0;
        switch (what % 8) {
        case 0: F.now += 1; return SB_ETIMEDOUT;
        case 1: return SB_ENOENT;
        case 2: return SB_EPROTO;
        case 3: return SB_EAGAIN;
        default: break;
        }
        uint32_t count = s_u8() % 9;
        if (count > q->max_batches)
            count = q->max_batches;
        for (uint32_t i = 0; i < count; i++)
            out[i] = s_random_batch(!q->headers_only);
        info->count = count;
        return SB_OK;
    }
    uint64_t first_id = F.first < F.n ? F.first + 1 : F.n + 1;
    size_t start;
    info->epoch = 77;
    info->retained_first_seq = F.horizon ? F.horizon : 1;
    info->retained_first_batch_id = F.first < F.n ? first_id : 0;
    info->last_seq = s_last_seq();
    info->last_batch_id_published = F.n;
    if (q->after_batch_id != 0) {
        if (q->after_batch_id < first_id - 1)
            return SB_ENOENT;
        start = q->after_batch_id >= F.n ? F.n : (size_t) q->after_batch_id;
    } else {
        if (q->from_seq != 0 && q->from_seq < info->retained_first_seq)
            return SB_ENOENT;
        start = F.first;
    }
    info->last_batch_id = q->after_batch_id;
    uint32_t scanned = 0;
    for (size_t i = start; i < F.n; i++, scanned++) {
        const s_batch *b = &F.b[i];
        if (info->count == q->max_batches || scanned == F.max_scan) {
            info->more = 1;
            break;
        }
        info->last_batch_id = b->bid;
        if (s_req_matches(q, b))
            out[info->count++] = s_encode(s_names[b->agg], b->bid, b->first,
                                          b->last, b->prev, !q->headers_only);
    }
    if (info->last_batch_id != 0 && info->last_batch_id <= F.n)
        info->cursor_low_seq = F.b[info->last_batch_id - 1].low;
    return SB_OK;
}

static uint64_t
s_t_now(void *ctx)
{
    (void) ctx;
    return F.now;
}

/* ---- the application ------------------------------------------------------ */

static int
s_wanted(const s_batch *b)
{
    return s_subscribed(b->agg) && (F.resume ? b->last >= F.resume : b->bid > F.c0);
}

/* One recv; what came out is checked. 1 if something came out. The
 * timeout is always 0, as in tests/unit/test_subscriber.c: the engine
 * measures what is left of a timeout on the real clock but compares the
 * transport's clock with the deadline, so with a fake clock a timeout
 * above 0 would never end (with the real clock in both, as the shell
 * has, it does). Time moves only where the harness moves it. */
static int
s_recv(void)
{
    sb_snapshot *b = NULL;
    sb_err rc = sbc_sub_recv(F.eng, &b, 0);

    if (F.stopped) { /* SB_LOSS_STOP: for good */
        FUZZ_CHECK(rc == SB_ENOENT);
        return 0;
    }

    if (rc == SB_OK) {
        FUZZ_CHECK(b != NULL);
        int a = s_agg_index(sb_snapshot_aggregate(b));
        uint64_t bid = sb_snapshot_batch_id(b), ls = sb_snapshot_last_seq(b);
        FUZZ_CHECK(a >= 0);
        /* In order per aggregate, never twice. */
        FUZZ_CHECK(ls > F.agg_last[a] || (F.hostile && ls == 0 && F.agg_last[a] == 0));
        F.agg_last[a] = ls;
        if (!F.hostile) {
            FUZZ_CHECK(bid >= 1 && bid <= F.n);
            const s_batch *m = &F.b[bid - 1];
            FUZZ_CHECK(m->agg == a && m->last == ls);
            FUZZ_CHECK(sb_snapshot_first_seq(b) == m->first);
            FUZZ_CHECK(sb_snapshot_prev_last_seq(b) == m->prev);
            FUZZ_CHECK(s_wanted(m));
            FUZZ_CHECK(F.delivered[bid]++ == 0);
        }
        sb_snapshot_destroy(&b);
        return 1;
    }
    FUZZ_CHECK(b == NULL);
    if (rc == SB_ENOENT) {
        sb_loss l;
        FUZZ_CHECK(sbc_sub_loss(F.eng, &l) == SB_OK);
        FUZZ_CHECK(l.aggregate != NULL);
        (void) strlen(l.aggregate);
        FUZZ_CHECK(F.hostile || F.evicted); /* no eviction: no loss */
        F.losses++;
        F.stopped = F.stop_policy;
        return 1;
    }
    if (rc == SB_ERESTART) {
        FUZZ_CHECK(F.hostile); /* the model broker never restarts */
        memset(F.agg_last, 0, sizeof F.agg_last);
        return 1;
    }
    if (!F.hostile)
        FUZZ_CHECK(rc == SB_EAGAIN);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sbc_transport t = {NULL, s_t_live, s_t_drain, s_t_hello, s_t_fetch, s_t_now};
    sbc_sub_config cfg;

    if (size < 4 || size > 4096)
        return 0;
    memset(&F, 0, sizeof F);
    F.in = data;
    F.len = size;
    uint8_t flags = s_u8();
    F.hostile = flags & 1;
    F.now = 1000;
    F.max_scan = 2 + s_u8() % 40;
    F.nsub = 1 + (flags >> 1 & 1);
    for (int i = 0; i < F.nsub; i++)
        F.sub[i] = s_u8() % 5;
    F.resume = flags & 4 ? 1 + s_u8() % 24 : 0;
    cfg.resume_from_seq = F.resume;
    cfg.probe_ms = 10 + s_u8() % 50;
    cfg.on_loss = flags & 8 ? SB_LOSS_STOP : SB_LOSS_FAIL;
    F.stop_policy = cfg.on_loss == SB_LOSS_STOP;
    FUZZ_CHECK(sbc_sub_new(&F.eng, &t, &cfg) == SB_OK);
    for (int i = 0; i < F.nsub; i++)
        FUZZ_CHECK(sbc_sub_add(F.eng, s_subs[F.sub[i]].prefix,
                               s_subs[F.sub[i]].exact) == SB_OK);

    if (F.hostile) {
        for (int i = 0; i < 400 && F.pos < F.len; i++) {
            F.now += s_u8();
            s_recv();
        }
        sbc_sub_destroy(&F.eng);
        return 0;
    }

    /* The script. */
    while (F.pos < F.len) {
        uint8_t op = s_u8(), arg = s_u8();
        switch (op % 8) {
        case 0: case 1: case 2:
            s_event(arg % S_NAMES);
            break;
        case 3:
            s_flush(arg % S_NAMES, (arg >> 4) % 3);
            break;
        case 4: case 7:
            for (int i = 0; i < 1 + arg % 8 && s_recv(); i++)
                ;
            break;
        case 5:
            F.now += (uint64_t) arg * 4;
            break;
        case 6:
            s_evict(arg % 8);
            break;
        }
    }
    /* Everything open is published, and the engine gets time: idle
     * probes find what the live stream dropped. */
    for (int a = 0; a < S_NAMES; a++)
        s_flush(a, 0);
    for (int round = 0, quiet = 0; round < 400 && quiet < 20; round++) {
        int got = 0;
        F.now += (uint64_t) cfg.probe_ms + 1;
        for (int k = 0; k < 2000 && s_recv(); k++)
            got = 1;
        quiet = got ? 0 : quiet + 1;
    }
    if (!F.evicted && F.hellos > 0) {
        for (size_t i = 0; i < F.n; i++)
            if (s_wanted(&F.b[i]) && F.delivered[i + 1] != 1) {
                fprintf(stderr, "batch %zu (%s, seqs %llu..%llu) not delivered\n",
                        i + 1, s_names[F.b[i].agg],
                        (unsigned long long) F.b[i].first,
                        (unsigned long long) F.b[i].last);
                FUZZ_CHECK(!"lossless: every wanted batch once");
            }
    }
    sbc_sub_destroy(&F.eng);
    return 0;
}
