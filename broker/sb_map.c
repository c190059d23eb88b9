#include "sb_map.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const void *key;
    uint64_t hash;
    uint32_t len;
    void *value; /* NULL: empty slot */
} s_slot;

struct sb_map {
    s_slot *slots;
    size_t mask;
    size_t size;
};

/* FNV-1a over 8-byte words, then a final mix: cheap and good enough for
 * aggregate names and sequence numbers. */
uint64_t
sb_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ull ^ len;
    uint64_t w;

    while (len >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
        p += 8;
        len -= 8;
    }
    while (len-- > 0)
        h = (h ^ *p++) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

sb_err
sb_map_new(sb_map **out, size_t initial)
{
    sb_map *self = calloc(1, sizeof *self);
    size_t n = 16;

    if (self == NULL)
        return SB_ENOMEM;
    while (n < initial * 2)
        n <<= 1;
    if ((self->slots = calloc(n, sizeof *self->slots)) == NULL) {
        free(self);
        return SB_ENOMEM;
    }
    self->mask = n - 1;
    *out = self;
    return SB_OK;
}

void
sb_map_destroy(sb_map **mapp)
{
    if (mapp == NULL || *mapp == NULL)
        return;
    free((*mapp)->slots);
    free(*mapp);
    *mapp = NULL;
}

static size_t
s_find(const sb_map *m, const void *key, size_t len, uint64_t h)
{
    size_t i = h & m->mask;

    for (;;) {
        const s_slot *s = &m->slots[i];
        if (s->value == NULL)
            return i;
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)
            return i;
        i = (i + 1) & m->mask;
    }
}

void *
sb_map_get(const sb_map *m, const void *key, size_t len)
{
    return m->slots[s_find(m, key, len, sb_hash(key, len))].value;
}

static sb_err
s_grow(sb_map *m)
{
    size_t n = (m->mask + 1) * 2;
    s_slot *old = m->slots;
    size_t oldn = m->mask + 1;

    if ((m->slots = calloc(n, sizeof *m->slots)) == NULL) {
        m->slots = old;
        return SB_ENOMEM;
    }
    m->mask = n - 1;
    for (size_t i = 0; i < oldn; i++) {
        if (old[i].value == NULL)
            continue;
        size_t j = old[i].hash & m->mask;
        while (m->slots[j].value != NULL)
            j = (j + 1) & m->mask;
        m->slots[j] = old[i];
    }
    free(old);
    return SB_OK;
}

sb_err
sb_map_put(sb_map *m, const void *key, size_t len, void *value)
{
    uint64_t h;
    size_t i;

    if (value == NULL)
        return SB_EINVAL; /* NULL marks an empty slot */
    h = sb_hash(key, len);
    i = s_find(m, key, len, h);
    if (m->slots[i].value == NULL) {
        /* Keep the load under 1/2 so probes stay short. */
        if ((m->size + 1) * 2 > m->mask + 1) {
            if (s_grow(m) != SB_OK)
                return SB_ENOMEM;
            i = s_find(m, key, len, h);
        }
        m->size++;
    }
    m->slots[i] = (s_slot){key, h, (uint32_t) len, value};
    return SB_OK;
}

void *
sb_map_del(sb_map *m, const void *key, size_t len)
{
    uint64_t h = sb_hash(key, len);
    size_t i = s_find(m, key, len, h);
    void *v = m->slots[i].value;

    if (v == NULL)
        return NULL;
    /* Backward-shift: pull later entries of the probe run into the hole. */
    for (size_t j = (i + 1) & m->mask;; j = (j + 1) & m->mask) {
        s_slot *s = &m->slots[j];
        if (s->value == NULL)
            break;
        size_t home = s->hash & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->slots[i] = *s;
            i = j;
        }
    }
    m->slots[i].value = NULL;
    m->size--;
    return v;
}

size_t
sb_map_size(const sb_map *m)
{
    return m->size;
}

void
sb_map_each(const sb_map *m, void (*fn)(void *value, void *ctx), void *ctx)
{
    for (size_t i = 0; i <= m->mask; i++)
        if (m->slots[i].value != NULL)
            fn(m->slots[i].value, ctx);
}
