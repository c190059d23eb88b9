/* `snapbus keygen`, and the CURVE options the connecting subcommands
 * share (--server-key, --client-key, SNAPBUS_SERVER_KEY,
 * SNAPBUS_CLIENT_KEY; docs/SECURITY.md).
 *
 * keygen writes NAME.key (the secret, created with O_EXCL and mode 0600,
 * so an existing key is never overwritten and no other user can read it
 * even for a moment) and NAME.pub (the public key, 0644, as one allowlist
 * line with the name as its comment). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "cli.h"
#include "sb_keys.h"

int
cli_curve_opt(cli_curve *k, int c, const char *arg)
{
    if (c == CLI_OPT_SERVER_KEY)
        k->server_arg = arg;
    else if (c == CLI_OPT_CLIENT_KEY)
        k->client_arg = arg;
    else if (c == CLI_OPT_INSECURE_KEY_PERMISSIONS)
        k->insecure_perms = 1;
    else
        return 0;
    return 1;
}

int
cli_curve_load(cli_curve *k, const char *who, sb_curve_opts *out)
{
    char why[512];
    const char *server = k->server_arg, *client = k->client_arg;

    memset(out, 0, sizeof *out);
    if (server == NULL)
        server = getenv("SNAPBUS_SERVER_KEY");
    if (client == NULL)
        client = getenv("SNAPBUS_CLIENT_KEY");
    if (server != NULL && *server == '\0')
        server = NULL;
    if (client != NULL && *client == '\0')
        client = NULL;
    if (server == NULL && client == NULL)
        return 0;
    if (server == NULL || client == NULL) {
        fprintf(stderr, "%s: CURVE needs both the server's public key "
                "(--server-key or SNAPBUS_SERVER_KEY) and this client's secret "
                "key (--client-key or SNAPBUS_CLIENT_KEY)\n", who);
        return -1;
    }
    if (sb_curve_key_load(server, k->server, why, sizeof why) != SB_OK) {
        fprintf(stderr, "%s: server key: %s\n", who, why);
        return -1;
    }
    /* A secret others can read is refused, as ssh refuses such a key. */
    if (!sb_key_is_literal(client)) {
        sb_err rc = sb_key_check_private(client, why, sizeof why);
        if (rc == SB_EINVAL && !k->insecure_perms) {
            fprintf(stderr, "%s: client key: %s (or use it anyway with "
                    "--insecure-key-permissions)\n", who, why);
            return -1;
        }
        if (rc == SB_EINVAL)
            fprintf(stderr, "%s: warning: client key: %s\n", who, why);
    }
    if (sb_curve_key_load(client, k->sec, why, sizeof why) != SB_OK) {
        fprintf(stderr, "%s: client key: %s\n", who, why);
        return -1;
    }
    if (zmq_curve_public(k->pub, k->sec) != 0) {
        fprintf(stderr, "%s: client key: not a CURVE secret key\n", who);
        return -1;
    }
    out->server_key = k->server;
    out->public_key = k->pub;
    out->secret_key = k->sec;
    return 0;
}

/* Creates path (never replacing a file) with exactly this mode and text.
 * On any failure the half-written file is removed. */
static int
s_write_new(const char *path, mode_t mode, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    size_t len = strlen(text), off = 0;
    int ok;

    if (fd < 0)
        return -1;
    /* The umask may have taken bits off a public file, which is meant to
     * be read by others; a secret keeps 0600 whatever the umask. */
    ok = fchmod(fd, mode) == 0;
    while (ok && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        off += ok ? (size_t) w : 0;
    }
    ok = ok && fsync(fd) == 0;
    int e = errno; /* why, when !ok */
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(path);
        errno = e;
        return -1;
    }
    return 0;
}

static void
s_keygen_help(FILE *f)
{
    fprintf(f, "usage: snapbus keygen NAME\n"
               "\n"
               "Makes a CURVE key pair: NAME.key holds the secret key (mode 0600,\n"
               "never overwritten), NAME.pub the public key as one allowlist line.\n"
               "For the broker: security.secret_key_file = NAME.key, and give\n"
               "NAME.pub to clients (--server-key). For a client: --client-key\n"
               "NAME.key, and add the line of NAME.pub to the broker's allowlist\n"
               "of its role. Prints the public key.\n"
               "\n"
               "exit codes: 0 written, 2 usage, 3 a file could not be written\n"
               "(NAME.key exists already, or the directory is not writable).\n");
}

int
cli_keygen(int argc, char **argv)
{
    char pub[41], sec[41], spath[4096], ppath[4096], text[512], base[256];

    if (argc != 2 || argv[1][0] == '-') {
        int help = argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
        s_keygen_help(help ? stdout : stderr);
        return help ? CLI_OK : CLI_USAGE;
    }
    const char *name = argv[1];
    if ((size_t) snprintf(spath, sizeof spath, "%s.key", name) >= sizeof spath ||
        (size_t) snprintf(ppath, sizeof ppath, "%s.pub", name) >= sizeof ppath) {
        fprintf(stderr, "snapbus keygen: name too long\n");
        return CLI_USAGE;
    }
    snprintf(base, sizeof base, "%s", name);
    if (zmq_curve_keypair(pub, sec) != 0) {
        fprintf(stderr, "snapbus keygen: %s (this libzmq has no CURVE?)\n",
                zmq_strerror(errno));
        return CLI_FAILED;
    }
    snprintf(text, sizeof text,
             "# snapbus CURVE secret key of %s: keep it private. Its public key\n"
             "# is in %s.pub. Made by snapbus keygen.\n%s\n",
             basename(base), basename(base), sec);
    if (s_write_new(spath, 0600, text) != 0) {
        fprintf(stderr, "snapbus keygen: %s: %s\n", spath, strerror(errno));
        explicit_bzero(sec, sizeof sec);
        explicit_bzero(text, sizeof text);
        return CLI_FAILED;
    }
    explicit_bzero(sec, sizeof sec);
    explicit_bzero(text, sizeof text);
    snprintf(text, sizeof text, "%s # %s\n", pub, basename(base));
    if (s_write_new(ppath, 0644, text) != 0) {
        fprintf(stderr, "snapbus keygen: %s: %s\n", ppath, strerror(errno));
        unlink(spath); /* no half pair left behind */
        return CLI_FAILED;
    }
    printf("%s\n", pub);
    return CLI_OK;
}
