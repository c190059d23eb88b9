/* Key files and allowlists (see sb_keys.h). Owns nothing beyond the sets
 * it returns; the caller destroys them. Any thread. */
#include "sb_keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

struct sb_keyset {
    size_t n;
    uint8_t keys[][SB_KEY_BYTES];
};

static const char s_z85[] = "0123456789abcdefghijklmnopqrstuvwxyz"
                            "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/* Allowlists are small (people's keys), but a file is read whole, so cap
 * it: a wrong path pointing at a huge file should fail, not eat memory. */
#define S_MAX_FILE (16u << 20)

static int
s_is_z85(char c)
{
    return c != '\0' && strchr(s_z85, c) != NULL;
}

static int
s_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

sb_err
sb_key_decode(const char *z85, size_t len, uint8_t *out)
{
    char buf[SB_KEY_Z85_LEN + 1];

    if (len != SB_KEY_Z85_LEN)
        return SB_EINVAL;
    for (size_t i = 0; i < len; i++)
        if (!s_is_z85(z85[i]))
            return SB_EINVAL;
    memcpy(buf, z85, len);
    buf[len] = '\0';
    return zmq_z85_decode(out, buf) != NULL ? SB_OK : SB_EINVAL;
}

/* One line, without its newline. 1: a key (in key), 0: nothing on it,
 * -1: neither a key nor a comment. '#' is a Z85 character, but no key
 * starts with it: the first character of a group encodes its top value,
 * at most 2^32 / 85^4 = 82, and '#' is the 85th. So a leading '#' is
 * always a comment. */
static int
s_line(const char *p, size_t len, uint8_t *key)
{
    size_t i = 0, j;

    while (i < len && s_blank(p[i]))
        i++;
    while (len > i && s_blank(p[len - 1]))
        len--;
    if (i == len || p[i] == '#')
        return 0;
    for (j = i; j < len && s_is_z85(p[j]); j++)
        ;
    if (j - i != SB_KEY_Z85_LEN || sb_key_decode(p + i, SB_KEY_Z85_LEN, key) != SB_OK)
        return -1;
    /* After the key: nothing, or blanks and a comment. */
    if (j == len)
        return 1;
    if (!s_blank(p[j]))
        return -1;
    while (j < len && s_blank(p[j]))
        j++;
    return p[j] == '#' ? 1 : -1;
}

static int
s_cmp(const void *a, const void *b)
{
    return memcmp(a, b, SB_KEY_BYTES);
}

sb_err
sb_keyset_parse(sb_keyset **out, const char *text, size_t len,
                const char *name, char *why, size_t n)
{
    size_t lines = 1, nkeys = 0, line = 0;
    sb_keyset *ks;

    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    ks = malloc(sizeof *ks + lines * SB_KEY_BYTES);
    if (ks == NULL)
        return SB_ENOMEM;
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t end = nl != NULL ? (size_t) (nl - text) : len;
        line++;
        if (memchr(text + at, '\0', end - at) != NULL) {
            snprintf(why, n, "%s:%zu: a NUL byte (not a text file?)", name, line);
            free(ks);
            return SB_EINVAL;
        }
        int r = s_line(text + at, end - at, ks->keys[nkeys]);
        if (r < 0) {
            snprintf(why, n, "%s:%zu: not a 40-character Z85 key (one key per "
                     "line; '#' starts a comment)", name, line);
            free(ks);
            return SB_EINVAL;
        }
        nkeys += (size_t) r;
        at = end + 1;
    }
    qsort(ks->keys, nkeys, SB_KEY_BYTES, s_cmp);
    /* Drop repeats, so the count says how many peers can get in. */
    size_t w = 0;
    for (size_t r = 0; r < nkeys; r++)
        if (w == 0 || memcmp(ks->keys[w - 1], ks->keys[r], SB_KEY_BYTES) != 0)
            memmove(ks->keys[w++], ks->keys[r], SB_KEY_BYTES);
    ks->n = w;
    *out = ks;
    return SB_OK;
}

static sb_err
s_read(const char *path, char **buf, size_t *len, char *why, size_t n)
{
    FILE *f = fopen(path, "rb");
    size_t cap = 4096, got = 0;
    char *p = NULL;

    if (f == NULL) {
        snprintf(why, n, "%s: %s", path, strerror(errno));
        return SB_ESYS;
    }
    for (;;) {
        char *q = realloc(p, cap);
        if (q == NULL) {
            free(p);
            fclose(f);
            return SB_ENOMEM;
        }
        p = q;
        got += fread(p + got, 1, cap - got, f);
        if (got < cap)
            break;
        if (cap >= S_MAX_FILE) {
            snprintf(why, n, "%s: larger than %u bytes", path, S_MAX_FILE);
            free(p);
            fclose(f);
            return SB_EINVAL;
        }
        cap *= 2;
    }
    if (ferror(f)) {
        snprintf(why, n, "%s: %s", path, strerror(errno));
        free(p);
        fclose(f);
        return SB_ESYS;
    }
    fclose(f);
    *buf = p;
    *len = got;
    return SB_OK;
}

sb_err
sb_keyset_load(sb_keyset **out, const char *path, char *why, size_t n)
{
    char *buf;
    size_t len;
    sb_err rc = s_read(path, &buf, &len, why, n);

    if (rc != SB_OK)
        return rc;
    rc = sb_keyset_parse(out, buf, len, path, why, n);
    free(buf);
    return rc;
}

int
sb_keyset_has(const sb_keyset *ks, const uint8_t *key)
{
    if (ks == NULL || ks->n == 0)
        return 0;
    return bsearch(key, ks->keys, ks->n, SB_KEY_BYTES, s_cmp) != NULL;
}

size_t
sb_keyset_count(const sb_keyset *ks)
{
    return ks != NULL ? ks->n : 0;
}

void
sb_keyset_destroy(sb_keyset **ksp)
{
    if (ksp == NULL || *ksp == NULL)
        return;
    free(*ksp);
    *ksp = NULL;
}

sb_err
sb_key_read_file(const char *path, char *z85, char *why, size_t n)
{
    char *buf;
    size_t len;
    sb_keyset *ks = NULL;
    sb_err rc = s_read(path, &buf, &len, why, n);

    if (rc != SB_OK)
        return rc;
    rc = sb_keyset_parse(&ks, buf, len, path, why, n);
    if (rc == SB_OK && sb_keyset_count(ks) != 1) {
        snprintf(why, n, "%s: holds %zu keys, a key file holds exactly one",
                 path, sb_keyset_count(ks));
        rc = SB_EINVAL;
    }
    if (rc == SB_OK)
        zmq_z85_encode(z85, ks->keys[0], SB_KEY_BYTES);
    /* The buffer may hold a secret key: do not leave it in freed memory. */
    explicit_bzero(buf, len);
    if (ks != NULL)
        explicit_bzero(ks->keys, ks->n * SB_KEY_BYTES);
    free(buf);
    sb_keyset_destroy(&ks);
    return rc;
}

sb_err
sb_key_check_private(const char *path, char *why, size_t n)
{
    struct stat st;

    if (stat(path, &st) != 0) {
        snprintf(why, n, "%s: %s", path, strerror(errno));
        return SB_ESYS;
    }
    if ((st.st_mode & 077) != 0) {
        snprintf(why, n, "%s: mode %04o lets %s read this secret key; "
                 "chmod 600 %s", path, (unsigned) (st.st_mode & 07777),
                 (st.st_mode & 070) && (st.st_mode & 07) ? "group and others"
                 : (st.st_mode & 070) ? "the group" : "others", path);
        return SB_EINVAL;
    }
    return SB_OK;
}

int
sb_key_is_literal(const char *arg)
{
    uint8_t key[SB_KEY_BYTES];

    return arg != NULL && strlen(arg) == SB_KEY_Z85_LEN &&
           sb_key_decode(arg, SB_KEY_Z85_LEN, key) == SB_OK;
}

sb_err
sb_curve_key_load(const char *arg, char *z85, char *why, size_t n)
{
    uint8_t key[SB_KEY_BYTES];

    if (arg == NULL || *arg == '\0') {
        snprintf(why, n, "no key given");
        return SB_EINVAL;
    }
    if (strlen(arg) == SB_KEY_Z85_LEN && sb_key_decode(arg, SB_KEY_Z85_LEN, key) == SB_OK) {
        memcpy(z85, arg, SB_KEY_Z85_LEN + 1);
        return SB_OK;
    }
    return sb_key_read_file(arg, z85, why, n);
}
