/* Starts and stops a real snapbusd for integration tests: free loopback
 * ports (tcp://127.0.0.1:*), endpoints read back from --ready-file, stopped
 * by PID with SIGTERM. */
#ifndef SBT_HARNESS_H
#define SBT_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    char dir[64];
    char ingest[256];
    char pub[256];
    char query[256];
    char metrics[256]; /* http://HOST:PORT when started with --metrics */
} sbt_broker;

/* extra: NULL-terminated flags for snapbusd. 0 on success. */
int sbt_broker_start(sbt_broker *b, const char *const *extra);
/* SIGTERM and wait up to timeout_s; the broker's exit status, or -1 if it
 * had to be killed or died of a signal. */
int sbt_broker_stop(sbt_broker *b, int timeout_s);
/* Resident set high-water mark of the broker, KiB (VmHWM). */
long sbt_broker_vmhwm_kb(const sbt_broker *b);
/* Resident set of the broker now, KiB (VmRSS). */
long sbt_broker_rss_kb(const sbt_broker *b);
/* RLIMIT_NOFILE (soft and hard) of the brokers started from now on;
 * 0: inherited, as by default. The test process keeps its own. */
void sbt_set_broker_nofile(unsigned long n);

/* One raw request on a fresh DEALER; returns the reply frames' count and
 * fills reply (first frame) up to cap. -1 on timeout. */
int sbt_raw_request(const char *endpoint, const void *const *frames,
                    const size_t *lens, int nframes, void *reply, size_t cap,
                    size_t *reply_len, int timeout_ms);

uint64_t sbt_now_ms(void);

/* Polls cond every 20 ms until it holds or ms have passed (a generous
 * deadline: the caller asserts cond afterwards). */
#define SBT_WAIT_UNTIL(cond, ms)                                         \
    for (uint64_t sbt_deadline_ = sbt_now_ms() + (ms);                   \
         !(cond) && sbt_now_ms() < sbt_deadline_;)                       \
        usleep(20000)

/* One HTTP/1.0 GET of path from base ("http://127.0.0.1:PORT"). Returns
 * the status code and copies the body (NUL-terminated, cut at cap - 1)
 * into body; -1 if no answer within timeout_ms. */
int sbt_http_get(const char *base, const char *path, char *body, size_t cap,
                 int timeout_ms);

#endif
