/* The file-system calls of the on-disk log, and the directory lock that
 * keeps a second broker off it; nothing else.
 *
 * Only this module (and main.c, for signals) talks to the OS about files:
 * the log's core (sb_store_*.c) reaches open/pwrite/fdatasync/rename only
 * through these wrappers, so their error mapping and the test hooks live in
 * one place.
 *
 * Error mapping: a full or failing device (ENOSPC, EDQUOT, EIO, EROFS,
 * EFBIG) is SB_ESTORAGE, the one code the broker turns into a typed
 * ERR_STORAGE_FULL; ENOENT is SB_ENOENT; ENOMEM is SB_ENOMEM; the rest is
 * SB_ESYS. The errno itself stays readable with sb_os_errno() for logs.
 *
 * Test hooks: sb_os_set_fault() lets unit tests fail (or cut short) writes,
 * syncs and file creation. For integration tests that cannot mount a small
 * file system, the environment variable SBTEST_ENOSPC_FILE names a
 * file: while that file exists, creating a file and reserving space fail
 * with ENOSPC, as they do first on a full disk (writes into space already
 * reserved still succeed there too). (Not SNAPBUS_*: the configuration
 * refuses unknown keys there.) Neither is meant for production use; both cost
 * one branch when unused.
 *
 * Thread-safety: every call is safe from any thread; the fault hook is a
 * process-wide setting, to be changed only while no other thread writes. */
#ifndef SB_OS_H
#define SB_OS_H

#include <stddef.h>
#include <stdint.h>

#include "sb_err.h"

/* The errno of this thread's last failed call here (0 if none). */
int sb_os_errno(void);
/* Maps an errno to the codes above. */
sb_err sb_os_err_of(int errnum);

/* Read-only open. */
sb_err sb_os_open_read(int *fd, const char *path);
/* Write open of an existing file (no O_APPEND: writes are positioned). */
sb_err sb_os_open_write(int *fd, const char *path);
/* Creates a new file; SB_ESYS (errno EEXIST) if it exists. */
sb_err sb_os_create(int *fd, const char *path);
/* Closes *fd if >= 0 and sets it to -1. */
void sb_os_close(int *fd);

/* Writes all len bytes at off, retrying short writes and EINTR. On failure
 * some prefix may have been written: the caller truncates it back. */
sb_err sb_os_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
/* Reads up to len bytes at off; *got < len only at the end of the file. */
sb_err sb_os_pread_full(int fd, void *buf, size_t len, uint64_t off,
                        size_t *got);
sb_err sb_os_fdatasync(int fd);
sb_err sb_os_ftruncate(int fd, uint64_t len);
/* Reserves disk blocks for the first len bytes of fd without changing its
 * size (fallocate with FALLOC_FL_KEEP_SIZE), so writes up to there cannot
 * fail for lack of space. SB_ENOTSUP where the file system cannot. A
 * truncation gives the reservation past the new size back. */
sb_err sb_os_preallocate(int fd, uint64_t len);
sb_err sb_os_rename(const char *from, const char *to);
/* Size and modification time (ms since the epoch) of an open file. */
sb_err sb_os_fstat(int fd, uint64_t *size, uint64_t *mtime_ms);
sb_err sb_os_stat(const char *path, uint64_t *size, uint64_t *mtime_ms);

/* fsync of a directory, so that entries created, renamed or removed in it
 * survive a power loss. */
sb_err sb_os_sync_dir(const char *dir);
/* Replaces dir/name with buf, atomically and durably: writes dir/name.tmp,
 * fsyncs it, renames it over dir/name, fsyncs dir. A reader sees the old
 * or the new file, never half of one. */
sb_err sb_os_write_file(const char *dir, const char *name, const void *buf,
                        size_t len);
/* Reads a whole file of at most max bytes into a malloc'd buffer.
 * SB_ETOOBIG if it is larger. */
sb_err sb_os_read_file(const char *path, size_t max, uint8_t **buf,
                       size_t *len);
sb_err sb_os_unlink(const char *path);
/* mkdir -p. */
sb_err sb_os_mkdirs(const char *path);
/* Calls fn(name, ctx) for every entry of dir but "." and ".."; stops early
 * when fn returns non-zero. */
sb_err sb_os_list_dir(const char *dir, int (*fn)(const char *name, void *ctx),
                      void *ctx);

/* ---- one broker per directory ------------------------------------------ */

/* Takes an exclusive flock on dir/LOCK (created if missing) and writes this
 * process's PID into it, for the life of the process: *fd stays open (and
 * is not inherited across exec). flock, not fcntl locks, so the lock is
 * the open file's and no other descriptor of this process can drop it.
 * SB_EAGAIN when another process holds it: *holder is its PID as written
 * in the file (0 if it has not written one yet). Other failures (no such
 * directory, no permission) map as above, errno in sb_os_errno(). */
sb_err sb_os_lock_dir(const char *dir, int *fd, long *holder);

/* ---- test hooks -------------------------------------------------------- */

typedef enum {
    SB_OS_OP_WRITE = 1,
    SB_OS_OP_SYNC = 2,
    SB_OS_OP_CREATE = 3,
    SB_OS_OP_RESERVE = 4
} sb_os_op;

/* Called before each write, sync, create and reserve. Returns 0 to let the call
 * run, or an errno to fail it; for a write it may first lower *len, and
 * that many bytes are written before the failure (a partial write). */
typedef int (*sb_os_fault_fn)(sb_os_op op, size_t *len, void *ctx);
/* NULL removes the hook. */
void sb_os_set_fault(sb_os_fault_fn fn, void *ctx);

#endif
