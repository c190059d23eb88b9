/* snapbus bench, the parts its files share: cli_bench.c (options, the
 * order of the runs, medians, ratios, output), cli_bench_base.c (the
 * baselines: raw ZeroMQ and the disk) and cli_bench_broker.c (a snapbusd
 * per run, and the modes that go through it). Everything runs on the main
 * thread except the threads a run starts and joins itself. */
#ifndef SB_CLI_BENCH_H
#define SB_CLI_BENCH_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <snapbus/snapbus.h>

#define BENCH_MAX_SIZES 16
#define BENCH_MAX_EXTRA 32
#define BENCH_MAX_AGGS 4

/* One bit per mode, in the order the runs go and the tables list them. */
enum {
    MODE_RAW = 1 << 0,        /* PUSH -> PULL */
    MODE_FWD = 1 << 1,        /* PUSH -> forwarder -> PUB -> SUB */
    MODE_ECHO_PIPE = 1 << 2,  /* DEALER -> ROUTER echo, window W */
    MODE_ECHO = 1 << 3,       /* DEALER -> ROUTER echo, window 1 */
    MODE_FSYNC = 1 << 4,      /* 4 KiB write + fdatasync */
    MODE_NONE = 1 << 5,       /* fire-and-forget, lossless subscriber */
    MODE_NONE_LOSSY = 1 << 6, /* fire-and-forget, PUB only */
    MODE_SEQ = 1 << 7,
    MODE_PUBD = 1 << 8, /* acked `published`, pipelined */
    MODE_DURABLE = 1 << 9,
    MODE_LAT_SEQ = 1 << 10,
    MODE_LAT_PUBD = 1 << 11,
    MODE_LAT_DURABLE = 1 << 12,
    MODE_LAT_DELIVER = 1 << 13, /* publish -> subscriber, window 1 */
    MODE_COUNT = 14
};
#define MODES_BROKER                                                           \
    (MODE_NONE | MODE_NONE_LOSSY | MODE_SEQ | MODE_PUBD | MODE_DURABLE |       \
     MODE_LAT_SEQ | MODE_LAT_PUBD | MODE_LAT_DURABLE | MODE_LAT_DELIVER)
#define MODES_DEFAULT                                                          \
    (MODE_RAW | MODE_FWD | MODE_ECHO_PIPE | MODE_ECHO | MODE_FSYNC |           \
     MODE_NONE | MODE_SEQ | MODE_DURABLE | MODE_LAT_SEQ | MODE_LAT_PUBD |      \
     MODE_LAT_DURABLE | MODE_LAT_DELIVER)

typedef struct {
    uint64_t events;     /* per throughput run */
    uint64_t lat_events; /* per latency run */
    size_t sizes[BENCH_MAX_SIZES];
    int nsizes;
    int aggs[BENCH_MAX_AGGS]; /* --aggregates: a throughput run per value */
    int naggs;
    uint32_t window;
    uint32_t batch_events;
    uint32_t batch_bytes;
    int stall_ms; /* a run with no progress this long ends */
    int nruns;    /* --runs */
    const char *broker;
    const char *extra[BENCH_MAX_EXTRA]; /* --broker-arg */
    int nextra;
    int keep;
    int json;
    int modes;          /* bit set of MODE_ */
    char dir[PATH_MAX]; /* temp dir; the brokers' data dirs are inside */
    int brokers;        /* brokers started, to name files */
    int curve;          /* --curve: each broker mode again with CURVE */
    int pids;           /* --producer-ids: again with producer ids */
    int curve_now;      /* the broker being started runs CURVE */
    char key_file[PATH_MAX + 16], list_file[PATH_MAX + 16];
    /* The client keys of the current run (all NULL: plain), and the
     * producer id of its publisher (NULL: none): set by the main thread
     * before a run starts any thread. */
    sb_curve_opts curve_opts;
    const char *producer_now;
    char curve_keys[3][41]; /* server public, client public, secret */
} bench;

typedef struct {
    const char *mode;
    size_t size;
    int aggregates; /* broker modes: how many, round-robin; else 0 */
    uint64_t events;
    double seconds;
    double rate;  /* events (or round trips, or syncs) per second */
    double ratio; /* over the baseline named in base (see cli_bench.c) */
    const char *base;
    double vs_fwd; /* fire-and-forget rows: rate over the forwarder's */
    uint64_t lost; /* neither delivered (or acked) nor refused */
    uint64_t dup;
    uint64_t refused; /* refused by the broker, with the reason on stderr */
    int ok;           /* the run completed (else rate is what was measured) */
    int lossy;        /* loss is what this mode shows (PUB only) */
    int plain;        /* --curve/--producer-ids rows: index of the plain row */
    double vs_plain;  /* rate over the plain row's */
    double cpu_us;    /* snapbusd CPU time per event, µs; < 0: none */
    int lat;          /* a latency row: p50 .. p999 are set */
    double p50, p99, p999; /* µs */
    double ratio_p99, ratio_p999;
} result;

/* Baselines (cli_bench_base.c). Each fills res and returns 0, or -1 when
 * the run could not be made (the reason on stderr). */
int cli_bench_raw(const bench *bn, size_t size, result *res);
int cli_bench_forwarder(const bench *bn, size_t size, result *res);
/* window 1: a latency row ("echo"); else a rate ("echo-pipelined"). */
int cli_bench_echo(const bench *bn, size_t size, uint32_t window, result *res);
int cli_bench_fsync(const bench *bn, result *res);

/* Through a fresh snapbusd (cli_bench_broker.c). mode is one MODE_ bit of
 * MODES_BROKER; aggs the aggregates, round-robin. */
int cli_bench_broker_mode(bench *bn, int mode, size_t size, int aggs,
                          result *res);

/* Shared helpers (cli_bench.c). */
/* Sorts the samples (ns) and sets p50, p99, p999 (µs), rate and lat. */
void cli_bench_latency(result *res, uint64_t *ns, size_t n);
/* On a terminal only: "done of total" of the current step, at most a few
 * times a second. Main thread only. */
void cli_bench_progress(uint64_t done, uint64_t total);

#endif
