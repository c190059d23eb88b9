#include "sb_hist.h"

#include <stddef.h>

const double sb_hist_bounds_s[SB_HIST_N] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};

void
sb_hist_observe_ns(sb_hist *h, uint64_t ns)
{
    size_t i = 0;

    while (i < SB_HIST_N && (double) ns > sb_hist_bounds_s[i] * 1e9)
        i++;
    atomic_fetch_add_explicit(&h->n[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}
