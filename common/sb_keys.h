/* CURVE keys in files: allowlists (one Z85 public key per line) and the
 * single-key files `snapbus keygen` writes.
 *
 * Pure parsing: no sockets, no threads, no logging, so the broker's ZAP
 * handler, the CLI and the unit tests share it (it is also built into
 * libsnapbus for sb_curve_key_load). Refusals come back as text in `why`,
 * naming file and line; the caller decides whether to log or to stop. */
#ifndef SB_KEYS_H
#define SB_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"

#define SB_KEY_BYTES 32
#define SB_KEY_Z85_LEN 40 /* characters, without the NUL */

/* A set of 32-byte public keys, sorted for binary search. Immutable once
 * built: a reload builds a new one and swaps it in whole. */
typedef struct sb_keyset sb_keyset;

/* Parses allowlist text: one 40-character Z85 key per line, optionally
 * followed by blanks and a '#' comment; blank lines and lines starting
 * with '#' are skipped; CRLF is accepted. `name` (a file name) prefixes
 * the line number in why: "publishers.keys:7: ...". Duplicates count once.
 * SB_EINVAL on the first bad line (nothing is built), SB_ENOMEM. */
sb_err sb_keyset_parse(sb_keyset **out, const char *text, size_t len,
                       const char *name, char *why, size_t n);
/* The same for a file. SB_ESYS when it cannot be read (why says so). */
sb_err sb_keyset_load(sb_keyset **out, const char *path, char *why, size_t n);
/* 1 if key (32 bytes) is in the set; an empty or NULL set holds nothing. */
int sb_keyset_has(const sb_keyset *ks, const uint8_t *key);
size_t sb_keyset_count(const sb_keyset *ks);
void sb_keyset_destroy(sb_keyset **ksp);

/* Decodes exactly SB_KEY_Z85_LEN characters of Z85 into 32 bytes.
 * SB_EINVAL for a wrong length or a character outside Z85. */
sb_err sb_key_decode(const char *z85, size_t len, uint8_t *out);

/* The first key line of a key file (comments and blank lines as in an
 * allowlist), as Z85 text into z85[SB_KEY_Z85_LEN + 1]. A file with more
 * than one key is refused: a key file holds one key. */
sb_err sb_key_read_file(const char *path, char *z85, char *why, size_t n);

/* A secret key file must be readable by its owner alone, as ssh and sshd
 * demand of theirs. SB_OK when group and others have no access to path
 * (stat, so a symlink, as a Kubernetes Secret mounts, is followed);
 * SB_EINVAL when they have, with "PATH: mode 0644 lets group or others
 * read this secret key; chmod 600 PATH" in why; SB_ESYS when it cannot be
 * examined. */
sb_err sb_key_check_private(const char *path, char *why, size_t n);

/* 1 when arg is a key itself (40 Z85 characters), not a file name. */
int sb_key_is_literal(const char *arg);

/* `arg` itself when it is a 40-character Z85 key, else the key in the file
 * it names (sb_key_read_file). Also exported by libsnapbus. */
SB_EXPORT sb_err sb_curve_key_load(const char *arg, char *z85, char *why,
                                   size_t n);

#endif
