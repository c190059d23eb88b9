#define _GNU_SOURCE /* nftw */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

uint64_t
sbt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static int
s_read_ready(sbt_broker *b, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[240];

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "ingest=", 7) == 0)
            snprintf(b->ingest, sizeof b->ingest, "%s", line + 7);
        else if (strncmp(line, "pub=", 4) == 0)
            snprintf(b->pub, sizeof b->pub, "%s", line + 4);
        else if (strncmp(line, "query=", 6) == 0)
            snprintf(b->query, sizeof b->query, "%s", line + 6);
        else if (strncmp(line, "metrics=", 8) == 0)
            snprintf(b->metrics, sizeof b->metrics, "%s", line + 8);
    }
    fclose(f);
    return b->ingest[0] && b->pub[0] && b->query[0] ? 0 : -1;
}

static unsigned long s_broker_nofile;

void
sbt_set_broker_nofile(unsigned long n)
{
    s_broker_nofile = n;
}

/* The brokers' data directories, removed when the test program ends: a
 * log reserves two 64 MiB files, so a suite run over and over would fill
 * the disk. broker.log stays, for a failed test to be read. */
static char s_data_dirs[256][128]; /* as sbt_broker_start's paths */
static int s_ndata_dirs;

static int
s_remove(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void) st;
    (void) flag;
    (void) f;
    remove(path);
    return 0;
}

static void
s_remove_data_dirs(void)
{
    for (int i = 0; i < s_ndata_dirs; i++)
        nftw(s_data_dirs[i], s_remove, 16, FTW_DEPTH | FTW_PHYS);
}

int
sbt_broker_start(sbt_broker *b, const char *const *extra)
{
    char ready[128], data[128], log[128];
    const char *argv[64];
    int n = 0;

    memset(b, 0, sizeof *b);
    snprintf(b->dir, sizeof b->dir, "/tmp/sbt.XXXXXX");
    if (mkdtemp(b->dir) == NULL)
        return -1;
    snprintf(ready, sizeof ready, "%s/ready", b->dir);
    snprintf(data, sizeof data, "%s/data", b->dir);
    if (s_ndata_dirs == 0)
        atexit(s_remove_data_dirs);
    if (s_ndata_dirs < 256)
        snprintf(s_data_dirs[s_ndata_dirs++], sizeof s_data_dirs[0], "%s", data);
    snprintf(log, sizeof log, "%s/broker.log", b->dir);
    argv[n++] = SNAPBUSD_PATH;
    argv[n++] = "--ingest"; argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--pub"; argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--query"; argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--ready-file"; argv[n++] = ready;
    argv[n++] = "--data-dir"; argv[n++] = data;
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;

    pid_t parent = getpid();
    b->pid = fork();
    if (b->pid < 0)
        return -1;
    if (b->pid == 0) {
        /* A test that dies (a sanitizer's abort, a crash) must not leave
         * its broker behind: it would hold ctest's output pipe open, and
         * ctest would wait for it until its timeout. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        if (s_broker_nofile != 0) {
            struct rlimit rl = {s_broker_nofile, s_broker_nofile};
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                _exit(126);
        }
        execv(SNAPBUSD_PATH, (char *const *) argv);
        _exit(127);
    }
    /* Waiting for the broker to come up is not a timing assertion: it is
     * bounded only so a broken build cannot hang the suite. */
    for (int i = 0; i < 3000; i++) {
        int st;
        if (s_read_ready(b, ready) == 0)
            return 0;
        if (waitpid(b->pid, &st, WNOHANG) == b->pid) {
            fprintf(stderr, "snapbusd exited at start (status %d); log: %s\n", st, log);
            b->pid = 0;
            return -1;
        }
        usleep(10000);
    }
    sbt_broker_stop(b, 1);
    return -1;
}

int
sbt_broker_stop(sbt_broker *b, int timeout_s)
{
    int st = 0;

    if (b->pid <= 0)
        return -1;
    kill(b->pid, SIGTERM);
    for (int i = 0; i < timeout_s * 100; i++) {
        if (waitpid(b->pid, &st, WNOHANG) == b->pid) {
            b->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        usleep(10000);
    }
    kill(b->pid, SIGKILL);
    waitpid(b->pid, &st, 0);
    b->pid = 0;
    return -1;
}

long
sbt_broker_rss_kb(const sbt_broker *b)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", (int) b->pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

long
sbt_broker_vmhwm_kb(const sbt_broker *b)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", (int) b->pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

int
sbt_raw_request(const char *endpoint, const void *const *frames,
                const size_t *lens, int nframes, void *reply, size_t cap,
                size_t *reply_len, int timeout_ms)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, got = -1;

    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_connect(s, endpoint);
    for (int i = 0; i < nframes; i++)
        zmq_send(s, frames[i], lens[i], i + 1 < nframes ? ZMQ_SNDMORE : 0);
    int n = zmq_recv(s, reply, cap, 0);
    if (n >= 0) {
        int more = 0;
        size_t sz = sizeof more;
        *reply_len = (size_t) n < cap ? (size_t) n : cap;
        got = 1;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
        while (more) {
            char skip[16];
            zmq_recv(s, skip, sizeof skip, 0);
            got++;
            zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
        }
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    return got;
}

int
sbt_http_get(const char *base, const char *path, char *body, size_t cap,
             int timeout_ms)
{
    char host[64], req[512];
    unsigned port;
    struct sockaddr_in a = {0};
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    size_t len = 0;
    ssize_t n;
    int fd, status = -1;
    char *all;

    if (sscanf(base, "http://%63[^:]:%u", host, &port) != 2 ||
        (all = malloc(cap + 1024)) == NULL)
        return -1;
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t) port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
        (fd = socket(AF_INET, SOCK_STREAM, 0)) < 0) {
        free(all);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (connect(fd, (struct sockaddr *) &a, sizeof a) == 0 &&
        send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t) strlen(req)) {
        while (len < cap + 1023 && (n = recv(fd, all + len, cap + 1023 - len, 0)) > 0)
            len += (size_t) n;
        all[len] = '\0';
        char *hdr_end = strstr(all, "\r\n\r\n");
        if (sscanf(all, "HTTP/1.%*d %d", &status) == 1 && hdr_end != NULL) {
            snprintf(body, cap, "%s", hdr_end + 4);
        } else {
            status = -1;
        }
    }
    close(fd);
    free(all);
    return status;
}
