/* Timelock queue: when each open batch's delay ends.
 *
 * Core (sb_timelock_*): a binary min-heap of timers ordered by (deadline,
 * arm order), so ties come out in the order they were armed. Timer nodes
 * live in one array allocated at creation (`capacity` of them), so arming
 * never allocates: the heap holds pointers to nodes, each node knows its
 * heap slot, and an sb_map from key to node (sized up front for
 * `capacity`, so it never grows either) finds a node for DISARM or
 * re-ARM. Everything is O(log n). No threads, no clock.
 *
 * Shell (sb_timelock_actor_*): one thread that reads sb_timer_cmd from the
 * router (ARM, DISARM, EOF) and sends SB_TIMER_DUE back as deadlines pass,
 * with the injected clock. It owns the core; the caller owns both links.
 *
 * Why the shell cannot deadlock with the router: the timelock never blocks
 * on a send. A DUE that does not fit is parked and the loop goes on
 * reading its input, so the router can always hand it ARM/DISARM/EOF; and
 * the router always reads DUEs, so a parked DUE always gets out. The one
 * case where the timelock stops reading its input is an ARM the heap
 * refuses (more armed than `capacity`, which the router's
 * max_open_batches prevents): it is parked, not dropped, and the heap
 * makes room by itself as deadlines pass and their DUEs leave. */
#include "sb_timelock.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>

#include "sb_actor.h"
#include "sb_log.h"
#include "sb_map.h"

typedef struct {
    uint64_t key; /* the map's key bytes point here: nodes never move */
    uint64_t deadline_ms;
    uint64_t order; /* arm order, breaks deadline ties */
    size_t slot;    /* index in heap[] */
} s_node;

struct sb_timelock {
    size_t capacity;
    size_t size;
    uint64_t next_order;
    s_node *nodes; /* capacity of them */
    s_node **free; /* stack of unused nodes */
    size_t nfree;
    s_node **heap; /* size of them, heap-ordered */
    sb_map *index; /* key → node */
};

sb_err
sb_timelock_new(sb_timelock **out, size_t capacity)
{
    sb_timelock *self;
    sb_err rc = SB_ENOMEM;

    if (capacity == 0)
        return SB_EINVAL;
    if ((self = calloc(1, sizeof *self)) == NULL)
        return SB_ENOMEM;
    self->nodes = calloc(capacity, sizeof *self->nodes);
    self->free = calloc(capacity, sizeof *self->free);
    self->heap = calloc(capacity, sizeof *self->heap);
    if (self->nodes == NULL || self->free == NULL || self->heap == NULL)
        goto fail;
    if ((rc = sb_map_new(&self->index, capacity)) != SB_OK)
        goto fail;
    self->capacity = capacity;
    /* Hand out low nodes first: the top of the stack is nodes[0]. */
    for (size_t i = 0; i < capacity; i++)
        self->free[i] = &self->nodes[capacity - 1 - i];
    self->nfree = capacity;
    *out = self;
    return SB_OK;
fail:
    sb_timelock_destroy(&self);
    return rc;
}

void
sb_timelock_destroy(sb_timelock **tlp)
{
    sb_timelock *self = *tlp;

    if (self == NULL)
        return;
    sb_map_destroy(&self->index);
    free(self->heap);
    free(self->free);
    free(self->nodes);
    free(self);
    *tlp = NULL;
}

static int
s_before(const s_node *a, const s_node *b)
{
    if (a->deadline_ms != b->deadline_ms)
        return a->deadline_ms < b->deadline_ms;
    return a->order < b->order;
}

static void
s_place(sb_timelock *tl, s_node *n, size_t slot)
{
    tl->heap[slot] = n;
    n->slot = slot;
}

static void
s_sift_up(sb_timelock *tl, size_t i)
{
    s_node *n = tl->heap[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!s_before(n, tl->heap[parent]))
            break;
        s_place(tl, tl->heap[parent], i);
        i = parent;
    }
    s_place(tl, n, i);
}

static void
s_sift_down(sb_timelock *tl, size_t i)
{
    s_node *n = tl->heap[i];

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= tl->size)
            break;
        if (c + 1 < tl->size && s_before(tl->heap[c + 1], tl->heap[c]))
            c++;
        if (!s_before(tl->heap[c], n))
            break;
        s_place(tl, tl->heap[c], i);
        i = c;
    }
    s_place(tl, n, i);
}

/* Takes node n out of the heap (not out of the index). */
static void
s_heap_remove(sb_timelock *tl, s_node *n)
{
    size_t i = n->slot;
    s_node *last = tl->heap[--tl->size];

    if (last == n)
        return;
    s_place(tl, last, i);
    /* The moved node may belong above or below the hole. */
    if (i > 0 && s_before(last, tl->heap[(i - 1) / 2]))
        s_sift_up(tl, i);
    else
        s_sift_down(tl, i);
}

sb_err
sb_timelock_arm(sb_timelock *tl, uint64_t key, uint64_t deadline_ms)
{
    s_node *n = sb_map_get(tl->index, &key, sizeof key);

    if (n != NULL) { /* re-arm: move it, as if armed now */
        s_heap_remove(tl, n);
    } else {
        if (tl->nfree == 0)
            return SB_EAGAIN;
        n = tl->free[--tl->nfree];
        n->key = key;
        /* Cannot fail: the map was sized for `capacity` keys up front. */
        if (sb_map_put(tl->index, &n->key, sizeof n->key, n) != SB_OK) {
            tl->free[tl->nfree++] = n;
            return SB_ENOMEM;
        }
    }
    n->deadline_ms = deadline_ms;
    n->order = tl->next_order++;
    tl->heap[tl->size] = n;
    n->slot = tl->size++;
    s_sift_up(tl, n->slot);
    return SB_OK;
}

sb_err
sb_timelock_disarm(sb_timelock *tl, uint64_t key)
{
    s_node *n = sb_map_del(tl->index, &key, sizeof key);

    if (n == NULL)
        return SB_ENOENT;
    s_heap_remove(tl, n);
    tl->free[tl->nfree++] = n;
    return SB_OK;
}

sb_err
sb_timelock_next(const sb_timelock *tl, uint64_t *deadline_ms)
{
    if (tl->size == 0)
        return SB_EAGAIN;
    *deadline_ms = tl->heap[0]->deadline_ms;
    return SB_OK;
}

sb_err
sb_timelock_pop_due(sb_timelock *tl, uint64_t now_ms, uint64_t *key)
{
    s_node *n;

    if (tl->size == 0 || tl->heap[0]->deadline_ms > now_ms)
        return SB_EAGAIN;
    n = tl->heap[0];
    *key = n->key;
    sb_map_del(tl->index, &n->key, sizeof n->key);
    s_heap_remove(tl, n);
    tl->free[tl->nfree++] = n;
    return SB_OK;
}

size_t
sb_timelock_size(const sb_timelock *tl)
{
    return tl->size;
}

/* ---- actor shell ------------------------------------------------------ */

struct sb_timelock_actor {
    sb_actor *actor;
    sb_timelock *tl;
    sb_clock clock;
    sb_link *in;
    sb_link *out;
    /* Owned by the thread while it runs. */
    sb_timer_cmd due; /* popped DUE the out link refused */
    int due_parked;
    sb_timer_cmd arm; /* ARM the heap refused */
    int arm_parked;
    uint64_t parks; /* times a DUE or an ARM had to wait */
};

/* Commands read per wake-up before we look at deadlines again, so a busy
 * router cannot starve the DUEs. */
#define S_MAX_CMDS_PER_WAKE 256

/* Sends every due timer, parking the first one the router's link
 * refuses. */
static void
s_send_dues(sb_timelock_actor *a, uint64_t now)
{
    for (;;) {
        if (!a->due_parked) {
            uint64_t key;
            if (sb_timelock_pop_due(a->tl, now, &key) != SB_OK)
                return;
            a->due = (sb_timer_cmd){SB_TIMER_DUE, key, 0};
            a->due_parked = 1;
        }
        if (sb_link_send(a->out, &a->due) != SB_OK) {
            a->parks++;
            return; /* stays parked; we wake up on send_fd */
        }
        a->due_parked = 0;
    }
}

/* Returns 1 when the router said EOF. */
static int
s_read_cmds(sb_timelock_actor *a)
{
    sb_timer_cmd c;

    for (int i = 0; i < S_MAX_CMDS_PER_WAKE && !a->arm_parked; i++) {
        if (sb_link_recv(a->in, &c) != SB_OK)
            return 0;
        switch (c.op) {
        case SB_TIMER_ARM:
            if (sb_timelock_arm(a->tl, c.key, c.deadline_ms) != SB_OK) {
                /* Over capacity: never drop it. Keep it and stop reading
                 * until a deadline passes and frees a node. */
                a->arm = c;
                a->arm_parked = 1;
                a->parks++;
                SB_LOG(SB_LOG_WARN, "timelock.arm_parked", "key=%llu size=%zu",
                       (unsigned long long) c.key, sb_timelock_size(a->tl));
            }
            break;
        case SB_TIMER_DISARM:
            /* ENOENT is normal: the DUE may already be on its way. */
            (void) sb_timelock_disarm(a->tl, c.key);
            break;
        case SB_TIMER_EOF:
            return 1;
        default:
            SB_LOG(SB_LOG_ERR, "timelock.bad_cmd", "op=%u", c.op);
            break;
        }
    }
    return 0;
}

static int
s_timeout_ms(sb_timelock_actor *a, uint64_t now)
{
    uint64_t next;

    /* A parked DUE waits on send_fd; newer dues can wait behind it. */
    if (a->due_parked || sb_timelock_next(a->tl, &next) != SB_OK)
        return -1;
    if (next <= now)
        return 0;
    return next - now > INT_MAX ? INT_MAX : (int) (next - now);
}

static void
s_timelock_run(sb_actor *actor, void *args)
{
    sb_timelock_actor *a = args;

    sb_actor_ready(actor, SB_OK);
    for (;;) {
        uint64_t now = sb_clock_now(&a->clock);
        struct pollfd p[3];
        int cmd;

        if (a->arm_parked &&
            sb_timelock_arm(a->tl, a->arm.key, a->arm.deadline_ms) == SB_OK)
            a->arm_parked = 0;
        s_send_dues(a, now);
        /* Popping dues may have made room for the parked ARM. */
        if (a->arm_parked &&
            sb_timelock_arm(a->tl, a->arm.key, a->arm.deadline_ms) == SB_OK)
            a->arm_parked = 0;

        p[0] = (struct pollfd){sb_actor_cmd_fd(actor), POLLIN, 0};
        p[1] = (struct pollfd){sb_link_recv_fd(a->in),
                               a->arm_parked ? 0 : POLLIN, 0};
        p[2] = (struct pollfd){sb_link_send_fd(a->out),
                               a->due_parked ? POLLIN : 0, 0};
        if (poll(p, 3, s_timeout_ms(a, now)) < 0 && errno != EINTR) {
            SB_LOG(SB_LOG_ERR, "timelock.poll", "errno=%d", errno);
            return;
        }
        while (sb_actor_cmd_recv(actor, &cmd) == SB_OK)
            if (cmd == SB_CMD_STOP)
                return;
        /* Always read commands (unless an ARM is parked), whether a DUE is
         * parked or not: see the file comment. */
        if (s_read_cmds(a)) {
            SB_LOG(SB_LOG_DEBUG, "timelock.eof", "armed=%zu parks=%llu",
                   sb_timelock_size(a->tl), (unsigned long long) a->parks);
            return;
        }
    }
}

sb_err
sb_timelock_actor_new(sb_timelock_actor **out, const sb_clock *clock,
                      size_t capacity, sb_link *in, sb_link *outl)
{
    sb_timelock_actor *self;
    sb_err rc;

    if (clock == NULL || in == NULL || outl == NULL)
        return SB_EINVAL;
    if ((self = calloc(1, sizeof *self)) == NULL)
        return SB_ENOMEM;
    self->clock = *clock;
    self->in = in;
    self->out = outl;
    if ((rc = sb_timelock_new(&self->tl, capacity)) != SB_OK ||
        (rc = sb_actor_new(&self->actor, "timelock", s_timelock_run, self)) !=
            SB_OK) {
        sb_timelock_destroy(&self->tl);
        free(self);
        return rc;
    }
    *out = self;
    return SB_OK;
}

void
sb_timelock_actor_destroy(sb_timelock_actor **ap)
{
    sb_timelock_actor *self = *ap;

    if (self == NULL)
        return;
    sb_actor_destroy(&self->actor); /* STOP + join, unless it already ended */
    sb_timelock_destroy(&self->tl);
    free(self);
    *ap = NULL;
}

sb_err
sb_timelock_actor_wait(sb_timelock_actor *a, int timeout_ms)
{
    return sb_actor_wait(a->actor, timeout_ms);
}
