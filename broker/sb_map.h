/* An open-addressing hash map from byte strings to pointers.
 *
 * The map does not copy keys: the caller keeps each key's bytes alive and
 * unchanged while it is in the map (usually the key lives inside the
 * value). Linear probing with backward-shift deletion, so removal leaves no
 * tombstones and lookups stay short under churn. */
#ifndef SB_MAP_H
#define SB_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"

typedef struct sb_map sb_map;

sb_err sb_map_new(sb_map **out, size_t initial);
/* Frees the map, not the values; NULL-safe, sets *mapp to NULL. */
void sb_map_destroy(sb_map **mapp);

void *sb_map_get(const sb_map *m, const void *key, size_t len);
/* Inserts or replaces. SB_ENOMEM leaves the map as it was; SB_EINVAL
 * for a NULL value (NULL is what get returns for "absent"). */
sb_err sb_map_put(sb_map *m, const void *key, size_t len, void *value);
/* Returns the removed value, or NULL. */
void *sb_map_del(sb_map *m, const void *key, size_t len);
size_t sb_map_size(const sb_map *m);

/* Calls fn for every entry; fn must not change the map. */
void sb_map_each(const sb_map *m, void (*fn)(void *value, void *ctx),
                 void *ctx);

uint64_t sb_hash(const void *key, size_t len);

#endif
