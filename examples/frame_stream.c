/*
 * frame_stream: a host hands a Python script a rendered frame every tick, through shared
 * memory, and the script answers with what it computed on it.
 *
 *     build/example-frame_stream [FRAMES [SCRIPT]]
 *
 * The host spawns SCRIPT (examples/frame_stream.py by default: run it from the checkout)
 * and, at 60 ticks a second, renders a synthetic 1920x1080 RGBA frame into a new buffer
 * (tether_buffer, an array of uint8 [1080, 1920, 4]) and calls the script's
 * mean_per_channel(frame), which gets the frame as a numpy array without a copy. After
 * FRAMES frames (120 by default) it prints the rate, what a frame cost (rendering, the
 * call, the script's own work, and the rest: the transfer), how many pieces of shared
 * memory the frames took, and checks the script's last answer against the means it
 * knows. Exit status 0 when every answer was right.
 *
 * A new buffer per frame costs no new memory: once the script has dropped a frame, its
 * side says so, and the next tether_buffer_new_uninitialized() of that size gets the
 * same memory back. A script that keeps a frame keeps it intact.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include <tether.h>

#define WIDTH 1920
#define HEIGHT 1080
#define TICK_USEC (1000000 / 60)
#define MAX_MEMORIES 64

/* Frame t: red follows x, green y, both moving with t; blue and alpha are constant. */
static void
render(uint8_t *rgba, unsigned t)
{
    for (unsigned y = 0; y < HEIGHT; y++) {
        uint8_t *p = rgba + (size_t)y * WIDTH * 4;
        for (unsigned x = 0; x < WIDTH; x++, p += 4) {
            p[0] = (uint8_t)(x + t);
            p[1] = (uint8_t)(y + t);
            p[2] = 128;
            p[3] = 255;
        }
    }
}

/* The means render(t) gives, channel by channel. */
static void
expected_means(unsigned t, double means[4])
{
    double red = 0, green = 0;
    for (unsigned x = 0; x < WIDTH; x++) {
        red += (uint8_t)(x + t);
    }
    for (unsigned y = 0; y < HEIGHT; y++) {
        green += (uint8_t)(y + t);
    }
    means[0] = red / WIDTH;
    means[1] = green / HEIGHT;
    means[2] = 128;
    means[3] = 255;
}

static double
cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static void
sleep_until(uint64_t usec)
{
    uint64_t now = tether_now_usec();
    if (usec > now) {
        struct timespec ts = {(time_t)((usec - now) / 1000000),
                              (long)((usec - now) % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

int
main(int argc, char **argv)
{
    unsigned frames = argc > 1 ? (unsigned)atoi(argv[1]) : 120;
    const char *script = argc > 2 ? argv[2] : "examples/frame_stream.py";
    tether_host_options host_options = {.name = "frame_stream"};
    tether_host *host = NULL;
    tether_child *child = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_host_new(&host_options, &host);
    r = r < 0 ? r : tether_host_start(host);
    tether_spawn_options spawn = {.script_path = script, .name = "frames"};
    r = r < 0 ? r : tether_host_spawn(host, &spawn, &child, &error);
    if (r < 0) {
        fprintf(stderr, "frame_stream: %s%s%s\n", tether_strerror(r), error.message ? ": " : "",
                error.message ? error.message : "");
        goto out;
    }
    printf("frame_stream: the script %s runs as 'frames' (pid %lld)\n", script,
           (long long)tether_child_get_pid(child));

    tether_object *root = tether_child_get_root(child);
    const size_t shape[3] = {HEIGHT, WIDTH, 4};
    double render_s = 0, call_s = 0, work_s = 0, means[4] = {0};
    unsigned wrong = 0, done = 0, memories = 0;
    ino_t seen[MAX_MEMORIES]; /* the memfds the frames took */
    double cpu_start = cpu_seconds();
    uint64_t start = tether_now_usec(), tick = start;
    for (unsigned t = 0; t < frames; t++, tick += TICK_USEC) {
        sleep_until(tick);
        uint64_t t0 = tether_now_usec();
        tether_buffer *frame = NULL;
        r = tether_buffer_new_uninitialized((size_t)WIDTH * HEIGHT * 4, &frame);
        r = r < 0 ? r : tether_buffer_set_array(frame, 'B', shape, 3);
        if (r < 0) {
            fprintf(stderr, "frame_stream: frame %u: %s%s\n", t, tether_strerror(r),
                    r == TETHER_ENOTSUP ? " (this build has no shared memory: the portable one)"
                                        : "");
            break;
        }
        render(tether_buffer_get_writable(frame), t);
        struct stat st;
        if (fstat(tether_buffer_get_fd(frame), &st) == 0) {
            unsigned k = 0;
            while (k < memories && seen[k] != st.st_ino) {
                k++;
            }
            if (k == memories && memories < MAX_MEMORIES) {
                seen[memories++] = st.st_ino;
            }
        }
        uint64_t t1 = tether_now_usec();
        tether_value *result = NULL;
        double script_work = 0;
        r = tether_object_call(root, "mean_per_channel", NULL, &result, &error, "B", frame);
        uint64_t t2 = tether_now_usec();
        tether_buffer_unref(frame); /* the script's side tells when it is done with it */
        r = r < 0 ? r
                  : tether_value_read(result, NULL, "[ddddd]", &means[0], &means[1], &means[2],
                                      &means[3], &script_work);
        tether_value_unref(result);
        if (r < 0) {
            fprintf(stderr, "frame_stream: frame %u: %s%s%s\n", t, tether_strerror(r),
                    error.message ? ": " : "", error.message ? error.message : "");
            tether_error_done(&error);
            break;
        }
        double expected[4];
        expected_means(t, expected);
        for (int c = 0; c < 4; c++) {
            wrong += fabs(means[c] - expected[c]) > 1e-6;
        }
        render_s += (double)(t1 - t0) / 1e6;
        call_s += (double)(t2 - t1) / 1e6;
        work_s += script_work;
        done++;
    }
    double elapsed = (double)(tether_now_usec() - start) / 1e6;
    double cpu = cpu_seconds() - cpu_start;
    if (done > 0) {
        printf("frame_stream: %u frames of %dx%d RGBA (%.1f MiB each) in %.2f s: %.1f fps\n",
               done, WIDTH, HEIGHT, WIDTH * HEIGHT * 4 / 1048576.0, elapsed, done / elapsed);
        printf("frame_stream: per frame: render %.2f ms, call %.2f ms, of which the script's "
               "work %.2f ms and the transfer %.3f ms\n",
               render_s * 1e3 / done, call_s * 1e3 / done, work_s * 1e3 / done,
               (call_s - work_s) * 1e3 / done);
        printf("frame_stream: host CPU per frame %.2f ms (rendering included); the frames "
               "took %u pieces of shared memory\n",
               cpu * 1e3 / done, memories);
        printf("frame_stream: last frame's mean per channel: R %.2f G %.2f B %.2f A %.2f (%s)\n",
               means[0], means[1], means[2], means[3], wrong ? "WRONG" : "as expected");
    }
    r = done == frames && wrong == 0 ? 0 : -1;
out:
    tether_error_done(&error);
    tether_child_unref(child);
    tether_host_unref(host);
    return r < 0 ? 1 : 0;
}
