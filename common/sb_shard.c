/* Which shard an aggregate belongs to. Compiled into the broker (which
 * refuses aggregates of other shards) and into libsnapbus (which picks the
 * broker), so both sides always agree. The Python client carries the same
 * function; tests/unit/test_shard.c and its test vectors pin it down.
 *
 * The key is the FNV-1a 64 hash of the aggregate's name; the shard is
 * Lamping and Veach's jump consistent hash of that key. Jump hash numbers
 * shards 0..n-1 (a StatefulSet's ordinals) and, when n grows by one, moves
 * only the aggregates that go to the new shard: about 1/(n+1) of them. */
#include "sb_err.h"

#include <stddef.h>
#include <stdint.h>

static uint64_t
s_fnv1a64(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint32_t
s_jump(uint64_t key, uint32_t n)
{
    int64_t b = -1, j = 0;

    while (j < (int64_t)n) {
        b = j;
        key = key * 2862933555777941757ull + 1;
        j = (int64_t)((double)(b + 1) *
                      ((double)(1ll << 31) / (double)((key >> 33) + 1)));
    }
    return (uint32_t)b;
}

sb_err
sb_shard_of(const char *name, size_t len, uint32_t nshards, uint32_t *shard)
{
    if ((name == NULL && len > 0) || nshards == 0 || shard == NULL)
        return SB_EINVAL;
    *shard = nshards == 1 ? 0 : s_jump(s_fnv1a64(name, len), nshards);
    return SB_OK;
}
