/*
 * Objects by reference, host and client in one process: exporting a C object, calling
 * it through a proxy, passing it back, references counted across the connection and
 * released when the last proxy goes or the connection closes, and the misuses that
 * must fail cleanly.
 */
#define _GNU_SOURCE
#include <stdatomic.h>

#include "helpers.h"
#include "rpc/value.h"

/* ---- a counter class ------------------------------------------------------------- */

typedef struct counter {
    atomic_int value;
    atomic_int *released; /* set to 1 by release */
} counter;

static int
counter_add(tether_request *req, void *userdata)
{
    counter *c = userdata;
    int n = 1;
    if (tether_request_read(req, "i", &n) < 0) {
        return TETHER_EINVAL;
    }
    return tether_request_reply(req, "i", atomic_fetch_add(&c->value, n) + n);
}

static int
counter_get(tether_request *req, void *userdata)
{
    counter *c = userdata;
    /* The target names the object too. */
    cr_assert_eq(tether_object_get_userdata(tether_request_get_object(req)), c);
    return tether_request_reply(req, "i", atomic_load(&c->value));
}

static void
counter_release(void *userdata)
{
    counter *c = userdata;
    atomic_store(c->released, 1);
    free(c);
}

static const tether_method counter_methods[] = {
    {"add", TETHER_CONTEXT_IO, counter_add},
    {"get", TETHER_CONTEXT_POOL, counter_get},
    {NULL, 0, NULL},
};

static const tether_class counter_class = {
    .name = "Counter",
    .methods = counter_methods,
    .release = counter_release,
};

static const tether_class counter_main_release_class = {
    .name = "Counter",
    .methods = counter_methods,
    .release = counter_release,
    .release_context = TETHER_CONTEXT_MAIN,
};

static counter *
counter_new(atomic_int *released)
{
    counter *c = calloc(1, sizeof(*c));
    cr_assert_not_null(c);
    atomic_store(released, 0);
    c->released = released;
    return c;
}

static void
wait_flag(atomic_int *flag, int want, const char *what)
{
    for (int i = 0; i < 500 && atomic_load(flag) != want; i++) {
        usleep(10000);
    }
    cr_assert_eq(atomic_load(flag), want, "%s", what);
}

/* ---- host services ------------------------------------------------------------------ */

static atomic_int made_released;
static tether_object *kept; /* an object the host keeps a reference to */

/* make_counter(): a new Counter that only the caller's proxy keeps alive. */
static int
make_counter(tether_request *req, void *userdata)
{
    tether_host *h = userdata;
    tether_object *obj;
    ASSERT_OK(tether_host_new_object(h, &counter_class, counter_new(&made_released), &obj));
    int r = tether_request_reply(req, "o", obj);
    tether_object_unref(obj);
    return r;
}

/* get_kept(): the same object every time, in a list twice. */
static int
get_kept(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "[oo]", kept, kept);
}

/* is_kept(obj) -> bool: a proxy passed back resolves to the original. */
static int
is_kept(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_object *obj = NULL;
    if (tether_request_read(req, "o", &obj) < 0) {
        return TETHER_EINVAL;
    }
    int same = obj == kept;
    cr_assert(!tether_object_is_remote(obj));
    tether_object_unref(obj);
    return tether_request_reply(req, "b", same);
}

/* call_back(obj, n) -> obj.add(n): the host calls a client's object (POOL: may block). */
static int
call_back(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_object *obj = NULL;
    int n;
    if (tether_request_read(req, "oi", &obj, &n) < 0) {
        return TETHER_EINVAL;
    }
    cr_assert(tether_object_is_remote(obj));
    cr_assert_str_eq(tether_object_get_type_name(obj), "ClientCounter");
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_object_call(obj, "add", NULL, &result, &err, "i", n);
    tether_object_unref(obj);
    if (r < 0) {
        r = tether_request_reply_error_full(req, &err);
    } else {
        r = tether_request_reply_value(req, result);
    }
    tether_value_unref(result);
    tether_error_done(&err);
    return r;
}

typedef struct fixture {
    tether_host *host;
    tether_client *client;
    tether_conn *conn;
} fixture;

static fixture
setup(void)
{
    fixture f = {0};
    tether_host_options ho = {.name = "objects"};
    f.host = test_host_new(&ho);
    ASSERT_OK(tether_host_add_service(f.host, "make_counter", TETHER_CONTEXT_IO, make_counter,
                                      f.host));
    ASSERT_OK(tether_host_add_service(f.host, "get_kept", TETHER_CONTEXT_IO, get_kept, NULL));
    ASSERT_OK(tether_host_add_service(f.host, "is_kept", TETHER_CONTEXT_IO, is_kept, NULL));
    ASSERT_OK(tether_host_add_service(f.host, "call_back", TETHER_CONTEXT_POOL, call_back, NULL));
    ASSERT_OK(tether_host_start(f.host));
    f.client = test_client_connect("objects-client", tether_host_get_address(f.host));
    f.conn = tether_client_get_conn(f.client);
    return f;
}

static void
teardown(fixture *f)
{
    tether_client_unref(f->client);
    tether_host_unref(f->host);
}

static tether_object *
call_for_object(tether_conn *conn, const char *method)
{
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, method, NULL, &v, &err, NULL);
    cr_assert_eq(r, 0, "%s: %s", method, err.message ? err.message : tether_strerror(r));
    tether_object *obj = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "o", &obj));
    tether_value_unref(v);
    return obj;
}

/* ---- tests ---------------------------------------------------------------------- */

Test(objects, proxy_calls_methods_and_release_follows_the_last_proxy)
{
    fixture f = setup();
    tether_object *proxy = call_for_object(f.conn, "make_counter");
    cr_assert(tether_object_is_remote(proxy));
    cr_assert_str_eq(tether_object_get_type_name(proxy), "Counter");
    cr_assert_eq(tether_object_get_conn(proxy), f.conn);
    cr_assert_null(tether_object_get_userdata(proxy));

    tether_value *v = NULL;
    int n = 0;
    ASSERT_OK(tether_object_call(proxy, "add", NULL, &v, NULL, "i", 5));
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 5);
    tether_value_unref(v);
    ASSERT_OK(tether_object_call(proxy, "get", NULL, &v, NULL, NULL)); /* a POOL method */
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 5);
    tether_value_unref(v);

    /* The same through a future and a notification, arguments from a format. */
    tether_future *fut = NULL;
    ASSERT_OK(tether_object_call_async(proxy, "add", NULL, &fut, "i", 2));
    ASSERT_OK(tether_future_wait(fut, 5 * 1000 * 1000));
    ASSERT_OK(tether_future_get_result(fut, &v, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 7);
    tether_value_unref(v);
    tether_future_unref(fut);
    ASSERT_OK(tether_object_notify(proxy, "add", "i", 3));
    /* Notifications go out before later calls: the next call sees the addition. */
    ASSERT_OK(tether_object_call(proxy, "add", NULL, &v, NULL, "i", 0));
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 10);
    tether_value_unref(v);
    ASSERT_OK(tether_object_call(proxy, "add", NULL, NULL, NULL, "i", -5));
    static const uint8_t one[] = {0x91, 0x01};
    tether_msgpack_args m = {.args = one, .args_size = sizeof(one)};
    ASSERT_OK(tether_object_notify_msgpack(proxy, "add", &m));
    ASSERT_OK(tether_object_call_async_msgpack(proxy, "add", &m, NULL, &fut));
    ASSERT_OK(tether_future_wait(fut, 5 * 1000 * 1000));
    tether_future_unref(fut);
    ASSERT_OK(tether_object_call_msgpack(proxy, "add", &m, NULL, &v, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 8); /* 10 - 5 + 1 + 1 + 1 */
    tether_value_unref(v);
    ASSERT_OK(tether_object_call(proxy, "add", NULL, NULL, NULL, "i", -3));
    ASSERT_ERR(tether_object_call_async(proxy, "add", NULL, NULL, "i", 1), TETHER_EINVAL);
    ASSERT_ERR(tether_object_notify(NULL, "add", "i", 1), TETHER_EINVAL);

    /* Unknown methods are an AttributeError naming the class. */
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_object_call(proxy, "explode", NULL, NULL, &err, NULL), TETHER_EREMOTE);
    cr_assert_str_eq(err.type, "AttributeError");
    cr_assert(strstr(err.message, "'Counter' object has no method 'explode'"), "%s", err.message);
    tether_error_done(&err);

    /* The library describes a class without a fallback. */
    ASSERT_OK(tether_object_call(proxy, "__tether_describe__", NULL, &v, NULL, NULL));
    const char *type, *m1, *m2;
    bool per_type;
    ASSERT_OK(tether_value_read(v, NULL, "{sss[ss]sb}", NULL, &type, NULL, &m1, &m2, NULL,
                                &per_type));
    cr_assert_str_eq(type, "Counter");
    cr_assert_str_eq(m1, "add");
    cr_assert_str_eq(m2, "get");
    cr_assert(per_type);
    tether_value_unref(v);

    /* The host holds no reference of its own: the proxy is the last one. */
    cr_assert_eq(atomic_load(&made_released), 0);
    tether_object_unref(proxy);
    wait_flag(&made_released, 1, "release ran after the last proxy went");
    teardown(&f);
}

Test(objects, same_object_same_proxy_and_passing_back_resolves_to_the_original)
{
    fixture f = setup();
    atomic_int released;
    ASSERT_OK(tether_host_new_object(f.host, &counter_class, counter_new(&released), &kept));

    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(f.conn, "get_kept", NULL, &v, NULL, NULL));
    tether_object *a = NULL, *b = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "[oo]", &a, &b));
    cr_assert_eq(a, b, "one proxy per object and connection");
    tether_object *const *objs;
    size_t count;
    ASSERT_OK(tether_value_get_objects(v, &objs, &count));
    cr_assert_eq(count, 2);
    cr_assert_eq(objs[0], a);
    tether_value_unref(v);

    bool same = false;
    ASSERT_OK(tether_conn_call(f.conn, "is_kept", NULL, &v, NULL, "o", a));
    ASSERT_OK(tether_value_read(v, NULL, "b", &same));
    cr_assert(same);
    tether_value_unref(v);
    /* The same with the arguments as msgpack bytes: [proxy], the proxy's bytes as the
     * library writes them and the proxy listed beside them. */
    uint8_t packed[64] = {0x91};
    size_t len = 0;
    ASSERT_OK(tether_object_get_msgpack(a, packed + 1, sizeof(packed) - 1, &len));
    tether_msgpack_args m = {.args = packed, .args_size = 1 + len, .args_objects = &a,
                             .args_object_count = 1};
    same = false;
    ASSERT_OK(tether_conn_call_msgpack(f.conn, "is_kept", &m, NULL, &v, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "b", &same));
    cr_assert(same);
    tether_value_unref(v);
    tether_object *wrong[] = {b == a ? NULL : b};
    m.args_objects = wrong;
    ASSERT_ERR(tether_conn_call_msgpack(f.conn, "is_kept", &m, NULL, NULL, NULL), TETHER_EINVAL);
    tether_object_unref(a);
    tether_object_unref(b);

    /* Proxies gone, the host's own reference keeps it; then that goes too. */
    usleep(50000);
    cr_assert_eq(atomic_load(&released), 0);
    kept = tether_object_unref(kept);
    wait_flag(&released, 1, "release after the host's own reference");
    teardown(&f);
}

static tether_request *_Atomic held; /* a request the host answers when the test says */

static int
hold(tether_request *req, void *userdata)
{
    (void)userdata;
    atomic_store(&held, tether_request_ref(req));
    return 0;
}

Test(objects, a_release_waits_behind_calls_waiting_for_room_in_the_window)
{
    /* The host runs one request at a time. A method call that waits on the client's side
     * for room, then the last proxy of its object dropped: the release must not overtake
     * the call, or the host would free the object before the call arrives. */
    tether_host_options ho = {.name = "objects-window", .max_in_flight = 1};
    tether_host *h = test_host_new(&ho);
    ASSERT_OK(tether_host_add_service(h, "make_counter", TETHER_CONTEXT_IO, make_counter, h));
    ASSERT_OK(tether_host_add_service(h, "hold", TETHER_CONTEXT_IO, hold, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("objects-window", tether_host_get_address(h));
    tether_conn *conn = tether_client_get_conn(c);
    atomic_store(&made_released, 0);
    tether_object *proxy = call_for_object(conn, "make_counter");
    tether_future *first = NULL, *method = NULL;
    ASSERT_OK(tether_conn_call_async(conn, "hold", NULL, &first, NULL));
    ASSERT_OK(tether_object_call_async(proxy, "add", NULL, &method, "i", 5));
    proxy = tether_object_unref(proxy);
    usleep(50000); /* the release task runs, and must queue behind the method call */
    cr_assert_eq(atomic_load(&made_released), 0, "released before the waiting call went out");
    tether_request *req = NULL;
    for (int i = 0; i < 500 && !(req = atomic_exchange(&held, NULL)); i++) {
        usleep(10000);
    }
    cr_assert(req != NULL, "the host never got the first call");
    ASSERT_OK(tether_request_reply(req, NULL));
    tether_request_unref(req);
    ASSERT_OK(tether_future_wait(method, 5000000));
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_future_get_result(method, &v, &err);
    cr_assert_eq(r, 0, "the waiting method call: %s", err.message ? err.message : "");
    int n = 0;
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 5);
    tether_value_unref(v);
    wait_flag(&made_released, 1, "the release, after the call");
    tether_future_unref(first);
    tether_future_unref(method);
    tether_client_unref(c);
    tether_host_unref(h);
}

static atomic_int client_released;

static const tether_class client_counter_class = {
    .name = "ClientCounter",
    .methods = counter_methods,
    .release = counter_release,
};

Test(objects, the_host_calls_a_client_object_and_releases_its_proxy)
{
    fixture f = setup();
    tether_object *mine;
    ASSERT_OK(tether_client_new_object(f.client, &client_counter_class,
                                       counter_new(&client_released), &mine));
    tether_value *v = NULL;
    int n = 0;
    ASSERT_OK(tether_conn_call(f.conn, "call_back", NULL, &v, NULL, "oi", mine, 7));
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 7);
    tether_value_unref(v);
    ASSERT_OK(tether_conn_call(f.conn, "call_back", NULL, &v, NULL, "oi", mine, 2));
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 9);
    tether_value_unref(v);

    /* The host dropped its proxies: only our reference is left. */
    tether_object_unref(mine);
    wait_flag(&client_released, 1, "the client's object released once the host let go");
    teardown(&f);
}

Test(objects, closing_the_connection_releases_exports_and_proxies_fail)
{
    fixture f = setup();
    tether_object *proxy = call_for_object(f.conn, "make_counter");
    cr_assert_eq(atomic_load(&made_released), 0);
    tether_client_close(f.client);
    wait_flag(&made_released, 1, "the host released what the closed connection held");

    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_object_call(proxy, "get", NULL, NULL, &err, NULL), TETHER_ENOTCONN);
    tether_error_done(&err);
    tether_object_unref(proxy);
    teardown(&f);
}

Test(objects, release_in_the_main_context_waits_for_dispatch)
{
    fixture f = setup();
    atomic_int released;
    tether_object *obj;
    ASSERT_OK(tether_host_new_object(f.host, &counter_main_release_class, counter_new(&released),
                                     &obj));
    tether_object_unref(obj);
    cr_assert_eq(atomic_load(&released), 0);
    cr_assert(test_fd_readable(tether_host_get_fd(f.host)));
    ASSERT_OK(tether_host_dispatch(f.host, TETHER_BUDGET_UNLIMITED));
    cr_assert_eq(atomic_load(&released), 1);
    teardown(&f);
}

Test(objects, misuse_fails_cleanly)
{
    fixture f = setup();
    atomic_int released;
    tether_object *local;
    ASSERT_OK(tether_host_new_object(f.host, &counter_class, counter_new(&released), &local));

    /* A local object is not called through the wire. */
    ASSERT_ERR(tether_object_call(local, "get", NULL, NULL, NULL, NULL), TETHER_EINVAL);
    tether_object *none;
    ASSERT_ERR(tether_host_new_object(f.host, NULL, NULL, &none), TETHER_EINVAL);
    cr_assert_null(none);

    /* A proxy only goes back to its own connection. */
    tether_object *proxy = call_for_object(f.conn, "make_counter");
    tether_client *other = test_client_connect("other", tether_host_get_address(f.host));
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(other), "is_kept", NULL, NULL, &err, "o",
                                proxy),
               TETHER_EINVAL);
    tether_error_done(&err);
    tether_client_unref(other);

    tether_object_unref(proxy);
    wait_flag(&made_released, 1, "released after the failed send");
    tether_object_unref(local);
    teardown(&f);
}

Test(objects, values_carry_their_objects)
{
    fixture f = setup();
    atomic_int released;
    tether_object *obj;
    ASSERT_OK(tether_host_new_object(f.host, &counter_class, counter_new(&released), &obj));

    /* Nested through "v" and sliced out again with "v": the object follows its bytes. */
    tether_value *inner, *outer, *slice;
    ASSERT_OK(tether_value_new(&inner, "[so]", "x", obj));
    ASSERT_OK(tether_value_new(&outer, "{svsi}", "in", inner, "n", 3));
    tether_value_unref(inner);
    ASSERT_OK(tether_value_read(outer, NULL, "{svs*}", NULL, &slice, NULL));
    tether_object *back = NULL;
    ASSERT_OK(tether_value_read(slice, NULL, "[*o]", &back));
    cr_assert_eq(back, obj);
    tether_object_unref(back);
    tether_value_unref(slice);
    char *text;
    ASSERT_OK(tether_value_to_string(outer, &text));
    cr_assert(strstr(text, "<ref "), "%s", text);
    free(text);

    /* Raw bytes with a REF need their objects, in order. */
    const void *data;
    size_t size;
    ASSERT_OK(tether_value_get_msgpack(outer, &data, &size));
    tether_value *copy;
    ASSERT_ERR(tether_value_new_msgpack(data, size, &copy), TETHER_EINVAL);
    tether_object *wrong[] = {NULL};
    ASSERT_ERR(tether_value_new_msgpack_objects(data, size, wrong, 1, &copy), TETHER_EINVAL);
    ASSERT_OK(tether_value_new_msgpack_objects(data, size, &obj, 1, &copy));
    ASSERT_OK(tether_value_read(copy, NULL, "{s[*o]s*}", NULL, &back, NULL));
    cr_assert_eq(back, obj);
    tether_object_unref(back);
    tether_value_unref(copy);
    tether_value_unref(outer);

    /* Bytes built by hand: an array header, then an object's bytes as the library
     * writes them, are a value holding that object, seen as TETHER_TYPE_OBJECT. */
    uint8_t built[80] = {0x92};
    size_t ref_len = 0;
    ASSERT_ERR(tether_object_get_msgpack(obj, built + 1, 1, &ref_len), TETHER_EMSGSIZE);
    cr_assert_gt(ref_len, 1);
    cr_assert_lt(ref_len * 2 + 1, sizeof(built));
    ASSERT_OK(tether_object_get_msgpack(obj, built + 1, sizeof(built) - 1, &ref_len));
    cr_assert((built[1] >= 0xc7 && built[1] <= 0xc9) || (built[1] >= 0xd4 && built[1] <= 0xd8),
              "an ext: %#x", built[1]);
    memcpy(built + 1 + ref_len, built + 1, ref_len);
    tether_object *twice[] = {obj, obj};
    ASSERT_OK(tether_value_new_msgpack_objects(built, 1 + 2 * ref_len, twice, 2, &copy));
    tether_value *item;
    ASSERT_OK(tether_value_get_item(copy, 1, &item));
    cr_assert_eq(tether_value_get_type(item), TETHER_TYPE_OBJECT);
    ASSERT_OK(tether_value_read(item, NULL, "o", &back));
    cr_assert_eq(back, obj);
    tether_object_unref(back);
    tether_value_unref(item);
    tether_value_unref(copy);
    ASSERT_ERR(tether_object_get_msgpack(NULL, built, sizeof(built), &ref_len), TETHER_EINVAL);

    /* A value without objects reads "o" from nil only. */
    ASSERT_OK(tether_value_new(&copy, "[on]", NULL));
    ASSERT_OK(tether_value_read(copy, NULL, "[oo]", &back, &back));
    cr_assert_null(back);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_OK(tether_value_new(&outer, "i", 3));
    ASSERT_ERR(tether_value_read(outer, &err, "o", &back), TETHER_EINVAL);
    cr_assert(strstr(err.message, "expected object, got int"), "%s", err.message);
    tether_error_done(&err);
    tether_value_unref(outer);
    tether_value_unref(copy);

    cr_assert_eq(atomic_load(&released), 0);
    tether_object_unref(obj);
    cr_assert_eq(atomic_load(&released), 1, "an IO release runs where the last reference goes");
    teardown(&f);
}
