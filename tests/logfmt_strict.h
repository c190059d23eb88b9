/* A strict logfmt reader for tests: the grammar the broker promises
 * (docs/OPERATIONS.md, "Logs"), nothing more lenient.
 *
 *   line  = pair *(" " pair)
 *   pair  = key "=" value
 *   key   = 1*(ALPHA / DIGIT / "_" / "." / "-")
 *   value = 1*bare / quoted
 *   bare  = any byte but space, control, '"', '=', '\', DEL
 *   quoted = '"' *(any byte but '"', '\', control / escape) '"'
 *   escape = "\" ('"' / "\" / "n" / "r" / "t" / "u" 4HEXDIG)
 *
 * and the first three keys are ts, level and event. Header-only: the unit
 * and integration tests include it. */
#ifndef SBT_LOGFMT_STRICT_H
#define SBT_LOGFMT_STRICT_H

#include <stdio.h>
#include <string.h>

/* 0 if line is strict logfmt; else -1 and the reason (with the column)
 * in why. nkeys gets the number of pairs. */
static int
sbt_logfmt_check(const char *line, int *nkeys, char *why, size_t n)
{
    const char *p = line;
    static const char *const first[] = {"ts", "level", "event"};
    int k = 0;

    for (;;) {
        const char *key = p;
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
               (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '-')
            p++;
        if (p == key || *p != '=') {
            snprintf(why, n, "column %d: expected key=", (int) (key - line) + 1);
            return -1;
        }
        if (k < 3 && ((size_t) (p - key) != strlen(first[k]) ||
                      strncmp(key, first[k], strlen(first[k])) != 0)) {
            snprintf(why, n, "column %d: pair %d must be %s=", (int) (key - line) + 1,
                     k + 1, first[k]);
            return -1;
        }
        p++;
        if (*p == '"') {
            for (p++; *p != '"'; p++) {
                unsigned char c = (unsigned char) *p;
                if (c == '\0' || c < 0x20 || c == 0x7f) {
                    snprintf(why, n, "column %d: unterminated or raw control byte in quotes",
                             (int) (p - line) + 1);
                    return -1;
                }
                if (c == '\\') {
                    p++;
                    if (*p == 'u') {
                        for (int i = 1; i <= 4; i++)
                            if (!strchr("0123456789abcdefABCDEF", p[i]) || p[i] == '\0') {
                                snprintf(why, n, "column %d: bad \\u escape", (int) (p - line) + 1);
                                return -1;
                            }
                        p += 4;
                    } else if (*p == '\0' || !strchr("\"\\nrt", *p)) {
                        snprintf(why, n, "column %d: bad escape", (int) (p - line) + 1);
                        return -1;
                    }
                }
            }
            p++;
        } else {
            const char *v = p;
            while (*p != '\0' && *p != ' ') {
                unsigned char c = (unsigned char) *p;
                if (c < 0x20 || c == 0x7f || c == '"' || c == '=' || c == '\\') {
                    snprintf(why, n, "column %d: '%c' in a bare value (quote it)",
                             (int) (p - line) + 1, c >= 0x20 ? c : '?');
                    return -1;
                }
                p++;
            }
            if (p == v) {
                snprintf(why, n, "column %d: empty bare value", (int) (p - line) + 1);
                return -1;
            }
        }
        k++;
        if (*p == '\0')
            break;
        if (*p != ' ' || p[1] == ' ' || p[1] == '\0') {
            snprintf(why, n, "column %d: pairs are separated by one space",
                     (int) (p - line) + 1);
            return -1;
        }
        p++;
    }
    if (k < 3) {
        snprintf(why, n, "fewer than ts, level and event");
        return -1;
    }
    *nkeys = k;
    return 0;
}

#endif
