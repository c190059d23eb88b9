/* What a FetchReply says besides its batches (proto/snapbus.proto), one
 * struct for both ends: the broker fills it to encode a reply
 * (sb_wire_encode_fetch_reply), the client library reads a reply into it
 * (sbc_query). docs/PROTOCOL.md has the meaning of each field. */
#ifndef SB_FETCH_PAGE_H
#define SB_FETCH_PAGE_H

#include <stdint.h>

typedef struct {
    uint32_t count;                   /* batches that follow */
    uint64_t last_batch_id;           /* cursor: last batch looked at */
    int more;                         /* the scan stopped early */
    uint64_t retained_first_seq;      /* fetches below it are refused */
    uint64_t retained_first_batch_id;
    uint64_t last_seq;                /* newest seq published */
    uint64_t last_batch_id_published; /* newest batch id published */
    uint64_t epoch;                   /* as in HelloReply */
    uint64_t cursor_low_seq; /* seqs below it are in batches <= cursor */
    uint64_t end_batch_id;   /* stopping: the epoch's last batch; 0: running */
} sb_fetch_page;

#endif
