/* Writes the seed corpora committed under tests/fuzz/corpus/<name>/:
 * small valid inputs of every kind each harness reads, and a few typical
 * refusals, so that fuzzing starts from the real formats rather than
 * from nothing. Regenerate (the same bytes every time) with
 *
 *     ./build/fuzz/fuzz_seeds tests/fuzz/corpus
 *
 * Requests and batches are packed with protobuf-c from proto/snapbus.proto;
 * log files are written by the broker's own store (sb_store) into a
 * scratch directory and copied. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_config.h"
#include "sb_crc32c.h"
#include "sb_msg.h"
#include "sb_store.h"
#include "snapbus.pb-c.h"

static const char *s_root;
static int s_count;

static void
s_die(const char *what)
{
    fprintf(stderr, "fuzz_seeds: %s\n", what);
    exit(1);
}

/* Writes root/<dir>/seed-<name>: the mode byte (if mode >= 0), then p. */
static void
s_seed2(const char *dir, const char *name, int mode, const void *p, size_t n,
        const void *p2, size_t n2)
{
    char path[1024];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", s_root, dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/seed-%s", s_root, dir, name);
    if ((f = fopen(path, "wb")) == NULL)
        s_die(path);
    if (mode >= 0)
        fputc(mode, f);
    if (n > 0)
        fwrite(p, 1, n, f);
    if (n2 > 0)
        fwrite(p2, 1, n2, f);
    if (fclose(f) != 0)
        s_die(path);
    s_count++;
}

static void
s_seed(const char *dir, const char *name, int mode, const void *p, size_t n)
{
    s_seed2(dir, name, mode, p, n, NULL, 0);
}

/* ---- requests (fuzz_wire) ---------------------------------------------- */

static void
s_request(const char *name, Snapbus__Request *r)
{
    size_t n = snapbus__request__get_packed_size(r);
    uint8_t *b = malloc(n ? n : 1);

    snapbus__request__pack(r, b);
    s_seed("wire", name, -1, b, n);
    free(b);
}

static void
s_event(Snapbus__Event *e, const char *agg, const char *type, const char *payload)
{
    snapbus__event__init(e);
    e->aggregate = (char *) agg;
    e->type = (char *) type;
    e->payload.data = (uint8_t *) payload;
    e->payload.len = strlen(payload);
}

static void
s_publish(const char *name, uint32_t version, int ack, Snapbus__Event **ev,
          size_t n)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Publish p = SNAPBUS__PUBLISH__INIT;

    p.ack = (Snapbus__AckLevel) ack;
    p.events = ev;
    p.n_events = n;
    r.version = version;
    r.request_id = 7;
    r.body_case = SNAPBUS__REQUEST__BODY_PUBLISH;
    r.publish = &p;
    s_request(name, &r);
}

static void
s_wire(void)
{
    Snapbus__Request r = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    Snapbus__Fetch f = SNAPBUS__FETCH__INIT;
    Snapbus__Event e[5], *ev[5] = {&e[0], &e[1], &e[2], &e[3], &e[4]};
    static char longname[301], bigpayload[2001];

    r.version = 1;
    r.request_id = 1;
    r.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    r.hello = &h;
    h.client = "fuzz-seed";
    s_request("hello", &r);

    s_event(&e[0], "e3/42", "Commit", "\x01\x02");
    e[0].source_pos = 100;
    e[0].has_source_pos = 1;
    s_publish("publish-none", 1, 0, ev, 1);
    s_publish("publish-sequenced", 1, 1, ev, 1);
    s_publish("publish-published", 1, 3, ev, 1);
    s_publish("publish-durable", 1, 2, ev, 1);
    s_publish("publish-ack-7", 1, 7, ev, 1);
    s_publish("publish-version-2", 2, 1, ev, 1);
    s_publish("publish-no-events", 1, 1, ev, 0);

    s_event(&e[1], "e3/7", "Effect", "");
    e[1].caused_by = 1;
    e[1].event_id = "id-1";
    e[1].producer_id = "node-a";
    e[1].producer_seq = 99;
    e[1].client_ts_ms = 1700000000000ull;
    s_event(&e[2], "e3/42", "Other", "xyz");
    s_publish("publish-three", 1, 1, ev, 3);

    memset(longname, 'n', 300);
    memset(bigpayload, 'p', 2000);
    s_event(&e[0], "", "T", "");               /* empty aggregate */
    s_event(&e[1], "a\xc0\xaf", "T", "");      /* overlong UTF-8 */
    s_event(&e[2], longname, "T", "");         /* over 255 bytes */
    s_event(&e[3], "a", "", "");               /* empty type */
    s_event(&e[4], "a", "T", bigpayload);      /* over small limits */
    s_publish("publish-per-event-errors", 1, 1, ev, 5);
    s_event(&e[0], "\xed\xa0\x80", "\xf4\x90\x80\x80", "");
    s_publish("publish-surrogate-name", 1, 0, ev, 1);

    r.body_case = SNAPBUS__REQUEST__BODY_FETCH;
    r.fetch = &f;
    s_request("fetch-all", &r);
    f.prefix = "e3/";
    f.from_seq = 5;
    f.to_seq = 9;
    f.after_batch_id = 2;
    f.max_batches = 10;
    f.max_bytes = 4096;
    s_request("fetch-range", &r);
    f.prefix = "e3/42";
    f.exact = 1;
    f.from_seq = 9;
    f.to_seq = 5;
    s_request("fetch-reversed-exact", &r);

    r.body_case = SNAPBUS__REQUEST__BODY__NOT_SET;
    s_request("no-body", &r);

    /* PROTOCOL.md section 13, byte for byte. */
    static const uint8_t worked[] = {
        0x08, 0x01, 0x10, 0x01, 0x22, 0x1b, 0x08, 0x01, 0x12, 0x17, 0x0a,
        0x05, 0x65, 0x33, 0x2f, 0x34, 0x32, 0x12, 0x06, 0x43, 0x6f, 0x6d,
        0x6d, 0x69, 0x74, 0x1a, 0x02, 0x01, 0x02, 0x28, 0x64, 0x50, 0x01};
    s_seed("wire", "protocol-md-example", -1, worked, sizeof worked);
    /* Unknown fields (top level, publish, event) must be skipped. */
    static const uint8_t unknown[] = {
        0x08, 0x01, 0x10, 0x02, 0x7a, 0x01, 0x00, 0x22, 0x0f, 0x08, 0x01,
        0x38, 0x05, 0x12, 0x0a, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62, 0x78,
        0x01, 0x5d, 0x00, 0x00};
    s_seed("wire", "unknown-fields", -1, unknown, sizeof unknown);
}

/* ---- snapshot batches (fuzz_snapshot) ----------------------------------- */

static void
s_batch(const char *name, Snapbus__SnapshotBatch *b)
{
    size_t n = snapbus__snapshot_batch__get_packed_size(b);
    uint8_t *buf = malloc(n ? n : 1);

    snapbus__snapshot_batch__pack(b, buf);
    s_seed("snapshot", name, -1, buf, n);
    free(buf);
}

static void
s_snapshot(void)
{
    Snapbus__SnapshotBatch b = SNAPBUS__SNAPSHOT_BATCH__INIT;
    Snapbus__SequencedEvent e[3], *ev[3] = {&e[0], &e[1], &e[2]};

    b.version = 1;
    b.aggregate = "e3/42";
    b.batch_id = 1;
    b.first_seq = b.last_seq = 1;
    b.aggregate_last_seq = 1;
    b.timestamp_ms = 1795596411816ull;
    b.close_reason = SNAPBUS__CLOSE_REASON__CLOSE_IMMEDIATE;
    for (int i = 0; i < 3; i++) {
        snapbus__sequenced_event__init(&e[i]);
        e[i].seq = (uint64_t) i * 2 + 1;
        e[i].aggregate_seq = (uint64_t) i + 1;
        e[i].type = "Commit";
        e[i].payload.data = (uint8_t *) "\x01\x02";
        e[i].payload.len = 2;
    }
    b.events = ev;
    b.n_events = 1;
    s_batch("one-event", &b);

    e[0].source_pos = 100;
    e[0].has_source_pos = 1;
    b.source_pos = 100;
    b.has_source_pos = 1;
    e[1].aggregate = "e3/7"; /* joined through caused_by */
    e[1].caused_by = 1;
    e[1].event_id = "id-1";
    e[2].producer_id = "node-a";
    e[2].producer_seq = 5;
    e[2].client_ts_ms = 1700000000000ull;
    b.n_events = 3;
    b.last_seq = 5;
    b.aggregate_last_seq = 2;
    b.prev_last_seq = 0;
    b.batch_id = 9;
    b.close_reason = SNAPBUS__CLOSE_REASON__CLOSE_MAX_EVENTS;
    s_batch("three-events", &b);

    b.version = 2;
    s_batch("version-2", &b);
    b.version = 1;
    b.n_events = 0;
    b.aggregate = "";
    s_batch("empty", &b);

    /* PROTOCOL.md section 13: the batch frame. */
    static const uint8_t worked[] = {
        0x08, 0x01, 0x12, 0x05, 0x65, 0x33, 0x2f, 0x34, 0x32, 0x18, 0x01,
        0x20, 0x01, 0x28, 0x01, 0x30, 0x01, 0x38, 0x64, 0x40, 0xa8, 0xc7,
        0x8b, 0x8f, 0xa1, 0x34, 0x50, 0x01, 0x5a, 0x14, 0x08, 0x01, 0x10,
        0x01, 0x22, 0x06, 0x43, 0x6f, 0x6d, 0x6d, 0x69, 0x74, 0x2a, 0x02,
        0x01, 0x02, 0x38, 0x64, 0x60, 0x01, 0x60, 0x01};
    s_seed("snapshot", "protocol-md-example", -1, worked, sizeof worked);
}

/* ---- configuration (fuzz_config) ---------------------------------------- */

static void
s_config(void)
{
    static const char ini[] =
        "; comment\n[broker]\ningest = tcp://0.0.0.0:7701\npub = tcp://0.0.0.0:7702\n"
        "query = tcp://0.0.0.0:7703\nmetrics = 127.0.0.1:0\nlog_level = info\n"
        "hwm = 10000\nqueue = 1024\n\n[limits]\nmax_message_bytes = 4M\n"
        "max_events_per_request = 8192\nmax_payload_bytes = 1M\nmax_name_bytes = 255\n\n"
        "[batching]\ndefault_delay_ms = 100\nmax_batch_events = 1000\n"
        "max_batch_bytes = 1M\nmax_open_batches = 10000\nmax_open_bytes = 1G\n\n"
        "[retention]\nbatches = 100000\nbytes = 64M\nfetch_max_batches = 1000\n"
        "fetch_max_bytes = 4M\nfetch_max_scan = 200000\n\n"
        "[delays]\ne3/* = 250\nfast/* = 0\nexact-name = 86400000\n";
    s_seed("config", "ini-full", 0, ini, sizeof ini - 1);
    static const char bad[] = "[broker]\nhwm = 0\nnot a line\n[limits]\nmax_name_bytes = 256\n";
    s_seed("config", "ini-bad", 0, bad, sizeof bad - 1);
    static const char keys[] = "broker\0hwm\0" "100\0delays\0e3/*\0" "5\0retention\0bytes\0" "64M";
    s_seed("config", "keys", 1, keys, sizeof keys - 1);
    static const char args[] = "--hwm\0" "100\0--delay\0e3/*=5\0--set\0limits.max_name_bytes=64\0"
                               "--retain-bytes\0" "1M\0--config\0/nonexistent";
    s_seed("config", "args", 2, args, sizeof args - 1);
    static const char env[] = "SNAPBUS_BROKER_HWM=50\0SNAPBUS_LIMITS_MAX_PAYLOAD_BYTES=1k\0"
                              "SNAPBUS_DELAYS_X=1\0PATH=/bin";
    s_seed("config", "env", 3, env, sizeof env - 1);
    static const char num1[] = "\x02" "17179869185G";
    s_seed("config", "numeric-overflow", 4, num1, sizeof num1 - 1);
    static const char num2[] = "\x00" "64k";
    s_seed("config", "numeric-hwm", 4, num2, sizeof num2 - 1);
}

/* ---- the durable log (fuzz_store, fuzz_logfiles) ---------------------------------------- */

static void
s_rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static uint8_t *
s_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long sz;

    if (f == NULL)
        s_die(path);
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t) sz + 1);
    if (b == NULL || fread(b, 1, (size_t) sz, f) != (size_t) sz)
        s_die(path);
    fclose(f);
    *n = (size_t) sz;
    return b;
}

static void
s_store(void)
{
    char dir[] = "/tmp/sb-seeds.XXXXXX", path[1024];
    sb_store_config cfg;
    sb_store *s;
    sb_req *req;
    uint8_t *data;
    sb_batch *b;
    static const char *aggs[4] = {"e3/42", "e3/7", "e3/42", "e3/42"};

    if (mkdtemp(dir) == NULL)
        s_die("mkdtemp");
    sb_store_config_defaults(&cfg);
    snprintf(cfg.dir, sizeof cfg.dir, "%s", dir);
    strcpy(cfg.sync, "none");
    if (sb_store_open(&s, &cfg, NULL) != SB_OK)
        s_die("sb_store_open");
    if (sb_req_new(&req, 4, 64, &data) != SB_OK)
        s_die("sb_req_new");
    for (uint32_t i = 0; i < 4; i++) {
        sb_event *ev = &req->ev[i];
        ev->agg = aggs[i];
        ev->agg_len = (uint32_t) strlen(aggs[i]);
        ev->type = "Commit";
        ev->type_len = 6;
        ev->payload = (const uint8_t *) "\x01\x02\x03";
        ev->payload_len = i;
        ev->seq = i + 1;
        ev->agg_seq = i == 1 ? 1 : i + (i == 0);
        ev->has_source_pos = i == 0;
        ev->source_pos = 100;
        if (i == 2) {
            ev->event_id = "id-2";
            ev->event_id_len = 4;
            ev->producer_id = "node-a";
            ev->producer_id_len = 6;
            ev->producer_seq = 2;
            ev->caused_by = 1;
        }
        if (sb_store_add_event(s, ev) != SB_OK)
            s_die("sb_store_add_event");
    }
    if (sb_batch_new(&b, "e3/42", 5) != SB_OK)
        s_die("sb_batch_new");
    sb_batch_push(b, &req->ev[0]);
    sb_batch_push(b, &req->ev[1]); /* e3/7's, joined through caused_by */
    req->ev[1].joined = 1;
    sb_batch_push(b, &req->ev[2]);
    b->id = 1;
    b->agg_last_seq = 2;
    b->timestamp_ms = 1795596411816ull;
    b->has_source_pos = 1;
    b->source_pos = 100;
    if (sb_store_add_batch(s, b) != SB_OK || sb_store_write(s) != SB_OK ||
        sb_store_sync(s) != SB_OK || sb_store_checkpoint(s) != SB_OK)
        s_die("writing the log");
    /* Records after the checkpoint: what recovery scans. */
    sb_batch *b2;
    if (sb_batch_new(&b2, "e3/42", 5) != SB_OK)
        s_die("sb_batch_new");
    sb_batch_push(b2, &req->ev[3]);
    b2->id = 2;
    b2->agg_last_seq = 3;
    b2->prev_last_seq = 3;
    b2->close_reason = SB_CLOSE_SHUTDOWN;
    if (sb_store_add_batch(s, b2) != SB_OK || sb_store_write(s) != SB_OK ||
        sb_store_sync(s) != SB_OK)
        s_die("writing the log");
    sb_store_close(&s);

    size_t seg_n, ckp_n;
    snprintf(path, sizeof path, "%s/00000000000000000001.seg", dir);
    uint8_t *seg = s_slurp(path, &seg_n);
    snprintf(path, sizeof path, "%s/checkpoint", dir);
    uint8_t *ckp = s_slurp(path, &ckp_n);
    /* A fixed creation time (segment header bytes 40..47, then its CRC at
     * 60), so that regenerating gives the same bytes. */
    for (int i = 0; i < 8; i++)
        seg[40 + i] = (uint8_t) (1795596411816ull >> (8 * i));
    uint32_t crc = sb_crc32c(0, seg, 60);
    for (int i = 0; i < 4; i++)
        seg[60 + i] = (uint8_t) (crc >> (8 * i));
    /* Bit 2 of the first byte: the harness fixes CRCs up (valid ones stay
     * as they are). fuzz_store reads records; fuzz_logfiles, files (bit 0:
     * recovery rather than a reader). */
    s_seed("store", "records", 4, seg + SB_STORE_SEG_HDR, seg_n - SB_STORE_SEG_HDR);
    s_seed("store", "records-nofix", 0, seg + SB_STORE_SEG_HDR, seg_n - SB_STORE_SEG_HDR);
    s_seed("logfiles", "reader-segment", 0 | 4, seg, seg_n);
    s_seed("logfiles", "reader-torn-tail", 0, seg, seg_n - 3);
    s_seed("logfiles", "recover-segment", 1 | 4, seg, seg_n);
    s_seed2("logfiles", "recover-checkpoint", 1 | 4, seg, seg_n, ckp, ckp_n);
    free(seg);
    free(ckp);
    sb_batch_destroy(&b);
    sb_batch_destroy(&b2);
    sb_req_unref(req);
    s_rm_rf(dir);
}

/* ---- the subscriber's gap engine (fuzz_gap) -------------------------------
 * Layout (fuzz_gap.c): flags (bit 0 hostile, bit 1 two subscriptions,
 * bit 2 resume, bit 3 stop on loss), max_scan, subscription(s), resume
 * seq if bit 2, probe_ms, then (op, arg) pairs: op % 8 0-2 event of
 * aggregate arg % 5, 3 flush of aggregate arg % 5 with fate (arg >> 4) % 3
 * (0 live, 1 dropped, 2 twice), 4 and 7 recv, 5 clock, 6 evict arg % 8. */
static void
s_gap(void)
{
    static const uint8_t live[] = {
        0x00, 10, 0, 20,
        4, 0,  0, 0, 0, 2, 3, 0x00, 3, 0x12, 4, 3, 0, 0, 3, 0x20, 4, 3,
        0, 1, 0, 3, 3, 0x01, 3, 0x03, 5, 30, 4, 7, 0, 2, 3, 0x12, 5, 60, 4, 7};
    s_seed("gap", "live-drop-and-duplicate", -1, live, sizeof live);
    static const uint8_t two[] = {
        0x02, 3, 1, 3, 15,
        0, 0, 0, 3, 3, 0x00, 0, 1, 0, 4, 4, 0, 3, 0x10, 3, 0x14, 3, 0x01,
        0, 0, 0, 2, 3, 0x10, 3, 0x02, 5, 40, 4, 7};
    s_seed("gap", "two-subscriptions-small-scan", -1, two, sizeof two);
    static const uint8_t resume[] = {
        0x04, 20, 0, 3, 25,
        0, 0, 3, 0, 0, 2, 3, 0x02, 0, 1, 3, 0x01, 0, 0, 3, 0x10, 4, 3,
        0, 2, 3, 0x12, 4, 7, 5, 30, 4, 7};
    s_seed("gap", "resume-from-seq", -1, resume, sizeof resume);
    static const uint8_t evict[] = {
        0x08, 10, 0, 20,
        4, 0, 0, 0, 3, 0x10, 0, 2, 3, 0x12, 0, 0, 3, 0x10, 6, 3, 0, 0,
        3, 0x00, 4, 3, 5, 40, 4, 7};
    s_seed("gap", "eviction-reported", -1, evict, sizeof evict);
    static const uint8_t hostile[] = {
        0x01, 10, 0, 20, 0, 1, 3, 5, 1, 2, 3, 4, 9, 8, 7, 6, 5, 4, 3, 2, 1,
        0x85, 2, 1, 3, 7, 7, 7, 0x40, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 5, 9};
    s_seed("gap", "hostile", -1, hostile, sizeof hostile);
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds CORPUS_DIR (tests/fuzz/corpus)\n");
        return 2;
    }
    s_root = argv[1];
    mkdir(s_root, 0755);
    s_wire();
    s_snapshot();
    s_config();
    s_store();
    s_gap();
    printf("wrote %d seeds under %s\n", s_count, s_root);
    return 0;
}
