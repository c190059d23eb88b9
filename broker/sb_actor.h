/* One thread with a command pipe, started and stopped with a handshake.
 *
 * sb_actor_new() returns once the thread has called sb_actor_ready(), with
 * the code the thread passed (so a bind failure reaches the caller).
 * sb_actor_destroy() sends SB_CMD_STOP and joins. Commands travel on their
 * own link, never behind data, so STOP is seen even when data links are
 * full. */
#ifndef SB_ACTOR_H
#define SB_ACTOR_H

#include "sb_err.h"

typedef struct sb_actor sb_actor;

enum {
    SB_CMD_STOP = 1,  /* exit now, freeing what is held */
    SB_CMD_DRAIN = 2, /* stop intake, let everything in flight finish */
    SB_CMD_USER = 16  /* first actor-specific command */
};

/* Runs in the new thread. Must call sb_actor_ready() once. */
typedef void (*sb_actor_fn)(sb_actor *self, void *args);

sb_err sb_actor_new(sb_actor **out, const char *name, sb_actor_fn fn,
                    void *args);
void sb_actor_destroy(sb_actor **actorp);

/* From the actor's thread. */
void sb_actor_ready(sb_actor *self, sb_err rc);
int sb_actor_cmd_fd(const sb_actor *self);
/* SB_EAGAIN when no command is waiting. */
sb_err sb_actor_cmd_recv(sb_actor *self, int *cmd);

/* From any thread: queues a command (waits if 8 are already queued). */
sb_err sb_actor_send(sb_actor *self, int cmd);
/* Waits until the thread has returned (e.g. after DRAIN), up to
 * timeout_ms (-1: forever). SB_ETIMEDOUT if it is still running. */
sb_err sb_actor_wait(sb_actor *self, int timeout_ms);
const char *sb_actor_name(const sb_actor *self);

#endif
