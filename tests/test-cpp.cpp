/*
 * test-cpp: the C++ API of include/tether.hpp, host and client in one process: typed
 * conversions (round trips and every mismatch, with the C reader's TypeError text),
 * services in each context, calls, futures and notifications, call-backs from a client
 * into a host that is waiting on it, exceptions crossing both ways, buffers, and the
 * non-throwing try_ forms.
 *
 * A plain program (no Criterion: it is C): each TEST registers itself and main() runs
 * them in order, or the one named on the command line. The build compiles it with g++
 * and, when installed, clang++ (-std=c++17 -Wall -Wextra -Werror -pedantic).
 *
 * ctest: timeout=120
 */
#include "cpp-fixtures.hpp"

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

/* ---- a small runner ---------------------------------------------------------------- */

namespace {

struct test_case {
    const char *name;
    void (*fn)();
};

std::vector<test_case> &
all_tests()
{
    static std::vector<test_case> tests;
    return tests;
}

struct registrar {
    registrar(const char *name, void (*fn)())
    {
        all_tests().push_back({name, fn});
    }
};

#define TEST(name)                                                                                 \
    static void test_##name();                                                                     \
    static registrar register_##name(#name, test_##name);                                          \
    static void test_##name()

[[noreturn]] void
fail_at(const char *file, int line, const std::string &what)
{
    std::fprintf(stderr, "%s:%d: %s\n", file, line, what.c_str());
    std::exit(1);
}

template <class T>
std::string
show(const T &x)
{
    std::ostringstream out;
    out << x;
    return out.str();
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_at(__FILE__, __LINE__, "CHECK failed: " #cond);                                   \
        }                                                                                          \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        auto check_a_ = (a);                                                                       \
        auto check_b_ = (b);                                                                       \
        if (!(check_a_ == check_b_)) {                                                             \
            fail_at(__FILE__, __LINE__,                                                            \
                    "CHECK_EQ failed: " #a " == " #b ": " + show(check_a_) +                       \
                        " != " + show(check_b_));                                                  \
        }                                                                                          \
    } while (0)

/* The expression throws E; the exception is then in `caught`. */
#define CHECK_THROWS(E, expr, caught)                                                              \
    do {                                                                                           \
        bool thrown_ = false;                                                                      \
        try {                                                                                      \
            (void)(expr);                                                                          \
        } catch (const E &e_) {                                                                    \
            thrown_ = true;                                                                        \
            caught = e_.info();                                                                    \
        }                                                                                          \
        if (!thrown_) {                                                                            \
            fail_at(__FILE__, __LINE__, "expected " #E " from " #expr);                            \
        }                                                                                          \
    } while (0)

using namespace std::chrono_literals;

/* ---- fixtures ---------------------------------------------------------------------- */

int host_serial = 0;

/* What hosts made here logged, for the test of log records sent by a client. */
std::mutex host_log_lock;
std::string host_log;

void
keep_host_log(void *, int, const char *message)
{
    std::lock_guard<std::mutex> hold(host_log_lock);
    host_log += message;
    host_log += "\n";
}

tether::host
make_host()
{
    static char name[64];
    std::snprintf(name, sizeof name, "cpp-%d-%d", static_cast<int>(getpid()), ++host_serial);
    tether_host_options options{};
    options.name = name;
    options.log = keep_host_log;
    tether::host h(options);
    return h;
}

tether::client
make_client(const tether::host &h, const char *name = "cpp-client")
{
    tether_client_options options{};
    options.name = name;
    std::string address = h.address();
    options.address = address.c_str();
    tether::client c(options);
    return c;
}

/* The host's connection to a client, once the client announced service. */
tether::conn
client_conn(const tether::host &h, const char *name, const char *service)
{
    tether::conn c = h.client(name);
    c.wait_service(service, 5s);
    CHECK(c.has_service(service) && !c.has_service("no such service"));
    CHECK_EQ(c.try_wait_service("no such service", 1ms).code(), TETHER_ETIMEDOUT);
    return c;
}

/* Dispatch the host's main-thread work until done() holds. */
template <class F>
void
serve_until(tether::host &h, F done)
{
    auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!done()) {
        CHECK(std::chrono::steady_clock::now() < give_up);
        h.wait(10ms);
    }
}

template <class T>
std::string
mismatch(const tether::value &v)
{
    auto r = v.try_as<T>();
    CHECK(!r.ok());
    CHECK_EQ(r.code(), TETHER_EINVAL);
    CHECK_EQ(r.error().type, std::string("TypeError"));
    return r.error().message;
}

template <class T>
void
round_trip(const T &x)
{
    tether::value v = tether::value::from(x);
    CHECK(v.as<T>() == x);
}

} // namespace

/* A user type, through the customization point. */
struct point {
    double x = 0, y = 0;
    bool
    operator==(const point &o) const
    {
        return x == o.x && y == o.y;
    }
};

template <> struct tether::convert<point> {
    static void
    write(tether::writer &w, const point &p)
    {
        tether::write(w, std::map<std::string, double>{{"x", p.x}, {"y", p.y}});
    }
    static bool
    read(tether::reader &r, point &p)
    {
        std::map<std::string, double> m;
        if (!tether::read(r, m)) {
            return false;
        }
        if (m.size() != 2 || !m.count("x") || !m.count("y")) {
            return r.fail("expected a point {x, y}");
        }
        p = point{m["x"], m["y"]};
        return true;
    }
};

/* A user type read as a view into the value: its convert says so. */
struct label {
    std::string_view text;
};

template <> struct tether::convert<label> {
    static constexpr bool borrows = true;
    static void
    write(tether::writer &w, const label &l)
    {
        w.str(l.text);
    }
    static bool
    read(tether::reader &r, label &l)
    {
        return r.str(l.text);
    }
};

/* A user type whose reading throws: 13 as std::invalid_argument, 14 as std::bad_alloc. */
struct picky {
    int n = 0;
};

template <> struct tether::convert<picky> {
    static void
    write(tether::writer &w, const picky &p)
    {
        tether::write(w, p.n);
    }
    static bool
    read(tether::reader &r, picky &p)
    {
        if (!tether::read(r, p.n)) {
            return false;
        }
        if (p.n == 13) {
            throw std::invalid_argument("picky refuses 13");
        }
        if (p.n == 14) {
            throw std::bad_alloc();
        }
        return true;
    }
};

/* ---- conversions ------------------------------------------------------------------- */

/* What borrows from the value it is read from, at any depth: a call's result may not (its
 * static_assert), nor what is read from a temporary value. */
using tether::detail::is_borrowed;
static_assert(is_borrowed<std::string_view>::value && is_borrowed<tether::bytes_view>::value);
static_assert(is_borrowed<std::tuple<int, std::string_view>>::value);
static_assert(is_borrowed<std::vector<std::string_view>>::value);
static_assert(is_borrowed<std::optional<tether::bytes_view>>::value);
static_assert(is_borrowed<std::map<std::string, std::string_view>>::value);
static_assert(
    is_borrowed<
        std::unordered_map<std::string, std::vector<std::optional<tether::bytes_view>>>>::value);
static_assert(is_borrowed<label>::value && is_borrowed<std::vector<label>>::value);
static_assert(!is_borrowed<std::tuple<int, std::string>>::value);
static_assert(!is_borrowed<std::vector<std::uint8_t>>::value);
static_assert(!is_borrowed<std::map<std::string, std::vector<std::string>>>::value);
static_assert(!is_borrowed<point>::value && !is_borrowed<tether::value>::value);
static_assert(!is_borrowed<void>::value);

template <class T, class = void> struct as_on_temporary : std::false_type {
};
template <class T>
struct as_on_temporary<T, std::void_t<decltype(std::declval<tether::value>().as<T>())>>
    : std::true_type {
};
template <class T, class = void> struct try_as_on_temporary : std::false_type {
};
template <class T>
struct try_as_on_temporary<T, std::void_t<decltype(std::declval<tether::value>().try_as<T>())>>
    : std::true_type {
};
static_assert(as_on_temporary<std::string>::value && try_as_on_temporary<std::string>::value);
static_assert(!as_on_temporary<std::string_view>::value);
static_assert(!try_as_on_temporary<std::tuple<int, tether::bytes_view>>::value);
static_assert(!as_on_temporary<label>::value);
static_assert(as_on_temporary<point>::value);

TEST(round_trips)
{
    round_trip(true);
    round_trip(false);
    round_trip(0);
    round_trip(-1);
    round_trip(-33);
    round_trip(127);
    round_trip(-129);
    round_trip(65536);
    round_trip(std::numeric_limits<int>::min());
    round_trip(std::numeric_limits<std::int64_t>::min());
    round_trip(std::numeric_limits<std::int64_t>::max());
    round_trip(std::numeric_limits<std::uint64_t>::max());
    round_trip(static_cast<std::uint8_t>(255));
    round_trip(static_cast<std::int16_t>(-32768));
    round_trip(0.5);
    round_trip(1.5f);
    round_trip(std::string());
    round_trip(std::string("héllo"));
    round_trip(std::string(100000, 'x'));
    round_trip(std::vector<int>{1, 2, 3});
    round_trip(std::vector<int>(70000, 7));
    round_trip(std::vector<std::string>{"a", "b"});
    round_trip(std::vector<std::uint8_t>{0, 1, 255});
    round_trip(std::vector<std::uint8_t>(300, 9));
    round_trip(std::map<std::string, std::vector<int>>{{"a", {1}}, {"b", {}}});
    round_trip(std::unordered_map<std::string, double>{{"pi", 3.14}, {"e", 2.72}});
    std::map<std::string, int> big;
    for (int i = 0; i < 20; i++) {
        big["k" + std::to_string(i)] = i;
    }
    round_trip(big);
    round_trip(std::optional<int>());
    round_trip(std::optional<int>(4));
    round_trip(std::optional<std::string>("s"));
    round_trip(std::tuple<int, std::string, double>(1, "two", 3.0));
    round_trip(std::tuple<>());
    round_trip(std::vector<std::optional<point>>{point{1, 2}, std::nullopt});

    /* Integers read as floats, as the C reader's "d" does. */
    CHECK_EQ(tether::value::from(3).as<double>(), 3.0);
    CHECK_EQ(tether::value::from(-3).as<float>(), -3.0f);

    /* A string_view and a bytes_view borrow from the value. */
    tether::value s = tether::value::from("text");
    CHECK(s.as<std::string_view>() == "text");
    std::vector<std::uint8_t> raw{1, 2, 3};
    tether::value b = tether::value::from(tether::bytes_view(raw));
    tether::bytes_view view = b.as<tether::bytes_view>();
    CHECK_EQ(view.size, 3u);
    CHECK_EQ(static_cast<int>(view.data[2]), 3);
    CHECK(s.as<label>().text == "text");
    CHECK(s.as<std::optional<std::string_view>>() == std::string_view("text"));

    /* Any value inside another, as it is. */
    tether::value inner = tether::value::from(std::vector<int>{5, 6});
    tether::value outer = tether::value::from(std::tuple<std::string, tether::value>("v", inner));
    auto [tag, back] = outer.as<std::tuple<std::string, tether::value>>();
    CHECK_EQ(tag, std::string("v"));
    CHECK(back.as<std::vector<int>>() == (std::vector<int>{5, 6}));
    CHECK_EQ(outer.to_string(), std::string("[\"v\", [5, 6]]"));
}

/* value() of a temporary result gives the T itself, not a reference into the result. */
static_assert(std::is_same_v<decltype(std::declval<tether::result<std::vector<int>>>().value()),
                             std::vector<int>>);
static_assert(std::is_same_v<decltype(std::declval<tether::result<int> &>().value()), int &>);

/* A bytes_view of a vector, but not of a temporary one. */
static_assert(std::is_constructible_v<tether::bytes_view, std::vector<std::uint8_t> &> &&
              std::is_constructible_v<tether::bytes_view, const std::vector<std::uint8_t> &>);
static_assert(!std::is_constructible_v<tether::bytes_view, std::vector<std::uint8_t>> &&
              !std::is_constructible_v<tether::bytes_view, const std::vector<std::uint8_t> &&>);

TEST(value_of_a_temporary_result)
{
    /* The range-for keeps what value() returns alive, not the result it came from (with
     * T && this read freed memory: ASan in the clang++ build). */
    int sum = 0;
    for (int x :
         tether::value::from(std::vector<int>{1, 2, 3}).try_as<std::vector<int>>().value()) {
        sum += x;
    }
    CHECK_EQ(sum, 6);
}

TEST(durations)
{
    /* Whole microseconds, rounded up, saturated: infinite from infinite up, 0 below. */
    using std::chrono::duration;
    using tether::detail::to_usec;
    const std::uint64_t forever = TETHER_TIMEOUT_INFINITE;
    CHECK_EQ(to_usec(1500us), 1500u);
    CHECK_EQ(to_usec(2s), 2000000u);
    CHECK_EQ(to_usec(1ns), 1u); /* not 0, "do not wait" */
    CHECK_EQ(to_usec(1001ns), 2u);
    CHECK_EQ(to_usec(0ns), 0u);
    CHECK_EQ(to_usec(-5s), 0u);
    CHECK_EQ(to_usec(std::chrono::hours::max()), forever);
    CHECK_EQ(to_usec(std::chrono::hours::min()), 0u);
    CHECK_EQ(to_usec(tether::infinite), forever);
    CHECK_EQ(to_usec(tether::infinite - 1us), static_cast<std::uint64_t>(INT64_MAX - 1));
    CHECK_EQ(to_usec(std::chrono::nanoseconds::max()),
             static_cast<std::uint64_t>(INT64_MAX / 1000 + 1));
    CHECK_EQ(to_usec(duration<std::uint64_t, std::nano>(UINT64_MAX)),
             static_cast<std::uint64_t>(UINT64_MAX / 1000 + 1));
    CHECK_EQ(to_usec(duration<double>(2.5)), 2500000u);
    CHECK_EQ(to_usec(duration<double, std::milli>(0.0001)), 1u);
    CHECK_EQ(to_usec(duration<double>(1e300)), forever);
    CHECK_EQ(to_usec(duration<double>(std::numeric_limits<double>::infinity())), forever);
    CHECK_EQ(to_usec(duration<double>(-std::numeric_limits<double>::infinity())), 0u);
    CHECK_EQ(to_usec(duration<double>(std::numeric_limits<double>::quiet_NaN())), 0u);
    CHECK_EQ(to_usec(duration<long, std::ratio<3, 7>>(7)), 3000000u);
}

TEST(same_bytes_as_c)
{
    /* What C++ writes, the C reader reads, and the other way round. */
    tether::value v = tether::value::from(
        std::tuple<int, std::string, std::vector<bool>>(-7, "two", std::vector<bool>{true, false}));
    int i = 0;
    const char *s = nullptr;
    bool b1 = false, b2 = true;
    CHECK(tether_value_read(v.get(), nullptr, "[is[bb]]", &i, &s, &b1, &b2) == 0);
    CHECK_EQ(i, -7);
    CHECK_EQ(std::string(s), std::string("two"));
    CHECK(b1 && !b2);

    tether_value *c = nullptr;
    CHECK(tether_value_new(&c, "{sxsds[ss]sn}", "big", static_cast<std::int64_t>(1) << 40, "f",
                           0.25, "list", "a", "b", "none") == 0);
    tether::value from_c = tether::value::adopt(c);
    auto m = from_c.as<std::map<std::string, tether::value>>();
    CHECK_EQ(m.at("big").as<std::int64_t>(), static_cast<std::int64_t>(1) << 40);
    CHECK_EQ(m.at("f").as<double>(), 0.25);
    CHECK(m.at("list").as<std::vector<std::string>>() == (std::vector<std::string>{"a", "b"}));
    CHECK(!m.at("none").as<std::optional<int>>().has_value());
}

TEST(mismatches)
{
    tether::value str = tether::value::from("s");
    tether::value integer = tether::value::from(300);
    tether::value negative = tether::value::from(-1);
    tether::value nested = tether::value::from(
        std::tuple<int, std::vector<std::string>>(1, std::vector<std::string>{"a", "b"}));
    tether::value mapped = tether::value::from(std::map<std::string, int>{{"a", 1}});

    CHECK_EQ(mismatch<int>(str), std::string("expected int, got str"));
    CHECK_EQ(mismatch<bool>(integer), std::string("expected bool, got int"));
    CHECK_EQ(mismatch<double>(str), std::string("expected float, got str"));
    CHECK_EQ(mismatch<std::string>(integer), std::string("expected str, got int"));
    CHECK_EQ(mismatch<std::string_view>(integer), std::string("expected str, got int"));
    CHECK_EQ(mismatch<std::vector<std::uint8_t>>(str), std::string("expected bytes, got str"));
    CHECK_EQ(mismatch<tether::bytes_view>(integer), std::string("expected bytes, got int"));
    CHECK_EQ(mismatch<tether::buffer>(str), std::string("expected buffer, got str"));
    CHECK_EQ(mismatch<std::vector<int>>(mapped), std::string("expected array, got map"));
    CHECK_EQ((mismatch<std::map<std::string, int>>(nested)),
             std::string("expected map, got array"));
    CHECK_EQ((mismatch<std::unordered_map<std::string, int>>(str)),
             std::string("expected map, got str"));
    CHECK_EQ(mismatch<std::optional<int>>(str), std::string("expected int, got str"));
    CHECK_EQ((mismatch<std::tuple<int>>(nested)), std::string("expected array of 1 item, got 2"));
    CHECK_EQ((mismatch<std::tuple<int, int, int>>(nested)),
             std::string("expected array of 3 items, got 2"));
    CHECK_EQ(mismatch<tether::value>(tether::value()),
             std::string("expected a value, got nothing"));

    /* Ranges, with the C reader's words. */
    CHECK_EQ(mismatch<std::uint8_t>(integer), std::string("integer 300 out of range for uint8"));
    CHECK_EQ(mismatch<std::int8_t>(integer), std::string("integer 300 out of range for int8"));
    CHECK_EQ(mismatch<unsigned>(negative), std::string("expected int >= 0, got -1"));
    CHECK_EQ(mismatch<int>(tether::value::from(std::numeric_limits<std::int64_t>::min())),
             std::string("integer -9223372036854775808 out of range for int"));
    CHECK_EQ(mismatch<int>(tether::value::from(std::numeric_limits<std::uint64_t>::max())),
             std::string("integer 18446744073709551615 out of range for int"));

    /* A float is range checked too: a finite double beyond it fails, as an int does. */
    CHECK_EQ(mismatch<float>(tether::value::from(1e300)),
             std::string("float 1e+300 out of range for float32"));
    CHECK_EQ(mismatch<float>(tether::value::from(-3.5e38)),
             std::string("float -3.5e+38 out of range for float32"));
    CHECK_EQ(mismatch<std::vector<float>>(tether::value::from(std::vector<double>{1, 1e39})),
             std::string("item 2: float 1e+39 out of range for float32"));
    const double float_max = std::numeric_limits<float>::max();
    CHECK_EQ(tether::value::from(-float_max).as<float>(), -std::numeric_limits<float>::max());
    CHECK_EQ(tether::value::from(1e300).as<double>(), 1e300);
    CHECK_EQ(tether::value::from(1e-300).as<float>(), 0.0f); /* precision, not range */
    CHECK(std::isinf(tether::value::from(HUGE_VAL).as<float>()));
    CHECK(std::isnan(tether::value::from(std::nan("")).as<float>()));

    /* Positions: 1-based, dotted, a map's keys and values counted in turn. */
    CHECK_EQ((mismatch<std::tuple<int, std::vector<int>>>(nested)),
             std::string("item 2.1: expected int, got str"));
    CHECK_EQ((mismatch<std::tuple<std::string, std::vector<std::string>>>(nested)),
             std::string("item 1: expected str, got int"));
    CHECK_EQ((mismatch<std::map<std::string, std::string>>(mapped)),
             std::string("item 2: expected str, got int"));
    CHECK_EQ(mismatch<std::vector<point>>(tether::value::from(std::vector<int>{1})),
             std::string("item 1: expected map, got int"));
    CHECK_EQ(mismatch<point>(mapped), std::string("expected a point {x, y}"));

    /* The same text as tether_value_read gives for the same mismatch. */
    tether_error err = TETHER_ERROR_INIT;
    int i = 0;
    const char *s = nullptr;
    CHECK(tether_value_read(nested.get(), &err, "[i[is]]", &i, &i, &s) == TETHER_EINVAL);
    CHECK_EQ((mismatch<std::tuple<int, std::tuple<int, std::string>>>(nested)),
             std::string(err.message));
    tether_error_done(&err);

    /* as<T>() throws the same as a tether::error. */
    tether::error_info caught;
    CHECK_THROWS(tether::error, str.as<int>(), caught);
    CHECK_EQ(caught.code, TETHER_EINVAL);
    CHECK_EQ(caught.type, std::string("TypeError"));
}

TEST(handles)
{
    tether::value a = tether::value::from(1);
    tether::value copy = a;
    tether::value moved = std::move(a);
    CHECK(!a);
    CHECK(copy.get() == moved.get());
    CHECK_EQ(moved.as<int>(), 1);
    copy = tether::value();
    CHECK_EQ(moved.as<int>(), 1);

    tether_value *raw = nullptr;
    CHECK(tether_value_new(&raw, "i", 5) == 0);
    {
        tether::value borrowed = tether::value::borrow(raw);
        CHECK_EQ(borrowed.as<int>(), 5);
    }
    CHECK(tether_value_get_type(raw) == TETHER_TYPE_INT); /* still ours */
    tether_value_unref(raw);

    tether::host h1 = make_host();
    tether_host *c_host = h1.get();
    tether::host h2 = std::move(h1);
    CHECK(h1.get() == nullptr);
    CHECK(h2.get() == c_host);
}

/* ---- services, calls, futures --------------------------------------------------------- */

struct counter {
    int total = 0;
    int
    add(int n)
    {
        total += n;
        return total;
    }
};

TEST(services_in_every_context)
{
    tether::host h = make_host();
    std::thread::id main_thread = std::this_thread::get_id();
    std::atomic<bool> main_ok{false}, io_ok{false}, pool_ok{false};
    h.add_service("add_io", tether::context::io, [&](int a, int b) {
        io_ok = std::this_thread::get_id() != main_thread;
        return a + b;
    });
    h.add_service("add_main", tether::context::main, [&](int a, int b) {
        main_ok = std::this_thread::get_id() == main_thread;
        return a + b;
    });
    /* A POOL request may run on any thread waiting on its chain, which in one process
     * can be the caller's own: only that it may block is checked. */
    h.add_service("add_pool", tether::context::pool, [&](int a, int b) -> long {
        std::this_thread::sleep_for(1ms);
        pool_ok = true;
        return a + b;
    });
    counter total;
    h.add_service("count", tether::context::main, &counter::add, &total);
    h.add_service("join", tether::context::pool,
                  [](const std::vector<std::string> &parts, std::string_view sep) {
                      std::string out;
                      for (const auto &p : parts) {
                          out += (out.empty() ? "" : std::string(sep)) + p;
                      }
                      return out;
                  });
    h.add_service("nothing", tether::context::io, [] {});
    h.start();

    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();
    CHECK_EQ(to_host.call<int>("add_io", 2, 3), 5);
    CHECK_EQ(to_host.call<int>("add_pool", 2, 3), 5);
    CHECK(io_ok);
    CHECK(pool_ok);

    /* MAIN runs in the host's dispatch, here on this thread. */
    tether::future<int> f = to_host.call_async<int>("add_main", 40, 2);
    serve_until(h, [&] { return f.ready(); });
    CHECK_EQ(f.get(), 42);
    CHECK(main_ok);
    auto f2 = to_host.call_async<int>("count", 5);
    serve_until(h, [&] { return f2.ready(); });
    CHECK_EQ(f2.get(), 5);
    CHECK_EQ(total.total, 5);

    CHECK_EQ(to_host.call<std::string>("join", std::vector<std::string>{"a", "b", "c"}, "-"),
             std::string("a-b-c"));
    CHECK(to_host.call("nothing").type() == TETHER_TYPE_NIL);
    to_host.call<void>("nothing");
}

static int
c_add(tether_request *req, void *)
{
    int a = 0, b = 0;
    int r = tether_request_read(req, "ii", &a, &b);
    if (r < 0) {
        return r;
    }
    return tether_request_reply(req, "i", a + b);
}

/* 1 when the argument is nil (a NULL object), as C's "o" reads it. */
static int
c_is_nil(tether_request *req, void *)
{
    tether_object *o = nullptr;
    int r = tether_request_read(req, "o", &o);
    if (r < 0) {
        return r;
    }
    bool nil = o == nullptr;
    tether_object_unref(o);
    return tether_request_reply(req, "b", nil);
}

TEST(type_errors_like_c)
{
    tether::host h = make_host();
    h.add_service("add", tether::context::io, [](int a, int b) { return a + b; });
    CHECK(tether_host_add_service(h.get(), "c_add", TETHER_CONTEXT_IO, c_add, nullptr) == 0);
    h.add_service("is_nil", tether::context::io, [](const tether::object &o) { return !o; });
    CHECK(tether_host_add_service(h.get(), "c_is_nil", TETHER_CONTEXT_IO, c_is_nil, nullptr) == 0);
    h.start();
    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();

    /* Every mismatch reaches the caller as a remote TypeError with the C text. */
    auto same_error = [&](auto... args) {
        auto cpp = to_host.try_call<int>("add", args...);
        auto from_c = to_host.try_call<int>("c_add", args...);
        CHECK(!cpp.ok() && !from_c.ok());
        CHECK_EQ(cpp.code(), TETHER_EREMOTE);
        CHECK_EQ(cpp.error().type, std::string("TypeError"));
        CHECK_EQ(cpp.error().type, from_c.error().type);
        CHECK_EQ(cpp.error().message, from_c.error().message);
        return cpp.error().message;
    };
    CHECK_EQ(same_error("x", 3), std::string("item 1: expected int, got str"));
    CHECK_EQ(same_error(1, 2.5), std::string("item 2: expected int, got float"));
    CHECK_EQ(same_error(1), std::string("takes 2 arguments, got 1"));
    CHECK_EQ(same_error(1, 2, 3), std::string("takes 2 arguments, got 3"));
    CHECK_EQ(same_error(1, 1LL << 40),
             std::string("item 2: integer 1099511627776 out of range for int"));

    tether::error_info caught;
    CHECK_THROWS(tether::remote_error, to_host.call<int>("add", "x", 3), caught);
    CHECK_EQ(caught.message, std::string("item 1: expected int, got str"));

    /* An object argument: nil is an empty object, a mismatch words it as C does. */
    CHECK(to_host.call<bool>("is_nil", tether::object()));
    CHECK(to_host.call<bool>("c_is_nil", tether::object()));
    auto cpp = to_host.try_call<bool>("is_nil", "x");
    auto from_c = to_host.try_call<bool>("c_is_nil", "x");
    CHECK_EQ(cpp.error().type, std::string("TypeError"));
    CHECK_EQ(cpp.error().message, std::string("item 1: expected object, got str"));
    CHECK_EQ(cpp.error().message, from_c.error().message);

    /* A result of the wrong type is a local TypeError. */
    auto wrong = to_host.try_call<std::string>("add", 1, 2);
    CHECK_EQ(wrong.code(), TETHER_EINVAL);
    CHECK_EQ(wrong.error().message, std::string("expected str, got int"));
}

TEST(strings_must_be_utf8)
{
    /* The C API's rules (no overlong forms, no surrogates, nothing above U+10FFFF), and its
     * code, TETHER_EINVAL, checked when written. */
    const std::string bad[] = {"\xff",
                               "\x80",
                               "\xc0\x80",
                               "\xc1\xbf",
                               "\xe0\x80\x80",
                               "\xed\xa0\x80",
                               "\xf0\x80\x80\x80",
                               "\xf4\x90\x80\x80",
                               "\xf5\x80\x80\x80",
                               "ab\xe2\x82",
                               "\xe2\x28\xa1",
                               std::string(20, 'a') + "\xff" + "bbbb"};
    const std::string good[] = {"",
                                "plain",
                                "h\xc3\xa9llo",
                                "\xed\x9f\xbf",
                                "\xee\x80\x80",
                                "\xf0\x90\x80\x80",
                                "\xf4\x8f\xbf\xbf",
                                std::string(20, 'a') + "\xe2\x82\xac"};
    for (const std::string &s : bad) {
        auto v = tether::value::try_from(s);
        CHECK_EQ(v.code(), TETHER_EINVAL);
        CHECK(v.error().message.find("not valid UTF-8") != std::string::npos);
        tether_value *c = nullptr;
        CHECK_EQ(tether_value_new(&c, "S", s.data(), s.size()), TETHER_EINVAL);
    }
    for (const std::string &s : good) {
        CHECK(tether::value::from(s).as<std::string>() == s);
        tether_value *c = nullptr;
        CHECK_EQ(tether_value_new(&c, "S", s.data(), s.size()), 0);
        tether_value_unref(c);
    }
    CHECK_EQ(tether::value::try_from(std::string(20, 'a') + "\xff" + "bbbb").error().message,
             std::string("a string is not valid UTF-8 (byte 20 of 25)"));
    CHECK_EQ((tether::value::try_from(std::map<std::string, int>{{"\xff", 1}}).code()),
             TETHER_EINVAL);

    tether::host h = make_host();
    h.add_service("length", tether::context::io, [](const std::string &s) { return s.size(); });
    h.add_service("garbled", tether::context::io, [] { return std::string("\xc3"); });
    h.start();
    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();
    /* Refused before sending (the peer answered a malformed frame: TETHER_EPROTO). */
    auto r = to_host.try_call<std::size_t>("length", std::string("caf\xe9"));
    CHECK_EQ(r.code(), TETHER_EINVAL);
    CHECK_EQ(r.error().message, std::string("a string is not valid UTF-8 (byte 3 of 4)"));
    CHECK_EQ(to_host.try_call_async<std::size_t>("length", "\xff").code(), TETHER_EINVAL);
    CHECK_EQ(to_host.try_notify("length", std::vector<std::string>{"ok", "\xff"}).code(),
             TETHER_EINVAL);
    CHECK_EQ(to_host.call<std::size_t>("length", "caf\xc3\xa9"), 5u);
    /* A result that is not UTF-8: the caller gets a TypeError saying so. */
    auto garbled = to_host.try_call<std::string>("garbled");
    CHECK_EQ(garbled.code(), TETHER_EREMOTE);
    CHECK_EQ(garbled.error().type, std::string("TypeError"));
    CHECK_EQ(garbled.error().message,
             std::string("cannot send the result: a string is not valid UTF-8 (byte 0 of 1)"));
}

TEST(exceptions_both_ways)
{
    tether::host h = make_host();
    h.add_service("raise_remote", tether::context::io, [](std::string type) -> int {
        throw tether::remote_error(type, "it failed", "Traceback: here\n");
    });
    h.add_service("raise_std", tether::context::pool, [](int which) -> int {
        switch (which) {
        case 0:
            throw std::invalid_argument("bad argument");
        case 1:
            throw std::out_of_range("too far");
        case 2:
            throw std::runtime_error("broken");
        default:
            throw 42;
        }
    });
    h.add_service("raise_error", tether::context::io, []() -> int {
        throw tether::error(tether::error_info::from_code(TETHER_ETIMEDOUT));
    });
    h.add_service("result_error", tether::context::io, [](bool fail) -> tether::result<int> {
        if (fail) {
            return tether::error_info{TETHER_EREMOTE, "KeyError", "no such key", {}};
        }
        return 7;
    });
    /* An error without a type, which the C API refuses to send. */
    h.add_service("raise_untyped", tether::context::io,
                  []() { throw tether::remote_error("", "no type given"); });
    h.add_service("result_untyped", tether::context::io, []() -> tether::result<void> {
        return tether::error_info{TETHER_EREMOTE, "", "no type either", {}};
    });
    /* Reading the arguments throws: the caller gets the error, the host goes on. */
    h.add_service("pick", tether::context::io, [](picky p) { return p.n; });
    h.add_service("pick_all", tether::context::pool,
                  [](const std::vector<picky> &list) { return list.size(); });
    h.start();
    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();

    tether::error_info e;
    CHECK_THROWS(tether::remote_error, to_host.call<int>("raise_remote", "KeyError"), e);
    CHECK_EQ(e.code, TETHER_EREMOTE);
    CHECK_EQ(e.type, std::string("KeyError"));
    CHECK_EQ(e.message, std::string("it failed"));
    CHECK_EQ(e.traceback, std::string("Traceback: here\n"));

    const char *types[] = {"ValueError", "IndexError", "RuntimeError", "RuntimeError"};
    const char *messages[] = {"bad argument", "too far", "broken", "unknown C++ exception"};
    for (int i = 0; i < 4; i++) {
        CHECK_THROWS(tether::remote_error, to_host.call<int>("raise_std", i), e);
        CHECK_EQ(e.type, std::string(types[i]));
        CHECK_EQ(e.message, std::string(messages[i]));
    }

    /* A local failure escaping a handler is the handler's failure, not the caller's:
     * a RuntimeError naming it, not a tether.Timeout of the caller's own call. */
    CHECK_THROWS(tether::remote_error, to_host.call<int>("raise_error"), e);
    CHECK_EQ(e.type, std::string("RuntimeError"));
    CHECK_EQ(e.message, std::string("a tether operation in the handler failed: tether.Timeout: ") +
                            tether_strerror(TETHER_ETIMEDOUT));

    /* An empty type is sent as RuntimeError, not as a successful nil. */
    CHECK_THROWS(tether::remote_error, to_host.call<void>("raise_untyped"), e);
    CHECK_EQ(e.type, std::string("RuntimeError"));
    CHECK_EQ(e.message, std::string("no type given"));
    auto untyped = to_host.try_call<void>("result_untyped");
    CHECK_EQ(untyped.code(), TETHER_EREMOTE);
    CHECK_EQ(untyped.error().type, std::string("RuntimeError"));
    CHECK_EQ(untyped.error().message, std::string("no type either"));

    /* A convert<T>::read that throws, at the top or inside a container: ValueError
     * (std::invalid_argument), MemoryError (std::bad_alloc). */
    CHECK_EQ(to_host.call<int>("pick", 5), 5);
    CHECK_THROWS(tether::remote_error, to_host.call<int>("pick", 13), e);
    CHECK_EQ(e.type, std::string("ValueError"));
    CHECK_EQ(e.message, std::string("picky refuses 13"));
    CHECK_THROWS(tether::remote_error, to_host.call<int>("pick", 14), e);
    CHECK_EQ(e.type, std::string("MemoryError"));
    CHECK_THROWS(tether::remote_error, to_host.call<int>("pick_all", std::vector<int>{1, 13}), e);
    CHECK_EQ(e.type, std::string("ValueError"));
    CHECK_EQ(to_host.call<int>("pick_all", std::vector<int>{1, 2}), 2);
    CHECK_EQ(to_host.call<int>("pick", 6), 6);

    CHECK_EQ(to_host.call<int>("result_error", false), 7);
    CHECK_THROWS(tether::remote_error, to_host.call<int>("result_error", true), e);
    CHECK_EQ(e.type, std::string("KeyError"));

    /* Local failures are tether::error, not remote_error, with their codes. */
    bool remote = false;
    try {
        to_host.call<int>("no_such_service");
    } catch (const tether::remote_error &) {
        remote = true;
    } catch (const tether::error &err) {
        CHECK_EQ(err.code(), TETHER_ENOENT);
    }
    CHECK(!remote);
    auto r = to_host.try_call<int>("no_such_service");
    CHECK_EQ(r.code(), TETHER_ENOENT);
}

TEST(call_back_without_deadlock)
{
    /* The host's main thread calls a client whose service calls back into a MAIN
     * service of the host: the waiting main thread runs it. */
    tether::host h = make_host();
    int host_calls = 0;
    h.add_service("host_value", tether::context::main, [&](int x) {
        host_calls++;
        return x * 10;
    });
    h.start();
    tether::client c = make_client(h, "caller-back");
    c.add_service("ask_host", tether::context::pool, [](tether::request &req, int x) {
        return req.conn().call<int>("host_value", x) + 1;
    });
    c.connect();
    tether::conn to_client = client_conn(h, "caller-back", "ask_host");
    CHECK_EQ(to_client.call<int>("ask_host", 4), 41);
    CHECK_EQ(host_calls, 1);

    /* And an exception thrown by the host's service crosses both hops. */
    h.add_service("host_fail", tether::context::main,
                  []() -> int { throw tether::remote_error("LookupError", "not here"); });
    c.add_service("ask_fail", tether::context::pool,
                  [](tether::request &req) { return req.conn().call<int>("host_fail"); });
    CHECK(tether_conn_wait_service(to_client.get(), "ask_fail", 5000000) == 0);
    tether::error_info e;
    CHECK_THROWS(tether::remote_error, to_client.call<int>("ask_fail"), e);
    CHECK_EQ(e.type, std::string("LookupError"));
    CHECK_EQ(e.message, std::string("not here"));
}

/* A future moves only. */
static_assert(!std::is_copy_constructible_v<tether::future<int>> &&
              !std::is_copy_assignable_v<tether::future<int>>);
static_assert(std::is_nothrow_move_constructible_v<tether::future<int>> &&
              std::is_nothrow_move_assignable_v<tether::future<>>);

TEST(nested_local_failure)
{
    /* A call the handler makes times out: its caller gets a RuntimeError saying so, not
     * a tether.Timeout it would take for a timeout of its own call. */
    std::atomic<int> slow_done{0};
    tether::host h = make_host();
    auto soon = [] {
        tether::call_options o;
        o.deadline = std::chrono::steady_clock::now() + 50ms;
        return o;
    };
    h.add_service("relay", tether::context::pool,
                  [&](tether::request &req) { return req.conn().call<int>(soon(), "slow"); });
    /* The same passed on as a result, as a handler built without exceptions does. */
    h.add_service("relay_result", tether::context::pool,
                  [&](tether::request &req) { return req.conn().try_call<int>(soon(), "slow"); });
    h.start();
    tether::client c = make_client(h, "slow-client");
    c.add_service("slow", tether::context::pool, [&slow_done]() {
        std::this_thread::sleep_for(300ms);
        slow_done++;
        return 1;
    });
    c.connect();
    tether::conn to_host = c.conn();
    for (const char *service : {"relay", "relay_result"}) {
        auto r = to_host.try_call<int>(service);
        CHECK_EQ(r.code(), TETHER_EREMOTE);
        CHECK_EQ(r.error().type, std::string("RuntimeError"));
        CHECK_EQ(r.error().message.rfind(
                     "a tether operation in the handler failed: tether.Timeout: ", 0),
                 0u);
    }
    auto give_up = std::chrono::steady_clock::now() + 10s;
    while (slow_done < 2) {
        CHECK(std::chrono::steady_clock::now() < give_up);
        std::this_thread::sleep_for(5ms);
    }
}

TEST(futures)
{
    /* Declared before the client, whose destructor waits for the handlers using it. */
    std::atomic<bool> release{false};
    tether::host h = make_host();
    h.start();
    tether::client c = make_client(h, "futures");
    c.add_service("slow", tether::context::pool, [&](int ms) {
        auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        while (!release && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(1ms);
        }
        return ms;
    });
    c.add_service("square", tether::context::io, [](double x) { return x * x; });
    c.connect();
    tether::conn to_client = client_conn(h, "futures", "slow");

    /* wait_for that times out, then the outcome. */
    tether::future<int> f = to_client.call_async<int>("slow", 5000);
    CHECK(!f.wait_for(20ms));
    CHECK(!f.ready());
    release = true;
    CHECK(f.wait_for(5s));
    CHECK_EQ(f.get(), 5000);
    release = false;

    /* Longer than microseconds hold: forever (it overflowed into "do not wait"). */
    tether::future<int> later = to_client.call_async<int>("slow", 5000);
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        release = true;
    });
    CHECK(later.wait_for(std::chrono::hours::max()));
    releaser.join();
    CHECK_EQ(later.get(), 5000);
    release = false;

    /* then: on the main thread, inside dispatch, even when the outcome is there. */
    std::thread::id main_thread = std::this_thread::get_id();
    std::optional<double> got;
    bool on_main = false;
    tether::future<double> sq = to_client.call_async<double>("square", 1.5);
    sq.wait();
    sq.then([&](tether::result<double> r) {
        on_main = std::this_thread::get_id() == main_thread;
        got = r.value();
    });
    CHECK(!got);
    serve_until(h, [&] { return got.has_value(); });
    CHECK(on_main);
    CHECK_EQ(*got, 2.25);
    auto again = sq.try_then([](tether::result<double>) {});
    CHECK_EQ(again.code(), TETHER_EALREADY);

    /* context::any (and io) run it at once, inside then(), when the outcome is there. */
    std::optional<double> at_once;
    tether::future<double> sq2 = to_client.call_async<double>("square", 2.0);
    sq2.wait();
    sq2.then([&](tether::result<double> r) { at_once = r.value(); }, tether::context::any);
    CHECK(at_once && *at_once == 4.0);

    /* then with a failure. */
    tether::future<int> bad = to_client.call_async<int>("square", "x");
    std::optional<tether::error_info> failure;
    bad.then([&](tether::result<int> r) { failure = r.error(); });
    serve_until(h, [&] { return failure.has_value(); });
    CHECK_EQ(failure->code, TETHER_EREMOTE);
    CHECK_EQ(failure->message, std::string("item 1: expected float, got str"));

    /* cancel. */
    tether::future<int> cancelled = to_client.call_async<int>("slow", 5000);
    CHECK(cancelled.cancel());
    CHECK(!cancelled.cancel());
    tether::error_info e;
    CHECK_THROWS(tether::error, cancelled.get(), e);
    CHECK_EQ(e.code, TETHER_ECANCELED);
    release = true;

    /* A future of value and of void. */
    tether::future<> any = to_client.call_async("square", 3);
    CHECK_EQ(any.get().as<double>(), 9.0);
    tether::future<void> none = to_client.call_async<void>("square", 3);
    none.get();
}

/* A main-thread continuation still queued when its host goes never runs, and is
 * destroyed with what it captured. */
TEST(a_continuation_that_never_runs_is_destroyed)
{
    auto captured = std::make_shared<int>(1);
    {
        tether::host h = make_host();
        h.start();
        tether::client c = make_client(h, "never-run");
        c.add_service("square", tether::context::io, [](double x) { return x * x; });
        c.connect();
        tether::conn to_client = client_conn(h, "never-run", "square");
        tether::future<double> sq = to_client.call_async<double>("square", 3.0);
        sq.wait();
        sq.then([captured](tether::result<double>) { CHECK(!"a continuation ran undispatched"); });
        CHECK_EQ(captured.use_count(), 2);
    }
    CHECK_EQ(captured.use_count(), 1);
}

/* A service keeps its request and replies in a later frame, or from another thread. */
TEST(replies_later)
{
    tether::host h = make_host();
    std::vector<tether::reply<int>> waiting;
    h.add_service("later", tether::context::main, [&](tether::request &req, int x) {
        waiting.push_back(req.keep<int>());
        waiting.back().get(); /* still the same request */
        (void)x;
    });
    std::thread replier;
    h.add_service("elsewhere", tether::context::io, [&](tether::request &req, std::string s) {
        replier = std::thread([r = req.keep<std::string>(), s]() mutable {
            std::this_thread::sleep_for(20ms);
            r.send(s + s);
        });
    });
    std::optional<tether::reply<void>> dropped;
    h.add_service("dropped", tether::context::main,
                  [&](tether::request &req) { dropped = req.keep<void>(); });
    h.start();
    tether::client c = make_client(h, "waiter");
    c.connect();
    tether::conn to_host = c.conn();

    tether::future<int> a = to_host.call_async<int>("later", 1);
    tether::future<int> b = to_host.call_async<int>("later", 2);
    serve_until(h, [&] { return waiting.size() == 2; });
    CHECK(!a.wait_for(20ms)); /* no reply while it is kept */
    CHECK(waiting[0] && !waiting[0].cancelled());
    waiting[0].send(42);
    CHECK(!waiting[0]);
    CHECK_EQ(waiting[0].try_send(43).code(), TETHER_EALREADY);
    CHECK_EQ(a.get(), 42);
    waiting[1].fail(tether::error_info{TETHER_EREMOTE, "KeyError", "not yet", {}});
    tether::error_info e;
    CHECK_THROWS(tether::remote_error, b.get(), e);
    CHECK_EQ(e.type, std::string("KeyError"));
    CHECK_EQ(e.message, std::string("not yet"));
    CHECK_EQ(waiting[1].try_fail(e).code(), TETHER_EALREADY);
    CHECK_EQ(tether::reply<int>().try_send(1).code(), TETHER_EINVAL);

    CHECK_EQ(to_host.call<std::string>("elsewhere", "ab"), std::string("abab"));
    replier.join();

    /* Dropped unreplied after the handler returned. */
    tether::future<void> d = to_host.call_async<void>("dropped");
    serve_until(h, [&] { return dropped.has_value(); });
    dropped.reset();
    CHECK_THROWS(tether::error, d.get(), e);
    CHECK_EQ(e.type, std::string("tether.Error"));
    CHECK(e.message.find("dropped the request") != std::string::npos);
}

/* Keyword arguments both ways, and a service without them refusing some. */
TEST(keyword_arguments)
{
    tether::host h = make_host();
    h.add_service("place", tether::context::io, [](std::string name, tether::keywords kw) {
        std::string out = name;
        for (const auto &[key, v] : kw) {
            out += " " + key + "=" + std::to_string(v.as<int>());
        }
        return out;
    });
    h.add_service("positional", tether::context::io, [](int x) { return x; });
    std::atomic<int> noted{0};
    h.add_service("note", tether::context::io,
                  [&](tether::keywords kw) { noted += kw.at("n").as<int>(); });
    h.start();
    tether::client c = make_client(h, "keywords");
    c.connect();
    tether::conn to_host = c.conn();

    tether::keywords at{{"x", tether::value::from(1)}, {"y", tether::value::from(2)}};
    CHECK_EQ(to_host.call<std::string>("place", "tree", at), std::string("tree x=1 y=2"));
    CHECK_EQ(to_host.call<std::string>("place", "rock"), std::string("rock"));
    CHECK_EQ(to_host.call_async<std::string>("place", "bush", tether::keywords{}).get(),
             std::string("bush"));
    to_host.notify("note", tether::keywords{{"n", tether::value::from(5)}});
    auto give_up = std::chrono::steady_clock::now() + 10s;
    while (noted != 5) {
        CHECK(std::chrono::steady_clock::now() < give_up);
        std::this_thread::sleep_for(1ms);
    }

    tether::error_info e;
    CHECK_THROWS(tether::remote_error,
                 to_host.call<int>("positional", 1,
                                   tether::keywords{{"x", tether::value::from(1)}}),
                 e);
    CHECK_EQ(e.type, std::string("TypeError"));
    CHECK_EQ(e.message, std::string("positional() takes no keyword arguments"));
    CHECK_THROWS(tether::remote_error,
                 to_host.call<std::string>("place", "tree",
                                           tether::keywords{{"x", tether::value::from("one")}}),
                 e);
    /* The handler's own as<int>() failed: a local failure of the handler's. */
    CHECK_EQ(e.type, std::string("RuntimeError"));
    CHECK(e.message.find("expected int, got str") != std::string::npos);
}

TEST(notifications_and_options)
{
    tether::host h = make_host();
    std::atomic<int> sum{0};
    h.add_service("add_to", tether::context::io, [&](int n) { sum += n; });
    h.add_service("sleepy", tether::context::pool, [](int ms) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return ms;
    });
    h.start();
    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();
    to_host.notify("add_to", 2);
    to_host.notify("add_to", 3);
    CHECK(to_host.try_notify("add_to", 4).ok());
    auto give_up = std::chrono::steady_clock::now() + 5s;
    while (sum != 9 && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(1ms);
    }
    CHECK_EQ(sum.load(), 9);

    /* A log record reaches the host's log callback. */
    to_host.log(TETHER_LOG_WARNING, "cpp.test", "a record from C++");
    CHECK_EQ(to_host.try_log(TETHER_LOG_INFO, "", "").code(), 0);
    bool logged = false;
    for (int i = 0; i < 500 && !logged; i++) {
        {
            std::lock_guard<std::mutex> hold(host_log_lock);
            logged = host_log.find("cpp.test: a record from C++") != std::string::npos;
        }
        std::this_thread::sleep_for(10ms);
    }
    CHECK(logged);

    /* A deadline bounds the whole call. */
    tether::call_options options;
    options.deadline = std::chrono::steady_clock::now() + 50ms;
    auto r = to_host.try_call<int>(options, "sleepy", 300);
    CHECK_EQ(r.code(), TETHER_ETIMEDOUT);
    options = tether::call_options{};
    options.timeout = 5s;
    CHECK_EQ(to_host.call<int>(options, "sleepy", 1), 1);

    /* A timeout of 0 or less set on the call is a budget already spent: it fails at once
     * (it became 0, the connection's default of 30 s). default_timeout is still that. */
    options = tether::call_options{};
    options.timeout = -1s;
    CHECK_EQ(to_host.try_call<int>(options, "sleepy", 300).code(), TETHER_ETIMEDOUT);
    CHECK_EQ(to_host.try_call_async<int>(options, "sleepy", 300).value().try_get().code(),
             TETHER_ETIMEDOUT);
    options.timeout = 0us;
    CHECK_EQ(to_host.try_call<int>(options, "sleepy", 300).code(), TETHER_ETIMEDOUT);
    options.timeout = tether::default_timeout;
    CHECK_EQ(to_host.call<int>(options, "sleepy", 1), 1);

    /* Deadlines at the ends of time_point's range (deadline - now overflowed): min() has
     * passed, max() is none. */
    options = tether::call_options{};
    options.deadline = std::chrono::steady_clock::time_point::min();
    CHECK_EQ(to_host.try_call<int>(options, "sleepy", 1).code(), TETHER_ETIMEDOUT);
    options.deadline = std::chrono::steady_clock::time_point::max();
    CHECK_EQ(to_host.call<int>(options, "sleepy", 1), 1);
}

void
note_disconnect(void *userdata, const char *)
{
    static_cast<std::atomic<bool> *>(userdata)->store(true);
}

TEST(managing_clients)
{
    tether::host h = make_host();
    h.start();
    std::string address = h.address();
    std::atomic<bool> told_to_go{false};
    tether_client_options options{};
    options.name = "managed";
    options.address = address.c_str();
    options.on_disconnect = note_disconnect; /* not the default SIGTERM of this process */
    options.on_disconnect_userdata = &told_to_go;
    tether::client c(options);
    c.connect();
    std::vector<tether::client_info> clients = h.list_clients();
    CHECK_EQ(clients.size(), 1u);
    CHECK(clients[0].name == "managed");
    CHECK_EQ(clients[0].pid, static_cast<std::int64_t>(getpid()));
    CHECK(clients[0].language == "c");
    /* Reset: it comes back by itself. */
    h.reset_client(clients[0].conn);
    auto give_up = std::chrono::steady_clock::now() + 10s;
    bool back = false;
    while (!back && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(10ms);
        auto now = h.list_clients();
        back = now.size() == 1 && now[0].conn.get() != clients[0].conn.get();
    }
    CHECK(back);
    /* Disconnect: it is told, and stays away. */
    h.disconnect_client(h.client("managed"));
    give_up = std::chrono::steady_clock::now() + 10s;
    while (!told_to_go && std::chrono::steady_clock::now() < give_up) {
        c.dispatch(10ms);
    }
    CHECK(told_to_go);
    CHECK(!c.connected());
    CHECK_EQ(h.try_disconnect_client(tether::conn()).code(), TETHER_EINVAL);
}

TEST(buffers)
{
    auto made = tether::buffer::try_make(4096);
    if (made.code() == TETHER_ENOTSUP) {
        std::printf("  (no shared memory in this build: buffers skipped)\n");
        return;
    }
    tether::buffer b = std::move(made).value();
    for (std::size_t i = 0; i < b.size(); i++) {
        b.writable()[i] = static_cast<std::uint8_t>(i);
    }
    /* Described as an array (a Python script gets a numpy array): the shape must fill it. */
    CHECK_EQ(b.try_set_array('f', {16, 32}).code(), TETHER_EINVAL);
    CHECK_EQ(b.try_set_array('B', {64, 64}).code(), 0);
    b.set_array(0, {}); /* plain bytes again */
    tether::host h = make_host();
    h.add_service("sum_buffer", tether::context::pool, [](const tether::buffer &in) {
        unsigned long total = 0;
        for (std::size_t i = 0; i < in.size(); i++) {
            total += in.data()[i];
        }
        return total;
    });
    h.add_service("sum_bytes", tether::context::io, [](tether::bytes_view in) {
        unsigned long total = 0;
        for (std::size_t i = 0; i < in.size; i++) {
            total += in.data[i];
        }
        return total;
    });
    h.add_service("make_buffer", tether::context::io, [](std::size_t n) {
        tether::buffer out = tether::buffer::make(n);
        std::memset(out.writable(), 7, n);
        return out;
    });
    h.add_service("echo_bytes", tether::context::io,
                  [](std::vector<std::uint8_t> in) { return in; });
    h.start();
    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();

    unsigned long expected = 0;
    for (std::size_t i = 0; i < b.size(); i++) {
        expected += static_cast<std::uint8_t>(i);
    }
    CHECK_EQ(to_host.call<unsigned long>("sum_buffer", b), expected);
    CHECK_EQ(to_host.call<unsigned long>("sum_bytes", b), expected);
    std::vector<std::uint8_t> bytes(1000, 2);
    CHECK_EQ(to_host.call<unsigned long>("sum_buffer", bytes), 2000ul);
    CHECK_EQ(to_host.call<unsigned long>("sum_bytes", tether::bytes_view(bytes)), 2000ul);
    CHECK(to_host.call<std::vector<std::uint8_t>>("echo_bytes", bytes) == bytes);

    tether::buffer got = to_host.call<tether::buffer>("make_buffer", 100000);
    CHECK_EQ(got.size(), 100000u);
    CHECK(got.writable() == nullptr); /* received: mapped read-only */
    CHECK_EQ(static_cast<int>(got.data()[99999]), 7);
    auto as_bytes = to_host.call<std::vector<std::uint8_t>>("make_buffer", 3);
    CHECK(as_bytes == (std::vector<std::uint8_t>{7, 7, 7}));

    /* Buffers nested in containers, both ways. */
    h.add_service("sizes", tether::context::io, [](const std::vector<tether::buffer> &list) {
        std::vector<std::size_t> out;
        for (const auto &item : list) {
            out.push_back(item.size());
        }
        return out;
    });
    tether::buffer small = tether::buffer::make(10);
    CHECK((to_host.call<std::vector<std::size_t>>("sizes", std::vector<tether::buffer>{b, small}) ==
           std::vector<std::size_t>{4096, 10}));
}

/* ---- objects by reference ----------------------------------------------------------- */

struct actor {
    std::string name;
    double x = 0, y = 0;
    std::vector<double>
    move(double dx, double dy)
    {
        x += dx;
        y += dy;
        return {x, y};
    }
    std::string
    describe() const
    {
        return name + " at " + std::to_string(static_cast<int>(x)) + "," +
               std::to_string(static_cast<int>(y));
    }
};

TEST(objects)
{
    std::weak_ptr<actor> watch;
    std::thread::id main_thread = std::this_thread::get_id();
    bool renamed_on_main = false;
    tether::object_class<actor> actor_class("Actor");
    actor_class.method("move", tether::context::io, &actor::move)
        .method("describe", tether::context::pool, &actor::describe)
        .method("rename", tether::context::main,
                [&](actor &self, std::string name) {
                    renamed_on_main = std::this_thread::get_id() == main_thread;
                    self.name = std::move(name);
                })
        .method("fail", tether::context::io,
                [](actor &, int) -> int { throw std::out_of_range("off the map"); });

    tether::host h = make_host();
    std::shared_ptr<actor> kept;
    h.add_service("spawn", tether::context::io, [&](std::string name) {
        auto a = std::make_shared<actor>();
        a->name = std::move(name);
        watch = a;
        kept = a;
        return h.new_object(actor_class, std::move(a));
    });
    /* A proxy sent back to its owner arrives as the local object. */
    h.add_service("is_kept", tether::context::io, [&](const tether::object &o) {
        return !o.remote() && o.local<actor>() == kept && o.local<point>() == nullptr;
    });
    h.add_service("spawn_two", tether::context::io, [&]() {
        std::vector<tether::object> out;
        for (const char *name : {"first", "second"}) {
            auto a = std::make_shared<actor>();
            a->name = name;
            out.push_back(h.new_object(actor_class, std::move(a)));
        }
        return out;
    });
    h.add_service("are_actors", tether::context::io, [](std::vector<tether::object> list) {
        std::vector<bool> out;
        for (const auto &o : list) {
            out.push_back(o.local<actor>() != nullptr);
        }
        return out;
    });
    h.start();
    tether::client c = make_client(h);
    c.connect();
    tether::conn to_host = c.conn();

    {
        tether::object bob = to_host.call<tether::object>("spawn", "Bob");
        CHECK(to_host.call<bool>("is_kept", bob));
        kept.reset();
        CHECK(bob.remote());
        CHECK_EQ(bob.type_name(), std::string("Actor"));
        CHECK(bob.local<actor>() == nullptr);
        CHECK((bob.call<std::vector<double>>("move", 1, 2) == std::vector<double>{1, 2}));
        CHECK((bob.call<std::vector<double>>("move", 1.5, 0) == std::vector<double>{2.5, 2}));
        CHECK_EQ(bob.call<std::string>("describe"), std::string("Bob at 2,2"));
        auto f = bob.call_async<void>("rename", "Robert");
        serve_until(h, [&] { return f.ready(); });
        f.get();
        CHECK(renamed_on_main);
        CHECK_EQ(bob.call<std::string>("describe"), std::string("Robert at 2,2"));

        /* Mismatches and failures, as for services. */
        auto bad = bob.try_call<int>("move", "x", 1);
        CHECK_EQ(bad.code(), TETHER_EREMOTE);
        CHECK_EQ(bad.error().type, std::string("TypeError"));
        CHECK_EQ(bad.error().message, std::string("item 1: expected float, got str"));
        auto thrown = bob.try_call<int>("fail", 1);
        CHECK_EQ(thrown.error().type, std::string("IndexError"));
        CHECK_EQ(thrown.error().message, std::string("off the map"));
        auto missing = bob.try_call<int>("fly");
        CHECK(!missing.ok());
        CHECK_EQ(missing.error().type, std::string("AttributeError"));
        bob.notify("move", 0, 0);

        CHECK(!watch.expired()); /* the client's proxy holds it */

        /* Objects inside containers, both ways. */
        auto pair = to_host.call<std::vector<tether::object>>("spawn_two");
        CHECK_EQ(pair.size(), 2u);
        CHECK_EQ(pair[1].call<std::string>("describe"), std::string("second at 0,0"));
        CHECK(
            (to_host.call<std::vector<bool>>("are_actors", pair) == std::vector<bool>{true, true}));
    }
    /* A client's object, called by the host while the client waits on it. */
    h.add_service("ask_object", tether::context::pool, [](tether::object o) {
        CHECK(o.remote());
        o.call<std::vector<double>>("move", 3, 4);
        return o.call<std::string>("describe");
    });
    std::weak_ptr<actor> watch_client;
    {
        auto mine = std::make_shared<actor>();
        mine->name = "Cleo";
        watch_client = mine;
        tether::object cleo = c.new_object(actor_class, std::move(mine));
        CHECK(!cleo.remote());
        CHECK_EQ(to_host.call<std::string>("ask_object", cleo), std::string("Cleo at 3,4"));
        CHECK_EQ(cleo.local<actor>()->x, 3.0);
    }
    /* The last proxy gone, the host releases the actor (releases are batched). */
    auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!watch.expired() || !watch_client.expired()) {
        CHECK(std::chrono::steady_clock::now() < give_up);
        h.wait(5ms);
    }
}

TEST(objects_made_elsewhere)
{
    tether::host h = make_host();
    /* An object the C API made, with a userdata of its own (even of the same class
     * name): not ours to read. */
    static tether_class foreign_class{};
    foreign_class.name = "Actor";
    int payload = 42;
    tether_object *raw = nullptr;
    CHECK(tether_host_new_object(h.get(), &foreign_class, &payload, &raw) == 0);
    tether::object foreign = tether::object::adopt(raw);
    CHECK(!foreign.remote());
    CHECK(foreign.local<actor>() == nullptr);
    CHECK(foreign.local<point>() == nullptr);

    /* One an object_class made is found, as its own class only. */
    tether::object_class<actor> actor_class("Actor");
    actor_class.method("describe", tether::context::io, &actor::describe);
    auto a = std::make_shared<actor>();
    tether::object mine = h.new_object(actor_class, a);
    CHECK(mine.local<actor>() == a);
    CHECK(mine.local<point>() == nullptr);

    /* No object around nothing. */
    CHECK_EQ(h.try_new_object(actor_class, std::shared_ptr<actor>()).code(), TETHER_EINVAL);

    /* release_in() after the first object aborts, as method() does. */
    std::fflush(nullptr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        CHECK(std::freopen("/dev/null", "w", stderr) != nullptr);
        actor_class.release_in(tether::context::main);
        _exit(0);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

TEST(endpoints)
{
    /* Moved from: a null handle, refused as the C API refuses one. */
    tether::host moved = make_host();
    tether::host h = std::move(moved);
    CHECK_EQ(moved.try_add_service("x", tether::context::io, [] {}).code(), TETHER_EINVAL);
    tether::object_class<actor> actor_class("Actor");
    CHECK_EQ(moved.try_new_object(actor_class, std::make_shared<actor>()).code(), TETHER_EINVAL);
    CHECK_EQ(moved.try_start().code(), TETHER_EINVAL);
    CHECK_EQ(moved.try_dispatch(0us).code(), TETHER_EINVAL);
    CHECK_EQ(moved.try_list_clients().code(), TETHER_EINVAL);
    CHECK_EQ(moved.address(), std::string());

    /* Services added from several threads at once. */
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
        threads.emplace_back([&h, t] {
            for (int i = 0; i < 50; i++) {
                std::string name = "s" + std::to_string(t) + "_" + std::to_string(i);
                CHECK(h.try_add_service(name, tether::context::io, [t, i] {
                           return 100 * t + i;
                       }).ok());
            }
        });
    }
    for (auto &t : threads) {
        t.join();
    }
    h.start();
    tether::client c = make_client(h, "closing");
    c.add_service("ping", tether::context::io, [] { return 1; });
    c.connect();
    CHECK_EQ(c.conn().call<int>("s3_49"), 349);
    CHECK_EQ(c.conn().call<int>("s0_0"), 0);

    /* A client closed, and connected again with its services. */
    c.close();
    CHECK(!c.connected());
    CHECK_EQ(c.conn().try_call<int>("s1_2").code(), TETHER_ENOTCONN);
    c.connect();
    CHECK(c.connected());
    CHECK_EQ(c.conn().call<int>("s1_2"), 102);

    tether::client other = std::move(c);
    CHECK_EQ(c.try_add_service("x", tether::context::io, [] {}).code(), TETHER_EINVAL);
    CHECK_EQ(c.try_close().code(), TETHER_EINVAL);
    CHECK_EQ(c.try_connect().code(), TETHER_EINVAL);
    CHECK(!c.connected());
}

TEST(no_throw_forms)
{
    auto h = tether::host::try_make();
    CHECK(h.ok());
    tether_host_options bad{};
    bad.tcp = true;
    bad.tcp_bind = "10.1.2.3";
    auto bad_host = tether::host::try_make(bad);
    if (bad_host.ok()) {
        CHECK_EQ(bad_host.value().try_start().code(), TETHER_EINVAL);
    }
    tether_host_options named{};
    std::string name = "cpp-nothrow-" + std::to_string(getpid());
    named.name = name.c_str();
    tether::host served = tether::host::try_make(named).value();
    CHECK(served.try_add_service("twice", tether::context::io, [](int x) { return 2 * x; }).ok());
    CHECK_EQ(served.try_add_service("twice", tether::context::io, [](int x) { return x; }).code(),
             TETHER_EEXIST);
    CHECK(served.try_start().ok());
    CHECK_EQ(served.try_start().code(), TETHER_EALREADY);

    auto c = test_connect_client(served, "nothrow");
    CHECK(c.ok());
    tether::conn to_host = c.value().conn();
    auto r = to_host.try_call<int>("twice", 21);
    CHECK(r.ok());
    CHECK_EQ(r.value(), 42);
    auto f = to_host.try_call_async<int>("twice", 4);
    CHECK(f.ok());
    CHECK_EQ(f.value().try_get().value(), 8);
    CHECK(to_host.try_close().ok());
    CHECK_EQ(to_host.try_call<int>("twice", 1).code(), TETHER_ENOTCONN);
    CHECK_EQ(served.try_client("nobody").code(), TETHER_ENOENT);
}

/* Run in a child by throwing_continuation: a then() continuation that throws, run at
 * once inside then(). Only ends normally when the exception comes back out of then(). */
static void
throw_from_continuation()
{
    tether::host h = make_host();
    h.add_service("twice", tether::context::io, [](int x) { return 2 * x; });
    h.start();
    tether::client c = make_client(h, "thrower");
    c.connect();
    tether::future<int> f = c.conn().call_async<int>("twice", 2);
    f.wait();
    try {
        f.then([](tether::result<int>) { throw std::runtime_error("boom"); }, tether::context::any);
    } catch (...) {
        std::_Exit(3); /* it unwound through the library's C frames */
    }
    std::_Exit(4);
}

TEST(throwing_continuation)
{
    /* A continuation that throws is named on stderr, then std::terminate(): SIGABRT. */
    int out[2];
    CHECK(pipe(out) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(out[1], 2);
        close(out[0]);
        close(out[1]);
        execl("/proc/self/exe", "test-cpp", "--throw-from-continuation",
              static_cast<char *>(nullptr));
        _exit(127);
    }
    close(out[1]);
    std::string err;
    char buf[512];
    ssize_t n;
    while ((n = read(out[0], buf, sizeof buf)) > 0) {
        err.append(buf, static_cast<std::size_t>(n));
    }
    close(out[0]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT) {
        fail_at(__FILE__, __LINE__, "the child ended with status " + std::to_string(status));
    }
    CHECK(err.find("tether: a then() continuation threw: boom\n") != std::string::npos);
}

/*
 * Destroying a host or a client while a POOL handler of it runs on another thread
 * waits for that handler before the services go: tether_host_stop() and the last
 * tether_client_unref() wait for running handlers (the C++ layer no longer counts them
 * itself). The handler reads its own capture after the destruction began.
 */
TEST(destroying_waits_for_handlers)
{
    std::atomic<bool> started{false}, finished{false};
    auto linger = [&started, &finished, tag = std::string(100, 'x')]() {
        started = true;
        std::this_thread::sleep_for(300ms);
        finished = tag == std::string(100, 'x');
        return 1;
    };
    auto wait_started = [&] {
        auto give_up = std::chrono::steady_clock::now() + 10s;
        while (!started) {
            CHECK(std::chrono::steady_clock::now() < give_up);
            std::this_thread::sleep_for(1ms);
        }
    };
    {
        std::optional<tether::host> h(make_host());
        h->add_service("linger", tether::context::pool, linger);
        h->start();
        tether::client c = make_client(*h, "lingering");
        c.connect();
        auto f = c.conn().call_async<int>("linger");
        wait_started();
        h.reset();
        CHECK(finished);
    }
    started = false;
    finished = false;
    {
        tether::host h = make_host();
        h.start();
        std::optional<tether::client> c(make_client(h, "lingering-client"));
        c->add_service("linger", tether::context::pool, linger);
        c->connect();
        auto f = client_conn(h, "lingering-client", "linger").call_async<int>("linger");
        wait_started();
        c.reset();
        CHECK(finished);
    }
}

int
main(int argc, char **argv)
{
    test_runtime_dir runtime_dir;
    if (argc > 1 && std::string(argv[1]) == "--throw-from-continuation") {
        throw_from_continuation();
    }
    int ran = 0;
    for (const auto &t : all_tests()) {
        if (argc > 1 && std::string(argv[1]) != t.name) {
            continue;
        }
        std::printf("test %s\n", t.name);
        std::fflush(stdout);
        t.fn();
        std::printf("ok %s\n", t.name);
        ran++;
    }
    if (ran == 0) {
        std::fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "");
        return 1;
    }
    return 0;
}
