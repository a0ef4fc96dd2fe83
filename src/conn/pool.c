/*
 * pool: worker threads of our own rather than libuv's. uv_queue_work may be called on
 * the loop's thread only, and completes every item with a callback there: a request
 * read by another thread had to go through the I/O thread first, and every one that
 * ran woke the I/O thread again afterwards. Here a worker is woken by whoever posts,
 * and what finishes a task (replying, dropping references) runs in the task itself.
 *
 * The reading worker (pool.reader) leaves the connection to callers for READ_BACKOFF
 * after one took the role from it: a thread making synchronous calls back to back would
 * otherwise take it on every call and wake the worker each time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "conn/pool.h"
#include "platform/platform.h"
#include "tether.h"
#include "util/condwait.h"

#define DEFAULT_SIZE 4u
#define MAX_SIZE 128u
#define READ_BACKOFF_USEC 20000u
#define BUSY_BACKOFF_USEC 1000u
/* How long a reading worker waits before it looks again (sources may come and go). */
#define READ_SLICE_MS 1000

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;
    tether__task *head, *tail; /* guarded by lock */
    unsigned queued;           /* guarded by lock: tasks in the queue */
    unsigned threads;          /* guarded by lock: started and alive */
    unsigned idle;             /* guarded by lock: waiting on work */
    tether__pool_source *sources; /* guarded by lock */
    const tether__wake *reader;   /* guarded by lock: the reading worker's wake */
    pthread_t reader_thread;      /* guarded by lock */
    uint64_t read_again_usec;     /* guarded by lock: no reading before this */
    bool read_again_after_task;   /* guarded by lock: or once a task has run */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER};

static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
static unsigned size;

/* fork() copies the lock as the forking thread left it and none of the workers: hold it
 * across the fork, then start the child empty (its threads start again on demand). */
static void
before_fork(void)
{
    pthread_mutex_lock(&pool.lock);
}

static void
after_fork_parent(void)
{
    pthread_mutex_unlock(&pool.lock);
}

static void
after_fork_child(void)
{
    pool.head = pool.tail = NULL;
    pool.queued = pool.threads = pool.idle = 0;
    tether__cond_init_monotonic(&pool.work);
    pool.sources = NULL; /* their connections are the parent's */
    pool.read_again_usec = 0;
    pool.read_again_after_task = false;
    pool.reader = NULL;
    pthread_mutex_unlock(&pool.lock);
}

static void
setup(void)
{
    /* UV_THREADPOOL_SIZE sized libuv's pool, which served before this one. */
    const char *env = getenv("TETHER_POOL_SIZE");
    if (!env || !*env) {
        env = getenv("UV_THREADPOOL_SIZE");
    }
    long n = env && *env ? strtol(env, NULL, 10) : 0;
    size = n < 1 ? DEFAULT_SIZE : n > (long)MAX_SIZE ? MAX_SIZE : (unsigned)n;
    tether__cond_init_monotonic(&pool.work); /* for the backoff's deadline */
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

unsigned
tether__pool_size(void)
{
    pthread_once(&setup_once, setup);
    return size;
}

static bool
has_work(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pool.lock);
    bool work = pool.head != NULL;
    pthread_mutex_unlock(&pool.lock);
    return work;
}

/* Become the reading worker if a source waits to be read. Lock held; returns with it
 * held, after reading (or at once). */
static bool
read_while_idle_locked(const tether__wake *wake)
{
    tether__pool_source *src = pool.sources;
    if (!src || pool.reader || !wake || tether_now_usec() < pool.read_again_usec) {
        return false;
    }
    pool.reader = wake;
    pool.reader_thread = pthread_self();
    src->hold(src);
    pthread_mutex_unlock(&pool.lock);
    int r = tether__link_serve_idle(src->link, wake, has_work, NULL, READ_SLICE_MS);
    src->drop(src);
    pthread_mutex_lock(&pool.lock);
    pool.reader = NULL;
    pool.read_again_after_task = r == TETHER__IDLE_BUSY;
    if (r == TETHER__IDLE_BUSY) {
        /* Another thread reads for the moment: most likely the I/O thread, which read a
         * request that came before this worker was back (with both processes on one
         * CPU, about every other one) and hands it to a worker. Again once that has run,
         * or soon. */
        pool.read_again_usec = tether_now_usec() + BUSY_BACKOFF_USEC;
    } else if (r != TETHER__IDLE_WORK && r != TETHER__IDLE_TIMEOUT) {
        /* Taken by a caller, or closed (until its owner unlists it). */
        pool.read_again_usec = tether_now_usec() + READ_BACKOFF_USEC;
    }
    return true;
}

static void *
worker_main(void *arg)
{
    (void)arg;
    (void)tether__process_set_name("tether-pool");
    tether__wake wake;
    bool can_read = tether__wake_init(&wake) == 0;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        if (!pool.head) {
            if (read_while_idle_locked(can_read ? &wake : NULL)) {
                continue;
            }
            pool.idle++;
            if (pool.sources && !pool.reader && can_read) {
                /* Back to reading once the backoff is over. */
                tether__cond_wait_until(&pool.work, &pool.lock, pool.read_again_usec);
            } else {
                pthread_cond_wait(&pool.work, &pool.lock);
            }
            pool.idle--;
            continue;
        }
        tether__task *task = pool.head;
        pool.head = task->next;
        if (!pool.head) {
            pool.tail = NULL;
        }
        pool.queued--;
        pthread_mutex_unlock(&pool.lock);
        task->run(task);
        pthread_mutex_lock(&pool.lock);
        if (pool.read_again_after_task) {
            pool.read_again_after_task = false;
            pool.read_again_usec = 0;
        }
    }
    return NULL;
}

/* Start one more worker. Lock held. Signals stay with the application's threads (a
 * Python interpreter runs its handlers on the main thread anyway). */
static int
start_worker_locked(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int r = pthread_create(&thread, &attr, worker_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        return -r;
    }
    pool.threads++;
    return 0;
}

int
tether__pool_post(tether__task *task)
{
    pthread_once(&setup_once, setup);
    task->next = NULL;
    pthread_mutex_lock(&pool.lock);
    /* A new thread when the idle ones (the reading one among them) are all spoken for: a
     * task queued behind one that blocks (waiting for another service, say) would
     * otherwise wait for it. */
    bool self_reading = pool.reader && pthread_equal(pool.reader_thread, pthread_self());
    if (pool.queued + 1 > pool.idle + (pool.reader ? 1u : 0u) && pool.threads < size) {
        int r = start_worker_locked();
        if (r < 0 && pool.threads == 0) {
            pthread_mutex_unlock(&pool.lock);
            return -EAGAIN;
        }
    }
    if (pool.tail) {
        pool.tail->next = task;
    } else {
        pool.head = task;
    }
    pool.tail = task;
    pool.queued++;
    /* The reading worker runs the first task it posts itself (it looks at the queue after
     * each read); otherwise a sleeping worker, else the reading one stops reading. */
    bool for_reader = self_reading && pool.queued == 1;
    bool signal = !for_reader && pool.idle > 0;
    if (!signal && !for_reader && pool.reader && !self_reading) {
        tether__wake_raise(pool.reader);
    }
    pthread_mutex_unlock(&pool.lock);
    if (signal) {
        pthread_cond_signal(&pool.work);
    }
    return 0;
}

void
tether__pool_add_source(tether__pool_source *src)
{
    pthread_once(&setup_once, setup);
    src->hold(src);
    pthread_mutex_lock(&pool.lock);
    src->next = pool.sources;
    pool.sources = src;
    bool signal = pool.idle > 0 && !pool.reader;
    pthread_mutex_unlock(&pool.lock);
    if (signal) {
        pthread_cond_signal(&pool.work); /* a sleeping worker may read it */
    }
}

void
tether__pool_remove_source(tether__pool_source *src)
{
    pthread_once(&setup_once, setup);
    bool listed = false;
    pthread_mutex_lock(&pool.lock);
    for (tether__pool_source **p = &pool.sources; *p; p = &(*p)->next) {
        if (*p == src) {
            *p = src->next;
            listed = true;
            break;
        }
    }
    pthread_mutex_unlock(&pool.lock);
    if (listed) {
        src->drop(src);
    }
}
