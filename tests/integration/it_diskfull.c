/* Disk full: the broker's log lives on a 2 MiB tmpfs this test mounts (as
 * root; where mounting is not allowed it falls back to the broker's test
 * hook SBTEST_ENOSPC_FILE: while a file exists, creating files and
 * reserving space in the log's directory fail with ENOSPC). The test fills the
 * file system, then:
 * - publishes get a typed ERR_STORAGE_FULL (SB_ESTORAGE), not a hang;
 * - the broker keeps serving: hello on the ingest, fetch on the query
 *   socket;
 * - when space comes back, publishing works again by itself, and the
 *   requests that were in flight when the disk filled are acked then;
 * - after a clean stop `snapbus log verify` passes, and the log holds
 *   exactly the acked events, seqs 1..N, nothing refused. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include <snapbus/snapbus.h>
#include "snapbus.pb-c.h"

#define MAX_ACKS 200000

/* For the teardown, which runs even when an assertion failed. */
static char s_base[64], s_mnt[96];
static int s_mounted;
static sbt_broker s_broker;

typedef struct {
    uint64_t ok, storage_full, other;
    uint64_t *seqs; /* of OK acks */
} acks;

static void
s_on_ack(const sb_ack_info *a, void *ctx)
{
    acks *k = ctx;

    if (a->err == SB_OK) {
        if (k->ok < MAX_ACKS)
            k->seqs[k->ok] = a->seq;
        k->ok++;
    } else if (a->err == SB_ESTORAGE) {
        k->storage_full++;
    } else {
        k->other++;
    }
}

static sb_err
s_publish(sb_publisher *p, int i)
{
    char payload[128];
    sb_pub_event ev = {0};

    memset(payload, 'x', sizeof payload);
    snprintf(payload, 16, "e%08d", i);
    ev.aggregate = i % 2 ? "disk/a" : "disk/b";
    ev.type = "T";
    ev.payload = payload;
    ev.payload_len = sizeof payload;
    return sb_publisher_publish(p, &ev, 0, NULL);
}

/* Fills the file system holding dir until it refuses. */
static void
s_fill(const char *path)
{
    static char chunk[4096];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    assert_true(fd >= 0);
    memset(chunk, 'f', sizeof chunk);
    while (write(fd, chunk, sizeof chunk) > 0)
        ;
    /* The last pages too: tmpfs hands out whole pages. */
    while (write(fd, chunk, 1) > 0)
        ;
    close(fd);
}

static int
s_hello_answers(const char *endpoint)
{
    Snapbus__Request m = SNAPBUS__REQUEST__INIT;
    Snapbus__Hello h = SNAPBUS__HELLO__INIT;
    uint8_t buf[256], reply[4096];
    size_t rlen;

    m.version = SB_PROTOCOL_VERSION;
    m.request_id = 77;
    m.body_case = SNAPBUS__REQUEST__BODY_HELLO;
    m.hello = &h;
    size_t n = snapbus__request__pack(&m, buf);
    const void *frames[] = {buf};
    size_t lens[] = {n};
    if (sbt_raw_request(endpoint, frames, lens, 1, reply, sizeof reply, &rlen,
                        5000) < 1)
        return 0;
    Snapbus__Reply *r = snapbus__reply__unpack(NULL, rlen, reply);
    int ok = r != NULL && r->request_id == 77 &&
             r->body_case == SNAPBUS__REPLY__BODY_HELLO;
    if (r != NULL)
        snapbus__reply__free_unpacked(r, NULL);
    return ok;
}

static void
s_count_batch(sb_snapshot *b, void *ctx)
{
    (*(uint64_t *)ctx)++;
    sb_snapshot_destroy(&b);
}

static void
test_full_disk_refuses_typed_then_recovers(void **state)
{
    char *base = s_base, *mnt = s_mnt, data[128], filler[128], flag[128],
         cmd[512];
    int use_tmpfs;
    sbt_broker *bp = &s_broker;
    sb_publisher_opts o;
    sb_publisher *p;
    acks k = {0};
    int i = 0;

    (void)state;
    assert_non_null(k.seqs = calloc(MAX_ACKS, sizeof *k.seqs));
    strcpy(base, "/tmp/sbt-full.XXXXXX");
    assert_non_null(mkdtemp(base));
    snprintf(mnt, sizeof s_mnt, "%s/mnt", base);
    assert_int_equal(mkdir(mnt, 0755), 0);
    /* SBTEST_NO_MOUNT=1 tries the fallback where mounting is allowed. */
    use_tmpfs = s_mounted = getenv("SBTEST_NO_MOUNT") == NULL &&
                            mount("tmpfs", mnt, "tmpfs", 0, "size=2m") == 0;
    if (use_tmpfs) {
        snprintf(data, sizeof data, "%s/data", mnt);
        snprintf(filler, sizeof filler, "%s/filler", mnt);
    } else {
        print_message("cannot mount a tmpfs (%s): using SBTEST_ENOSPC_FILE\n",
                      strerror(errno));
        snprintf(data, sizeof data, "%s/data", base);
        snprintf(flag, sizeof flag, "%s/full", base);
        setenv("SBTEST_ENOSPC_FILE", flag, 1);
    }
    const char *extra[] = {
        "--data-dir", data, "--segment-bytes", "65536", "--default-delay-ms",
        "0",          NULL};
    assert_int_equal(sbt_broker_start(bp, extra), 0);

    sb_publisher_opts_defaults(&o);
    o.endpoint = bp->ingest;
    o.ack = SB_ACK_DURABLE;
    o.window = 4;
    o.batch_events = 16;
    o.linger_ms = 1;
    o.timeout_ms = 20000;
    assert_int_equal(sb_publisher_new(&p, &o), SB_OK);
    sb_publisher_on_ack(p, s_on_ack, &k);

    /* Room to spare: everything is acked. */
    for (; i < 500; i++)
        assert_int_equal(s_publish(p, i), SB_OK);
    assert_int_equal(sb_publisher_wait_all(p, 20000), SB_OK);
    assert_int_equal(k.ok, 500);

    /* Full. */
    if (use_tmpfs)
        s_fill(filler);
    else
        assert_int_equal(close(open(flag, O_CREAT | O_WRONLY, 0644)), 0);
    uint64_t t0 = sbt_now_ms();
    while (k.storage_full == 0 && sbt_now_ms() - t0 < 20000) {
        assert_int_equal(s_publish(p, i++), SB_OK);
        assert_int_equal(sb_publisher_poll(p, 0), SB_OK);
    }
    assert_true(k.storage_full > 0);
    assert_int_equal(k.other, 0);
    print_message("disk full after %d events: %llu acked, %llu refused "
                  "ERR_STORAGE_FULL\n",
                  i, (unsigned long long)k.ok,
                  (unsigned long long)k.storage_full);
    /* Everything else still answers. */
    assert_true(s_hello_answers(bp->ingest));
    uint64_t fetched = 0;
    sb_fetch_opts fo;
    sb_fetch_info fi;
    sb_fetch_opts_defaults(&fo);
    fo.from_seq = 1;
    assert_int_equal(
        sb_fetch(bp->query, &fo, s_count_batch, &fetched, &fi, 5000), SB_OK);
    assert_true(fetched > 0);
    /* Still refusing, still typed. */
    uint64_t refused = k.storage_full;
    for (int n = 0; n < 64; n++)
        assert_int_equal(s_publish(p, i++), SB_OK);
    assert_int_equal(sb_publisher_flush(p, 0), SB_OK);
    t0 = sbt_now_ms();
    while (k.storage_full < refused + 64 && sbt_now_ms() - t0 < 10000)
        assert_int_equal(sb_publisher_poll(p, 50), SB_OK);
    assert_true(k.storage_full >= refused + 64);

    /* Space comes back: publishing works again, without a restart. */
    if (use_tmpfs)
        assert_int_equal(unlink(filler), 0);
    else
        assert_int_equal(unlink(flag), 0);
    uint64_t ok_before = k.ok;
    t0 = sbt_now_ms();
    while (sbt_now_ms() - t0 < 20000) {
        uint64_t ok = k.ok;
        assert_int_equal(s_publish(p, i++), SB_OK);
        assert_int_equal(sb_publisher_wait_all(p, 20000), SB_OK);
        if (k.ok > ok && k.ok - ok_before >= 1)
            break;
        usleep(50000);
    }
    uint64_t recovered_ms = sbt_now_ms() - t0;
    for (int n = 0; n < 500; n++)
        assert_int_equal(s_publish(p, i++), SB_OK);
    assert_int_equal(sb_publisher_wait_all(p, 20000), SB_OK);
    print_message("space back: publishing again after %llu ms; %llu acked, "
                  "%llu refused in all\n",
                  (unsigned long long)recovered_ms, (unsigned long long)k.ok,
                  (unsigned long long)k.storage_full);
    assert_true(k.ok >= ok_before + 501);
    assert_int_equal(k.other, 0);
    assert_int_equal(k.ok + k.storage_full, (uint64_t)i);
    sb_publisher_destroy(&p);
    assert_int_equal(sbt_broker_stop(bp, 30), 0);

    /* Nothing damaged, nothing refused in the log, everything acked is. */
    snprintf(cmd, sizeof cmd, "%s log verify %s/log", SNAPBUS_CLI_PATH, data);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s log dump --kind events --payload none %s/log",
             SNAPBUS_CLI_PATH, data);
    FILE *f = popen(cmd, "r");
    char line[512];
    uint64_t n = 0;
    assert_non_null(f);
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long long seq;
        assert_int_equal(sscanf(line, "event seq=%llu", &seq), 1);
        assert_int_equal(seq, ++n);
    }
    assert_int_equal(pclose(f), 0);
    assert_int_equal(n, k.ok);
    for (uint64_t j = 0; j < k.ok && j < MAX_ACKS; j++)
        assert_true(k.seqs[j] >= 1 && k.seqs[j] <= n);

    if (!use_tmpfs)
        unsetenv("SBTEST_ENOSPC_FILE");
    free(k.seqs);
}

static int
s_teardown(void **state)
{
    char cmd[256];

    (void)state;
    if (s_broker.pid > 0)
        sbt_broker_stop(&s_broker, 10);
    if (s_mounted && umount(s_mnt) != 0)
        print_message("umount %s: %s\n", s_mnt, strerror(errno));
    if (s_base[0] != '\0') {
        snprintf(cmd, sizeof cmd, "rm -rf %s %s", s_base, s_broker.dir);
        (void)system(cmd);
    }
    return 0;
}

int
main(void)
{
    const struct CMUnitTest t[] = {
        cmocka_unit_test_teardown(test_full_disk_refuses_typed_then_recovers,
                                  s_teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
