/* Internal helpers of libsnapbus (see sbc_internal.h): the decode arena,
 * the clock and the wire error mapping. Nothing here is exported and
 * nothing here holds global state, so any thread may use it on its own
 * objects. */
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sbc_internal.h"

#include "snapbus.pb-c.h"

struct sbc_chunk {
    sbc_chunk *next;
    size_t cap;
    size_t used;
    alignas(max_align_t) unsigned char data[];
};

#define SBC_ALIGN (alignof(max_align_t))
#define SBC_CHUNK_MAX ((size_t)4 << 20)

static void *
s_pbc_alloc(void *ctx, size_t size)
{
    return sbc_arena_alloc(ctx, size);
}

static void
s_pbc_free(void *ctx, void *ptr)
{
    /* Freed with the arena as a whole. */
    (void)ctx;
    (void)ptr;
}

void
sbc_arena_init(sbc_arena *a, size_t first_cap)
{
    a->head = NULL;
    a->next_cap = first_cap < 1024 ? 1024 : first_cap;
    a->pbc.alloc = s_pbc_alloc;
    a->pbc.free = s_pbc_free;
    a->pbc.allocator_data = a;
}

void *
sbc_arena_alloc(sbc_arena *a, size_t size)
{
    sbc_chunk *c = a->head;
    size_t need = (size + SBC_ALIGN - 1) & ~(SBC_ALIGN - 1);

    if (need < size) /* overflow */
        return NULL;
    if (c == NULL || c->cap - c->used < need) {
        size_t cap = a->next_cap;

        if (cap < need)
            cap = need; /* one big field: a chunk of its own size */
        if (cap > SIZE_MAX - sizeof *c)
            return NULL;
        if ((c = malloc(sizeof *c + cap)) == NULL)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        /* Doubling keeps the number of chunks logarithmic in the total;
         * the cap keeps one huge field from doubling every later chunk. */
        if (a->next_cap < SBC_CHUNK_MAX)
            a->next_cap *= 2;
    }
    void *p = c->data + c->used;
    c->used += need;
    return p;
}

void
sbc_arena_reset(sbc_arena *a)
{
    sbc_chunk *keep = NULL;

    for (sbc_chunk *c = a->head, *next; c != NULL; c = next) {
        next = c->next;
        if (keep == NULL || c->cap > keep->cap) {
            free(keep);
            keep = c;
        } else {
            free(c);
        }
    }
    if (keep != NULL) {
        keep->next = NULL;
        keep->used = 0;
        a->next_cap = keep->cap;
    }
    a->head = keep;
}

void
sbc_arena_fini(sbc_arena *a)
{
    for (sbc_chunk *c = a->head, *next; c != NULL; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
}

uint64_t
sbc_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t
sbc_coarse_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t
sbc_deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return UINT64_MAX;
    return sbc_now_ms() + (uint64_t)timeout_ms;
}

void
sbc_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

long
sbc_remaining_ms(uint64_t deadline_ms)
{
    if (deadline_ms == UINT64_MAX)
        return -1;
    uint64_t now = sbc_now_ms();
    return now >= deadline_ms ? 0 : (long)(deadline_ms - now);
}

sb_err
sbc_err_from_wire(int code)
{
    switch (code) {
    case SNAPBUS__ERROR_CODE__ERR_NONE:
        return SB_OK;
    case SNAPBUS__ERROR_CODE__ERR_INVALID:
        return SB_EINVAL;
    case SNAPBUS__ERROR_CODE__ERR_TOO_LARGE:
        return SB_ETOOBIG;
    case SNAPBUS__ERROR_CODE__ERR_UNAUTHORIZED:
        return SB_EUNAUTH;
    case SNAPBUS__ERROR_CODE__ERR_DUPLICATE:
        return SB_EDUP;
    case SNAPBUS__ERROR_CODE__ERR_STORAGE_FULL:
        return SB_ESTORAGE;
    case SNAPBUS__ERROR_CODE__ERR_SHUTTING_DOWN:
        return SB_ECLOSED;
    case SNAPBUS__ERROR_CODE__ERR_UNSUPPORTED:
        return SB_ENOTSUP;
    case SNAPBUS__ERROR_CODE__ERR_BAD_VERSION:
        return SB_EPROTO;
    case SNAPBUS__ERROR_CODE__ERR_OUT_OF_RETENTION:
        return SB_ENOENT;
    case SNAPBUS__ERROR_CODE__ERR_BEYOND_DEDUP_HORIZON:
        return SB_EHORIZON;
    case SNAPBUS__ERROR_CODE__ERR_WRONG_SHARD:
        return SB_EWRONGSHARD;
    }
    return SB_EPROTO;
}

char *
sbc_strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);

    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

sb_err
sbc_opts_take(void *dst, size_t dst_size, size_t min_size, const void *src)
{
    size_t n;

    if (src == NULL)
        return SB_EINVAL;
    memcpy(&n, src, sizeof n); /* struct_size is every struct's first field */
    if (n < min_size || n > dst_size)
        return SB_EINVAL;
    memcpy(dst, src, n);
    memcpy(dst, &dst_size, sizeof dst_size);
    return SB_OK;
}
