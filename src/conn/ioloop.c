/*
 * ioloop: see ioloop.h.
 *
 * Invariants: `shared` is the one loop of the process or NULL, guarded by shared_lock
 * together with its refcount. The task queue is guarded by queue_lock; uv_async_send()
 * coalesces wake-ups, so a burst of posts costs one wake. The loop is kept alive by the
 * async handle alone; stopping closes it from inside the thread and joins.
 */
#define _GNU_SOURCE
#include "conn/ioloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "platform/platform.h"
#include "util/alloc.h"

struct tether__ioloop {
    uv_loop_t uv;
    uv_async_t wake;
    uv_thread_t thread;
    uv_thread_t thread_self; /* set by the thread itself */
    atomic_bool running;
    pthread_mutex_t queue_lock;
    tether__task *head, *tail; /* guarded by queue_lock */
    bool stopping;             /* guarded by queue_lock */
    unsigned refs;             /* guarded by shared_lock */
};

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static tether__ioloop *shared;
static atomic_uint fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void
on_fork_child(void)
{
    /* The I/O thread does not exist in the child: forget the loop without touching it. */
    atomic_fetch_add(&fork_generation, 1);
    shared = NULL;
    pthread_mutex_init(&shared_lock, NULL);
}

static void
install_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

unsigned
tether__fork_generation(void)
{
    return atomic_load_explicit(&fork_generation, memory_order_relaxed);
}

static void
close_walk(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle)) {
        uv_close(handle, NULL);
    }
}

/*
 * Runs the tasks queued when it starts; tasks posted meanwhile wait for the next loop
 * iteration. So a task posted after handles were closed runs after their close
 * callbacks, which tether__ioloop_run_sync() callers rely on as a barrier.
 */
static void
on_wake(uv_async_t *async)
{
    tether__ioloop *loop = async->data;
    pthread_mutex_lock(&loop->queue_lock);
    tether__task *task = loop->head;
    loop->head = loop->tail = NULL;
    bool stopping = loop->stopping;
    pthread_mutex_unlock(&loop->queue_lock);
    while (task) {
        tether__task *next = task->next;
        task->run(task);
        task = next;
    }
    pthread_mutex_lock(&loop->queue_lock);
    bool more = loop->head != NULL;
    pthread_mutex_unlock(&loop->queue_lock);
    if (more) {
        uv_async_send(&loop->wake);
    } else if (stopping) {
        uv_walk(&loop->uv, close_walk, NULL);
    }
}

static void
thread_main(void *arg)
{
    tether__ioloop *loop = arg;
    loop->thread_self = uv_thread_self();
    /* Named, so that top -H, perf and /proc tell it from the application's threads. */
    (void)tether__process_set_name("tether-io");
    atomic_store(&loop->running, true);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    /* Handles closed by close_walk need one more turn to run their close callbacks. */
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    atomic_store(&loop->running, false);
}

int
tether__ioloop_acquire(tether__ioloop **ret)
{
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&shared_lock);
    if (shared) {
        shared->refs++;
        *ret = shared;
        pthread_mutex_unlock(&shared_lock);
        return 0;
    }
    tether__ioloop *loop = tether__calloc(1, sizeof(*loop));
    int r = -ENOMEM;
    if (!loop) {
        goto fail;
    }
    r = uv_loop_init(&loop->uv);
    if (r < 0) {
        goto fail;
    }
    r = uv_async_init(&loop->uv, &loop->wake, on_wake);
    if (r < 0) {
        uv_loop_close(&loop->uv);
        goto fail;
    }
    loop->wake.data = loop;
    pthread_mutex_init(&loop->queue_lock, NULL);
    r = uv_thread_create(&loop->thread, thread_main, loop);
    if (r < 0) {
        uv_close((uv_handle_t *)&loop->wake, NULL);
        uv_run(&loop->uv, UV_RUN_NOWAIT);
        uv_loop_close(&loop->uv);
        goto fail;
    }
    /* The thread id must be known before anyone asks in_thread(). */
    while (!atomic_load(&loop->running)) {
        sched_yield();
    }
    loop->refs = 1;
    shared = loop;
    *ret = loop;
    pthread_mutex_unlock(&shared_lock);
    return 0;
fail:
    pthread_mutex_unlock(&shared_lock);
    tether__free(loop);
    return r;
}

void
tether__ioloop_release(tether__ioloop *loop)
{
    if (!loop) {
        return;
    }
    pthread_mutex_lock(&shared_lock);
    if (loop != shared) {
        /* A loop inherited across fork(): its thread is gone, leave it be. */
        pthread_mutex_unlock(&shared_lock);
        return;
    }
    if (--loop->refs > 0 || tether__ioloop_in_thread(loop)) {
        /* Released from inside the loop: it stays until the process ends. */
        if (loop->refs == 0) {
            loop->refs = 1;
        }
        pthread_mutex_unlock(&shared_lock);
        return;
    }
    shared = NULL;
    pthread_mutex_unlock(&shared_lock);

    pthread_mutex_lock(&loop->queue_lock);
    loop->stopping = true;
    pthread_mutex_unlock(&loop->queue_lock);
    uv_async_send(&loop->wake);
    uv_thread_join(&loop->thread);
    uv_loop_close(&loop->uv);
    pthread_mutex_destroy(&loop->queue_lock);
    tether__free(loop);
}

uv_loop_t *
tether__ioloop_uv(tether__ioloop *loop)
{
    return &loop->uv;
}

bool
tether__ioloop_in_thread(const tether__ioloop *loop)
{
    uv_thread_t self = uv_thread_self();
    return atomic_load_explicit(&loop->running, memory_order_acquire) &&
           uv_thread_equal(&self, &loop->thread_self);
}

void
tether__ioloop_post(tether__ioloop *loop, tether__task *task)
{
    task->next = NULL;
    pthread_mutex_lock(&loop->queue_lock);
    bool was_empty = loop->head == NULL;
    if (loop->tail) {
        loop->tail->next = task;
    } else {
        loop->head = task;
    }
    loop->tail = task;
    pthread_mutex_unlock(&loop->queue_lock);
    if (was_empty) {
        uv_async_send(&loop->wake);
    }
}

typedef struct sync_task {
    tether__task task;
    void (*fn)(void *arg);
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t done_cv;
    bool done;
} sync_task;

static void
run_sync_task(tether__task *task)
{
    sync_task *st = (sync_task *)task;
    st->fn(st->arg);
    pthread_mutex_lock(&st->lock);
    st->done = true;
    pthread_cond_signal(&st->done_cv);
    pthread_mutex_unlock(&st->lock);
}

void
tether__ioloop_run_sync(tether__ioloop *loop, void (*fn)(void *arg), void *arg)
{
    if (tether__ioloop_in_thread(loop)) {
        fn(arg);
        return;
    }
    sync_task st = {.task = {.run = run_sync_task}, .fn = fn, .arg = arg};
    pthread_mutex_init(&st.lock, NULL);
    pthread_cond_init(&st.done_cv, NULL);
    tether__ioloop_post(loop, &st.task);
    pthread_mutex_lock(&st.lock);
    while (!st.done) {
        pthread_cond_wait(&st.done_cv, &st.lock);
    }
    pthread_mutex_unlock(&st.lock);
    pthread_cond_destroy(&st.done_cv);
    pthread_mutex_destroy(&st.lock);
}
