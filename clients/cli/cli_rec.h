/* The replay file format (docs/REPLAY.md), shared by `snapbus record`
 * (writes it) and `snapbus replay` (reads it):
 *
 *   file   = magic, record*
 *   magic  = the 16 bytes "SNAPBUS-REPLAY1\n"
 *   record = u32 little-endian N (1 .. CLI_REC_MAX), then N bytes: one
 *            protobuf `Event` of proto/snapbus.proto, as a publisher
 *            sends it.
 *
 * Encoding and decoding are written out here (ten fields) so that the
 * command-line tool needs only libsnapbus's public API. */
#ifndef SB_CLI_REC_H
#define SB_CLI_REC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <snapbus/snapbus.h>

#define CLI_REC_MAGIC "SNAPBUS-REPLAY1\n"
#define CLI_REC_MAGIC_LEN 16
#define CLI_REC_MAX (64u << 20) /* a record larger than this is corrupt */

/* Encoded size of ev as an Event. */
size_t cli_rec_size(const sb_pub_event *ev);
/* Writes the length prefix and the Event; 0 or -1 (errno set). */
int cli_rec_write(FILE *f, const sb_pub_event *ev);

/* A decoded record: ev's strings point into `text` (NUL-terminated), its
 * payload into the record bytes; both valid until the next read. */
typedef struct {
    uint8_t *buf; /* the record */
    size_t cap;
    char *text;   /* strings, each with its NUL */
    size_t textcap;
    sb_pub_event ev;
} cli_rec;

/* 1: a record in r->ev; 0: end of file; -1: truncated or malformed
 * (*why says which). */
int cli_rec_read(FILE *f, cli_rec *r, const char **why);
void cli_rec_free(cli_rec *r);

#endif
