/* A latency histogram for /metrics: fixed bounds in seconds (the same for
 * every histogram, so dashboards can compare them), counts kept per bucket
 * with relaxed atomics. Any thread observes; the metrics thread reads. An
 * observation costs one comparison loop and two atomic adds. */
#ifndef SB_HIST_H
#define SB_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#define SB_HIST_N 17 /* finite bounds; one more bucket for +Inf */

typedef struct {
    atomic_uint_fast64_t n[SB_HIST_N + 1]; /* per bucket, not cumulative */
    atomic_uint_fast64_t sum_ns;
} sb_hist;

/* Upper bounds, seconds: 100 us to 30 s. */
extern const double sb_hist_bounds_s[SB_HIST_N];

void sb_hist_observe_ns(sb_hist *h, uint64_t ns);

#endif
