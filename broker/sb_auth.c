/* The ZAP handler actor (see sb_auth.h).
 *
 * Owns: the allowlists (one sb_keyset per role, replaced whole on reload),
 * the ZAP REP socket and one PAIR socket per role reading that socket's
 * monitor, and the guard's table of connections by descriptor. All of it
 * belongs to the handler thread once sb_auth_new has returned; the lists
 * are read in the caller's thread first only so that a bad file stops the
 * broker before it binds anything. Counters are atomics read by the
 * metrics thread. */
#define _GNU_SOURCE /* malloc_trim */
#include "sb_auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "sb_actor.h"
#include "sb_clock.h"
#include "sb_keys.h"
#include "sb_log.h"
#include "sb_os.h"

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_MON_PREFIX "inproc://snapbus.auth.monitor."
#define S_LOG_PER_S 5 /* refusal lines a second at most, all roles */
#define S_CMD_RELOAD (SB_CMD_USER + 1)

#define S_MON_EVENTS                                                          \
    (ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_ACCEPT_FAILED | ZMQ_EVENT_DISCONNECTED |  \
     ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |   \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
/* Memory of dropped handshakes goes back to the kernel once drops have
 * paused this long, or at the latest this long after the first. */
#define S_TRIM_QUIET_MS 250
#define S_TRIM_MAX_MS 2000

static const char *const s_roles[SB_ROLE_COUNT] = {"publish", "subscribe",
                                                   "query"};
static const char *const s_reasons[SB_CONN_NREASONS] = {
    "key",       "mechanism", "mechanism_mismatch", "cryptographic",
    "key_exchange", "malformed", "protocol",      "timeout",
    "closed",    "dropped",   "handshake_cap",    "fd_headroom"};

/* The settings sb_auth_server_socket applies: written by sb_auth_new
 * before any socket thread starts (thread creation orders it), then only
 * read. */
static struct {
    int active;
    uint32_t handshake_ms;
} s_sock_cfg;

enum { S_FREE = 0, S_PENDING, S_DONE, S_REFUSED };

typedef struct {
    uint8_t state;
    uint8_t role;
    uint64_t accepted_ms;
} s_conn;

struct sb_auth {
    sb_actor *actor;
    void *ctx;
    char *paths[SB_ROLE_COUNT];
    sb_keyset *lists[SB_ROLE_COUNT];
    void *zap;
    void *mon[SB_ROLE_COUNT];
    sb_auth_limit limit;
    sb_auth_stats st;
    /* The guard: connections by descriptor (grown as descriptors are). */
    s_conn *conns;
    size_t nconns;
    uint64_t pending;
    int last_fail[SB_ROLE_COUNT];      /* reason just reported, or -1 */
    uint64_t auth_unmatched[SB_ROLE_COUNT];
    uint64_t trim_first_ms, trim_last_ms; /* 0: no trim due */
    uint64_t next_tick_ms;
};

const char *
sb_auth_role_name(sb_auth_role r)
{
    return (unsigned) r < SB_ROLE_COUNT ? s_roles[r] : "unknown";
}

const char *
sb_auth_reason_name(sb_conn_reason r)
{
    return (unsigned) r < SB_CONN_NREASONS ? s_reasons[r] : "unknown";
}

int
sb_auth_limit_take(sb_auth_limit *l, uint64_t now_ms, unsigned per_s,
                   uint64_t *suppressed)
{
    uint64_t sec = now_ms / 1000;

    if (sec != l->second) {
        l->second = sec;
        l->lines = 0;
    }
    if (l->lines >= per_s) {
        l->suppressed++;
        return 0;
    }
    l->lines++;
    *suppressed = l->suppressed;
    l->suppressed = 0;
    return 1;
}

/* Every list, or none: a reload that fails half-way must not leave one
 * role on its new list and another on its old one. */
static sb_err
s_load_all(char *const *paths, sb_keyset **out, char *why, size_t n)
{
    sb_keyset *fresh[SB_ROLE_COUNT] = {NULL};
    sb_err rc = SB_OK;

    for (int i = 0; i < SB_ROLE_COUNT && rc == SB_OK; i++)
        if (paths[i] != NULL)
            rc = sb_keyset_load(&fresh[i], paths[i], why, n);
    if (rc != SB_OK) {
        for (int i = 0; i < SB_ROLE_COUNT; i++)
            sb_keyset_destroy(&fresh[i]);
        return rc;
    }
    for (int i = 0; i < SB_ROLE_COUNT; i++) {
        sb_keyset_destroy(&out[i]);
        out[i] = fresh[i];
    }
    return SB_OK;
}

static void
s_count_keys(sb_auth *a)
{
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        atomic_store(&a->st.keys[i], sb_keyset_count(a->lists[i]));
}

static int
s_admits(const sb_auth *a, int role, const uint8_t *key)
{
    if (sb_keyset_has(a->lists[role], key))
        return 1;
    /* A subscriber fills its gaps over the query socket with its own key. */
    return role == SB_ROLE_QUERY && sb_keyset_has(a->lists[SB_ROLE_SUBSCRIBE], key);
}

static void
s_log_refusal(sb_auth *a, int role, const char *what, const char *key_z85,
              const char *address, const char *detail)
{
    uint64_t suppressed;

    if (!sb_auth_limit_take(&a->limit, sb_clock_mono_ns() / 1000000,
                            S_LOG_PER_S, &suppressed))
        return;
    SB_LOG(SB_LOG_WARN, "auth.refused",
           "role=%s reason=%s key=%s address=%s detail=%s suppressed=%llu",
           s_roles[role], what, key_z85, address, detail,
           (unsigned long long) suppressed);
}

static int
s_role_of(zmq_msg_t *domain)
{
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        if (zmq_msg_size(domain) == strlen(s_roles[i]) &&
            memcmp(zmq_msg_data(domain), s_roles[i], strlen(s_roles[i])) == 0)
            return i;
    return -1;
}

/* Copies a frame as printable text (addresses come from the peer's
 * socket, but keep the log line one line whatever they hold). */
static void
s_text(zmq_msg_t *m, char *out, size_t n)
{
    size_t len = zmq_msg_size(m), i;
    const char *p = zmq_msg_data(m);

    for (i = 0; i < len && i + 1 < n; i++)
        out[i] = (p[i] > 32 && p[i] < 127 && p[i] != '"') ? p[i] : '?';
    out[i] = '\0';
}

/* One ZAP request (RFC 27): version, request id, domain, address,
 * identity, mechanism, credentials. The reply must always go out, or the
 * REP socket (and every later handshake) would be stuck. */
static void
s_zap(sb_auth *a)
{
    zmq_msg_t f[8];
    int nf = 0, more = 1;
    const char *status = "400", *text = "not allowed";
    char user[SB_KEY_Z85_LEN + 1] = "";

    while (more) {
        zmq_msg_t tmp, *m = nf < 8 ? &f[nf] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, a->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(m);
            if (nf == 0)
                return; /* nothing there after all */
            break;
        }
        more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        else
            nf++;
    }
    if (nf >= 6 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0) {
        int role = s_role_of(&f[2]);
        char addr[64];
        s_text(&f[3], addr, sizeof addr);
        if (role >= 0 && zmq_msg_size(&f[5]) == 5 &&
            memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0 && nf >= 7 &&
            zmq_msg_size(&f[6]) == SB_KEY_BYTES) {
            const uint8_t *key = zmq_msg_data(&f[6]);
            zmq_z85_encode(user, key, SB_KEY_BYTES);
            if (s_admits(a, role, key)) {
                status = "200";
                text = "OK";
                atomic_fetch_add(&a->st.admitted[role], 1);
                SB_LOG(SB_LOG_DEBUG, "auth.admitted", "role=%s key=%s address=%s",
                       s_roles[role], user, addr);
            } else {
                atomic_fetch_add(&a->st.refused_key[role], 1);
                atomic_fetch_add(&a->st.refused[role][SB_CONN_KEY], 1);
                s_log_refusal(a, role, "key", user, addr, "not_on_list");
                user[0] = '\0';
            }
        } else if (role >= 0 && !a->st.curve && zmq_msg_size(&f[5]) == 4 &&
                   memcmp(zmq_msg_data(&f[5]), "NULL", 4) == 0) {
            /* Without CURVE every socket names a domain only so that its
             * handshake waits for this answer, which comes after the
             * guard has seen the accept (see s_run): a connection it
             * closes has then sent nothing yet. */
            status = "200";
            text = "OK";
        } else if (role >= 0) {
            /* With CURVE only CURVE is admitted. */
            atomic_fetch_add(&a->st.refused_key[role], 1);
            atomic_fetch_add(&a->st.refused[role][SB_CONN_MECHANISM], 1);
            s_log_refusal(a, role, "mechanism", "-", addr, "not_curve");
        }
    }
    /* Reply: version, request id, status code, status text, user id,
     * metadata. The user id is the client's key: libzmq attaches it to
     * the peer's messages as "User-Id". */
    zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
    if (nf >= 2)
        zmq_send(a->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else
        zmq_send(a->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(a->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, 0);
    for (int i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
}

static int
s_protocol_reason(uint32_t v)
{
    switch (v) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return SB_CONN_MECHANISM_MISMATCH; /* e.g. a client without CURVE */
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return SB_CONN_CRYPTOGRAPHIC; /* e.g. a wrong server key */
    case ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE:
        return SB_CONN_KEY_EXCHANGE;
    default:
        return (v & 0xf0000000u) == 0x10000000u ? SB_CONN_MALFORMED
                                                : SB_CONN_PROTOCOL;
    }
}

/* The detail= of an auth.refused line, as before the guard existed. */
static const char *
s_detail(int reason)
{
    switch (reason) {
    case SB_CONN_MECHANISM_MISMATCH: return "mechanism_mismatch";
    case SB_CONN_CRYPTOGRAPHIC: return "cryptographic";
    case SB_CONN_KEY_EXCHANGE: return "key_exchange";
    case SB_CONN_MALFORMED: return "malformed";
    case SB_CONN_PROTOCOL: return "other";
    default: return "no_detail";
    }
}

static void
s_log_conn(sb_auth *a, int role, int reason, uint64_t fd)
{
    uint64_t suppressed;

    if (!sb_auth_limit_take(&a->limit, sb_clock_mono_ns() / 1000000,
                            S_LOG_PER_S, &suppressed))
        return;
    SB_LOG(SB_LOG_WARN, "conn.refused",
           "role=%s reason=%s fd=%llu handshaking=%llu max_handshakes=%u "
           "fd_limit=%llu suppressed=%llu",
           s_roles[role], s_reasons[reason], (unsigned long long) fd,
           (unsigned long long) a->pending, a->st.max_handshakes,
           (unsigned long long) sb_os_fd_limit(),
           (unsigned long long) suppressed);
}

static void
s_count(sb_auth *a, int role, int reason)
{
    atomic_fetch_add(&a->st.refused[role][reason], 1);
}

static s_conn *
s_conn_at(sb_auth *a, uint64_t fd, int grow)
{
    if (fd >= a->nconns) {
        size_t n = a->nconns ? a->nconns : 256;
        s_conn *c;
        if (!grow || fd >= (1u << 24))
            return NULL;
        while (n <= fd)
            n *= 2;
        if ((c = realloc(a->conns, n * sizeof *c)) == NULL)
            return NULL;
        memset(c + a->nconns, 0, (n - a->nconns) * sizeof *c);
        a->conns = c;
        a->nconns = n;
    }
    return &a->conns[fd];
}

static void
s_set_pending(sb_auth *a, int delta)
{
    a->pending += (uint64_t) delta;
    atomic_store(&a->st.handshaking, a->pending);
}

/* The port a tcp:// endpoint names, 0 if none. */
static unsigned
s_endpoint_port(const char *ep)
{
    const char *c = strrchr(ep, ':');

    return c != NULL && strncmp(ep, "tcp://", 6) == 0 ? (unsigned) atoi(c + 1) : 0;
}

/* Closes a connection libzmq has just accepted, without taking its
 * descriptor away from libzmq: shutdown() makes its engine see the end of
 * the stream and close the descriptor itself. A zero linger makes that
 * close a reset: a plain FIN would leave the kernel holding the peer's
 * unread bytes (and the peer's writes hanging) in FIN-WAIT-2. Should the
 * connection be gone already and the number reused, the socket's local
 * port must still be the listener's before anything is done. */
static void
s_shut(uint64_t fd, const char *endpoint)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    unsigned want = s_endpoint_port(endpoint), port = 0;
    struct linger abort_close = {1, 0};

    if (getsockname((int) fd, (struct sockaddr *) &ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
        port = ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
    else if (ss.ss_family != AF_UNIX)
        return;
    if (want != 0 && port != want)
        return;
    if (ss.ss_family != AF_UNIX)
        setsockopt((int) fd, SOL_SOCKET, SO_LINGER, &abort_close,
                   sizeof abort_close);
    shutdown((int) fd, SHUT_RDWR);
}

static void
s_accepted(sb_auth *a, int role, uint64_t fd, const char *endpoint,
           uint64_t now)
{
    s_conn *c = s_conn_at(a, fd, 1);
    uint64_t limit = sb_os_fd_limit();
    int reason = -1;

    atomic_fetch_add(&a->st.accepted[role], 1);
    atomic_fetch_add(&a->st.open, 1);
    if (c != NULL && c->state == S_PENDING) /* a disconnect never came */
        s_set_pending(a, -1);
    if (c != NULL && c->state != S_FREE)
        atomic_fetch_sub(&a->st.open, 1);
    /* Descriptors are handed out lowest first: this one's number says how
     * few are left above it. */
    if (limit > 0 && fd + a->st.fd_headroom >= limit)
        reason = SB_CONN_FD_HEADROOM;
    else if (a->pending >= a->st.max_handshakes)
        reason = SB_CONN_HANDSHAKE_CAP;
    if (reason >= 0) {
        s_shut(fd, endpoint);
        s_count(a, role, reason);
        s_log_conn(a, role, reason, fd);
    }
    if (c == NULL)
        return; /* beyond the table (not expected): not tracked */
    c->role = (uint8_t) role;
    c->accepted_ms = now;
    c->state = reason >= 0 ? S_REFUSED : S_PENDING;
    if (reason < 0)
        s_set_pending(a, 1);
}

static void
s_trim_due(sb_auth *a, uint64_t now)
{
    if (a->trim_first_ms == 0)
        a->trim_first_ms = now;
    a->trim_last_ms = now;
}

static void
s_disconnected(sb_auth *a, int role, uint64_t fd, uint64_t now)
{
    s_conn *c = s_conn_at(a, fd, 0);
    int fail = a->last_fail[role];
    int state = c != NULL ? c->state : S_FREE;

    if (state != S_FREE || c == NULL)
        atomic_fetch_sub(&a->st.open, atomic_load(&a->st.open) > 0 ? 1 : 0);
    if (state == S_REFUSED) {
        /* counted when it was refused */
    } else if (fail >= 0) {
        s_count(a, role, fail);
    } else if (state == S_PENDING) {
        if (a->auth_unmatched[role] > 0)
            a->auth_unmatched[role]--; /* ZAP counted it */
        else
            s_count(a, role, SB_CONN_DROPPED);
    }
    if (state == S_PENDING)
        s_set_pending(a, -1);
    if (state == S_PENDING || state == S_REFUSED || fail >= 0)
        s_trim_due(a, now);
    if (c != NULL)
        c->state = S_FREE;
}

/* Some connection of this role finished its handshake: the newest one
 * still marked as handshaking is taken for it (see sb_auth.h). */
static void
s_succeeded(sb_auth *a, int role)
{
    size_t best = SIZE_MAX;

    for (size_t i = 0; i < a->nconns; i++)
        if (a->conns[i].state == S_PENDING && a->conns[i].role == role &&
            (best == SIZE_MAX ||
             a->conns[i].accepted_ms >= a->conns[best].accepted_ms))
            best = i;
    if (best != SIZE_MAX) {
        a->conns[best].state = S_DONE;
        s_set_pending(a, -1);
    }
}

/* A monitor event: [uint16 event, uint32 value][endpoint]. The value is
 * the descriptor for accepts and disconnects, a protocol error code for
 * a failed handshake; the endpoint is our own. */
static void
s_monitor(sb_auth *a, int role)
{
    zmq_msg_t m;
    uint16_t ev = 0;
    uint32_t value = 0;
    char endpoint[128] = "";
    int more, fail = -1;
    uint64_t now = sb_clock_mono_ns() / 1000000;

    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, a->mon[role], ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return;
    }
    if (zmq_msg_size(&m) >= 6) {
        memcpy(&ev, zmq_msg_data(&m), 2);
        memcpy(&value, (uint8_t *) zmq_msg_data(&m) + 2, 4);
    }
    more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    for (int k = 0; more; k++) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a->mon[role], 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        if (k == 0) {
            size_t len = zmq_msg_size(&m) < sizeof endpoint - 1
                             ? zmq_msg_size(&m) : sizeof endpoint - 1;
            memcpy(endpoint, zmq_msg_data(&m), len);
            endpoint[len] = '\0';
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    switch (ev) {
    case ZMQ_EVENT_ACCEPTED:
        s_accepted(a, role, value, endpoint, now);
        break;
    case ZMQ_EVENT_ACCEPT_FAILED:
        atomic_fetch_add(&a->st.accept_failed[role], 1);
        break;
    case ZMQ_EVENT_DISCONNECTED:
        s_disconnected(a, role, value, now);
        break;
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        s_succeeded(a, role);
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        /* ZAP said no and counted it; the disconnect follows later. */
        a->auth_unmatched[role]++;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        /* The value of NO_DETAIL is the errno of the moment: a closed or
         * reset stream, or (when none) the handshake timer. */
        fail = ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                   ? s_protocol_reason(value)
                   : (value == EPIPE || value == ECONNRESET || value == ENOTCONN
                          ? SB_CONN_CLOSED : SB_CONN_TIMEOUT);
        if (s_sock_cfg.active && a->st.curve) {
            atomic_fetch_add(&a->st.refused_handshake[role], 1);
            s_log_refusal(a, role, "handshake", "-", "-", s_detail(fail));
        }
        break;
    default:
        break;
    }
    /* A failure is reported right before its own disconnect (same I/O
     * thread, same call): remember it for exactly one event. */
    a->last_fail[role] = fail;
}

/* Once a second: connections still marked as handshaking after the
 * handshake interval have finished it (libzmq drops the others), the
 * spare descriptors are topped up, held-back log lines are reported. */
static void
s_tick(sb_auth *a, uint64_t now)
{
    if (now >= a->next_tick_ms) {
        uint64_t late = (uint64_t) a->st.handshake_ms + 1000;
        a->next_tick_ms = now + 1000;
        for (size_t i = 0; i < a->nconns; i++)
            if (a->conns[i].state == S_PENDING &&
                a->conns[i].accepted_ms + late < now) {
                a->conns[i].state = S_DONE;
                s_set_pending(a, -1);
            }
        sb_os_fd_refill();
    }
    if (a->trim_first_ms != 0 &&
        (now >= a->trim_last_ms + S_TRIM_QUIET_MS ||
         now >= a->trim_first_ms + S_TRIM_MAX_MS)) {
        /* libzmq allocates a frame's announced size when its header
         * arrives: half-sent handshake frames leave large free chunks
         * that the raised M_TRIM_THRESHOLD (main.c) would otherwise keep. */
        malloc_trim(0);
        atomic_fetch_add(&a->st.trims, 1);
        a->trim_first_ms = a->trim_last_ms = 0;
    }
}

static uint64_t
s_next_wake(const sb_auth *a, uint64_t now)
{
    uint64_t at = a->next_tick_ms;

    if (a->trim_first_ms != 0) {
        uint64_t t = a->trim_last_ms + S_TRIM_QUIET_MS;
        if (a->trim_first_ms + S_TRIM_MAX_MS < t)
            t = a->trim_first_ms + S_TRIM_MAX_MS;
        if (t < at)
            at = t;
    }
    return at > now ? at - now : 0;
}

/* Up to max events of each monitor, whatever is there now. */
static void
s_read_monitors(sb_auth *a, int max)
{
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        for (int k = 0; k < max && a->mon[i] != NULL; k++) {
            zmq_pollitem_t z = {a->mon[i], 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&z, 1, 0) <= 0)
                break;
            s_monitor(a, i);
        }
}

static void
s_reload(sb_auth *a)
{
    char why[512];

    if (s_load_all(a->paths, a->lists, why, sizeof why) != SB_OK) {
        atomic_fetch_add(&a->st.reload_failures, 1);
        SB_LOG(SB_LOG_ERR, "auth.reload_failed", "why=\"%s\" kept=old_lists", why);
        return;
    }
    s_count_keys(a);
    atomic_fetch_add(&a->st.reloads, 1);
    SB_LOG(SB_LOG_NOTICE, "auth.reloaded", "publish=%zu subscribe=%zu query=%zu",
           sb_keyset_count(a->lists[0]), sb_keyset_count(a->lists[1]),
           sb_keyset_count(a->lists[2]));
}

static void
s_run(sb_actor *self, void *arg)
{
    sb_auth *a = arg;
    int linger = 0, rcvhwm = 100000;

    if ((a->zap = zmq_socket(a->ctx, ZMQ_REP)) == NULL ||
        zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(a->zap, S_ZAP_ENDPOINT) != 0) {
        SB_LOG(SB_LOG_ERR, "auth.zap_bind", "endpoint=%s error=\"%s\"",
               S_ZAP_ENDPOINT, zmq_strerror(errno));
        if (a->zap != NULL)
            zmq_close(a->zap);
        sb_actor_ready(self, SB_ESYS);
        return;
    }
    for (int i = 0; i < SB_ROLE_COUNT; i++) {
        char ep[64];
        snprintf(ep, sizeof ep, S_MON_PREFIX "%s", s_roles[i]);
        /* Connected before the monitored socket exists: inproc allows it,
         * and so no event of its first connections is missed. */
        if ((a->mon[i] = zmq_socket(a->ctx, ZMQ_PAIR)) != NULL) {
            zmq_setsockopt(a->mon[i], ZMQ_LINGER, &linger, sizeof linger);
            /* libzmq's I/O thread waits when a monitor pipe is full: a
             * deep one rides out a burst of connections. */
            zmq_setsockopt(a->mon[i], ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
            zmq_connect(a->mon[i], ep);
        }
        a->last_fail[i] = -1;
    }
    sb_actor_ready(self, SB_OK);
    for (;;) {
        uint64_t now = sb_clock_mono_ns() / 1000000;
        long wait = (long) s_next_wake(a, now);
        zmq_pollitem_t it[2 + SB_ROLE_COUNT] = {
            {NULL, sb_actor_cmd_fd(self), ZMQ_POLLIN, 0},
            {a->zap, a->zap ? 0 : -1, a->zap ? ZMQ_POLLIN : 0, 0},
        };
        for (int i = 0; i < SB_ROLE_COUNT; i++)
            it[2 + i] = (zmq_pollitem_t){a->mon[i], 0, a->mon[i] ? ZMQ_POLLIN : 0, 0};
        /* Once a second at least: the guard's tick, and held-back log
         * lines are reported. */
        if (zmq_poll(it, 2 + SB_ROLE_COUNT, wait) < 0 && errno != EINTR)
            break;
        if (it[0].revents & ZMQ_POLLIN) {
            int cmd;
            if (sb_actor_cmd_recv(self, &cmd) == SB_OK) {
                if (cmd == SB_CMD_STOP)
                    break;
                if (cmd == S_CMD_RELOAD)
                    s_reload(a);
            }
        }
        /* Accepts before handshakes: libzmq reports a connection's accept
         * before it asks ZAP about it, so reading every monitor first
         * means a connection the guard closes has not finished its
         * handshake, and has sent nothing that could be lost. */
        s_read_monitors(a, 256);
        for (int k = 0; k < 64 && (it[1].revents & ZMQ_POLLIN); k++) {
            zmq_pollitem_t z = {a->zap, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&z, 1, 0) <= 0)
                break;
            s_read_monitors(a, 256);
            s_zap(a);
        }
        now = sb_clock_mono_ns() / 1000000;
        s_tick(a, now);
        if (a->limit.suppressed && now / 1000 != a->limit.second) {
            uint64_t k;
            if (sb_auth_limit_take(&a->limit, now, S_LOG_PER_S, &k))
                SB_LOG(SB_LOG_WARN, "auth.refused_suppressed", "suppressed=%llu",
                       (unsigned long long) k);
        }
    }
    for (int i = 0; i < SB_ROLE_COUNT; i++)
        if (a->mon[i] != NULL)
            zmq_close(a->mon[i]);
    if (a->zap != NULL)
        zmq_close(a->zap);
}

sb_err
sb_auth_new(sb_auth **out, const sb_auth_args *args, char *why, size_t n)
{
    sb_auth *a = calloc(1, sizeof *a);
    sb_err rc = SB_ENOMEM;

    if (a == NULL)
        return SB_ENOMEM;
    a->ctx = args->zmq_ctx;
    a->st.curve = args->curve;
    a->st.handshake_ms = args->handshake_ms;
    a->st.max_handshakes = args->max_handshakes;
    a->st.fd_headroom = args->fd_headroom;
    for (int i = 0; i < SB_ROLE_COUNT && args->curve; i++)
        if (args->lists[i] != NULL && args->lists[i][0] != '\0' &&
            (a->paths[i] = strdup(args->lists[i])) == NULL)
            goto fail;
    if ((rc = s_load_all(a->paths, a->lists, why, n)) != SB_OK)
        goto fail;
    s_count_keys(a);
    s_sock_cfg.handshake_ms = args->handshake_ms;
    s_sock_cfg.active = 1;
    if ((rc = sb_actor_new(&a->actor, "auth", s_run, a)) != SB_OK) {
        snprintf(why, n, "cannot serve ZAP on %s", S_ZAP_ENDPOINT);
        goto fail;
    }
    *out = a;
    return SB_OK;
fail:
    sb_auth_destroy(&a);
    return rc;
}

sb_err
sb_auth_reload(sb_auth *a)
{
    return sb_actor_send(a->actor, S_CMD_RELOAD);
}

const sb_auth_stats *
sb_auth_stats_get(const sb_auth *a)
{
    return &a->st;
}

void
sb_auth_destroy(sb_auth **ap)
{
    sb_auth *a = *ap;

    if (a == NULL)
        return;
    sb_actor_destroy(&a->actor);
    for (int i = 0; i < SB_ROLE_COUNT; i++) {
        sb_keyset_destroy(&a->lists[i]);
        free(a->paths[i]);
    }
    s_sock_cfg.active = 0;
    free(a->conns);
    free(a);
    *ap = NULL;
}

sb_err
sb_auth_server_socket(void *sock, const char *secret_z85, sb_auth_role r)
{
    int one = 1, ivl = (int) s_sock_cfg.handshake_ms;
    char ep[64];

    if ((unsigned) r >= SB_ROLE_COUNT ||
        (secret_z85 != NULL && strlen(secret_z85) != SB_KEY_Z85_LEN))
        return SB_EINVAL;
    if (!s_sock_cfg.active && secret_z85 == NULL)
        return SB_OK;
    snprintf(ep, sizeof ep, S_MON_PREFIX "%s", s_roles[r]);
    /* Without CURVE the domain still makes the NULL handshake wait for
     * the guard's ZAP answer (see s_zap). */
    if ((s_sock_cfg.active &&
         (zmq_setsockopt(sock, ZMQ_HANDSHAKE_IVL, &ivl, sizeof ivl) != 0 ||
          zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, s_roles[r],
                         strlen(s_roles[r])) != 0)) ||
        (secret_z85 != NULL &&
         (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
          zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_z85,
                         SB_KEY_Z85_LEN + 1) != 0 ||
          zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, s_roles[r],
                         strlen(s_roles[r])) != 0)) ||
        zmq_socket_monitor(sock, ep, S_MON_EVENTS) != 0) {
        SB_LOG(SB_LOG_ERR, "auth.curve_socket", "role=%s error=\"%s\"",
               s_roles[r], zmq_strerror(errno));
        return SB_ESYS;
    }
    return SB_OK;
}
