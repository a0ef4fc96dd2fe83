/*
 * hostfile: the small per-host registry file, <runtime dir>/NAME.host, that maps a
 * host's name to how to reach it (docs/protocol.md, section 2). A host writes it when
 * it starts and removes it when it stops; clients and `tether hosts` read it to find a
 * host that listens on TCP only, on an ephemeral port, without guessing among token
 * files. Plain text, one "key value" per line, so that any language reads it without
 * msgpack.
 */
#ifndef TETHER_HOSTFILE_H
#define TETHER_HOSTFILE_H

#include <stdbool.h>
#include <stdint.h>

#define TETHER__HOSTFILE_FORMAT 1

typedef struct tether__hostfile {
    char name[65];
    int64_t pid;
    uint32_t min_version, max_version;
    char unix_path[108]; /* "" when the host has no Unix socket */
    char tcp_host[64];   /* "" when it does not listen on TCP */
    int tcp_port;
    char token_path[512]; /* with TCP: the token file */
} tether__hostfile;

/* Whether name may name a host: 1 to 64 of [A-Za-z0-9._-], not starting with a dot. */
bool tether__host_name_valid(const char *name);
/* <runtime_dir>/<name>.host, newly allocated. */
int tether__hostfile_path(const char *runtime_dir, const char *name, char **ret);
/* Write info to path atomically (a private temporary file renamed over it), mode 0600. */
int tether__hostfile_write(const char *path, const tether__hostfile *info);
/* Read and check a host file: -ENOENT if there is none, -EINVAL if it is not one of
 * ours (another format, a missing key, a malformed line). */
int tether__hostfile_read(const char *path, tether__hostfile *ret);
/* Whether the process the file names still runs (a stale file's does not). */
bool tether__hostfile_live(const tether__hostfile *info);
/* Remove path if it still describes info (same pid and addresses): a host never removes
 * the file of another host of its name that started after it. */
void tether__hostfile_remove(const char *path, const tether__hostfile *info);

#endif
