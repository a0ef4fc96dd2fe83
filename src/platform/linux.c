/*
 * platform, Linux: thread wake-ups are eventfds (one counter, one descriptor, where
 * a pipe would need two).
 */
#define _GNU_SOURCE
#include "platform/platform.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

static _Thread_local int thread_efd = -1;
static pthread_key_t efd_key;
static pthread_once_t efd_key_once = PTHREAD_ONCE_INIT;

static void
close_thread_efd(void *arg)
{
    close((int)(intptr_t)arg - 1);
}

static void
make_efd_key(void)
{
    pthread_key_create(&efd_key, close_thread_efd);
}

int
tether__thread_efd(void)
{
    if (thread_efd >= 0) {
        return thread_efd;
    }
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
        return -errno;
    }
    pthread_once(&efd_key_once, make_efd_key);
    /* Stored +1 so that fd 0 is not mistaken for "no value". */
    pthread_setspecific(efd_key, (void *)(intptr_t)(fd + 1));
    thread_efd = fd;
    return fd;
}

void
tether__efd_raise(int efd)
{
    uint64_t one = 1;
    ssize_t n = write(efd, &one, sizeof(one));
    (void)n;
}

void
tether__efd_drain(int efd)
{
    uint64_t v;
    ssize_t n = read(efd, &v, sizeof(v));
    (void)n;
}
