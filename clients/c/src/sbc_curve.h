/* CURVE client settings of libsnapbus's sockets: the keys from
 * sb_curve_opts, checked and copied, and applied to a socket before it
 * connects. Library-internal (sbc_). */
#ifndef SBC_CURVE_H
#define SBC_CURVE_H

#include <snapbus/snapbus.h>

typedef struct {
    int on;
    char server[41]; /* Z85, NUL-terminated */
    char pub[41];
    char sec[41];
} sbc_curve;

/* Checks and copies o (NULL or all-NULL: off). SB_EINVAL: a key is not 40
 * Z85 characters, or server_key comes without secret_key or the other
 * way round. */
sb_err sbc_curve_set(sbc_curve *c, const sb_curve_opts *o);
/* Before zmq_connect. SB_ESYS when libzmq refuses (no CURVE built in). */
sb_err sbc_curve_apply(void *sock, const sbc_curve *c);
/* Forgets the secret. */
void sbc_curve_wipe(sbc_curve *c);

#endif
