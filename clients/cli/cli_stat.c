/* snapbus stat: fetches the broker's /metrics (Prometheus text) and prints
 * the live figures as a table, or as JSON, or as served. Also the probe
 * behind container health checks (--health, --ready): the runtime image
 * has no curl, and a probe should not need one.
 *
 * The client side of HTTP here is one GET over one TCP connection with
 * HTTP/1.0 and "Connection: close", so the body is everything up to EOF:
 * that is all a scrape needs, and it keeps libsnapbus's users free of an
 * HTTP library. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"

#define S_MAX_BODY (8u << 20) /* far above any real scrape */

typedef struct {
    char *name;
    char *labels; /* inside the braces, as served; "" if none */
    double value;
} s_sample;

typedef struct {
    s_sample *v;
    size_t n, cap;
} s_samples;

static void
s_help(FILE *f)
{
    fprintf(f,
        "usage: snapbus stat [OPTIONS]\n"
        "\n"
        "Prints the live figures of a running broker, read from its metrics\n"
        "endpoint (snapbusd --metrics HOST:PORT): events accepted, refused\n"
        "by reason and published, requests, batches by close reason and\n"
        "size, every internal queue's depth, bound and waits, retention.\n"
        "\n"
        "options:\n"
        "  -u, --url URL         metrics endpoint (default\n"
        "                        http://127.0.0.1:7704)\n"
        "  -r, --ready-file F    take the URL from the broker's ready file\n"
        "                        (its metrics= line)\n"
        "  -j, --json            one JSON object: {\"url\":...,\"metrics\":{NAME:\n"
        "                        VALUE, or for labelled metrics NAME:[{\"labels\":\n"
        "                        {...},\"value\":VALUE},...]}}\n"
        "      --raw             the Prometheus text as served\n"
        "      --health          probe: exit 0 if /healthz answers 200\n"
        "      --ready           probe: exit 0 if /readyz answers 200\n"
        "  -T, --timeout-ms MS   longest wait for the broker (default 5000)\n"
        "  -h, --help            this help\n"
        "\n"
        "The metrics endpoint is off by default: start snapbusd with\n"
        "--metrics 127.0.0.1:7704 ([broker] metrics) to use this command.\n"
        "\n"
        "exit codes: 0 ok, 2 usage, 3 broker unreachable, bad answer, or\n"
        "a probe that did not answer 200.\n");
}

/* ---- HTTP GET --------------------------------------------------------- */

/* Splits "http://HOST:PORT[/prefix]" (scheme optional, [v6] allowed). */
static int
s_parse_url(const char *url, char *host, size_t hn, char *port, size_t pn,
            char *prefix, size_t xn)
{
    const char *p = url, *hs, *he, *slash;

    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    else if (strstr(p, "://") != NULL)
        return -1; /* https and the rest: not spoken here */
    slash = strchr(p, '/');
    if (slash == NULL)
        slash = p + strlen(p);
    if (*p == '[') {
        hs = p + 1;
        he = memchr(p, ']', (size_t) (slash - p));
        if (he == NULL)
            return -1;
        p = he + 1;
    } else {
        hs = p;
        he = memchr(p, ':', (size_t) (slash - p));
        if (he == NULL)
            he = slash;
        p = he;
    }
    if ((size_t) (he - hs) >= hn || he == hs)
        return -1;
    memcpy(host, hs, (size_t) (he - hs));
    host[he - hs] = '\0';
    if (*p == ':') {
        p++;
        if ((size_t) (slash - p) >= pn || slash == p)
            return -1;
        memcpy(port, p, (size_t) (slash - p));
        port[slash - p] = '\0';
    } else if (p == slash) {
        snprintf(port, pn, "80");
    } else {
        return -1;
    }
    /* A trailing "/" or "/metrics" on the URL is harmless. */
    snprintf(prefix, xn, "%s", slash);
    size_t l = strlen(prefix);
    if (l >= 8 && strcmp(prefix + l - 8, "/metrics") == 0)
        prefix[l - 8] = '\0';
    l = strlen(prefix);
    while (l > 0 && prefix[l - 1] == '/')
        prefix[--l] = '\0';
    return 0;
}

static int
s_wait(int fd, short ev, uint64_t deadline_ns)
{
    for (;;) {
        uint64_t now = cli_now_ns();
        if (now >= deadline_ns)
            return -1;
        struct pollfd p = {fd, ev, 0};
        int ms = (int) ((deadline_ns - now) / 1000000) + 1;
        int rc = poll(&p, 1, ms);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* Returns the HTTP status (body in *body, malloc'd), or -1 with a reason
 * on stderr. */
static int
s_get(const char *url, const char *path, int timeout_ms, char **body,
      size_t *blen)
{
    char host[256], port[16], prefix[256], req[1024];
    struct addrinfo hints = {0}, *ai = NULL, *a;
    uint64_t deadline = cli_now_ns() + (uint64_t) timeout_ms * 1000000u;
    int fd = -1, status = -1, rc;
    size_t len = 0, cap = 65536;
    char *buf = NULL;

    if (s_parse_url(url, host, sizeof host, port, sizeof port, prefix,
                    sizeof prefix) != 0) {
        fprintf(stderr, "snapbus stat: bad URL '%s' (want http://HOST:PORT)\n",
                url);
        return -2;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if ((rc = getaddrinfo(host, port, &hints, &ai)) != 0) {
        fprintf(stderr, "snapbus stat: %s: %s\n", host, gai_strerror(rc));
        return -1;
    }
    for (a = ai; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
            (errno == EINPROGRESS && s_wait(fd, POLLOUT, deadline) == 0)) {
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err == 0)
                break;
            errno = err;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        fprintf(stderr, "snapbus stat: cannot connect to %s: %s\n", url,
                strerror(errno ? errno : ETIMEDOUT));
        /* The usual reason: a broker runs, but without the endpoint. */
        fprintf(stderr,
                "snapbus stat: the broker's metrics endpoint is off by "
                "default: start snapbusd with --metrics 127.0.0.1:7704 (or "
                "[broker] metrics = 127.0.0.1:7704), or give this command "
                "its address with --url\n");
        return -1;
    }
    int n = snprintf(req, sizeof req,
                     "GET %s%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: snapbus-stat\r\n"
                     "Accept: text/plain\r\nConnection: close\r\n\r\n",
                     prefix, path, host);
    for (int off = 0; off < n;) {
        ssize_t w = send(fd, req + off, (size_t) (n - off), MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (s_wait(fd, POLLOUT, deadline) != 0)
                goto timeout;
            continue;
        }
        if (w < 0)
            goto fail;
        off += (int) w;
    }
    if ((buf = malloc(cap)) == NULL)
        goto fail;
    for (;;) {
        if (len + 1 == cap) {
            char *b;
            if (cap >= S_MAX_BODY || (b = realloc(buf, cap * 2)) == NULL)
                goto fail;
            buf = b;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r > 0) {
            len += (size_t) r;
            continue;
        }
        if (r == 0)
            break;
        if (errno != EAGAIN && errno != EINTR)
            goto fail;
        if (s_wait(fd, POLLIN, deadline) != 0)
            goto timeout;
    }
    buf[len] = '\0';
    char *eoh = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || eoh == NULL) {
        fprintf(stderr, "snapbus stat: %s: not an HTTP answer\n", url);
        free(buf);
        close(fd);
        return -1;
    }
    eoh += 4;
    *blen = len - (size_t) (eoh - buf);
    memmove(buf, eoh, *blen + 1);
    *body = buf;
    close(fd);
    return status;
timeout:
    fprintf(stderr, "snapbus stat: %s: no answer within %d ms\n", url,
            timeout_ms);
    free(buf);
    close(fd);
    return -1;
fail:
    fprintf(stderr, "snapbus stat: %s: %s\n", url,
            errno ? strerror(errno) : "answer too large");
    free(buf);
    close(fd);
    return -1;
}

/* ---- Prometheus text -------------------------------------------------- */

static int
s_parse(char *text, s_samples *out)
{
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *p = line, *name, *labels = "", *end;
        if (*p == '#' || *p == '\0')
            continue;
        name = p;
        while (*p && *p != '{' && *p != ' ')
            p++;
        if (*p == '{') {
            *p++ = '\0';
            labels = p;
            /* The closing brace is the last one outside quotes. */
            int q = 0;
            for (; *p && (q || *p != '}'); p++) {
                if (*p == '\\' && q && p[1])
                    p++;
                else if (*p == '"')
                    q = !q;
            }
            if (*p != '}')
                continue;
            *p++ = '\0';
        } else if (*p == ' ') {
            *p = '\0';
            p++;
        }
        while (*p == ' ')
            p++;
        double v = strtod(p, &end);
        if (end == p)
            continue;
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 256;
            s_sample *nv = realloc(out->v, cap * sizeof *nv);
            if (nv == NULL)
                return -1;
            out->v = nv;
            out->cap = cap;
        }
        out->v[out->n++] = (s_sample){name, labels, v};
    }
    return 0;
}

/* The sample of name whose labels are exactly `labels` ("" for none). */
static const s_sample *
s_find(const s_samples *s, const char *name, const char *labels)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].name, name) == 0 &&
            strcmp(s->v[i].labels, labels ? labels : "") == 0)
            return &s->v[i];
    return NULL;
}

static double
s_val(const s_samples *s, const char *name, const char *labels)
{
    const s_sample *x = s_find(s, name, labels);
    return x ? x->value : NAN;
}

static void
s_num(FILE *f, double v)
{
    if (isnan(v))
        fputs("-", f);
    else if (v == floor(v) && fabs(v) < 1e18)
        fprintf(f, "%.0f", v);
    else
        fprintf(f, "%.3f", v);
}

/* "k=v" pairs as served; each label value is unescaped into JSON. */
static void
s_json_labels(FILE *f, const char *labels)
{
    const char *p = labels;
    int first = 1;

    fputc('{', f);
    while (*p) {
        const char *eq = strchr(p, '=');
        if (eq == NULL || eq[1] != '"')
            break;
        fputs(first ? "\"" : ",\"", f);
        cli_json_escape(f, p, (size_t) (eq - p));
        fputs("\":\"", f);
        first = 0;
        p = eq + 2;
        while (*p && *p != '"') {
            char c = *p;
            if (c == '\\' && p[1]) {
                p++;
                c = *p == 'n' ? '\n' : *p;
            }
            cli_json_escape(f, &c, 1);
            p++;
        }
        fputc('"', f);
        if (*p == '"')
            p++;
        if (*p == ',')
            p++;
    }
    fputc('}', f);
}

static void
s_print_json(const s_samples *s, const char *url)
{
    fputs("{\"url\":\"", stdout);
    cli_json_escape(stdout, url, strlen(url));
    fputs("\",\"metrics\":{", stdout);
    for (size_t i = 0; i < s->n; i++) {
        const s_sample *x = &s->v[i];
        int first_of_name = i == 0 || strcmp(s->v[i - 1].name, x->name) != 0;
        int last_of_name = i + 1 == s->n || strcmp(s->v[i + 1].name, x->name) != 0;
        if (first_of_name) {
            fputs(i ? ",\"" : "\"", stdout);
            cli_json_escape(stdout, x->name, strlen(x->name));
            fputs("\":", stdout);
        }
        int plain = first_of_name && last_of_name && x->labels[0] == '\0';
        if (!plain) {
            fputs(first_of_name ? "[{\"labels\":" : ",{\"labels\":", stdout);
            s_json_labels(stdout, x->labels);
            fputs(",\"value\":", stdout);
        }
        if (isnan(x->value) || isinf(x->value))
            fputs("null", stdout);
        else
            s_num(stdout, x->value);
        if (!plain)
            fputs(last_of_name ? "}]" : "}", stdout);
    }
    fputs("}}\n", stdout);
}

/* ---- table ------------------------------------------------------------ */

static const char *const s_reasons[] = {
    "invalid", "too_large", "unauthorized", "duplicate", "storage_full",
    "shutting_down", "unsupported", "bad_version", "out_of_retention"};
static const char *const s_close[] = {"delay", "immediate", "max_events",
                                      "max_bytes", "shutdown"};

static void
s_kv(const char *key, double v)
{
    printf("  %s ", key);
    s_num(stdout, v);
}

static void
s_labelled(const s_samples *s, const char *name, const char *lkey,
           const char *const *vals, size_t n, int skip_zero)
{
    char l[128];
    int any = 0;

    for (size_t i = 0; i < n; i++) {
        snprintf(l, sizeof l, "%s=\"%s\"", lkey, vals[i]);
        double v = s_val(s, name, l);
        if (skip_zero && (isnan(v) || v == 0))
            continue;
        s_kv(vals[i], v);
        any = 1;
    }
    if (!any)
        printf("  none");
}

static void
s_print_table(const s_samples *s, const char *url)
{
    const char *version = "?";
    static char vbuf[64];
    const char *state = "starting";

    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].name, "snapbus_build_info") == 0) {
            const char *v = strstr(s->v[i].labels, "version=\"");
            if (v != NULL) {
                v += 9;
                size_t l = strcspn(v, "\"");
                snprintf(vbuf, sizeof vbuf, "%.*s", (int) l, v);
                version = vbuf;
            }
        }
    if (s_val(s, "snapbus_ready", NULL) == 1)
        state = "ready";
    else if (s_val(s, "snapbus_draining", NULL) == 1)
        state = "draining";
    printf("broker     %s  version %s  %s\n", url, version, state);

    printf("events   ");
    s_kv("accepted", s_val(s, "snapbus_events_accepted_total", NULL));
    s_kv("refused", s_val(s, "snapbus_events_refused_total", NULL));
    s_kv("published", s_val(s, "snapbus_events_published_total", NULL));
    s_kv("last_seq", s_val(s, "snapbus_last_seq", NULL));
    s_kv("published_seq", s_val(s, "snapbus_last_published_seq", NULL));
    printf("\nrefusals ");
    s_labelled(s, "snapbus_refusals_total", "reason", s_reasons,
               sizeof s_reasons / sizeof s_reasons[0], 1);
    printf("\nrequests ");
    s_kv("publish", s_val(s, "snapbus_requests_total", NULL));
    s_kv("bad", s_val(s, "snapbus_bad_requests_total", NULL));
    s_kv("bad_frames", s_val(s, "snapbus_bad_frames_total", NULL));
    s_kv("hellos", s_val(s, "snapbus_hellos_total", NULL));
    s_kv("replies", s_val(s, "snapbus_replies_sent_total", NULL));
    s_kv("lost", s_val(s, "snapbus_replies_lost_total", NULL));
    printf("\nbatches  ");
    s_kv("published", s_val(s, "snapbus_batches_published_total", NULL));
    s_kv("open", s_val(s, "snapbus_open_batches", NULL));
    s_kv("open_bytes", s_val(s, "snapbus_open_bytes", NULL));
    s_kv("aggregates", s_val(s, "snapbus_aggregates", NULL));
    printf("\nflushed  ");
    s_labelled(s, "snapbus_batches_flushed_total", "reason", s_close,
               sizeof s_close / sizeof s_close[0], 0);

    /* Histogram: each non-empty bucket as "<=N: count" (not cumulative). */
    printf("\nsizes    ");
    double prev = 0, count = s_val(s, "snapbus_batch_events_count", NULL);
    const char *below = "0"; /* the previous bucket's bound */
    int any = 0, blen = 1;
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].name, "snapbus_batch_events_bucket") != 0)
            continue;
        const char *le = strstr(s->v[i].labels, "le=\"");
        double in = s->v[i].value - prev;
        prev = s->v[i].value;
        if (le == NULL)
            continue;
        le += 4;
        int len = (int) strcspn(le, "\"");
        if (in > 0) {
            if (strncmp(le, "+Inf", 4) == 0)
                printf("  >%.*s: ", blen, below);
            else
                printf("  <=%.*s: ", len, le);
            s_num(stdout, in);
            any = 1;
        }
        below = le;
        blen = len;
    }
    if (!any)
        printf("  none");
    if (count > 0)
        printf("  (mean %.1f events)",
               s_val(s, "snapbus_batch_events_sum", NULL) / count);
    printf("\nretained ");
    s_kv("batches", s_val(s, "snapbus_retained_batches", NULL));
    s_kv("bytes", s_val(s, "snapbus_retained_bytes", NULL));
    s_kv("fetches", s_val(s, "snapbus_fetches_total", NULL));
    s_kv("fetched_batches", s_val(s, "snapbus_fetch_batches_total", NULL));
    s_kv("fetch_refused", s_val(s, "snapbus_fetch_refused_total", NULL));
    printf("\nwaits    ");
    s_kv("ingest_parked", s_val(s, "snapbus_ingest_parked_total", NULL));
    s_kv("router_waits", s_val(s, "snapbus_router_waits_total", NULL));
    s_kv("fanout_parked", s_val(s, "snapbus_fanout_parked_total", NULL));
    printf("\n\n%-20s %8s %8s %8s %12s %10s %9s\n", "queue", "depth", "bound",
           "high", "sent", "full", "wait_s");
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].name, "snapbus_queue_capacity") != 0)
            continue;
        const char *l = s->v[i].labels;
        const char *q = strstr(l, "queue=\"");
        printf("%-20.*s", q ? (int) strcspn(q + 7, "\"") : 1, q ? q + 7 : "?");
        static const char *const cols[] = {
            "snapbus_queue_depth", "snapbus_queue_capacity",
            "snapbus_queue_high_water", "snapbus_queue_sent_total",
            "snapbus_queue_full_total", "snapbus_queue_wait_seconds_total"};
        static const int width[] = {8, 8, 8, 12, 10, 9};
        for (size_t c = 0; c < 6; c++) {
            double v = s_val(s, cols[c], l);
            if (c == 5 && !isnan(v))
                printf(" %*.3f", width[c], v);
            else if (isnan(v))
                printf(" %*s", width[c], "-");
            else
                printf(" %*.0f", width[c], v);
        }
        putchar('\n');
    }
    double rss = s_val(s, "process_resident_memory_bytes", NULL);
    printf("\nprocess  ");
    if (!isnan(rss))
        printf("  rss %.1f MiB", rss / 1048576.0);
    s_kv("cpu_s", s_val(s, "process_cpu_seconds_total", NULL));
    s_kv("fds", s_val(s, "process_open_fds", NULL));
    putchar('\n');
}

/* ---- main ------------------------------------------------------------- */

static int
s_url_from_ready(const char *path, char *url, size_t n)
{
    FILE *f = fopen(path, "r");
    char line[512];
    int found = -1;

    if (f == NULL) {
        fprintf(stderr, "snapbus stat: %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (found != 0 && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "metrics=", 8) == 0) {
            line[strcspn(line, "\r\n")] = '\0';
            snprintf(url, n, "%s", line + 8);
            found = 0;
        }
    fclose(f);
    if (found != 0)
        fprintf(stderr, "snapbus stat: %s has no metrics= line: the "
                        "broker's metrics endpoint is off by default; start "
                        "snapbusd with --metrics 127.0.0.1:7704 (or [broker] "
                        "metrics = HOST:PORT)\n", path);
    return found;
}

int
cli_stat(int argc, char **argv)
{
    enum { O_RAW = 256, O_HEALTH, O_READY };
    static const struct option lo[] = {
        {"url", required_argument, NULL, 'u'},
        {"ready-file", required_argument, NULL, 'r'},
        {"json", no_argument, NULL, 'j'},
        {"raw", no_argument, NULL, O_RAW},
        {"health", no_argument, NULL, O_HEALTH},
        {"ready", no_argument, NULL, O_READY},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    char url[512] = "http://127.0.0.1:7704";
    const char *path = "/metrics";
    int c, json = 0, raw = 0, probe = 0, timeout_ms = 5000;
    char *body = NULL;
    size_t blen = 0;

    while ((c = getopt_long(argc, argv, "u:r:jT:h", lo, NULL)) != -1) {
        switch (c) {
        case 'u': snprintf(url, sizeof url, "%s", optarg); break;
        case 'r':
            if (s_url_from_ready(optarg, url, sizeof url) != 0)
                return CLI_FAILED;
            break;
        case 'j': json = 1; break;
        case O_RAW: raw = 1; break;
        case O_HEALTH: probe = 1; path = "/healthz"; break;
        case O_READY: probe = 1; path = "/readyz"; break;
        case 'T':
            if (cli_parse_int(optarg, 1, 86400000, &timeout_ms) != 0) {
                fprintf(stderr, "snapbus stat: bad --timeout-ms\n");
                return CLI_USAGE;
            }
            break;
        case 'h': s_help(stdout); return CLI_OK;
        default: s_help(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "snapbus stat: unexpected argument '%s'\n", argv[optind]);
        return CLI_USAGE;
    }
    int status = s_get(url, path, timeout_ms, &body, &blen);
    if (status == -2)
        return CLI_USAGE;
    if (status < 0)
        return CLI_FAILED;
    if (probe) {
        /* The body is one word: ok, ready, starting, draining. */
        fwrite(body, 1, blen, stdout);
        free(body);
        return status == 200 ? CLI_OK : CLI_FAILED;
    }
    if (status != 200) {
        fprintf(stderr, "snapbus stat: %s%s: HTTP %d\n", url, path, status);
        free(body);
        return CLI_FAILED;
    }
    if (raw) {
        fwrite(body, 1, blen, stdout);
        free(body);
        return CLI_OK;
    }
    s_samples s = {0};
    if (s_parse(body, &s) != 0 || s.n == 0) {
        fprintf(stderr, "snapbus stat: %s: no metrics in the answer\n", url);
        free(s.v);
        free(body);
        return CLI_FAILED;
    }
    if (json)
        s_print_json(&s, url);
    else
        s_print_table(&s, url);
    free(s.v);
    free(body);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAILED;
}
