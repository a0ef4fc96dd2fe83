/*
 * pool: worker threads of our own rather than libuv's. uv_queue_work may be called on
 * the loop's thread only, and completes every item with a callback there: a request
 * read by another thread had to go through the I/O thread first, and every one that
 * ran woke the I/O thread again afterwards. Here a worker is woken by whoever posts,
 * and what finishes a task (replying, dropping references) runs in the task itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "conn/pool.h"
#include "platform/platform.h"

#define DEFAULT_SIZE 4u
#define MAX_SIZE 128u

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;
    tether__task *head, *tail; /* guarded by lock */
    unsigned queued;           /* guarded by lock: tasks in the queue */
    unsigned threads;          /* guarded by lock: started and alive */
    unsigned idle;             /* guarded by lock: waiting on work */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0};

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
    pthread_cond_init(&pool.work, NULL);
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
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

unsigned
tether__pool_size(void)
{
    pthread_once(&setup_once, setup);
    return size;
}

static void *
worker_main(void *arg)
{
    (void)arg;
    (void)tether__process_set_name("tether-pool");
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.head) {
            pool.idle++;
            pthread_cond_wait(&pool.work, &pool.lock);
            pool.idle--;
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
    /* A new thread when the idle ones are all spoken for: a task queued behind one that
     * blocks (waiting for another service, say) would otherwise wait for it. */
    if (pool.queued + 1 > pool.idle && pool.threads < size) {
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
    bool wake = pool.idle > 0;
    pthread_mutex_unlock(&pool.lock);
    if (wake) {
        pthread_cond_signal(&pool.work);
    }
    return 0;
}
