/* The protocol's rule for names (aggregate, type, event id, producer id):
 * valid UTF-8 with no 0x00 byte. One check, shared by the broker, which
 * refuses such names, and the client library, which refuses them before
 * sending and says where they break. Pure function, any thread. */
#ifndef SB_UTF8_H
#define SB_UTF8_H

#include <stddef.h>

/* The offset of the first byte where s[0..n) stops being UTF-8 (a bad
 * lead or continuation byte, an overlong form, a surrogate, a value past
 * U+10FFFF, a sequence cut by the end, or 0x00), or SIZE_MAX if it is a
 * valid name. */
size_t sb_utf8_bad_at(const char *s, size_t n);

#endif
