/* UTF-8 names (see sb_utf8.h). */
#include "sb_utf8.h"

#include <stdint.h>

size_t
sb_utf8_bad_at(const char *s, size_t n)
{
    const unsigned char *b = (const unsigned char *) s, *p = b, *end = p + n;

    while (p < end) {
        unsigned c = *p;
        size_t k;
        uint32_t cp;
        if (c == 0)
            return (size_t) (p - b);
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            k = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            k = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            k = 3, cp = c & 0x07;
        else
            return (size_t) (p - b);
        if ((size_t) (end - p) <= k)
            return (size_t) (p - b);
        for (size_t i = 1; i <= k; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return (size_t) (p - b);
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        /* Overlong forms, surrogates and values past U+10FFFF. */
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return (size_t) (p - b);
        p += k + 1;
    }
    return SIZE_MAX;
}
