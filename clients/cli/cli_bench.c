/* snapbus bench: what the broker costs, next to baselines measured in the
 * same run on the same machine, so that the ratios hold on a busy one.
 *
 * This file holds the command: options, the order of the runs, medians
 * over --runs, the ratios to the baselines, the tables and the JSON. The
 * runs themselves are in cli_bench_base.c (raw ZeroMQ and the disk) and
 * cli_bench_broker.c (through a fresh snapbusd each); s_modes below says
 * what each mode measures, for --help and the table headers alike.
 *
 * Order of one run: the fsync probe, then per size the baselines (raw,
 * forwarder, echo-pipelined, echo), the throughput modes per aggregate
 * count (each with its --curve and --producer-ids twins right after it,
 * so both see the machine in the same state), then the latency modes.
 * Every run makes the same rows in the same order; --runs K makes K runs
 * and reports, row by row, the median of each figure (losses are summed).
 * Ratios are taken after the medians.
 *
 * --curve runs every throughput broker mode a second time right after the
 * first, with CURVE on every socket (docs/SECURITY.md): fresh keys in the
 * temp dir, one client key on both allowlists. --producer-ids does the
 * same with a producer id and seq on every event (docs/PUBLISHING.md);
 * the client's resend copies are off there, so the figure is the
 * broker's index. Their "vs plain" is their rate over the plain row's. */
#define _GNU_SOURCE /* nftw, explicit_bzero */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "cli.h"
#include "cli_bench.h"

/* Each mode: its bit, its name (in --modes, the tables and the JSON) and
 * what it measures, in the order the runs go. */
static const struct {
    int bit;
    const char *name;
    const char *what;
} s_modes[] = {
    {MODE_RAW, "raw", "ZeroMQ PUSH -> PULL, one message per event"},
    {MODE_FWD, "forwarder",
     "ZeroMQ PUSH -> forwarder thread (a zmq_proxy loop) -> PUB -> SUB, "
     "HWM off: lossless"},
    {MODE_ECHO_PIPE, "echo-pipelined",
     "ZeroMQ DEALER -> ROUTER echo, W messages in flight"},
    {MODE_ECHO, "echo", "ZeroMQ DEALER -> ROUTER echo, one at a time"},
    {MODE_FSYNC, "fsync",
     "4 KiB appended + fdatasync, in the data dir's file system"},
    {MODE_NONE, "none",
     "publisher (ack none) -> snapbusd -> lossless subscriber (gap fill "
     "over the query socket); must lose 0"},
    {MODE_NONE_LOSSY, "none-lossy",
     "the same with a PUB-only subscriber (no gap fill): the PUB "
     "high-water mark drops batches, counted as lost"},
    {MODE_SEQ, "sequenced", "acked publisher, window W: publish .. ack"},
    {MODE_PUBD, "published",
     "acked publisher, window W, ack once the batch was sent to "
     "subscribers"},
    {MODE_DURABLE, "durable",
     "acked publisher, window W, ack after the fdatasync (group commit)"},
    {MODE_LAT_SEQ, "lat-sequenced", "one event at a time: publish .. ack"},
    {MODE_LAT_PUBD, "lat-published",
     "one event at a time: publish .. ack `published` (delay 0)"},
    {MODE_LAT_DURABLE, "lat-durable",
     "one event at a time: publish .. ack `durable`; compared with echo + "
     "fsync"},
    {MODE_LAT_DELIVER, "lat-deliver",
     "one event at a time, ack none: publish .. the lossless subscriber "
     "(same thread, one clock) has its batch"},
};
#define NMODES (sizeof s_modes / sizeof s_modes[0])

static const struct {
    const char *name;
    int bits;
} s_groups[] = {
    {"all", (1 << MODE_COUNT) - 1},
    {"default", MODES_DEFAULT},
    {"baselines",
     MODE_RAW | MODE_FWD | MODE_ECHO_PIPE | MODE_ECHO | MODE_FSYNC},
    {"throughput", MODE_RAW | MODE_FWD | MODE_ECHO_PIPE | MODE_NONE |
                       MODE_NONE_LOSSY | MODE_SEQ | MODE_PUBD | MODE_DURABLE},
    {"latency", MODE_ECHO | MODE_FSYNC | MODE_LAT_SEQ | MODE_LAT_PUBD |
                    MODE_LAT_DURABLE | MODE_LAT_DELIVER},
};

/* ---- Progress (stderr, on a terminal only) ---------------------------- */

static int s_tty;
static char s_label[160];
static uint64_t s_last_ns;

static void
s_step(const char *fmt, ...)
{
    va_list ap;

    if (!s_tty)
        return;
    va_start(ap, fmt);
    vsnprintf(s_label, sizeof s_label, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\r%s\033[K", s_label);
    s_last_ns = cli_now_ns();
}

void
cli_bench_progress(uint64_t done, uint64_t total)
{
    uint64_t now;

    if (!s_tty || total == 0 || (now = cli_now_ns()) - s_last_ns < 200000000)
        return;
    s_last_ns = now;
    fprintf(stderr, "\r%s %3d%%\033[K", s_label, (int)(done * 100 / total));
}

static void
s_step_clear(void)
{
    if (s_tty)
        fprintf(stderr, "\r\033[K");
}

/* ---- Figures ------------------------------------------------------- */

static int
s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest sample with at least q of them at or below. */
static double
s_pct(const uint64_t *ns, size_t n, double q)
{
    size_t k = (size_t)ceil(q * (double)n);
    return (double)ns[k ? k - 1 : 0] / 1e3;
}

void
cli_bench_latency(result *res, uint64_t *ns, size_t n)
{
    uint64_t sum = 0;

    res->lat = 1;
    if (n == 0)
        return;
    qsort(ns, n, sizeof *ns, s_cmp_u64);
    for (size_t i = 0; i < n; i++)
        sum += ns[i];
    res->p50 = s_pct(ns, n, 0.50);
    res->p99 = s_pct(ns, n, 0.99);
    res->p999 = s_pct(ns, n, 0.999);
    res->rate = sum ? (double)n * 1e9 / (double)sum : 0;
}

static double
s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Row i of every run into out: medians, losses summed, ok only if every
 * run was. */
static void
s_merge(result *const *runs, int k, int i, result *out)
{
    double v[64];

    *out = runs[0][i];
#define MED(f)                                                                 \
    do {                                                                       \
        for (int r = 0; r < k; r++)                                            \
            v[r] = runs[r][i].f;                                               \
        out->f = s_median(v, k);                                               \
    } while (0)
    MED(seconds);
    MED(rate);
    MED(cpu_us);
    MED(p50);
    MED(p99);
    MED(p999);
#undef MED
    for (int r = 1; r < k; r++) {
        out->lost += runs[r][i].lost;
        out->dup += runs[r][i].dup;
        out->refused += runs[r][i].refused;
        out->ok &= runs[r][i].ok;
        if (runs[r][i].cpu_us < 0)
            out->cpu_us = -1;
    }
}

static const result *
s_find(const result *res, int n, const char *mode, size_t size)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(res[i].mode, mode) &&
            (size == SIZE_MAX || res[i].size == size))
            return &res[i];
    return NULL;
}

static double
s_over(double a, double b)
{
    return a > 0 && b > 0 ? a / b : 0;
}

/* Ratios to the baselines of the same size: rates over raw's (and the
 * fire-and-forget rows over the forwarder's too); latencies over echo's
 * same percentile, lat-durable over echo + fsync. */
static void
s_ratios(result *res, int n)
{
    const result *fs = s_find(res, n, "fsync", SIZE_MAX);

    for (int i = 0; i < n; i++) {
        result *r = &res[i];
        if (r->plain >= 0 && r->plain < n)
            r->vs_plain = s_over(r->rate, res[r->plain].rate);
        if (!strcmp(r->mode, "fsync"))
            continue;
        if (!r->lat) {
            const result *raw = s_find(res, n, "raw", r->size);
            const result *fwd = s_find(res, n, "forwarder", r->size);
            if (raw != NULL) {
                r->ratio = s_over(r->rate, raw->rate);
                r->base = "raw";
            }
            if (fwd != NULL && !strncmp(r->mode, "none", 4))
                r->vs_fwd = s_over(r->rate, fwd->rate);
            continue;
        }
        const result *echo = s_find(res, n, "echo", r->size);
        if (echo == NULL)
            continue;
        double b50 = echo->p50, b99 = echo->p99, b999 = echo->p999;
        r->base = "echo";
        if (!strcmp(r->mode, "lat-durable")) {
            if (fs == NULL)
                continue;
            b50 += fs->p50, b99 += fs->p99, b999 += fs->p999;
            r->base = "echo+fsync";
        }
        r->ratio = s_over(r->p50, b50);
        r->ratio_p99 = s_over(r->p99, b99);
        r->ratio_p999 = s_over(r->p999, b999);
    }
}

/* ---- Output -------------------------------------------------------- */

static void
s_json_num(const char *key, double v, const char *fmt)
{
    printf(",\"%s\":", key);
    if (isfinite(v))
        printf(fmt, v);
    else
        printf("null");
}

static void
s_print_json(const bench *bn, const result *res, int n)
{
    printf("{\"events\":%" PRIu64 ",\"lat_events\":%" PRIu64
           ",\"window\":%u,\"aggregates\":%d,\"runs\":%d,\"results\":[",
           bn->events, bn->lat_events, bn->window, bn->aggs[0], bn->nruns);
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        printf("%s\n {\"mode\":\"%s\",\"size\":%zu", i ? "," : "", r->mode,
               r->size);
        if (r->aggregates > 0)
            printf(",\"aggregates\":%d", r->aggregates);
        printf(",\"events\":%" PRIu64, r->events);
        s_json_num("seconds", r->seconds, "%.6f");
        s_json_num("rate", r->rate, "%.0f");
        s_json_num("ratio", r->ratio, "%.4f");
        if (r->base != NULL)
            printf(",\"baseline\":\"%s\"", r->base);
        if (!r->lat)
            s_json_num("mb_s", r->rate * (double)r->size / 1e6, "%.2f");
        if (r->cpu_us >= 0)
            s_json_num("cpu_us_per_event", r->cpu_us, "%.3f");
        printf(",\"lost\":%" PRIu64 ",\"dup\":%" PRIu64 ",\"refused\":%" PRIu64
               ",\"ok\":%s,\"lossless\":%s",
               r->lost, r->dup, r->refused, r->ok ? "true" : "false",
               r->lossy ? "false" : "true");
        if (r->lat) {
            s_json_num("p50_us", r->p50, "%.1f");
            s_json_num("p99_us", r->p99, "%.1f");
            s_json_num("p999_us", r->p999, "%.1f");
            s_json_num("ratio_p99", r->ratio_p99, "%.4f");
            s_json_num("ratio_p999", r->ratio_p999, "%.4f");
        }
        if (r->vs_fwd > 0)
            s_json_num("vs_forwarder", r->vs_fwd, "%.4f");
        if (r->vs_plain > 0)
            s_json_num("vs_plain", r->vs_plain, "%.4f");
        printf("}");
    }
    printf("\n]}\n");
}

/* "PREFIX NAME  what", the text wrapped at 79 columns under itself. */
static void
s_mode_line(FILE *f, const char *prefix, const char *name, const char *what)
{
    int col = fprintf(f, "%s%-15s ", prefix, name), indent = col;
    const char *w = what;

    while (*w != '\0') {
        size_t len = strcspn(w, " ");
        if (col > indent && col + 1 + (int)len > 79) {
            col = fprintf(f, "\n%s%*s", prefix, indent - (int)strlen(prefix),
                          "") -
                  1;
        } else if (col > indent) {
            fputc(' ', f);
            col++;
        }
        col += fprintf(f, "%.*s", (int)len, w);
        w += len;
        w += strspn(w, " ");
    }
    fputc('\n', f);
}

static void
s_legend(const result *res, int n, int lat)
{
    for (size_t m = 0; m < NMODES; m++) {
        int shown = 0;
        for (int i = 0; i < n && !shown; i++)
            shown = res[i].lat == lat &&
                    !strncmp(res[i].mode, s_modes[m].name,
                             strlen(s_modes[m].name)) &&
                    (res[i].mode[strlen(s_modes[m].name)] == '\0' ||
                     res[i].mode[strlen(s_modes[m].name)] == '+');
        if (shown)
            s_mode_line(stdout, "#   ", s_modes[m].name, s_modes[m].what);
    }
}

static void
s_fmt(char *buf, size_t n, double v, const char *fmt)
{
    if (v > 0)
        snprintf(buf, n, fmt, v);
    else
        snprintf(buf, n, "-");
}

static void
s_print_table(const bench *bn, const result *res, int n)
{
    int nt = 0, nl = 0;

    for (int i = 0; i < n; i++)
        res[i].lat ? nl++ : nt++;
    if (bn->nruns > 1)
        printf("# median of %d runs; lost, dup and refused are summed\n",
               bn->nruns);
    if (nt > 0) {
        printf("# throughput: %" PRIu64 " events a run, W = %u; rate = events "
               "/ (first send ..\n"
               "# last receipt or ack); vs raw, vs fwd: rate over raw's, over "
               "forwarder's;\n"
               "# cpu: snapbusd's CPU time (user + system, all threads) per "
               "event\n",
               bn->events, bn->window);
        s_legend(res, n, 0);
        printf("%-16s %6s %6s %9s %12s %8s %6s %6s %9s %8s %6s %7s%s\n", "mode",
               "size", "aggs", "events", "rate (ev/s)", "MB/s", "vs raw",
               "vs fwd", "cpu us/ev", "lost", "dup", "refused",
               bn->curve || bn->pids ? "  vs plain" : "");
        for (int i = 0; i < n; i++) {
            const result *r = &res[i];
            char ratio[16], fwd[16], cpu[16], aggs[16], vs[24] = "";
            if (r->lat)
                continue;
            s_fmt(ratio, sizeof ratio, r->ratio, "%.2f");
            s_fmt(fwd, sizeof fwd, r->vs_fwd, "%.2f");
            s_fmt(cpu, sizeof cpu, r->cpu_us, "%.3f");
            if (r->aggregates > 0)
                snprintf(aggs, sizeof aggs, "%d", r->aggregates);
            else
                snprintf(aggs, sizeof aggs, "-");
            if (r->vs_plain > 0)
                snprintf(vs, sizeof vs, "  %8.2f", r->vs_plain);
            printf("%-16s %6zu %6s %9" PRIu64 " %12.0f %8.1f %6s %6s %9s "
                   "%8" PRIu64 " %6" PRIu64 " %7" PRIu64 "%s%s%s\n",
                   r->mode, r->size, aggs, r->events, r->rate,
                   r->rate * (double)r->size / 1e6, ratio, fwd, cpu, r->lost,
                   r->dup, r->refused, vs, r->ok ? "" : "  (incomplete)",
                   r->lossy && r->lost ? "  (PUB drops, by design)" : "");
        }
    }
    if (nl > 0) {
        printf("%s# latency, one at a time (window 1): %" PRIu64
               " samples a run, in us;\n"
               "# x base: over the baseline's same percentile (echo; "
               "lat-durable: echo + fsync)\n",
               nt > 0 ? "\n" : "", bn->lat_events);
        s_legend(res, n, 1);
        printf("%-16s %6s %8s %9s %9s %9s %11s %6s %6s %7s %9s %6s\n", "mode",
               "size", "events", "p50", "p99", "p99.9", "base", "p50 x",
               "p99 x", "p99.9 x", "cpu us/ev", "lost");
        for (int i = 0; i < n; i++) {
            const result *r = &res[i];
            char a[16], b[16], c[16], cpu[16];
            if (!r->lat)
                continue;
            s_fmt(a, sizeof a, r->ratio, "%.2f");
            s_fmt(b, sizeof b, r->ratio_p99, "%.2f");
            s_fmt(c, sizeof c, r->ratio_p999, "%.2f");
            s_fmt(cpu, sizeof cpu, r->cpu_us, "%.3f");
            printf("%-16s %6zu %8" PRIu64 " %9.1f %9.1f %9.1f %11s %6s %6s "
                   "%7s %9s %6" PRIu64 "%s\n",
                   r->mode, r->size, r->events, r->p50, r->p99, r->p999,
                   r->base ? r->base : "-", a, b, c, cpu, r->lost,
                   r->ok ? "" : "  (incomplete)");
        }
    }
}

/* ---- Command ------------------------------------------------------- */

static void
s_help(FILE *f)
{
    fprintf(f,
            "usage: snapbus bench [OPTIONS]\n"
            "\n"
            "Measures snapbus on loopback next to baselines run in the same\n"
            "run (raw ZeroMQ, a ZeroMQ forwarder, a ZeroMQ echo, fdatasync),\n"
            "each broker mode against a fresh snapbusd (delay 0) started from\n"
            "a temp dir. Throughput modes report events/s, MB/s of payload,\n"
            "the ratio to raw (and to the forwarder), and snapbusd's CPU time\n"
            "per event; latency modes (window 1) report p50/p99/p99.9 in us\n"
            "and their ratio to the echo round trip of the same run.\n"
            "\n"
            "modes (--modes; groups: all, default, baselines, throughput,\n"
            "latency; default: all but none-lossy and published):\n");
    for (size_t m = 0; m < NMODES; m++)
        s_mode_line(f, "  ", s_modes[m].name, s_modes[m].what);
    fprintf(
        f,
        "\n"
        "options:\n"
        "  -n, --events N        events per throughput run (default "
        "1000000)\n"
        "  -l, --lat-events N    events per latency run (default 10000;\n"
        "                        the fsync probe does at most 2000)\n"
        "  -s, --sizes LIST      payload sizes, comma separated (default "
        "100,1000)\n"
        "  -w, --window W        requests in flight, acked runs; messages\n"
        "                        in flight, echo-pipelined (default 64)\n"
        "  -g, --aggregates LIST aggregates, round-robin; each value makes\n"
        "                        its own throughput runs, the first is used\n"
        "                        by the latency runs (default 16; up to 4\n"
        "                        values, each 1 to 100000)\n"
        "  -r, --runs K          the whole run K times, report medians\n"
        "                        (default 1)\n"
        "  -b, --broker PATH     snapbusd to run (default: next to snapbus)\n"
        "  -A, --broker-arg ARG  extra snapbusd argument (repeatable)\n"
        "  -m, --modes LIST      modes and groups, comma separated\n"
        "  -E, --batch-events N  events per request (default 1000)\n"
        "  -B, --batch-bytes N   bytes per request (default 262144)\n"
        "  -k, --keep            keep the temp dir with the broker logs\n"
        "  -C, --curve           run each throughput broker mode again with\n"
        "                        CURVE and show its rate over the plain run's\n"
        "  -P, --producer-ids    run each throughput broker mode again with\n"
        "                        a producer id and seq on every event\n"
        "                        (de-duplication) and show its rate over the\n"
        "                        plain run's\n"
        "  -j, --json            print JSON instead of tables\n"
        "  -h, --help            this help\n"
        "\n"
        "The machine's load moves absolute figures; the ratios, to\n"
        "baselines measured minutes apart, move less. See\n"
        "docs/PERFORMANCE.md.\n"
        "\n"
        "exit codes: 0 every run delivered every event once, 1 a run lost\n"
        "(none-lossy aside), duplicated or had refused events, 2 usage,\n"
        "3 a run failed (a broker did not start or answer).\n");
}

/* Fresh keys for the --curve runs, in the temp dir: the broker's secret
 * key file and one allowlist holding the one client key. */
static int
s_curve_setup(bench *bn)
{
    char sec[41], text[64];
    int fd, len;

    if (zmq_curve_keypair(bn->curve_keys[0], sec) != 0 ||
        zmq_curve_keypair(bn->curve_keys[1], bn->curve_keys[2]) != 0) {
        fprintf(stderr, "snapbus bench: --curve: %s\n", zmq_strerror(errno));
        return -1;
    }
    snprintf(bn->key_file, sizeof bn->key_file, "%s/server.key", bn->dir);
    snprintf(bn->list_file, sizeof bn->list_file, "%s/clients.keys", bn->dir);
    len = snprintf(text, sizeof text, "%s\n", sec);
    fd = open(bn->key_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    explicit_bzero(sec, sizeof sec);
    if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) != 0) {
        perror("snapbus bench: --curve: server key");
        explicit_bzero(text, sizeof text);
        return -1;
    }
    explicit_bzero(text, sizeof text);
    len = snprintf(text, sizeof text, "%s\n", bn->curve_keys[1]);
    fd = open(bn->list_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) != 0) {
        perror("snapbus bench: --curve: allowlist");
        return -1;
    }
    return 0;
}

static void
s_curve_use(bench *bn, int on)
{
    bn->curve_now = on;
    if (on) {
        bn->curve_opts.server_key = bn->curve_keys[0];
        bn->curve_opts.public_key = bn->curve_keys[1];
        bn->curve_opts.secret_key = bn->curve_keys[2];
    } else {
        memset(&bn->curve_opts, 0, sizeof bn->curve_opts);
    }
}

static int
s_parse_list(const char *arg, uint64_t *out, int max, uint64_t lo, uint64_t hi)
{
    char *copy = strdup(arg), *save = NULL;
    int n = 0;

    if (copy == NULL)
        return -1;
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (n == max || cli_parse_u64(t, &out[n]) != 0 || out[n] < lo ||
            out[n] > hi) {
            free(copy);
            return -1;
        }
        n++;
    }
    free(copy);
    return n > 0 ? n : -1;
}

static int
s_parse_modes(bench *bn, const char *arg)
{
    char *copy = strdup(arg), *save = NULL;

    if (copy == NULL)
        return -1;
    bn->modes = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        int bits = 0;
        for (size_t m = 0; m < NMODES && !bits; m++)
            if (!strcmp(t, s_modes[m].name))
                bits = s_modes[m].bit;
        for (size_t g = 0; g < sizeof s_groups / sizeof s_groups[0] && !bits;
             g++)
            if (!strcmp(t, s_groups[g].name))
                bits = s_groups[g].bits;
        if (!bits) {
            fprintf(stderr,
                    "snapbus bench: --modes: no mode '%s' (see "
                    "--help)\n",
                    t);
            free(copy);
            return -1;
        }
        bn->modes |= bits;
    }
    free(copy);
    return bn->modes ? 0 : -1;
}

static int
s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

/* Removes the temp dir and whatever the brokers left in it (they ran with
 * it as their working directory). It is ours: mkdtemp made it. */
static int
s_rmdir(const char *dir)
{
    return nftw(dir, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The rows of one run, in order, into res (at most max); returns how
 * many, or -1 if res would overflow. count_only: just count. *failed is
 * set when a run could not be made. */
static int
s_one_run(bench *bn, int run, result *res, int max, int count_only, int total,
          int *failed)
{
    static const int tput[] = {MODE_NONE, MODE_NONE_LOSSY, MODE_SEQ, MODE_PUBD,
                               MODE_DURABLE};
    static const int lat[] = {MODE_LAT_SEQ, MODE_LAT_PUBD, MODE_LAT_DURABLE,
                              MODE_LAT_DELIVER};
    int n = 0;
    result scratch; /* count_only: the rows go nowhere */

#define ROW(label_fmt, ...)                                                    \
    if (n == max)                                                              \
        return -1;                                                             \
    result *r = count_only ? &scratch : &res[n];                               \
    memset(r, 0, sizeof *r);                                                   \
    r->plain = -1;                                                             \
    r->cpu_us = -1;                                                            \
    if (!count_only)                                                           \
        s_step("snapbus bench: run %d/%d, step %d/%d: " label_fmt, run + 1,    \
               bn->nruns, n + 1, total, __VA_ARGS__);

    if (bn->modes & MODE_FSYNC) {
        ROW("%s", "fsync");
        if (!count_only && cli_bench_fsync(bn, r) != 0)
            *failed = 1;
        r->mode = "fsync";
        n++;
    }
    for (int si = 0; si < bn->nsizes; si++) {
        size_t size = bn->sizes[si];
        static const struct {
            int bit;
            const char *name;
        } base[] = {{MODE_RAW, "raw"},
                    {MODE_FWD, "forwarder"},
                    {MODE_ECHO_PIPE, "echo-pipelined"},
                    {MODE_ECHO, "echo"}};
        for (size_t b = 0; b < sizeof base / sizeof base[0]; b++) {
            if (!(bn->modes & base[b].bit))
                continue;
            ROW("%s %zu B", base[b].name, size);
            int rc = 0;
            if (!count_only) {
                if (base[b].bit == MODE_RAW)
                    rc = cli_bench_raw(bn, size, r);
                else if (base[b].bit == MODE_FWD)
                    rc = cli_bench_forwarder(bn, size, r);
                else
                    rc = cli_bench_echo(
                        bn, size, base[b].bit == MODE_ECHO ? 1 : bn->window, r);
            }
            if (rc != 0)
                *failed = 1;
            r->mode = base[b].name;
            r->size = size;
            n++;
        }
        for (int ai = 0; ai < bn->naggs; ai++) {
            for (size_t m = 0; m < sizeof tput / sizeof tput[0]; m++) {
                if (!(bn->modes & tput[m]))
                    continue;
                int plain = n;
                for (int v = 0; v < 1 + bn->curve + bn->pids; v++) {
                    /* v: 0 plain, then CURVE (if --curve), then producer
                     * ids (if --producer-ids). */
                    int cv = bn->curve && v == 1;
                    int pid = v > 0 && !cv;
                    static const char *const sfx[] = {"", "+curve", "+pid"};
                    const char *name = "";
                    for (size_t k = 0; k < NMODES; k++)
                        if (s_modes[k].bit == tput[m])
                            name = s_modes[k].name;
                    ROW("%s%s %zu B, %d aggregates", name,
                        sfx[cv    ? 1
                            : pid ? 2
                                  : 0],
                        size, bn->aggs[ai]);
                    if (!count_only) {
                        s_curve_use(bn, cv);
                        bn->producer_now = pid ? "bench-producer" : NULL;
                        if (cli_bench_broker_mode(bn, tput[m], size,
                                                  bn->aggs[ai], r) != 0)
                            *failed = 1;
                        s_curve_use(bn, 0);
                        bn->producer_now = NULL;
                    }
                    if (v > 0) {
                        /* Names with a lifetime: static strings. */
                        static char names[3][5][24];
                        snprintf(names[cv ? 1 : 2][m], 24, "%s%s", name,
                                 sfx[cv ? 1 : 2]);
                        r->mode = names[cv ? 1 : 2][m];
                        r->plain = plain;
                    } else {
                        r->mode = name;
                    }
                    r->size = size;
                    r->aggregates = bn->aggs[ai];
                    n++;
                }
            }
        }
        for (size_t m = 0; m < sizeof lat / sizeof lat[0]; m++) {
            if (!(bn->modes & lat[m]))
                continue;
            const char *name = "";
            for (size_t k = 0; k < NMODES; k++)
                if (s_modes[k].bit == lat[m])
                    name = s_modes[k].name;
            ROW("%s %zu B", name, size);
            if (!count_only &&
                cli_bench_broker_mode(bn, lat[m], size, bn->aggs[0], r) != 0)
                *failed = 1;
            r->mode = name;
            r->size = size;
            r->aggregates = bn->aggs[0];
            r->lat = 1;
            n++;
        }
    }
#undef ROW
    return n;
}

int
cli_bench(int argc, char **argv)
{
    static const struct option lo[] = {
        {"events", required_argument, NULL, 'n'},
        {"lat-events", required_argument, NULL, 'l'},
        {"sizes", required_argument, NULL, 's'},
        {"window", required_argument, NULL, 'w'},
        {"aggregates", required_argument, NULL, 'g'},
        {"runs", required_argument, NULL, 'r'},
        {"broker", required_argument, NULL, 'b'},
        {"broker-arg", required_argument, NULL, 'A'},
        {"modes", required_argument, NULL, 'm'},
        {"batch-events", required_argument, NULL, 'E'},
        {"batch-bytes", required_argument, NULL, 'B'},
        {"keep", no_argument, NULL, 'k'},
        {"curve", no_argument, NULL, 'C'},
        {"producer-ids", no_argument, NULL, 'P'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    bench bn = {.events = 1000000,
                .lat_events = 10000,
                .sizes = {100, 1000},
                .nsizes = 2,
                .aggs = {16},
                .naggs = 1,
                .window = 64,
                .batch_events = 1000,
                .batch_bytes = 256 * 1024,
                .stall_ms = 30000,
                .nruns = 1,
                .modes = MODES_DEFAULT};
    int c, v;
    uint64_t u, list[BENCH_MAX_SIZES];

    while ((c = getopt_long(argc, argv, "n:l:s:w:g:r:b:A:m:E:B:kCPjh", lo,
                            NULL)) != -1) {
        int bad = 0, k;
        switch (c) {
        case 'n':
            bad = cli_parse_u64(optarg, &bn.events) != 0 || bn.events == 0 ||
                  bn.events > ((uint64_t)1 << 36);
            break;
        case 'l':
            bad = cli_parse_u64(optarg, &bn.lat_events) != 0 ||
                  bn.lat_events == 0 || bn.lat_events > 100000000;
            break;
        case 's':
            bad = (k = s_parse_list(optarg, list, BENCH_MAX_SIZES, 0,
                                    64 * 1024 * 1024)) < 0;
            for (int i = 0; !bad && i < k; i++)
                bn.sizes[i] = (size_t)list[i];
            if (!bad)
                bn.nsizes = k;
            break;
        case 'w':
            bad = cli_parse_int(optarg, 1, 1 << 20, &v) != 0;
            bn.window = (uint32_t)v;
            break;
        case 'g':
            bad =
                (k = s_parse_list(optarg, list, BENCH_MAX_AGGS, 1, 100000)) < 0;
            for (int i = 0; !bad && i < k; i++)
                bn.aggs[i] = (int)list[i];
            if (!bad)
                bn.naggs = k;
            break;
        case 'r':
            bad = cli_parse_int(optarg, 1, 63, &bn.nruns) != 0;
            break;
        case 'b':
            bn.broker = optarg;
            break;
        case 'A':
            bad = bn.nextra == BENCH_MAX_EXTRA;
            if (!bad)
                bn.extra[bn.nextra++] = optarg;
            break;
        case 'm':
            bad = s_parse_modes(&bn, optarg) != 0;
            break;
        case 'E':
            bad = cli_parse_u64(optarg, &u) != 0 || u == 0 || u > UINT32_MAX;
            bn.batch_events = (uint32_t)u;
            break;
        case 'B':
            bad = cli_parse_u64(optarg, &u) != 0 || u == 0 || u > INT32_MAX;
            bn.batch_bytes = (uint32_t)u;
            break;
        case 'k':
            bn.keep = 1;
            break;
        case 'C':
            bn.curve = 1;
            break;
        case 'P':
            bn.pids = 1;
            break;
        case 'j':
            bn.json = 1;
            break;
        case 'h':
            s_help(stdout);
            return CLI_OK;
        default:
            s_help(stderr);
            return CLI_USAGE;
        }
        if (bad) {
            fprintf(stderr,
                    "snapbus bench: bad value '%s' for option -%c "
                    "(see --help for the ranges)\n",
                    optarg, c);
            return CLI_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "snapbus bench: unexpected argument '%s'\n",
                argv[optind]);
        return CLI_USAGE;
    }
    s_tty = isatty(2);
    const char *tmp = getenv("TMPDIR");
    snprintf(bn.dir, sizeof bn.dir, "%s/snapbus-bench-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(bn.dir) == NULL) {
        perror("snapbus bench: mkdtemp");
        return CLI_FAILED;
    }
    /* A subscriber that stops reading must not kill us through SIGPIPE
     * on a pipe we print to; and a broker that dies is seen via waitpid. */
    signal(SIGPIPE, SIG_IGN);
    if (!(bn.modes &
          (MODE_NONE | MODE_NONE_LOSSY | MODE_SEQ | MODE_PUBD | MODE_DURABLE)))
        bn.curve = bn.pids = 0; /* nothing to compare */
    if (bn.curve && s_curve_setup(&bn) != 0) {
        s_rmdir(bn.dir);
        return CLI_FAILED;
    }

    int failed = 0, lossy = 0;
    int rows = s_one_run(&bn, 0, NULL, INT_MAX, 1, 0, &failed);
    result **runs = calloc((size_t)bn.nruns, sizeof *runs);
    result *out = calloc((size_t)rows + 1, sizeof *out);
    for (int k = 0; runs != NULL && k < bn.nruns; k++)
        runs[k] = calloc((size_t)rows + 1, sizeof **runs);
    if (runs == NULL || out == NULL || runs[bn.nruns - 1] == NULL) {
        fprintf(stderr, "snapbus bench: out of memory\n");
        failed = 1;
        rows = 0;
    }
    for (int k = 0; k < bn.nruns && rows > 0; k++)
        s_one_run(&bn, k, runs[k], rows, 0, rows, &failed);
    s_step_clear();
    for (int i = 0; i < rows; i++)
        s_merge(runs, bn.nruns, i, &out[i]);
    s_ratios(out, rows);
    for (int i = 0; i < rows; i++)
        lossy |= (!out[i].lossy && out[i].lost > 0) || out[i].dup > 0 ||
                 out[i].refused > 0;
    if (bn.json)
        s_print_json(&bn, out, rows);
    else
        s_print_table(&bn, out, rows);
    fflush(stdout);
    for (int k = 0; runs != NULL && k < bn.nruns; k++)
        free(runs[k]);
    free(runs);
    free(out);
    if (bn.keep)
        fprintf(stderr, "snapbus bench: broker logs kept in %s\n", bn.dir);
    else if (s_rmdir(bn.dir) != 0)
        fprintf(stderr, "snapbus bench: could not remove %s\n", bn.dir);
    return failed ? CLI_FAILED : lossy ? CLI_REFUSED : CLI_OK;
}
