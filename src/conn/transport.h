/*
 * transport: the socket-level pieces with no protocol knowledge. Addresses
 * ("unix:PATH", "tcp:HOST:PORT", or a host name resolved in the runtime directory),
 * the per-user runtime directory (0700, ours), the TCP token file (0600), listening and
 * connecting sockets (always non-blocking and close-on-exec), and the peer-credential
 * check of Unix connections.
 */
#ifndef TETHER_TRANSPORT_H
#define TETHER_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum tether__addr_kind {
    TETHER__ADDR_UNIX = 1,
    TETHER__ADDR_TCP = 2,
} tether__addr_kind;

typedef struct tether__addr {
    tether__addr_kind kind;
    char path[108]; /* UNIX */
    char host[64];  /* TCP, numeric */
    int port;       /* TCP */
    /* TCP, resolved from a host file (tether__addr_resolve): the host's token file.
     * Empty otherwise: the token file is then the runtime directory's for the port. */
    char token_path[512];
} tether__addr;

#define TETHER__TOKEN_HEX_LEN 64

/* The runtime directory to use: explicit, $TETHER_RUNTIME_DIR, $XDG_RUNTIME_DIR/tether,
 * /tmp/tether-<uid>. Newly allocated. */
int tether__runtime_dir(const char *explicit_dir, char **ret);
/* Create dir (0700) if missing; refuse one not owned by us or open to others (-EACCES)
 * or not a directory (-ENOTDIR). */
int tether__runtime_dir_ensure(const char *dir);

/* Parse an address, or take a host name for its socket in runtime_dir (NAME.sock):
 * where a host listens, or where a host of that name would. */
int tether__addr_parse(const char *address, const char *runtime_dir, tether__addr *ret);
/* As tether__addr_parse, for connecting: a host name is looked up in the host file of
 * its running host (hostfile.h) first, which gives its Unix socket, or its TCP address
 * and token file when it has no Unix socket. Without a live host file, NAME.sock. */
int tether__addr_resolve(const char *address, const char *runtime_dir, tether__addr *ret);
/* Format as "unix:PATH" or "tcp:HOST:PORT" into buf. */
void tether__addr_format(const tether__addr *addr, char *buf, size_t size);

/* Listen; for TCP port 0 asks for a free port and stores the real one in addr->port.
 * A stale Unix socket (nobody accepting) is replaced; a live one gives -EADDRINUSE. */
int tether__listen(tether__addr *addr, int backlog, int *ret_fd);
/* Connect within timeout_usec; the returned fd is non-blocking. */
int tether__connect(const tether__addr *addr, uint64_t timeout_usec, int *ret_fd);
/* Accept a connection, non-blocking and close-on-exec. Returns fd or a negative errno. */
int tether__accept(int listen_fd);
/* 0 if the peer of a Unix socket runs as our effective uid, -EACCES if not. Where the
 * system cannot tell (platform.h), 0: the socket's and runtime directory's modes keep
 * others out. */
int tether__check_peer_uid(int fd);
/* Tune a fresh connection (TCP_NODELAY on TCP). */
void tether__socket_tune(int fd);

/* Generate a fresh random token (hex, NUL-terminated) and write it 0600 to path. */
int tether__token_create(const char *path, char token[TETHER__TOKEN_HEX_LEN + 1]);
/* Read a token file. */
int tether__token_read(const char *path, char token[TETHER__TOKEN_HEX_LEN + 1]);
/* Path of the token file for a TCP port: <runtime_dir>/tcp-<port>.token. */
int tether__token_path(const char *runtime_dir, int port, char **ret);
/* Constant-time comparison of two NUL-terminated tokens. */
bool tether__token_equal(const char *a, const char *b);

/* Blocking helpers on a non-blocking fd for the handshake, bounded by a deadline. */
int tether__write_all(int fd, const void *p, size_t len, uint64_t deadline_usec);
int tether__read_some(int fd, void *p, size_t len, uint64_t deadline_usec);

#endif
