/*
 * tether.hpp: a header-only C++17 API over tether.h (issue #15).
 *
 * Everything here is a thin layer over the C API of tether.h, which stays the reference
 * for what each operation does, its error codes and its thread rules: every function
 * below says which C function it wraps and repeats its Thread: line.
 *
 * What the layer adds:
 * - RAII handles: tether::value, buffer, conn, object and future hold one reference
 *   each and release it when destroyed (all but future copy by taking another reference;
 *   future moves only); tether::host and tether::client own their C object and the
 *   services registered through them, and move only.
 * - Keyword arguments (tether::keywords) both ways, and replies sent later, from any
 *   thread (request::keep<R>() and tether::reply<R>).
 * - Objects by reference: a C++ class exported through tether::object_class<T>, its
 *   methods registered once per class, each object around a std::shared_ptr<T>.
 * - Spawned Python children (host::spawn): a tether::child and its root proxy.
 * - Typed conversions, deduced at compile time: a service is a lambda, a function or a
 *   member function with typed parameters and result; call<R>() reads its result as R.
 *   A mismatch from a peer is answered with the TypeError a C service would send
 *   ("item 2: expected int, got str"). See "Conversions" for the types and for the
 *   customization point tether::convert<T>.
 * - Errors as exceptions: tether::error (a code and the tether_error fields) and
 *   tether::remote_error (TETHER_EREMOTE: the peer raised). Every throwing operation
 *   x() has a non-throwing twin try_x() returning tether::result<T>; built without
 *   exceptions (-fno-exceptions), only the try_ forms exist.
 *
 * Link with libtether as a C host does (pkg-config tether); nothing else is needed.
 */
#ifndef TETHER_HPP
#define TETHER_HPP

#include <tether.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define TETHER_CPP_EXCEPTIONS 1
#else
#define TETHER_CPP_EXCEPTIONS 0
#endif

namespace tether {

/* ---------------------------------------------------------------------------------
 * Contexts and durations
 * ------------------------------------------------------------------------------- */

/* Where a service handler or a continuation runs: tether_context, same rules. */
enum class context : int {
    io = TETHER_CONTEXT_IO,
    main = TETHER_CONTEXT_MAIN,
    pool = TETHER_CONTEXT_POOL,
    any = TETHER_CONTEXT_ANY,
};

/* Durations are std::chrono; these two stand for TETHER_TIMEOUT_DEFAULT and
 * TETHER_TIMEOUT_INFINITE / TETHER_BUDGET_UNLIMITED. default_timeout is a value of its
 * own, not 0: a call's timeout of 0 or less is a budget already spent (call_options). */
inline constexpr std::chrono::microseconds default_timeout{std::chrono::microseconds::min()};
inline constexpr std::chrono::microseconds infinite{std::chrono::microseconds::max()};

namespace detail {

/*
 * A duration in whole microseconds for the C API, without the overflow of a plain
 * duration_cast (hours::max() in microseconds is signed overflow): rounded up, so that a
 * wait of 1 ns waits 1 us rather than not at all; 0 for anything not above zero (NaN
 * too); infinite for anything at or above infinite.
 */
template <class Rep, class Period>
std::chrono::microseconds
to_microseconds(std::chrono::duration<Rep, Period> d)
{
    using tick = std::ratio_divide<Period, std::micro>; /* one tick in microseconds */
    using usec = std::chrono::microseconds;
    constexpr auto most = static_cast<std::uintmax_t>(infinite.count());
    if constexpr (std::chrono::treat_as_floating_point_v<Rep> ||
                  (tick::num != 1 && tick::den != 1)) {
        long double us = static_cast<long double>(d.count()) * tick::num / tick::den;
        if (!(us > 0)) {
            return usec::zero();
        }
        us = std::ceil(us);
        if (us >= static_cast<long double>(most)) {
            return infinite;
        }
        return usec(static_cast<usec::rep>(us));
    } else {
        if (!(d.count() > 0)) {
            return usec::zero();
        }
        auto n = static_cast<std::uintmax_t>(d.count());
        std::uintmax_t us;
        if constexpr (tick::den == 1) {
            if (n > most / tick::num) {
                return infinite;
            }
            us = n * tick::num;
        } else {
            us = n / tick::den + (n % tick::den != 0);
        }
        return us >= most ? infinite : usec(static_cast<usec::rep>(us));
    }
}

/* A duration as a timeout_usec: infinite is TETHER_TIMEOUT_INFINITE, below zero is 0. */
template <class Rep, class Period>
std::uint64_t
to_usec(std::chrono::duration<Rep, Period> d)
{
    auto us = to_microseconds(d);
    return us == infinite ? TETHER_TIMEOUT_INFINITE : static_cast<std::uint64_t>(us.count());
}

} // namespace detail

/* ---------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------- */

/*
 * What a failure was: the TETHER_E* code and, as tether_error has them, a type name
 * ("TypeError", "tether.Timeout", a remote exception's type), a message and the remote
 * traceback (empty when none).
 */
struct error_info {
    int code = 0;
    std::string type;
    std::string message;
    std::string traceback;

    /* From a code and a tether_error the C API filled, which it empties. A failure the
     * C API gave no details for gets tether_err_type() and tether_strerror(). */
    static error_info
    take(int code, tether_error *err)
    {
        error_info info;
        info.code = code;
        if (err && err->type) {
            info.type = err->type;
        } else {
            info.type = tether_err_type(code);
        }
        if (err && err->message) {
            info.message = err->message;
        } else if (!err || !err->type) {
            info.message = tether_strerror(code);
        }
        if (err && err->traceback) {
            info.traceback = err->traceback;
        }
        tether_error_done(err);
        return info;
    }

    static error_info
    from_code(int code)
    {
        return take(code, nullptr);
    }
};

#if TETHER_CPP_EXCEPTIONS
/* A failed operation: code() is the TETHER_E* code; what() reads "type: message". */
class error : public std::runtime_error {
  public:
    explicit error(error_info info)
        : std::runtime_error(info.type + ": " + info.message), info_(std::move(info))
    {
    }
    int
    code() const noexcept
    {
        return info_.code;
    }
    const std::string &
    type() const noexcept
    {
        return info_.type;
    }
    const std::string &
    message() const noexcept
    {
        return info_.message;
    }
    const std::string &
    traceback() const noexcept
    {
        return info_.traceback;
    }
    const error_info &
    info() const noexcept
    {
        return info_;
    }

  private:
    error_info info_;
};

/*
 * The peer raised (code() == TETHER_EREMOTE): type() is its exception's type, with its
 * message and traceback. Thrown from a service handler, it is sent back as that type,
 * with that message and traceback, as tether_request_reply_error_full does.
 */
class remote_error : public error {
  public:
    explicit remote_error(error_info info) : error(std::move(info))
    {
    }
    /* An error to throw from a handler: the caller sees this type and message. */
    remote_error(std::string type, std::string message, std::string traceback = {})
        : error(
              error_info{TETHER_EREMOTE, std::move(type), std::move(message), std::move(traceback)})
    {
    }
};
#endif

/* Throw the exception for info (remote_error for TETHER_EREMOTE, else error); without
 * exceptions, print it and abort, as the standard library does. */
[[noreturn]] inline void
throw_error(error_info info)
{
#if TETHER_CPP_EXCEPTIONS
    if (info.code == TETHER_EREMOTE) {
        throw remote_error(std::move(info));
    }
    throw error(std::move(info));
#else
    std::fprintf(stderr, "tether: %s: %s\n", info.type.c_str(), info.message.c_str());
    std::abort();
#endif
}

/*
 * The outcome of a try_ operation: a T, or the error_info of the failure. value()
 * throws the failure (remote_error or error); error() is valid when !ok().
 */
template <class T> class [[nodiscard]] result {
  public:
    result(T value) : value_(std::move(value))
    {
    }
    result(error_info failure) : error_(std::move(failure))
    {
    }
    bool
    ok() const noexcept
    {
        return value_.has_value();
    }
    explicit operator bool() const noexcept
    {
        return ok();
    }
    int
    code() const noexcept
    {
        return ok() ? 0 : error_.code;
    }
    const error_info &
    error() const noexcept
    {
        return error_;
    }
    T &
    value() &
    {
        if (!ok()) {
            throw_error(error_);
        }
        return *value_;
    }
    const T &
    value() const &
    {
        if (!ok()) {
            throw_error(error_);
        }
        return *value_;
    }
    /* On a temporary result, the T moved out: a reference would dangle once the result
     * is gone, as in `for (int x : conn.try_call<std::vector<int>>("f").value())`. */
    T
    value() &&
    {
        if (!ok()) {
            throw_error(std::move(error_));
        }
        return std::move(*value_);
    }

  private:
    std::optional<T> value_;
    error_info error_;
};

template <> class [[nodiscard]] result<void> {
  public:
    result() = default;
    result(error_info failure) : error_(std::move(failure)), ok_(false)
    {
    }
    bool
    ok() const noexcept
    {
        return ok_;
    }
    explicit operator bool() const noexcept
    {
        return ok_;
    }
    int
    code() const noexcept
    {
        return ok_ ? 0 : error_.code;
    }
    const error_info &
    error() const noexcept
    {
        return error_;
    }
    void
    value() const
    {
        if (!ok_) {
            throw_error(error_);
        }
    }

  private:
    error_info error_;
    bool ok_ = true;
};

namespace detail {

inline result<void>
check(int code)
{
    if (code < 0) {
        return error_info::from_code(code);
    }
    return {};
}

/* One reference to a C object: the ref/unref pair of each type, found by overloading. */
inline tether_value *
ref(tether_value *p)
{
    return tether_value_ref(p);
}
inline void
unref(tether_value *p)
{
    tether_value_unref(p);
}
inline tether_buffer *
ref(tether_buffer *p)
{
    return tether_buffer_ref(p);
}
inline void
unref(tether_buffer *p)
{
    tether_buffer_unref(p);
}
inline tether_conn *
ref(tether_conn *p)
{
    return tether_conn_ref(p);
}
inline void
unref(tether_conn *p)
{
    tether_conn_unref(p);
}
inline tether_future *
ref(tether_future *p)
{
    return tether_future_ref(p);
}
inline void
unref(tether_future *p)
{
    tether_future_unref(p);
}
inline tether_object *
ref(tether_object *p)
{
    return tether_object_ref(p);
}
inline void
unref(tether_object *p)
{
    tether_object_unref(p);
}

inline tether_child *
ref(tether_child *p)
{
    return tether_child_ref(p);
}
inline void
unref(tether_child *p)
{
    tether_child_unref(p);
}
inline tether_request *
ref(tether_request *p)
{
    return tether_request_ref(p);
}
inline void
unref(tether_request *p)
{
    tether_request_unref(p);
}

/* Holds one reference (or none); copying takes another, moving steals it. */
template <class T> class handle {
  public:
    handle() = default;
    /* Takes over a reference the caller owns. */
    static handle
    adopt(T *p) noexcept
    {
        handle h;
        h.p_ = p;
        return h;
    }
    /* Takes a reference of its own to a borrowed pointer. */
    static handle
    borrow(T *p) noexcept
    {
        return adopt(p ? ref(p) : nullptr);
    }
    handle(const handle &other) noexcept : p_(other.p_ ? ref(other.p_) : nullptr)
    {
    }
    handle(handle &&other) noexcept : p_(std::exchange(other.p_, nullptr))
    {
    }
    handle &
    operator=(handle other) noexcept
    {
        std::swap(p_, other.p_);
        return *this;
    }
    ~handle()
    {
        if (p_) {
            unref(p_);
        }
    }
    T *
    get() const noexcept
    {
        return p_;
    }
    /* Gives the reference to the caller. */
    T *
    release() noexcept
    {
        return std::exchange(p_, nullptr);
    }

  private:
    T *p_ = nullptr;
};

} // namespace detail

/* ---------------------------------------------------------------------------------
 * Buffers: tether_buffer, bytes in shared memory
 * ------------------------------------------------------------------------------- */

class buffer {
  public:
    buffer() = default;
    /* Wrap a C buffer: adopt takes over the caller's reference, borrow takes one. */
    static buffer
    adopt(tether_buffer *b) noexcept
    {
        return buffer(detail::handle<tether_buffer>::adopt(b));
    }
    static buffer
    borrow(tether_buffer *b) noexcept
    {
        return buffer(detail::handle<tether_buffer>::borrow(b));
    }

    /* tether_buffer_new: size bytes, zero-filled, writable. Thread: any. */
    static result<buffer>
    try_make(std::size_t size)
    {
        tether_buffer *b = nullptr;
        int r = tether_buffer_new(size, &b);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return adopt(b);
    }
#if TETHER_CPP_EXCEPTIONS
    static buffer
    make(std::size_t size)
    {
        return try_make(size).value();
    }
#endif

    /*
     * Tell the receiver what the bytes are (tether_buffer_set_array): elements of format
     * (a struct character: 'B' uint8_t, 'f' float, ...) in C order of shape, which must
     * fill the buffer; a Python script gets a numpy array of them. Thread: any, but not
     * while a send of the buffer is being written.
     */
    result<void>
    try_set_array(char format, std::initializer_list<std::size_t> shape)
    {
        return detail::check(
            tether_buffer_set_array(h_.get(), format, shape.begin(), shape.size()));
    }
#if TETHER_CPP_EXCEPTIONS
    void
    set_array(char format, std::initializer_list<std::size_t> shape)
    {
        try_set_array(format, shape).value();
    }
#endif

    /* The bytes (NULL for size 0 or an empty handle). Thread: any. */
    const std::uint8_t *
    data() const noexcept
    {
        return h_.get() ? static_cast<const std::uint8_t *>(tether_buffer_get_data(h_.get()))
                        : nullptr;
    }
    /* Writable bytes of a buffer made here; NULL for one received. Thread: any. */
    std::uint8_t *
    writable() noexcept
    {
        return h_.get() ? static_cast<std::uint8_t *>(tether_buffer_get_writable(h_.get()))
                        : nullptr;
    }
    std::size_t
    size() const noexcept
    {
        return h_.get() ? tether_buffer_get_size(h_.get()) : 0;
    }
    explicit operator bool() const noexcept
    {
        return h_.get() != nullptr;
    }
    /* The C buffer, borrowed. */
    tether_buffer *
    get() const noexcept
    {
        return h_.get();
    }

  private:
    explicit buffer(detail::handle<tether_buffer> h) : h_(std::move(h))
    {
    }
    detail::handle<tether_buffer> h_;
};

/*
 * Bytes borrowed from elsewhere (a span of bytes): sent as a msgpack bin; read from a bin
 * or a buffer, it points into the value it was read from and lives as long as that value
 * (a handler's arguments: the handler's duration).
 */
struct bytes_view {
    const std::uint8_t *data = nullptr;
    std::size_t size = 0;

    bytes_view() = default;
    bytes_view(const void *bytes, std::size_t count)
        : data(static_cast<const std::uint8_t *>(bytes)), size(count)
    {
    }
    bytes_view(const std::vector<std::uint8_t> &bytes) : data(bytes.data()), size(bytes.size())
    {
    }
    /* Not of a temporary vector, freed at the end of the statement. */
    bytes_view(const std::vector<std::uint8_t> &&) = delete;
};

/* ---------------------------------------------------------------------------------
 * Conversions
 *
 * A C++ type travels as msgpack through tether::convert<T>, which has
 *   static void write(writer &w, const T &v);
 *   static bool read(reader &r, T &out);   // false after r.fail(...) or a failed read
 * Provided: bool; every integer type (range checked on reading: "integer 300 out of range
 * for uint8"); float and double (integers convert; float range checked too: "float 1e+300
 * out of range for float32"); std::string, std::string_view and const char * (str; a
 * string_view read borrows from the value); bytes_view and
 * std::vector<std::uint8_t> (bin; a buffer reads as its bytes); tether::buffer (a buffer;
 * a bin, as it arrives over TCP, reads as a new buffer holding a copy); std::vector<T>
 * (array); std::map and std::unordered_map with std::string keys (map); std::optional<T>
 * (nil or T); std::tuple<T...> (an array of exactly that many items); tether::value (any
 * value). A user type gets a specialization of tether::convert, usually written with the
 * conversions of its fields:
 *
 *   template <> struct tether::convert<point> {
 *       static void write(tether::writer &w, const point &p) {
 *           tether::write(w, std::tuple<double, double>(p.x, p.y));
 *       }
 *       static bool read(tether::reader &r, point &p) {
 *           std::tuple<double, double> t;
 *           if (!tether::read(r, t)) return false;
 *           std::tie(p.x, p.y) = t;
 *           return true;
 *       }
 *   };
 *
 * A type read as a view into the value (as string_view and bytes_view are, their bytes
 * freed with the value) says so with `static constexpr bool borrows = true;` in its
 * convert: a call's result cannot then be one, nor hold one at any depth (a container
 * passes on what its items say), as it would not outlive the call.
 *
 * Reading checks every item and stops at the first mismatch, with the TypeError text the
 * C reader gives (tether_value_read): the position as "item 3.1" (1-based, through
 * arrays and maps, a map's keys and values counted in turn) and both types.
 * ------------------------------------------------------------------------------- */

template <class T, class Enable = void> struct convert;

namespace detail {
/* Whether a T read from a value points into it, so that it must not outlive the value:
 * what convert<T>::borrows says (string_view and bytes_view; a container of them, at any
 * depth; a user type whose convert says so), false without one. */
template <class T, class = void> struct is_borrowed : std::false_type {
};
template <class T>
struct is_borrowed<T, std::void_t<decltype(convert<T>::borrows)>>
    : std::bool_constant<convert<T>::borrows> {
};

} // namespace detail

/* Writes msgpack, collecting the buffers and objects it refers to. */
class writer {
  public:
    void
    nil()
    {
        put(0xc0);
    }
    void
    boolean(bool b)
    {
        put(b ? 0xc3 : 0xc2);
    }
    void
    uint(std::uint64_t u)
    {
        if (u < 0x80) {
            put(static_cast<std::uint8_t>(u));
        } else if (u <= 0xff) {
            put(0xcc);
            put(static_cast<std::uint8_t>(u));
        } else if (u <= 0xffff) {
            put(0xcd);
            be(u, 2);
        } else if (u <= 0xffffffffu) {
            put(0xce);
            be(u, 4);
        } else {
            put(0xcf);
            be(u, 8);
        }
    }
    void
    sint(std::int64_t i)
    {
        if (i >= 0) {
            uint(static_cast<std::uint64_t>(i));
        } else if (i >= -32) {
            put(static_cast<std::uint8_t>(0xe0 | (i + 32)));
        } else if (i >= INT8_MIN) {
            put(0xd0);
            be(static_cast<std::uint64_t>(i), 1);
        } else if (i >= INT16_MIN) {
            put(0xd1);
            be(static_cast<std::uint64_t>(i), 2);
        } else if (i >= INT32_MIN) {
            put(0xd2);
            be(static_cast<std::uint64_t>(i), 4);
        } else {
            put(0xd3);
            be(static_cast<std::uint64_t>(i), 8);
        }
    }
    void
    float64(double d)
    {
        std::uint64_t bits;
        std::memcpy(&bits, &d, sizeof bits);
        put(0xcb);
        be(bits, 8);
    }
    /* A str; text that is not UTF-8 makes what is written fail with TETHER_EINVAL, as
     * the C API refuses it. */
    void
    str(std::string_view s)
    {
        std::size_t bad = tether_utf8_invalid_at(s.data(), s.size());
        if (bad != s.size()) {
            fail(TETHER_EINVAL, "a string is not valid UTF-8 (byte " + std::to_string(bad) +
                                    " of " + std::to_string(s.size()) + ")");
            return;
        }
        std::size_t n = s.size();
        if (n < 32) {
            put(static_cast<std::uint8_t>(0xa0 | n));
        } else {
            header(n, 0xd9, 0xda, 0xdb);
        }
        bytes_.append(s.data(), n);
    }
    void
    bin(const void *data, std::size_t n)
    {
        header(n, 0xc4, 0xc5, 0xc6);
        bytes_.append(static_cast<const char *>(data), n);
    }
    void
    array(std::size_t n)
    {
        if (n < 16) {
            put(static_cast<std::uint8_t>(0x90 | n));
        } else {
            header(n, 0, 0xdc, 0xdd);
        }
    }
    void
    map(std::size_t n)
    {
        if (n < 16) {
            put(static_cast<std::uint8_t>(0x80 | n));
        } else {
            header(n, 0, 0xde, 0xdf);
        }
    }
    /* A buffer by descriptor (nil for an empty handle). */
    void
    buf(const buffer &b)
    {
        if (!b) {
            nil();
            return;
        }
        /* The library writes a BUFFER ext its own way: take its bytes. */
        tether_value *v = nullptr;
        int r = tether_value_new(&v, "B", b.get());
        const void *data = nullptr;
        std::size_t size = 0;
        if (r >= 0) {
            r = tether_value_get_msgpack(v, &data, &size);
        }
        if (r < 0) {
            fail(r);
        } else {
            bytes_.append(static_cast<const char *>(data), size);
            buffers_.push_back(buffer::borrow(b.get()));
        }
        tether_value_unref(v);
    }
    /* Encoded msgpack of one item whose objects and buffers are listed, in order. */
    void
    raw(const void *data, std::size_t size, tether_object *const *objects, std::size_t n_objects,
        tether_buffer *const *buffers, std::size_t n_buffers)
    {
        bytes_.append(static_cast<const char *>(data), size);
        for (std::size_t i = 0; i < n_objects; i++) {
            objects_.push_back(detail::handle<tether_object>::borrow(objects[i]));
        }
        for (std::size_t i = 0; i < n_buffers; i++) {
            buffers_.push_back(buffer::borrow(buffers[i]));
        }
    }
    /* Make what is written fail with code, and why if given (the first failure wins). */
    void
    fail(int code, std::string why = {})
    {
        if (code_ == 0) {
            code_ = code;
            why_ = std::move(why);
        }
    }

    int
    code() const noexcept
    {
        return code_;
    }
    /* The failure, when code() < 0: its code, with why for the message when given. */
    error_info
    failure() const
    {
        error_info info = error_info::from_code(code_);
        if (!why_.empty()) {
            info.message = why_;
        }
        return info;
    }
    const std::string &
    bytes() const noexcept
    {
        return bytes_;
    }
    bool
    plain() const noexcept
    {
        return buffers_.empty() && objects_.empty();
    }
    /* A new value of what was written (exactly one item). */
    int
    make_value(tether_value **ret) const
    {
        if (code_ < 0) {
            return code_;
        }
        if (plain()) {
            return tether_value_new_msgpack(bytes_.data(), bytes_.size(), ret);
        }
        std::vector<tether_object *> objects;
        std::vector<tether_buffer *> buffers;
        for (auto &o : objects_) {
            objects.push_back(o.get());
        }
        for (auto &b : buffers_) {
            buffers.push_back(b.get());
        }
        return tether_value_new_msgpack_buffers(bytes_.data(), bytes_.size(), objects.data(),
                                                objects.size(), buffers.data(), buffers.size(),
                                                ret);
    }

  private:
    void
    put(std::uint8_t b)
    {
        bytes_.push_back(static_cast<char>(b));
    }
    void
    be(std::uint64_t v, int n)
    {
        for (int i = n - 1; i >= 0; i--) {
            put(static_cast<std::uint8_t>(v >> (8 * i)));
        }
    }
    void
    header(std::size_t n, std::uint8_t tag8, std::uint8_t tag16, std::uint8_t tag32)
    {
        if (tag8 && n <= 0xff) {
            put(tag8);
            be(n, 1);
        } else if (n <= 0xffff) {
            put(tag16);
            be(n, 2);
        } else if (n <= 0xffffffffu) {
            put(tag32);
            be(n, 4);
        } else {
            fail(TETHER_EMSGSIZE);
        }
    }

    std::string bytes_;
    std::vector<buffer> buffers_;
    std::vector<detail::handle<tether_object>> objects_;
    int code_ = 0;
    std::string why_;
};

/* Reads msgpack of a value, keeping track of where it is for TypeError messages. */
class reader {
  public:
    /* What is next, without reading it. */
    enum class kind {
        nil,
        boolean,
        uint,
        sint,
        real,
        str,
        bin,
        array,
        map,
        ext,
        end
    };

    /* A reader over a value (borrowed: it must outlive the reader). */
    explicit reader(const tether_value *v)
    {
        const void *data = nullptr;
        std::size_t size = 0;
        if (v && tether_value_get_msgpack(v, &data, &size) >= 0) {
            p_ = static_cast<const std::uint8_t *>(data);
            end_ = p_ + size;
        }
        if (v) {
            tether_buffer *const *bufs = nullptr;
            tether_object *const *objs = nullptr;
            std::size_t n = 0;
            if (tether_value_get_buffers(v, &bufs, &n) >= 0) {
                buffers_ = bufs;
                n_buffers_ = n;
            }
            if (tether_value_get_objects(v, &objs, &n) >= 0) {
                objects_ = objs;
                n_objects_ = n;
            }
        }
    }

    kind
    peek() const
    {
        head h;
        const std::uint8_t *p = p_;
        if (!parse(p, h)) {
            return kind::end;
        }
        return h.k;
    }

    bool
    nil()
    {
        head h;
        if (!next(h, "nil")) {
            return false;
        }
        return h.k == kind::nil || mismatch("nil", h);
    }
    bool
    boolean(bool &out)
    {
        head h;
        if (!next(h, "bool")) {
            return false;
        }
        if (h.k != kind::boolean) {
            return mismatch("bool", h);
        }
        out = h.u != 0;
        return true;
    }
    /* An integer of type T, range checked as the C reader does. */
    template <class T>
    bool
    integer(T &out, const char *name)
    {
        head h;
        if (!next(h, "int")) {
            return false;
        }
        if (h.k == kind::uint) {
            if (h.u > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) {
                return fail("integer " + std::to_string(h.u) + " out of range for " + name);
            }
            out = static_cast<T>(h.u);
            return true;
        }
        if (h.k == kind::sint) {
            if constexpr (std::is_unsigned_v<T>) {
                return fail("expected int >= 0, got " + std::to_string(h.i));
            } else {
                if (h.i < static_cast<std::int64_t>(std::numeric_limits<T>::min())) {
                    return fail("integer " + std::to_string(h.i) + " out of range for " + name);
                }
                out = static_cast<T>(h.i);
                return true;
            }
        }
        return mismatch("int", h);
    }
    bool
    real(double &out)
    {
        head h;
        if (!next(h, "float")) {
            return false;
        }
        switch (h.k) {
        case kind::real:
            out = h.d;
            return true;
        case kind::uint:
            out = static_cast<double>(h.u);
            return true;
        case kind::sint:
            out = static_cast<double>(h.i);
            return true;
        default:
            return mismatch("float", h);
        }
    }
    /* A str, borrowed from the value. */
    bool
    str(std::string_view &out)
    {
        head h;
        if (!next(h, "str")) {
            return false;
        }
        if (h.k != kind::str) {
            return mismatch("str", h);
        }
        out = std::string_view(reinterpret_cast<const char *>(h.data), h.len);
        return true;
    }
    /* A bin, or a buffer's bytes, borrowed from the value. */
    bool
    bytes(bytes_view &out)
    {
        head h;
        if (!next(h, "bytes")) {
            return false;
        }
        if (h.k == kind::bin) {
            out = bytes_view(h.data, h.len);
            return true;
        }
        if (h.k == kind::ext && h.ext_type == TETHER_MSGPACK_EXT_BUFFER) {
            tether_buffer *b = take_buffer();
            if (!b) {
                return fail("buffer not bound to a buffer");
            }
            out = bytes_view(tether_buffer_get_data(b), tether_buffer_get_size(b));
            return true;
        }
        return mismatch("bytes", h);
    }
    /* A buffer; a bin becomes a new buffer holding a copy. */
    bool
    buf(buffer &out)
    {
        head h;
        if (!next(h, "buffer")) {
            return false;
        }
        if (h.k == kind::ext && h.ext_type == TETHER_MSGPACK_EXT_BUFFER) {
            tether_buffer *b = take_buffer();
            if (!b) {
                return fail("buffer not bound to a buffer");
            }
            out = buffer::borrow(b);
            return true;
        }
        if (h.k == kind::bin) {
            tether_buffer *b = nullptr;
            int r = tether_buffer_new_uninitialized(h.len, &b);
            if (r < 0) {
                return fail(std::string("cannot make a buffer: ") + tether_strerror(r));
            }
            if (h.len) {
                std::memcpy(tether_buffer_get_writable(b), h.data, h.len);
            }
            out = buffer::adopt(b);
            return true;
        }
        return mismatch("buffer", h);
    }
    /* An object by reference (borrowed from the value). A mismatch reads "expected
     * object", as the C reader's "o" says. */
    bool
    ref(tether_object *&out)
    {
        head h;
        if (!next(h, "object")) {
            return false;
        }
        if (h.k != kind::ext || h.ext_type != TETHER_MSGPACK_EXT_OBJECT) {
            return mismatch("object", h);
        }
        if (object_at_ >= n_objects_) {
            return fail("object reference not bound to an object");
        }
        out = objects_[object_at_++];
        return true;
    }
    /* An array header: its count. */
    bool
    array(std::size_t &count)
    {
        head h;
        if (!next(h, "array")) {
            return false;
        }
        if (h.k != kind::array) {
            return mismatch("array", h);
        }
        count = h.len;
        return true;
    }
    /* An array of exactly count items. */
    bool
    array_of(std::size_t count)
    {
        std::size_t n = 0;
        if (!array(n)) {
            return false;
        }
        if (n != count) {
            return fail("expected array of " + std::to_string(count) +
                        (count == 1 ? " item, got " : " items, got ") + std::to_string(n));
        }
        return true;
    }
    /* A request's positional arguments: an array of exactly count items, with the
     * messages of tether_request_read. */
    bool
    args(std::size_t count)
    {
        head h;
        if (!next(h, "array")) {
            return false;
        }
        if (h.k != kind::array) {
            return fail(std::string("arguments must be an array, got ") + type_name(h));
        }
        if (h.len != count) {
            return fail("takes " + std::to_string(count) +
                        (count == 1 ? " argument, got " : " arguments, got ") +
                        std::to_string(h.len));
        }
        return true;
    }
    /* A map header: its count of pairs. */
    bool
    map(std::size_t &count)
    {
        head h;
        if (!next(h, "map")) {
            return false;
        }
        if (h.k != kind::map) {
            return mismatch("map", h);
        }
        count = h.len;
        return true;
    }
    /* One whole item, as a value of its own. */
    bool
    any(tether_value **ret)
    {
        const std::uint8_t *start = p_;
        std::size_t first_buffer = buffer_at_, first_object = object_at_;
        if (!skip()) {
            return false;
        }
        int r = tether_value_new_msgpack_buffers(start, static_cast<std::size_t>(p_ - start),
                                                 objects_ + first_object, object_at_ - first_object,
                                                 buffers_ + first_buffer, buffer_at_ - first_buffer,
                                                 ret);
        if (r < 0) {
            return fail(std::string("cannot make a value: ") + tether_strerror(r));
        }
        return true;
    }
    /* Pass over one whole item. */
    bool
    skip()
    {
        std::size_t pending = 1;
        while (pending > 0) {
            head h;
            if (!next(h, "a value")) {
                return false;
            }
            pending--;
            if (h.k == kind::array) {
                pending += h.len;
            } else if (h.k == kind::map) {
                pending += 2 * static_cast<std::size_t>(h.len);
            } else if (h.k == kind::ext && h.ext_type == TETHER_MSGPACK_EXT_BUFFER) {
                buffer_at_++;
            } else if (h.k == kind::ext && h.ext_type == TETHER_MSGPACK_EXT_OBJECT) {
                object_at_++;
            }
        }
        return true;
    }

    /* Positions for messages: enter(i) before reading item i (1-based) of a container,
     * leave() after it. */
    void
    enter(std::size_t item)
    {
        path_.push_back(item);
    }
    void
    leave()
    {
        path_.pop_back();
    }
    /* Record a TypeError at the current position; returns false. */
    bool
    fail(const std::string &what)
    {
        if (message_.empty()) {
            std::string where;
            for (std::size_t i = 0; i < path_.size(); i++) {
                where += (i ? "." : "item ") + std::to_string(path_[i]);
            }
            message_ = where.empty() ? what : where + ": " + what;
        }
        return false;
    }
    /* The TypeError message of the first failure ("" while none). */
    const std::string &
    message() const noexcept
    {
        return message_;
    }
    bool
    at_end() const noexcept
    {
        return p_ == end_;
    }
    /* The bytes left to read: a bound on the items still to come, each taking one. */
    std::size_t
    remaining() const noexcept
    {
        return static_cast<std::size_t>(end_ - p_);
    }

  private:
    struct head {
        kind k = kind::end;
        std::uint64_t u = 0;
        std::int64_t i = 0;
        double d = 0;
        std::uint32_t len = 0; /* str/bin/ext bytes, array items, map pairs */
        const std::uint8_t *data = nullptr;
        std::int8_t ext_type = 0;
    };

    static const char *
    type_name(const head &h)
    {
        switch (h.k) {
        case kind::nil:
            return "nil";
        case kind::boolean:
            return "bool";
        case kind::uint:
        case kind::sint:
            return "int";
        case kind::real:
            return "float";
        case kind::str:
            return "str";
        case kind::bin:
            return "bytes";
        case kind::array:
            return "array";
        case kind::map:
            return "map";
        case kind::ext:
            return h.ext_type == TETHER_MSGPACK_EXT_OBJECT   ? "ref"
                   : h.ext_type == 2                         ? "error"
                   : h.ext_type == TETHER_MSGPACK_EXT_BUFFER ? "buffer"
                                                             : "ext";
        default:
            return "?";
        }
    }
    bool
    mismatch(const char *expected, const head &h)
    {
        return fail(std::string("expected ") + expected + ", got " + type_name(h));
    }
    tether_buffer *
    take_buffer()
    {
        return buffer_at_ < n_buffers_ ? buffers_[buffer_at_++] : nullptr;
    }
    bool
    next(head &h, const char *expected)
    {
        if (!parse(p_, h)) {
            return fail(std::string("expected ") + expected + ", got nothing");
        }
        return true;
    }
    /* Read one header at p (advancing past it, and past the payload of a str, bin or
     * ext); false when the bytes end first. The library validated the bytes when it
     * made the value, so this only guards against reading past the end. */
    bool
    parse(const std::uint8_t *&p, head &h) const
    {
        if (p >= end_) {
            return false;
        }
        std::uint8_t b = *p++;
        auto load = [&](int n, std::uint64_t &out) {
            if (end_ - p < n) {
                return false;
            }
            out = 0;
            for (int i = 0; i < n; i++) {
                out = (out << 8) | *p++;
            }
            return true;
        };
        auto payload = [&](std::uint64_t n) {
            if (static_cast<std::uint64_t>(end_ - p) < n) {
                return false;
            }
            h.data = p;
            h.len = static_cast<std::uint32_t>(n);
            p += n;
            return true;
        };
        std::uint64_t n = 0;
        if (b <= 0x7f) {
            h.k = kind::uint;
            h.u = b;
            return true;
        }
        if (b >= 0xe0) {
            h.k = kind::sint;
            h.i = static_cast<std::int8_t>(b);
            return true;
        }
        if ((b & 0xe0) == 0xa0) {
            h.k = kind::str;
            return payload(b & 0x1f);
        }
        if ((b & 0xf0) == 0x90) {
            h.k = kind::array;
            h.len = b & 0x0f;
            return true;
        }
        if ((b & 0xf0) == 0x80) {
            h.k = kind::map;
            h.len = b & 0x0f;
            return true;
        }
        switch (b) {
        case 0xc0:
            h.k = kind::nil;
            return true;
        case 0xc2:
        case 0xc3:
            h.k = kind::boolean;
            h.u = b == 0xc3;
            return true;
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
            h.k = kind::uint;
            return load(1 << (b - 0xcc), h.u);
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: {
            int size = 1 << (b - 0xd0);
            if (!load(size, n)) {
                return false;
            }
            /* Sign-extend from size bytes. */
            int shift = 64 - 8 * size;
            h.i = static_cast<std::int64_t>(n << shift) >> shift;
            if (h.i >= 0) {
                h.k = kind::uint;
                h.u = static_cast<std::uint64_t>(h.i);
            } else {
                h.k = kind::sint;
            }
            return true;
        }
        case 0xca: {
            if (!load(4, n)) {
                return false;
            }
            std::uint32_t bits = static_cast<std::uint32_t>(n);
            float f;
            std::memcpy(&f, &bits, sizeof f);
            h.k = kind::real;
            h.d = f;
            return true;
        }
        case 0xcb:
            if (!load(8, n)) {
                return false;
            }
            std::memcpy(&h.d, &n, sizeof h.d);
            h.k = kind::real;
            return true;
        case 0xd9:
        case 0xda:
        case 0xdb:
            h.k = kind::str;
            return load(1 << (b - 0xd9), n) && payload(n);
        case 0xc4:
        case 0xc5:
        case 0xc6:
            h.k = kind::bin;
            return load(1 << (b - 0xc4), n) && payload(n);
        case 0xdc:
        case 0xdd:
            h.k = kind::array;
            if (!load(b == 0xdc ? 2 : 4, n)) {
                return false;
            }
            h.len = static_cast<std::uint32_t>(n);
            return true;
        case 0xde:
        case 0xdf:
            h.k = kind::map;
            if (!load(b == 0xde ? 2 : 4, n)) {
                return false;
            }
            h.len = static_cast<std::uint32_t>(n);
            return true;
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
            n = 1u << (b - 0xd4);
            break;
        case 0xc7:
        case 0xc8:
        case 0xc9:
            if (!load(1 << (b - 0xc7), n)) {
                return false;
            }
            break;
        default:
            return false;
        }
        /* An ext: its type byte, then n bytes. */
        if (p >= end_) {
            return false;
        }
        h.k = kind::ext;
        h.ext_type = static_cast<std::int8_t>(*p++);
        return payload(n);
    }

    const std::uint8_t *p_ = nullptr;
    const std::uint8_t *end_ = nullptr;
    tether_buffer *const *buffers_ = nullptr;
    std::size_t n_buffers_ = 0, buffer_at_ = 0;
    tether_object *const *objects_ = nullptr;
    std::size_t n_objects_ = 0, object_at_ = 0;
    std::vector<std::size_t> path_;
    std::string message_;
};

/* Write or read one item of type T through convert<T>. */
template <class T>
void
write(writer &w, const T &v)
{
    convert<T>::write(w, v);
}
template <class T>
bool
read(reader &r, T &out)
{
    return convert<T>::read(r, out);
}

namespace detail {
template <class T>
const char *
integer_name()
{
    if constexpr (std::is_same_v<T, int>) {
        return "int";
    } else if constexpr (std::is_signed_v<T>) {
        return sizeof(T) == 1   ? "int8"
               : sizeof(T) == 2 ? "int16"
               : sizeof(T) == 4 ? "int32"
                                : "int64";
    } else {
        return sizeof(T) == 1   ? "uint8"
               : sizeof(T) == 2 ? "uint16"
               : sizeof(T) == 4 ? "uint32"
                                : "uint64";
    }
}

/* The shortest text that reads back as d, for messages ("1e+300"). */
inline std::string
shortest(double d)
{
    char text[32];
    for (int digits = 1; digits <= 17; digits++) {
        std::snprintf(text, sizeof text, "%.*g", digits, d);
        if (std::strtod(text, nullptr) == d) {
            break;
        }
    }
    return text;
}
} // namespace detail

template <> struct convert<bool> {
    static void
    write(writer &w, bool v)
    {
        w.boolean(v);
    }
    static bool
    read(reader &r, bool &out)
    {
        return r.boolean(out);
    }
};

template <class T>
struct convert<T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>> {
    static void
    write(writer &w, T v)
    {
        if constexpr (std::is_signed_v<T>) {
            w.sint(v);
        } else {
            w.uint(v);
        }
    }
    static bool
    read(reader &r, T &out)
    {
        return r.integer(out, detail::integer_name<T>());
    }
};

template <class T> struct convert<T, std::enable_if_t<std::is_floating_point_v<T>>> {
    static void
    write(writer &w, T v)
    {
        w.float64(static_cast<double>(v));
    }
    static bool
    read(reader &r, T &out)
    {
        double d = 0;
        if (!r.real(d)) {
            return false;
        }
        /* Range checked as integers are: a finite double beyond float's range would
         * become infinity (or undefined behaviour), not the number sent. */
        if constexpr (std::numeric_limits<T>::max() < std::numeric_limits<double>::max()) {
            if (std::isfinite(d) &&
                std::fabs(d) > static_cast<double>(std::numeric_limits<T>::max())) {
                return r.fail("float " + detail::shortest(d) + " out of range for float32");
            }
        }
        out = static_cast<T>(d);
        return true;
    }
};

template <> struct convert<std::string_view> {
    static constexpr bool borrows = true;
    static void
    write(writer &w, std::string_view v)
    {
        w.str(v);
    }
    static bool
    read(reader &r, std::string_view &out)
    {
        return r.str(out);
    }
};

template <> struct convert<std::string> {
    static void
    write(writer &w, const std::string &v)
    {
        w.str(v);
    }
    static bool
    read(reader &r, std::string &out)
    {
        std::string_view s;
        if (!r.str(s)) {
            return false;
        }
        out.assign(s.data(), s.size());
        return true;
    }
};

/* Write only: a C string (NULL writes nil). */
template <> struct convert<const char *> {
    static void
    write(writer &w, const char *v)
    {
        if (v) {
            w.str(v);
        } else {
            w.nil();
        }
    }
};
template <> struct convert<char *> : convert<const char *> {
};
/* Write only: a string literal or char array, up to its first NUL. */
template <std::size_t N> struct convert<char[N]> {
    static void
    write(writer &w, const char (&v)[N])
    {
        std::size_t n = 0;
        while (n < N && v[n]) {
            n++;
        }
        w.str(std::string_view(v, n));
    }
};

template <> struct convert<bytes_view> {
    static constexpr bool borrows = true;
    static void
    write(writer &w, const bytes_view &v)
    {
        w.bin(v.data, v.size);
    }
    static bool
    read(reader &r, bytes_view &out)
    {
        return r.bytes(out);
    }
};

template <> struct convert<std::vector<std::uint8_t>> {
    static void
    write(writer &w, const std::vector<std::uint8_t> &v)
    {
        w.bin(v.data(), v.size());
    }
    static bool
    read(reader &r, std::vector<std::uint8_t> &out)
    {
        bytes_view b;
        if (!r.bytes(b)) {
            return false;
        }
        out.assign(b.data, b.data + b.size);
        return true;
    }
};

template <> struct convert<buffer> {
    static void
    write(writer &w, const buffer &v)
    {
        w.buf(v);
    }
    static bool
    read(reader &r, buffer &out)
    {
        return r.buf(out);
    }
};

template <class T, class A> struct convert<std::vector<T, A>> {
    static constexpr bool borrows = detail::is_borrowed<T>::value;
    static void
    write(writer &w, const std::vector<T, A> &v)
    {
        w.array(v.size());
        for (const auto &item : v) {
            convert<T>::write(w, item);
        }
    }
    static bool
    read(reader &r, std::vector<T, A> &out)
    {
        std::size_t n = 0;
        if (!r.array(n)) {
            return false;
        }
        out.clear();
        /* n comes from the peer: reserve no more than the bytes left could hold, so that
         * a declared count alone cannot make it allocate. */
        out.reserve(std::min(n, r.remaining()));
        for (std::size_t i = 0; i < n; i++) {
            r.enter(i + 1);
            T item{};
            if (!convert<T>::read(r, item)) {
                return false;
            }
            r.leave();
            out.push_back(std::move(item));
        }
        return true;
    }
};

namespace detail {
/* std::map and std::unordered_map with string keys. */
template <class Map> struct convert_string_map {
    static constexpr bool borrows = is_borrowed<typename Map::mapped_type>::value;
    static void
    write(writer &w, const Map &m)
    {
        w.map(m.size());
        for (const auto &[key, item] : m) {
            w.str(key);
            convert<typename Map::mapped_type>::write(w, item);
        }
    }
    static bool
    read(reader &r, Map &out)
    {
        std::size_t n = 0;
        if (!r.map(n)) {
            return false;
        }
        out.clear();
        for (std::size_t i = 0; i < n; i++) {
            std::string key;
            r.enter(2 * i + 1);
            if (!convert<std::string>::read(r, key)) {
                return false;
            }
            r.leave();
            r.enter(2 * i + 2);
            typename Map::mapped_type item{};
            if (!convert<typename Map::mapped_type>::read(r, item)) {
                return false;
            }
            r.leave();
            out.insert_or_assign(std::move(key), std::move(item));
        }
        return true;
    }
};
} // namespace detail

template <class V, class C, class A>
struct convert<std::map<std::string, V, C, A>>
    : detail::convert_string_map<std::map<std::string, V, C, A>> {
};
template <class V, class H, class E, class A>
struct convert<std::unordered_map<std::string, V, H, E, A>>
    : detail::convert_string_map<std::unordered_map<std::string, V, H, E, A>> {
};

template <class T> struct convert<std::optional<T>> {
    static constexpr bool borrows = detail::is_borrowed<T>::value;
    static void
    write(writer &w, const std::optional<T> &v)
    {
        if (v) {
            convert<T>::write(w, *v);
        } else {
            w.nil();
        }
    }
    static bool
    read(reader &r, std::optional<T> &out)
    {
        if (r.peek() == reader::kind::nil) {
            out.reset();
            return r.nil();
        }
        T item{};
        if (!convert<T>::read(r, item)) {
            return false;
        }
        out = std::move(item);
        return true;
    }
};

template <class... T> struct convert<std::tuple<T...>> {
    static constexpr bool borrows = (detail::is_borrowed<T>::value || ...);
    static void
    write(writer &w, const std::tuple<T...> &v)
    {
        w.array(sizeof...(T));
        std::apply([&w](const auto &...item) { (tether::write(w, item), ...); }, v);
    }
    static bool
    read(reader &r, std::tuple<T...> &out)
    {
        if (!r.array_of(sizeof...(T))) {
            return false;
        }
        return items(r, out, std::index_sequence_for<T...>{});
    }
    /* The items of an array whose header was read. */
    template <std::size_t... I>
    static bool
    items(reader &r, std::tuple<T...> &out, std::index_sequence<I...>)
    {
        bool ok = true;
        ((ok = ok && (r.enter(I + 1), tether::read(r, std::get<I>(out))) && (r.leave(), true)),
         ...);
        return ok;
    }
};

/* ---------------------------------------------------------------------------------
 * Values: tether_value, any msgpack value
 * ------------------------------------------------------------------------------- */

class value {
  public:
    value() = default;
    static value
    adopt(tether_value *v) noexcept
    {
        return value(detail::handle<tether_value>::adopt(v));
    }
    static value
    borrow(tether_value *v) noexcept
    {
        return value(detail::handle<tether_value>::borrow(v));
    }

    /* A value holding x, converted by convert<T>. Thread: any. */
    template <class T>
    static result<value>
    try_from(const T &x)
    {
        writer w;
        tether::write(w, x);
        if (w.code() < 0) {
            return w.failure();
        }
        tether_value *v = nullptr;
        int r = w.make_value(&v);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return adopt(v);
    }

    /* The value read as T; a mismatch fails with TETHER_EINVAL and a "TypeError". A
     * string_view or bytes_view read out lives as long as this value: on a temporary
     * value, which is gone at the end of the statement, a T that borrows
     * (detail::is_borrowed) does not compile. Thread: any. */
    template <class T>
    result<T>
    try_as() const &
    {
        reader r(h_.get());
        T out{};
        if (!tether::read(r, out)) {
            return error_info{TETHER_EINVAL, "TypeError", r.message(), {}};
        }
        return out;
    }
    template <class T, std::enable_if_t<!detail::is_borrowed<T>::value, int> = 0>
    result<T>
    try_as() &&
    {
        return static_cast<const value &>(*this).try_as<T>();
    }
    template <class T, std::enable_if_t<detail::is_borrowed<T>::value, int> = 0>
    result<T> try_as() && = delete;

#if TETHER_CPP_EXCEPTIONS
    template <class T>
    static value
    from(const T &x)
    {
        return try_from(x).value();
    }
    template <class T>
    T
    as() const &
    {
        return try_as<T>().value();
    }
    template <class T, std::enable_if_t<!detail::is_borrowed<T>::value, int> = 0>
    T
    as() &&
    {
        return try_as<T>().value();
    }
    template <class T, std::enable_if_t<detail::is_borrowed<T>::value, int> = 0> T as() && = delete;
#endif

    /* A tether_type, or TETHER_EINVAL for an empty handle. Thread: any. */
    int
    type() const noexcept
    {
        return tether_value_get_type(h_.get());
    }
    /* JSON-like text for people (tether_value_to_string). Thread: any. */
    std::string
    to_string() const
    {
        char *text = nullptr;
        if (!h_.get() || tether_value_to_string(h_.get(), &text) < 0) {
            return std::string();
        }
        std::string s(text);
        std::free(text);
        return s;
    }
    explicit operator bool() const noexcept
    {
        return h_.get() != nullptr;
    }
    /* The C value, borrowed. */
    tether_value *
    get() const noexcept
    {
        return h_.get();
    }

  private:
    explicit value(detail::handle<tether_value> h) : h_(std::move(h))
    {
    }
    detail::handle<tether_value> h_;
};

/* Any value, as it is: its bytes with its objects and buffers. An empty handle is nil. */
template <> struct convert<value> {
    static void
    write(writer &w, const value &v)
    {
        if (!v) {
            w.nil();
            return;
        }
        const void *data = nullptr;
        std::size_t size = 0;
        tether_object *const *objects = nullptr;
        std::size_t n_objects = 0;
        tether_buffer *const *buffers = nullptr;
        std::size_t n_buffers = 0;
        int r = tether_value_get_msgpack(v.get(), &data, &size);
        if (r >= 0) {
            r = tether_value_get_objects(v.get(), &objects, &n_objects);
        }
        if (r >= 0) {
            r = tether_value_get_buffers(v.get(), &buffers, &n_buffers);
        }
        if (r < 0) {
            w.fail(r);
            return;
        }
        w.raw(data, size, objects, n_objects, buffers, n_buffers);
    }
    static bool
    read(reader &r, value &out)
    {
        tether_value *v = nullptr;
        if (!r.any(&v)) {
            return false;
        }
        out = value::adopt(v);
        return true;
    }
};

/*
 * Keyword arguments, by name. As the last argument of a call (call, call_async,
 * notify) they go as its keywords, as a Python caller's f(1, x=2) sends x; as the last
 * parameter of a service, it receives those it was called with (empty when none). A
 * service without one refuses keywords with a TypeError, as a Python function does.
 */
struct keywords : std::map<std::string, value> {
    using std::map<std::string, value>::map;
};
template <> struct convert<keywords> : detail::convert_string_map<keywords> {
};

namespace detail {

/* Whether the last of A... is keywords. */
template <class... A>
constexpr bool
ends_with_keywords()
{
    if constexpr (sizeof...(A) == 0) {
        return false;
    } else {
        using last = std::tuple_element_t<sizeof...(A) - 1, std::tuple<A...>>;
        return std::is_same_v<std::decay_t<last>, keywords>;
    }
}

template <class Tuple, std::size_t... I>
void
write_first(writer &w, const Tuple &args, std::index_sequence<I...>)
{
    w.array(sizeof...(I));
    (tether::write(w, std::get<I>(args)), ...);
}

/* A call's arguments encoded: the positional ones, and the keywords when it has some
 * (a second writer only then: most calls have none). */
template <bool Keywords> struct call_args {
    writer positional;
    writer *
    keywords() noexcept
    {
        return nullptr;
    }
    const writer &
    failed() const noexcept
    {
        return positional;
    }
};
template <> struct call_args<true> {
    writer positional, named;
    writer *
    keywords() noexcept
    {
        return &named;
    }
    const writer &
    failed() const noexcept
    {
        return positional.code() < 0 ? positional : named;
    }
};

template <class... A>
call_args<ends_with_keywords<A...>()>
write_call_args(const A &...args)
{
    call_args<ends_with_keywords<A...>()> out;
    if constexpr (ends_with_keywords<A...>()) {
        auto all = std::forward_as_tuple(args...);
        write_first(out.positional, all, std::make_index_sequence<sizeof...(A) - 1>{});
        tether::write(out.named, std::get<sizeof...(A) - 1>(all));
    } else {
        write_first(out.positional, std::forward_as_tuple(args...),
                    std::index_sequence_for<A...>{});
    }
    return out;
}

} // namespace detail

/* ---------------------------------------------------------------------------------
 * Calls and futures
 * ------------------------------------------------------------------------------- */

/* tether_call_options in C++ terms; see there. */
struct call_options {
    /* Bound on silence; default_timeout: the connection's; infinite: none; 0 or less
     * (a budget that ran out): the call fails at once with TETHER_ETIMEDOUT. */
    std::chrono::microseconds timeout = default_timeout;
    /* Bound on the whole call (steady_clock is CLOCK_MONOTONIC); none when unset. */
    std::optional<std::chrono::steady_clock::time_point> deadline;
    bool wait_for_connection = false;
    /* Asynchronous calls only: hold the request for conn::flush(). */
    bool batch = false;

    tether_call_options
    to_c() const
    {
        tether_call_options c{};
        if (timeout == default_timeout) {
            c.timeout_usec = TETHER_TIMEOUT_DEFAULT;
        } else if (timeout <= std::chrono::microseconds::zero()) {
            /* The smallest real timeout: 0 would be the connection's default (30 s), a
             * long wait for a caller whose budget ran out. */
            c.timeout_usec = 1;
        } else {
            c.timeout_usec = detail::to_usec(timeout);
        }
        if (deadline) {
            /* What is left, without overflow at either end of time_point's range: min()
             * has passed, a deadline too far for the C clock is none (0). */
            using clock = std::chrono::steady_clock;
            clock::duration at = deadline->time_since_epoch();
            clock::duration now = clock::now().time_since_epoch();
            std::uint64_t now_usec = tether_now_usec();
            if (at <= now) {
                c.deadline_usec = now_usec ? now_usec : 1;
            } else {
                clock::duration left =
                    now < clock::duration::zero() && at > clock::duration::max() + now
                        ? clock::duration::max()
                        : at - now;
                std::uint64_t left_usec = detail::to_usec(left);
                c.deadline_usec = left_usec >= UINT64_MAX - now_usec ? 0 : now_usec + left_usec;
            }
        }
        c.wait_for_connection = wait_for_connection;
        c.batch = batch;
        return c;
    }
};

/* A C string argument without copying: a const char * or a std::string. */
class cstring {
  public:
    cstring(const char *s) noexcept : s_(s)
    {
    }
    cstring(const std::string &s) noexcept : s_(s.c_str())
    {
    }
    const char *
    c_str() const noexcept
    {
        return s_;
    }

  private:
    const char *s_;
};

namespace detail {

template <class T> struct is_result : std::false_type {
};
template <class T> struct is_result<result<T>> : std::true_type {
    using type = T;
};

/* The outcome of a call as R, from the C call's code, result (owned) and error. */
template <class R>
result<R>
call_outcome(int code, tether_value *ret, tether_error *err)
{
    static_assert(!is_borrowed<R>::value,
                  "a call's result would not outlive the call: read std::string or "
                  "std::vector<std::uint8_t> instead");
    if (code < 0) {
        tether_value_unref(ret);
        return error_info::take(code, err);
    }
    tether_error_done(err);
    if constexpr (std::is_void_v<R>) {
        tether_value_unref(ret);
        return {};
    } else {
        value v = value::adopt(ret);
        if constexpr (std::is_same_v<R, value>) {
            return v;
        } else {
            return v.try_as<R>();
        }
    }
}

/* Run a then() continuation (g calls it with the outcome) from its C callback: an
 * exception must not unwind through the C frames below, and there is no caller to
 * report it to, so one is a programming error: named on stderr, then std::terminate(). */
template <class G>
void
run_continuation(G &&g) noexcept
{
#if TETHER_CPP_EXCEPTIONS
    try {
        g();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "tether: a then() continuation threw: %s\n", e.what());
        std::terminate();
    } catch (...) {
        std::fprintf(stderr, "tether: a then() continuation threw: unknown C++ exception\n");
        std::terminate();
    }
#else
    g();
#endif
}

} // namespace detail

/*
 * The outcome of an asynchronous call (tether_future), read as R. Moves only; dropping
 * it does not cancel the call (cancel() does).
 */
template <class R = value> class future {
  public:
    future() = default;
    explicit future(tether_future *adopted) : h_(detail::handle<tether_future>::adopt(adopted))
    {
    }
    /* One owner: a copy would share the one continuation then() may set. */
    future(const future &) = delete;
    future &operator=(const future &) = delete;
    future(future &&) noexcept = default;
    future &operator=(future &&) noexcept = default;

    /* tether_future_is_ready. Thread: any. */
    bool
    ready() const
    {
        return tether_future_is_ready(h_.get()) == 1;
    }
    /* Wait up to timeout (infinite, or anything longer: forever; rounded up to whole
     * microseconds; 0 or less: do not wait) for the outcome: true once it is there
     * (tether_future_wait). Thread: any. */
    template <class Rep, class Period>
    bool
    wait_for(std::chrono::duration<Rep, Period> timeout) const
    {
        return tether_future_wait(h_.get(), detail::to_usec(timeout)) == 0;
    }
    /* Wait until the outcome is there. Thread: any. */
    void
    wait() const
    {
        (void)tether_future_wait(h_.get(), TETHER_TIMEOUT_INFINITE);
    }
    /* Wait, then the outcome as R (tether_future_get_result). Thread: any. */
    result<R>
    try_get() const
    {
        wait();
        tether_value *ret = nullptr;
        tether_error err = TETHER_ERROR_INIT;
        int r = tether_future_get_result(h_.get(), std::is_void_v<R> ? nullptr : &ret, &err);
        return detail::call_outcome<R>(r, ret, &err);
    }
#if TETHER_CPP_EXCEPTIONS
    R
    get() const
    {
        if constexpr (std::is_void_v<R>) {
            try_get().value();
        } else {
            return try_get().value();
        }
    }
#endif
    /* tether_future_cancel: true if this cancelled it, false if it had completed.
     * Thread: any. */
    bool
    cancel()
    {
        return tether_future_cancel(h_.get()) == 0;
    }
    /*
     * Have fn(result<R>) called once the outcome is there: by default inside the
     * dispatch of the host or client that made the call, on its main thread, even if
     * the outcome is there already; context::io runs it on the I/O thread and
     * context::any on the thread that completes the future, where it must not block,
     * and both run it at once, inside then(), when the outcome is already there
     * (tether_future_set_callback). fn must not throw: it runs from a C callback with
     * no one to catch it, so a continuation that throws is a programming error, said on
     * stderr before std::terminate(). A main-thread continuation still queued when the
     * host stops or the client goes never runs, and is destroyed with what it captured
     * (tether_future_set_callback_full). One continuation per future: a second fails
     * with TETHER_EALREADY. Thread: any.
     */
    template <class F>
    result<void>
    try_then(F fn, context where = context::main)
    {
        auto *cont = new continuation<F>{std::move(fn)};
        int r =
            tether_future_set_callback_full(h_.get(), static_cast<tether_context>(where),
                                            &continuation<F>::run, cont, &continuation<F>::discard);
        if (r < 0) {
            delete cont;
            return error_info::from_code(r);
        }
        return {};
    }
#if TETHER_CPP_EXCEPTIONS
    template <class F>
    void
    then(F fn, context where = context::main)
    {
        try_then(std::move(fn), where).value();
    }
#endif
    /* The C future, borrowed. */
    tether_future *
    get_c() const noexcept
    {
        return h_.get();
    }

  private:
    template <class F> struct continuation {
        F fn;
        static void
        run(tether_future *f, void *userdata) noexcept
        {
            std::unique_ptr<continuation> self(static_cast<continuation *>(userdata));
            tether_value *ret = nullptr;
            tether_error err = TETHER_ERROR_INIT;
            int r = tether_future_get_result(f, std::is_void_v<R> ? nullptr : &ret, &err);
            detail::run_continuation([&] { self->fn(detail::call_outcome<R>(r, ret, &err)); });
        }
        /* It will never run (its host stopped first): what it captured goes. */
        static void
        discard(void *userdata) noexcept
        {
            delete static_cast<continuation *>(userdata);
        }
    };
    detail::handle<tether_future> h_;
};

/* ---------------------------------------------------------------------------------
 * Calls: what a connection and an object have in common
 * ------------------------------------------------------------------------------- */

namespace detail {

/* send(args, kwargs) on the encoded arguments made values (kwargs NULL without kw). */
template <class Send>
int
with_values(writer &w, writer *kw, Send send)
{
    tether_value *args = nullptr, *kwargs = nullptr;
    int r = w.make_value(&args);
    if (r >= 0 && kw) {
        r = kw->make_value(&kwargs);
    }
    if (r >= 0) {
        r = send(args, kwargs);
    }
    tether_value_unref(kwargs);
    tether_value_unref(args);
    return r;
}

/*
 * The calls of a connection (to a service of its peer) and of an object (to a method of
 * a proxied object; method nullptr calls the object itself), over three C calls of
 * Derived's: send_call, send_call_async and send_notify (tether_conn_call*,
 * tether_object_call*).
 */
template <class Derived> class calling {
  public:
    /*
     * Call method with args and wait for its result, read as R (value: as it is; void:
     * discarded). Fails as tether_conn_call does, and with TETHER_EINVAL and a
     * "TypeError" when the result is not an R. Thread: any (several threads may call
     * concurrently).
     */
    template <class R = value, class... A>
    result<R>
    try_call(const call_options &options, cstring method, const A &...args) const
    {
        tether_call_options c = options.to_c();
        return call_with<R>(&c, method.c_str(), args...);
    }
    template <class R = value, class... A>
    result<R>
    try_call(cstring method, const A &...args) const
    {
        return call_with<R>(nullptr, method.c_str(), args...);
    }
#if TETHER_CPP_EXCEPTIONS
    template <class R = value, class... A>
    R
    call(const call_options &options, cstring method, const A &...args) const
    {
        return try_call<R>(options, method, args...).value();
    }
    template <class R = value, class... A>
    R
    call(cstring method, const A &...args) const
    {
        return try_call<R>(method, args...).value();
    }
#endif

    /* Start a call; its outcome comes through the future (tether_conn_call_async).
     * Errors found before sending fail here. Thread: any. */
    template <class R = value, class... A>
    result<future<R>>
    try_call_async(const call_options &options, cstring method, const A &...args) const
    {
        tether_call_options c = options.to_c();
        return call_async_with<R>(&c, method.c_str(), args...);
    }
    template <class R = value, class... A>
    result<future<R>>
    try_call_async(cstring method, const A &...args) const
    {
        return call_async_with<R>(nullptr, method.c_str(), args...);
    }
#if TETHER_CPP_EXCEPTIONS
    template <class R = value, class... A>
    future<R>
    call_async(const call_options &options, cstring method, const A &...args) const
    {
        return try_call_async<R>(options, method, args...).value();
    }
    template <class R = value, class... A>
    future<R>
    call_async(cstring method, const A &...args) const
    {
        return try_call_async<R>(method, args...).value();
    }
#endif

    /* Send a notification (tether_conn_notify): returns once queued. Thread: any. */
    template <class... A>
    result<void>
    try_notify(cstring method, const A &...args) const
    {
        auto a = detail::write_call_args(args...);
        if (a.failed().code() < 0) {
            return a.failed().failure();
        }
        return detail::check(self().send_notify(method.c_str(), a.positional, a.keywords()));
    }
#if TETHER_CPP_EXCEPTIONS
    template <class... A>
    void
    notify(cstring method, const A &...args) const
    {
        try_notify(method, args...).value();
    }
#endif

  private:
    const Derived &
    self() const noexcept
    {
        return static_cast<const Derived &>(*this);
    }

    template <class R, class... A>
    result<R>
    call_with(const tether_call_options *options, const char *method, const A &...args) const
    {
        auto a = detail::write_call_args(args...);
        if (a.failed().code() < 0) {
            return a.failed().failure();
        }
        tether_value *ret = nullptr;
        tether_error err = TETHER_ERROR_INIT;
        int r = self().send_call(options, method, a.positional, a.keywords(),
                                 std::is_void_v<R> ? nullptr : &ret, &err);
        return detail::call_outcome<R>(r, ret, &err);
    }
    template <class R, class... A>
    result<future<R>>
    call_async_with(const tether_call_options *options, const char *method, const A &...args) const
    {
        auto a = detail::write_call_args(args...);
        if (a.failed().code() < 0) {
            return a.failed().failure();
        }
        tether_future *f = nullptr;
        int r = self().send_call_async(options, method, a.positional, a.keywords(), &f);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return future<R>(f);
    }
};

} // namespace detail

/* ---------------------------------------------------------------------------------
 * Connections: tether_conn
 * ------------------------------------------------------------------------------- */

class conn : public detail::calling<conn> {
  public:
    conn() = default;
    static conn
    adopt(tether_conn *c) noexcept
    {
        return conn(detail::handle<tether_conn>::adopt(c));
    }
    static conn
    borrow(tether_conn *c) noexcept
    {
        return conn(detail::handle<tether_conn>::borrow(c));
    }

    /* Whether the client at the other end (a host's connection to a client) announced
     * a service of that name (tether_conn_has_service); false for a client's own
     * connection. Thread: any. */
    bool
    has_service(cstring name) const
    {
        return tether_conn_has_service(h_.get(), name.c_str()) == 1;
    }
    /* Wait until it has (tether_conn_wait_service): TETHER_ETIMEDOUT, TETHER_ECONNRESET
     * (the client left first). Thread: any but the I/O thread. */
    result<void>
    try_wait_service(cstring name, std::chrono::microseconds timeout = infinite) const
    {
        return detail::check(
            tether_conn_wait_service(h_.get(), name.c_str(), detail::to_usec(timeout)));
    }
#if TETHER_CPP_EXCEPTIONS
    void
    wait_service(cstring name, std::chrono::microseconds timeout = infinite) const
    {
        try_wait_service(name, timeout).value();
    }
#endif

    /* Send a log record to the peer (tether_conn_log), which logs it at level
     * (TETHER_LOG_ERROR..TETHER_LOG_DEBUG) under logger: returns once queued.
     * Thread: any. */
    result<void>
    try_log(int level, cstring logger, cstring message) const
    {
        return detail::check(tether_conn_log(h_.get(), level, logger.c_str(), message.c_str()));
    }
#if TETHER_CPP_EXCEPTIONS
    void
    log(int level, cstring logger, cstring message) const
    {
        try_log(level, logger, message).value();
    }
#endif

    /* tether_conn_flush: send the requests of batch calls now. Thread: any. */
    result<void>
    try_flush() const
    {
        return detail::check(tether_conn_flush(h_.get()));
    }

    /* The peer's handshake facts (tether_conn_get_peer_*). Thread: any. */
    std::string
    peer_name() const
    {
        const char *s = tether_conn_get_peer_name(h_.get());
        return s ? s : "";
    }
    std::int64_t
    peer_pid() const
    {
        return tether_conn_get_peer_pid(h_.get());
    }
    /* tether_conn_is_connected. Thread: any. */
    bool
    connected() const
    {
        return h_.get() && tether_conn_is_connected(h_.get()) == 1;
    }
    /* tether_conn_close: pending calls fail. Thread: any. */
    result<void>
    try_close() const
    {
        return detail::check(tether_conn_close(h_.get()));
    }
    explicit operator bool() const noexcept
    {
        return h_.get() != nullptr;
    }
    /* The C connection, borrowed. */
    tether_conn *
    get() const noexcept
    {
        return h_.get();
    }

  private:
    explicit conn(detail::handle<tether_conn> h) : h_(std::move(h))
    {
    }

    friend class detail::calling<conn>;
    /* The C calls detail::calling makes, on arguments the writers encoded. Those that
     * need no values (no objects, no buffers) go from its bytes into the frame: one
     * copy, as in C. */
    int
    send_call(const tether_call_options *options, const char *method, writer &w, writer *kw,
              tether_value **ret, tether_error *err) const
    {
        return send(
            w, kw,
            [&](const tether_msgpack_args *m) {
                return tether_conn_call_msgpack(h_.get(), method, m, options, ret, err);
            },
            [&](tether_value *args, tether_value *kwargs) {
                return tether_conn_call_values(h_.get(), method, args, kwargs, options, ret, err);
            });
    }
    int
    send_call_async(const tether_call_options *options, const char *method, writer &w, writer *kw,
                    tether_future **f) const
    {
        return send(
            w, kw,
            [&](const tether_msgpack_args *m) {
                return tether_conn_call_async_msgpack(h_.get(), method, m, options, f);
            },
            [&](tether_value *args, tether_value *kwargs) {
                return tether_conn_call_async_values(h_.get(), method, args, kwargs, options, f);
            });
    }
    int
    send_notify(const char *method, writer &w, writer *kw) const
    {
        return send(
            w, kw,
            [&](const tether_msgpack_args *m) {
                return tether_conn_notify_msgpack(h_.get(), method, m);
            },
            [&](tether_value *args, tether_value *kwargs) {
                return tether_conn_notify_values(h_.get(), method, args, kwargs);
            });
    }
    template <class Bytes, class Values>
    static int
    send(writer &w, writer *kw, Bytes by_bytes, Values by_values)
    {
        if (w.plain() && (!kw || kw->plain())) {
            tether_msgpack_args m{};
            m.args = w.bytes().data();
            m.args_size = w.bytes().size();
            if (kw) {
                m.kwargs = kw->bytes().data();
                m.kwargs_size = kw->bytes().size();
            }
            return by_bytes(&m);
        }
        return detail::with_values(w, kw, by_values);
    }

    detail::handle<tether_conn> h_;
};

/* ---------------------------------------------------------------------------------
 * Services: typed handlers
 *
 * A service is any callable: a lambda, a function pointer, or a member function bound
 * to an object (host::add_service(name, ctx, &T::method, &object)). Its parameters are
 * read from the request's positional arguments (their count must match: "takes 2
 * arguments, got 3"), its result sent back; a void result replies nil, a result<T>
 * replies its error when it holds one. A first parameter of type tether::request & gets
 * the request itself (its connection, cancellation).
 *
 * Failures are answered as a C service's are: a mismatch in the arguments with a
 * "TypeError" naming the item; a thrown remote_error with its type, message and
 * traceback; a thrown error with its type and message; other exceptions with a Python
 * type close to their meaning (std::invalid_argument and std::domain_error: ValueError,
 * std::out_of_range: IndexError, std::bad_alloc: MemoryError, any other std::exception:
 * RuntimeError) and what() as the message.
 * ------------------------------------------------------------------------------- */

/* The request a handler is running for (borrowed for the handler's duration). */
template <class R> class reply;

class request {
  public:
    explicit request(tether_request *req) noexcept : req_(req)
    {
    }
    /* The connection it came from (tether_request_get_conn). Thread: the handler's. */
    tether::conn
    conn() const
    {
        return tether::conn::borrow(tether_request_get_conn(req_));
    }
    /* The service or method name. Thread: the handler's. */
    const char *
    method() const
    {
        return tether_request_get_method(req_);
    }
    /* tether_request_is_cancelled, tether_request_is_notification. Thread: any. */
    bool
    cancelled() const
    {
        return tether_request_is_cancelled(req_) == 1;
    }
    bool
    notification() const
    {
        return tether_request_is_notification(req_) == 1;
    }
    /*
     * Keep the request to reply later, from any thread, through the tether::reply<R>
     * this returns (tether_request_ref): a frame's work can answer in a later frame.
     * The service then returns void, or what it returns would be the reply. While it is
     * kept the caller's call stays alive; dropped without a reply, the caller gets
     * "tether.Error: handler dropped the request". Thread: the handler's.
     */
    template <class R = value> reply<R> keep() const;
    /* The C request, borrowed. */
    tether_request *
    get() const noexcept
    {
        return req_;
    }

  private:
    tether_request *req_;
};

namespace detail {

template <class T> struct signature;
template <class R, class... A> struct signature<R(A...)> {
    using result_type = R;
    using params = std::tuple<A...>;
};
template <class R, class... A> struct signature<R (*)(A...)> : signature<R(A...)> {
};
template <class C, class R, class... A> struct signature<R (C::*)(A...)> : signature<R(A...)> {
};
template <class C, class R, class... A>
struct signature<R (C::*)(A...) const> : signature<R(A...)> {
};
template <class C, class R, class... A>
struct signature<R (C::*)(A...) noexcept> : signature<R(A...)> {
};
template <class C, class R, class... A>
struct signature<R (C::*)(A...) const noexcept> : signature<R(A...)> {
};
template <class R, class... A> struct signature<R (*)(A...) noexcept> : signature<R(A...)> {
};

/* The signature of a callable: a function pointer's own, or its operator()'s. */
template <class F, class = void> struct callable_signature : signature<F> {
};
template <class F>
struct callable_signature<F, std::void_t<decltype(&F::operator())>>
    : signature<decltype(&F::operator())> {
};

template <class T> using plain = std::remove_cv_t<std::remove_reference_t<T>>;

/* The parameters a handler's arguments are read into: a leading request & dropped. */
template <class Tuple> struct arg_types;
template <> struct arg_types<std::tuple<>> {
    using type = std::tuple<>;
    static constexpr bool wants_request = false;
    static constexpr bool wants_keywords = false;
};
template <class First, class... Rest> struct arg_types<std::tuple<First, Rest...>> {
    static constexpr bool wants_request = std::is_same_v<plain<First>, request>;
    using type = std::conditional_t<wants_request, std::tuple<plain<Rest>...>,
                                    std::tuple<plain<First>, plain<Rest>...>>;
    /* A last parameter of type keywords takes the keyword arguments. */
    static constexpr bool wants_keywords = ends_with_keywords<First, Rest...>();
};

struct service_base {
    virtual ~service_base() = default;
};

/*
 * Reply an error of type, message and traceback (either may be NULL) without allocating
 * in C++, so that it serves while handling std::bad_alloc too. Returns the handler's
 * return: 0 once replied (or replied already), else the failure, for the C side to
 * answer with a generic error itself.
 */
inline int
reply_error_c(tether_request *req, const char *type, const char *message,
              const char *traceback) noexcept
{
    tether_error c = TETHER_ERROR_INIT;
    c.type = const_cast<char *>(type);
    c.message = const_cast<char *>(message);
    c.traceback = const_cast<char *>(traceback);
    int r = tether_request_reply_error_full(req, &c);
    return r == TETHER_EALREADY ? 0 : r;
}

/*
 * Reply the error a handler returned in a result<T>. An empty type, which the C API
 * refuses, becomes "RuntimeError", so that the caller sees an error and not nil. A
 * protocol type that the caller's library would read as its own failure
 * ("tether.Timeout": tether_err_code() gives its local code) is a local failure of a
 * call the handler made and passed on: it goes as a "RuntimeError" saying so, as a
 * thrown tether::error does, lest the caller think its own call timed out.
 */
inline int
reply_error(tether_request *req, const error_info &e) noexcept
{
    if (!e.type.empty() && tether_err_code(e.type.c_str()) != TETHER_EREMOTE) {
        int r = tether_request_reply_error(req, "RuntimeError",
                                           "a tether operation in the handler failed: %s: %s",
                                           e.type.c_str(), e.message.c_str());
        return r == TETHER_EALREADY ? 0 : r;
    }
    const char *message =
        e.message.empty() && e.code < 0 ? tether_strerror(e.code) : e.message.c_str();
    return reply_error_c(req, e.type.empty() ? "RuntimeError" : e.type.c_str(), message,
                         e.traceback.empty() ? nullptr : e.traceback.c_str());
}

template <class T>
int
reply_with(tether_request *req, const T &x)
{
    writer w;
    tether::write(w, x);
    tether_value *v = nullptr;
    int r = w.make_value(&v);
    if (r < 0) {
        /* What the handler returned cannot be sent (a string not UTF-8, say). */
        std::string why = w.code() < 0 ? w.failure().message : tether_strerror(r);
        r = tether_request_reply_error(req, "TypeError", "cannot send the result: %s",
                                       why.c_str());
        return r == TETHER_EALREADY ? 0 : r;
    }
    (void)tether_request_reply_value(req, v);
    tether_value_unref(v);
    return 0;
}

/* T, in a parameter where it is not deduced: a reply<R> sends an R. */
template <class T> struct same {
    using type = T;
};

} // namespace detail

/*
 * A request kept to reply later (request::keep<R>()): one reply, an R or an error, from
 * any thread. Moves only; see request::keep for what dropping it does.
 */
template <class R = value> class reply {
  public:
    reply() = default;
    reply(reply &&) noexcept = default;
    reply &operator=(reply &&) noexcept = default;
    reply(const reply &) = delete;
    reply &operator=(const reply &) = delete;

    /*
     * Reply x (tether_request_reply_value; R void: nil, send()). TETHER_EALREADY once
     * replied; an x that cannot be sent (a string not UTF-8) replies a TypeError and
     * fails with it. Replying to a cancelled call succeeds and sends nothing.
     * Thread: any.
     */
    template <class T = R, std::enable_if_t<!std::is_void_v<T>, int> = 0>
    result<void>
    try_send(const typename detail::same<T>::type &x)
    {
        if (int r = take(); r < 0) {
            return error_info::from_code(r);
        }
        writer w;
        tether::write(w, x);
        tether_value *v = nullptr;
        if (w.make_value(&v) < 0) {
            (void)detail::reply_with(h_.get(), x); /* the caller gets the TypeError */
            return w.code() < 0 ? w.failure() : error_info::from_code(TETHER_EINVAL);
        }
        int r = tether_request_reply_value(h_.get(), v);
        tether_value_unref(v);
        return detail::check(r);
    }
    template <class T = R, std::enable_if_t<std::is_void_v<T>, int> = 0>
    result<void>
    try_send()
    {
        if (int r = take(); r < 0) {
            return error_info::from_code(r);
        }
        return detail::check(tether_request_reply_value(h_.get(), nullptr));
    }
    /* Reply an error, as a handler returning it does. TETHER_EALREADY once replied.
     * Thread: any. */
    result<void>
    try_fail(const error_info &e)
    {
        if (int r = take(); r < 0) {
            return error_info::from_code(r);
        }
        return detail::check(detail::reply_error(h_.get(), e));
    }
#if TETHER_CPP_EXCEPTIONS
    template <class T = R, std::enable_if_t<!std::is_void_v<T>, int> = 0>
    void
    send(const typename detail::same<T>::type &x)
    {
        try_send(x).value();
    }
    template <class T = R, std::enable_if_t<std::is_void_v<T>, int> = 0>
    void
    send()
    {
        try_send().value();
    }
    void
    fail(const error_info &e)
    {
        try_fail(e).value();
    }
#endif
    /* Whether the caller cancelled the call or went (tether_request_is_cancelled): the
     * work may stop; a reply is still allowed. Thread: any. */
    bool
    cancelled() const
    {
        return h_.get() && tether_request_is_cancelled(h_.get()) == 1;
    }
    /* Whether it holds a request not replied to yet. */
    explicit operator bool() const noexcept
    {
        return h_.get() && !replied_;
    }
    /* The C request, borrowed. */
    tether_request *
    get() const noexcept
    {
        return h_.get();
    }

  private:
    friend class request;
    explicit reply(tether_request *kept) : h_(detail::handle<tether_request>::adopt(kept))
    {
    }
    /* The one reply this object may send: TETHER_EINVAL when empty, TETHER_EALREADY
     * after the first. */
    int
    take() noexcept
    {
        if (!h_.get()) {
            return TETHER_EINVAL;
        }
        if (replied_) {
            return TETHER_EALREADY;
        }
        replied_ = true;
        return 0;
    }
    detail::handle<tether_request> h_;
    bool replied_ = false;
};

template <class R>
reply<R>
request::keep() const
{
    return reply<R>(tether_request_ref(req_));
}

namespace detail {

template <class F> struct service : service_base {
    using sig = callable_signature<F>;
    using R = typename sig::result_type;
    using args = arg_types<typename sig::params>;
    using params = typename args::type;

    explicit service(F f) : fn(std::move(f))
    {
    }
    F fn;

    /* The C handler: noexcept, since nothing may unwind through libtether's C frames. */
    static int
    handle(tether_request *req, void *userdata) noexcept
    {
        return static_cast<service *>(userdata)->handle_typed(req);
    }

    /*
     * Read the arguments, call fn, reply. Everything that may throw is inside the try:
     * a convert<T>::read of the user's, a std::bad_alloc while reading what a peer
     * sent, the handler itself. The handlers reply without allocating where they can;
     * one that fails to build its reply (out of memory) falls to the last catch, which
     * returns TETHER_ENOMEM for the C side to answer with a generic error.
     */
    int
    handle_typed(tether_request *req) noexcept
    {
#if TETHER_CPP_EXCEPTIONS
        try {
            try {
                return read_and_run(req);
            } catch (const remote_error &e) {
                return reply_error(req, e.info());
            } catch (const error &e) {
                if (e.code() == TETHER_EREMOTE) {
                    return reply_error(req, e.info());
                }
                /* A local failure of something the handler did (a call of its own that
                 * timed out, say): replied with its tether.* type, the caller would take
                 * it for a failure of its own call. */
                int r = tether_request_reply_error(req, "RuntimeError",
                                                   "a tether operation in the handler failed: %s",
                                                   e.what());
                return r == TETHER_EALREADY ? 0 : r;
            } catch (const std::invalid_argument &e) {
                return reply_error_c(req, "ValueError", e.what(), nullptr);
            } catch (const std::domain_error &e) {
                return reply_error_c(req, "ValueError", e.what(), nullptr);
            } catch (const std::out_of_range &e) {
                return reply_error_c(req, "IndexError", e.what(), nullptr);
            } catch (const std::bad_alloc &e) {
                return reply_error_c(req, "MemoryError", e.what(), nullptr);
            } catch (const std::exception &e) {
                return reply_error_c(req, "RuntimeError", e.what(), nullptr);
            } catch (...) {
                return reply_error_c(req, "RuntimeError", "unknown C++ exception", nullptr);
            }
        } catch (...) {
            return TETHER_ENOMEM;
        }
#else
        return read_and_run(req);
#endif
    }

    int
    read_and_run(tether_request *req)
    {
        constexpr std::size_t positional = std::tuple_size_v<params> - args::wants_keywords;
        params p{};
        {
            reader r(tether_request_get_args(req));
            if (!r.args(positional) ||
                !convert<params>::items(r, p, std::make_index_sequence<positional>{})) {
                return reply_error_c(req, "TypeError", r.message().c_str(), nullptr);
            }
        }
        /* Counted first: most calls have none, and then no value is made. */
        if (tether_request_get_kwargs_count(req) > 0) {
            if constexpr (args::wants_keywords) {
                reader r(tether_request_get_kwargs(req));
                if (!convert<keywords>::read(r, std::get<positional>(p))) {
                    return reply_error_c(req, "TypeError", r.message().c_str(), nullptr);
                }
            } else {
                std::string m =
                    std::string(tether_request_get_method(req)) + "() takes no keyword arguments";
                return reply_error_c(req, "TypeError", m.c_str(), nullptr);
            }
        }
        return run(req, p);
    }

    int
    run(tether_request *req, params &p)
    {
        request rq(req);
        auto invoke = [&]() -> decltype(auto) {
            if constexpr (args::wants_request) {
                return std::apply(
                    [&](auto &...a) -> decltype(auto) { return fn(rq, std::move(a)...); }, p);
            } else {
                return std::apply([&](auto &...a) -> decltype(auto) { return fn(std::move(a)...); },
                                  p);
            }
        };
        if constexpr (std::is_void_v<R>) {
            invoke();
            return 0;
        } else if constexpr (is_result<plain<R>>::value) {
            auto out = invoke();
            if (!out.ok()) {
                return reply_error(req, out.error());
            }
            if constexpr (std::is_void_v<typename is_result<plain<R>>::type>) {
                return 0;
            } else {
                return reply_with(req, out.value());
            }
        } else {
            return reply_with(req, invoke());
        }
    }
};

/* A member function bound to its object, as a callable of the same signature. */
template <class T, class M, class R, class Params> struct bound_member;
template <class T, class M, class R, class... A> struct bound_member<T, M, R, std::tuple<A...>> {
    T *object;
    M method;
    R
    operator()(A... a) const
    {
        return (object->*method)(std::forward<A>(a)...);
    }
};

/* The services a host or client registered: owned here, alive as long as it is.
 * Thread: any (add may run on several threads at once). */
class service_list {
  public:
    template <class F, class Add>
    result<void>
    add(F fn, Add &&add_c)
    {
        auto s = std::make_unique<service<F>>(std::move(fn));
        std::lock_guard<std::mutex> lock(mutex_);
        /* Room first: once the C side points at s, keeping it must not fail. */
        list_.reserve(list_.size() + 1);
        int r = add_c(&service<F>::handle, static_cast<void *>(s.get()));
        if (r < 0) {
            return error_info::from_code(r);
        }
        list_.push_back(std::move(s));
        return {};
    }

  private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<service_base>> list_;
};

} // namespace detail

/* ---------------------------------------------------------------------------------
 * Objects by reference: tether_object
 *
 * tether::object holds one reference to a tether_object: a local object this process
 * exports, or a proxy for a peer's object. It travels in values by reference (an
 * argument, a result, inside a container), and a proxy's methods are called as a
 * connection's services are. A C++ class is exported with tether::object_class<T>,
 * whose methods are registered once per class; host::new_object() and
 * client::new_object() make objects of it around a std::shared_ptr<T>, which the library
 * holds while any reference to the object exists, on either side (see "Objects" in
 * tether.h).
 * ------------------------------------------------------------------------------- */

namespace detail {

/* What a local object made here carries as its userdata, as an object_holder_base *
 * converted to void * (and read back the same way). */
struct object_holder_base {
    virtual ~object_holder_base() = default;
    virtual const void *class_key() const noexcept = 0;
};

/*
 * The class names of the object_class<T> descriptions alive, by address: what
 * tether_object_get_type_name() gives for a local object is its class's name pointer,
 * so object::local<T>() finds by it that an object was made by an object_class<T>
 * before it reads the userdata as ours (an object made through the C API has a userdata
 * of its own). The registry is never destroyed: descriptions in static storage leave it
 * at exit, in any order.
 */
template <class T> class class_names {
  public:
    static void
    add(const char *name)
    {
        registry &r = get();
        std::lock_guard<std::mutex> lock(r.mutex);
        r.names.push_back(name);
    }
    static void
    remove(const char *name) noexcept
    {
        registry &r = get();
        std::lock_guard<std::mutex> lock(r.mutex);
        auto at = std::find(r.names.begin(), r.names.end(), name);
        if (at != r.names.end()) {
            r.names.erase(at);
        }
    }
    static bool
    has(const char *name) noexcept
    {
        registry &r = get();
        std::lock_guard<std::mutex> lock(r.mutex);
        return std::find(r.names.begin(), r.names.end(), name) != r.names.end();
    }

  private:
    struct registry {
        std::mutex mutex;
        std::vector<const char *> names;
    };
    static registry &
    get() noexcept
    {
        static registry *r = new registry;
        return *r;
    }
};

} // namespace detail

class object : public detail::calling<object> {
  public:
    object() = default;
    static object
    adopt(tether_object *o) noexcept
    {
        return object(detail::handle<tether_object>::adopt(o));
    }
    static object
    borrow(tether_object *o) noexcept
    {
        return object(detail::handle<tether_object>::borrow(o));
    }

    /* 1 for a proxy of a peer's object (tether_object_is_remote). Thread: any. */
    bool
    remote() const
    {
        return tether_object_is_remote(h_.get()) == 1;
    }
    /* The class name, or the type name its owner sent. Thread: any. */
    std::string
    type_name() const
    {
        const char *s = tether_object_get_type_name(h_.get());
        return s ? s : "";
    }
    /* The id on the wire. Thread: any. */
    std::uint64_t
    id() const
    {
        return tether_object_get_id(h_.get());
    }
    /*
     * The C++ object of a local object made by new_object() of an object_class<T>;
     * nullptr for a proxy, another class, or an object the C API made. A proxy sent
     * back to its owner arrives as the local object, so a service can find its own
     * objects in its arguments. Thread: any.
     */
    template <class T> std::shared_ptr<T> local() const;

    explicit operator bool() const noexcept
    {
        return h_.get() != nullptr;
    }
    /* The C object, borrowed. */
    tether_object *
    get() const noexcept
    {
        return h_.get();
    }

  private:
    explicit object(detail::handle<tether_object> h) : h_(std::move(h))
    {
    }
    friend class detail::calling<object>;
    /* The C calls detail::calling makes: tether_object_* on the arguments as values. */
    int
    send_call(const tether_call_options *options, const char *method, writer &w, writer *kw,
              tether_value **ret, tether_error *err) const
    {
        return detail::with_values(w, kw, [&](tether_value *args, tether_value *kwargs) {
            return tether_object_call_values(h_.get(), method, args, kwargs, options, ret, err);
        });
    }
    int
    send_call_async(const tether_call_options *options, const char *method, writer &w, writer *kw,
                    tether_future **f) const
    {
        return detail::with_values(w, kw, [&](tether_value *args, tether_value *kwargs) {
            return tether_object_call_async_values(h_.get(), method, args, kwargs, options, f);
        });
    }
    int
    send_notify(const char *method, writer &w, writer *kw) const
    {
        return detail::with_values(w, kw, [&](tether_value *args, tether_value *kwargs) {
            return tether_object_notify_values(h_.get(), method, args, kwargs);
        });
    }

    detail::handle<tether_object> h_;
};

/* An object travels by reference; an empty handle is nil. */
template <> struct convert<object> {
    static void
    write(writer &w, const object &o)
    {
        if (!o) {
            w.nil();
            return;
        }
        unsigned char small[32];
        std::size_t len = 0;
        int r = tether_object_get_msgpack(o.get(), small, sizeof small, &len);
        std::vector<unsigned char> big;
        if (r == TETHER_EMSGSIZE) {
            big.resize(len);
            r = tether_object_get_msgpack(o.get(), big.data(), big.size(), &len);
        }
        if (r < 0) {
            w.fail(r);
            return;
        }
        tether_object *one = o.get();
        w.raw(big.empty() ? small : big.data(), len, &one, 1, nullptr, 0);
    }
    /* nil is an empty object, as the C reader's "o" gives NULL. */
    static bool
    read(reader &r, object &out)
    {
        if (r.peek() == reader::kind::nil) {
            out = object();
            return r.nil();
        }
        tether_object *o = nullptr;
        if (!r.ref(o)) {
            return false;
        }
        out = object::borrow(o);
        return true;
    }
};

namespace detail {

template <class T> struct object_holder : object_holder_base {
    std::shared_ptr<T> object;
    std::shared_ptr<const void> cls; /* keeps the class description alive */
    const void *key;

    const void *
    class_key() const noexcept override
    {
        return key;
    }
};

/* A callable taking the object first, bound to one object, as a callable without it. */
template <class T, class F, class R, class Params> struct bound_first;
template <class T, class F, class R, class... A> struct bound_first<T, F, R, std::tuple<A...>> {
    T *object;
    const F *fn;
    R
    operator()(A... a) const
    {
        return (*fn)(*object, std::forward<A>(a)...);
    }
};

template <class Tuple> struct drop_first;
template <class First, class... Rest> struct drop_first<std::tuple<First, Rest...>> {
    using type = std::tuple<Rest...>;
};

} // namespace detail

template <class T>
std::shared_ptr<T>
object::local() const
{
    if (!h_.get() || remote()) {
        return nullptr;
    }
    /* Only an object_class<T>'s objects carry an object_holder<T>: any other userdata
     * is not ours to read. */
    if (!detail::class_names<T>::has(tether_object_get_type_name(h_.get()))) {
        return nullptr;
    }
    auto *holder = static_cast<detail::object_holder_base *>(tether_object_get_userdata(h_.get()));
    return static_cast<detail::object_holder<T> *>(holder)->object;
}

/*
 * The description of an exported C++ class T: its name (what peers see) and its
 * methods, each a member function of T or a callable taking T & first, with typed
 * parameters and result as services have, run in the context given (tether_method).
 * Register every method before the first object is made: objects share the table.
 * Copies share one description.
 */
template <class T> class object_class {
  public:
    explicit object_class(std::string name) : d_(std::make_shared<data>())
    {
        d_->name = std::move(name);
    }

    /* A member function of T. */
    template <class M>
    object_class &
    method(std::string name, context ctx, M T::*member)
    {
        using sig = detail::signature<M T::*>;
        using bound =
            detail::bound_member<T, M T::*, typename sig::result_type, typename sig::params>;
        add(std::move(name), ctx, [member](tether_request *req, T &self) {
            detail::service<bound> s(bound{&self, member});
            return s.handle_typed(req);
        });
        return *this;
    }
    /* A callable taking T & first, such as a lambda [](T &self, int x) { ... }. */
    template <class F, class = std::enable_if_t<!std::is_member_function_pointer_v<F>>>
    object_class &
    method(std::string name, context ctx, F fn)
    {
        using sig = detail::callable_signature<F>;
        using rest = typename detail::drop_first<typename sig::params>::type;
        using bound = detail::bound_first<T, F, typename sig::result_type, rest>;
        add(std::move(name), ctx, [fn = std::move(fn)](tether_request *req, T &self) {
            detail::service<bound> s(bound{&self, &fn});
            return s.handle_typed(req);
        });
        return *this;
    }
    /* Where T's last reference is dropped once the last reference to an object goes
     * (tether_class.release_context): by default on the thread that drops it, which may
     * be the I/O thread; context::main in the owner's dispatch; context::pool. */
    object_class &
    release_in(context ctx)
    {
        refuse_if_frozen("release_in");
        d_->release_context = ctx;
        return *this;
    }

    /* The C class description, complete from the first call on (no method may be added
     * after). */
    const tether_class *
    c_class() const
    {
        data &d = *d_;
        std::call_once(d.once, [&d] {
            d.frozen = true;
            d.table.clear(); /* from a try that threw */
            for (auto &m : d.methods) {
                d.table.push_back(
                    tether_method{m.name.c_str(), static_cast<tether_context>(m.ctx), &dispatch});
            }
            d.table.push_back(tether_method{nullptr, TETHER_CONTEXT_IO, nullptr});
            d.cls = tether_class{};
            d.cls.name = d.name.c_str();
            d.cls.methods = d.table.data();
            d.cls.release = &release;
            d.cls.release_context = static_cast<tether_context>(d.release_context);
            detail::class_names<T>::add(d.cls.name);
            d.registered = true;
        });
        return &d.cls;
    }

    /* Make the userdata of a new object around obj (owned by the caller until the C
     * object takes it). */
    std::unique_ptr<detail::object_holder<T>>
    holder(std::shared_ptr<T> obj) const
    {
        auto h = std::make_unique<detail::object_holder<T>>();
        h->object = std::move(obj);
        h->cls = d_;
        h->key = d_.get();
        return h;
    }

  private:
    struct method_entry {
        std::string name;
        context ctx;
        std::function<int(tether_request *, T &)> run;
    };
    struct data {
        std::string name;
        std::vector<method_entry> methods;
        std::vector<tether_method> table;
        tether_class cls{};
        context release_context = context::io;
        std::once_flag once;
        std::atomic<bool> frozen{false};
        bool registered = false;

        ~data()
        {
            if (registered) {
                detail::class_names<T>::remove(cls.name);
            }
        }
    };

    /* The table is shared by the objects made: what changes after the first would
     * apply to some objects and not others, or race with their calls. */
    void
    refuse_if_frozen(const char *what) const
    {
        if (d_->frozen) {
            std::fprintf(stderr, "tether: object_class %s: %s after the first object\n",
                         d_->name.c_str(), what);
            std::abort();
        }
    }

    template <class Run>
    void
    add(std::string name, context ctx, Run run)
    {
        refuse_if_frozen(("method " + name + " added").c_str());
        d_->methods.push_back(method_entry{std::move(name), ctx, std::move(run)});
    }

    /* The C handler of every method: noexcept, as service::handle (each method's run
     * catches what its handler throws). */
    static int
    dispatch(tether_request *req, void *userdata) noexcept
    {
        auto *h = static_cast<detail::object_holder<T> *>(
            static_cast<detail::object_holder_base *>(userdata));
        auto *d = static_cast<const data *>(h->key);
        const char *name = tether_request_get_method(req);
        for (const auto &m : d->methods) {
            if (m.name == name) {
                return m.run(req, *h->object);
            }
        }
        return tether_request_reply_error(req, "AttributeError", "no method %s", name);
    }
    static void
    release(void *userdata) noexcept
    {
        delete static_cast<detail::object_holder_base *>(userdata);
    }

    std::shared_ptr<data> d_;
};

namespace detail {

/* new_object of host and client: make_c(cls, userdata, &ret) is the C constructor. */
template <class T, class Make>
result<object>
new_object(const object_class<T> &cls, std::shared_ptr<T> obj, Make make_c)
{
    if (!obj) {
        return error_info::from_code(TETHER_EINVAL);
    }
    auto h = cls.holder(std::move(obj));
    tether_object *o = nullptr;
    int r =
        make_c(cls.c_class(), static_cast<void *>(static_cast<object_holder_base *>(h.get())), &o);
    if (r < 0) {
        return error_info::from_code(r);
    }
    h.release(); /* the object's now: its release deletes it */
    return object::adopt(o);
}

} // namespace detail

/* ---------------------------------------------------------------------------------
 * Spawned interpreters: tether_child
 * ------------------------------------------------------------------------------- */

/*
 * A child interpreter started by host::spawn(): its root object's proxy (the script's or
 * module's module, or the object made), its connection and its process. Copies share
 * the child; when the last reference to it goes, the child is terminated if it still
 * runs (tether_child_unref).
 */
class child {
  public:
    child() = default;
    static child
    adopt(tether_child *c) noexcept
    {
        return child(detail::handle<tether_child>::adopt(c));
    }

    /* The proxy of its root object: call the script's functions through it
     * (tether_child_get_root). Thread: any. */
    object
    root() const
    {
        return object::borrow(tether_child_get_root(h_.get()));
    }
    /* Its connection: a client of the host like any other. Thread: any. */
    tether::conn
    conn() const
    {
        return tether::conn::borrow(tether_child_get_conn(h_.get()));
    }
    /* Its process id. Thread: any. */
    std::int64_t
    pid() const
    {
        return tether_child_get_pid(h_.get());
    }
    /* tether_child_terminate: close its connection, then SIGTERM, then SIGKILL.
     * Thread: any. */
    result<void>
    try_terminate() const
    {
        return detail::check(tether_child_terminate(h_.get()));
    }
    /* Wait up to timeout for it to exit: its exit code, or minus the signal that ended
     * it; TETHER_ETIMEDOUT while it runs (tether_child_wait). Thread: any. */
    result<int>
    try_wait(std::chrono::microseconds timeout = infinite) const
    {
        int status = 0;
        int r = tether_child_wait(h_.get(), detail::to_usec(timeout), &status);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return status;
    }
#if TETHER_CPP_EXCEPTIONS
    void
    terminate() const
    {
        try_terminate().value();
    }
    int
    wait(std::chrono::microseconds timeout = infinite) const
    {
        return try_wait(timeout).value();
    }
#endif
    explicit operator bool() const noexcept
    {
        return h_.get() != nullptr;
    }
    /* The C child, borrowed. */
    tether_child *
    get() const noexcept
    {
        return h_.get();
    }

  private:
    explicit child(detail::handle<tether_child> h) : h_(std::move(h))
    {
    }
    detail::handle<tether_child> h_;
};

/* ---------------------------------------------------------------------------------
 * What hosts and clients share
 * ------------------------------------------------------------------------------- */

namespace detail {

/*
 * The C functions an endpoint class wraps: tether_host_* or tether_client_*, and what
 * stops it (no handler starts after it: a host stops serving, a client closes).
 */
#define TETHER_CPP_ENDPOINT_API(kind, stop_fn)                                                     \
    struct kind##_api {                                                                            \
        using handle = tether_##kind;                                                              \
        static constexpr auto add_service = &tether_##kind##_add_service;                          \
        static constexpr auto new_object = &tether_##kind##_new_object;                            \
        static constexpr auto dispatch = &tether_##kind##_dispatch;                                \
        static constexpr auto wait = &tether_##kind##_wait;                                        \
        static constexpr auto fd = &tether_##kind##_get_fd;                                        \
        static constexpr auto stop = &stop_fn;                                                     \
        static constexpr auto unref = &tether_##kind##_unref;                                      \
    };
TETHER_CPP_ENDPOINT_API(host, tether_host_stop)
TETHER_CPP_ENDPOINT_API(client, tether_client_close)
#undef TETHER_CPP_ENDPOINT_API

/*
 * A host or a client (Api: host_api or client_api): the C endpoint, owned, and the
 * services registered through it, which outlive every handler that runs them. Moves
 * only. Destroying it stops the endpoint (a host stops serving, a client closes), drops
 * the endpoint, then frees the services.
 *
 * That the services outlive their handlers rests on the C side: tether_host_stop() and
 * the last tether_client_unref() return only once no handler of the host or client runs
 * on another thread, and none starts after. So the endpoint must hold the last reference
 * to its C handle when it is destroyed: code that took references of its own through
 * get() (tether_host_ref, tether_client_ref) drops them first. Destroyed from one of its
 * own handlers, the C side cannot wait for that handler (tether_host_stop returns
 * TETHER_EDEADLK): it returns, and the services go while that handler still runs.
 */
template <class Api>
class endpoint {
  public:
    using handle = typename Api::handle;

    endpoint(endpoint &&other) noexcept
        : p_(std::exchange(other.p_, nullptr)), services_(std::move(other.services_))
    {
    }
    endpoint &
    operator=(endpoint &&other) noexcept
    {
        if (this != &other) {
            close();
            p_ = std::exchange(other.p_, nullptr);
            services_ = std::move(other.services_);
        }
        return *this;
    }
    /* Thread: any but a handler's. */
    ~endpoint()
    {
        close();
    }

    /*
     * Register a service (tether_host_add_service, tether_client_add_service) whose
     * handler runs in ctx: fn is a callable with typed parameters and result (see
     * "Services"). The endpoint keeps fn until it is destroyed. Thread: any.
     */
    template <class F>
    result<void>
    try_add_service(cstring name, context ctx, F fn)
    {
        if (!services_) { /* moved from */
            return error_info::from_code(TETHER_EINVAL);
        }
        return services_->add(std::move(fn), [&](tether_handler_fn handler, void *userdata) {
            return Api::add_service(p_, name.c_str(), static_cast<tether_context>(ctx), handler,
                                    userdata);
        });
    }
    /* A member function of object (which must outlive the endpoint's services). */
    template <class T, class M>
    result<void>
    try_add_service(cstring name, context ctx, M T::*method, T *object)
    {
        using sig = signature<M T::*>;
        using bound = bound_member<T, M T::*, typename sig::result_type, typename sig::params>;
        return try_add_service(name, ctx, bound{object, method});
    }
#if TETHER_CPP_EXCEPTIONS
    template <class F>
    void
    add_service(cstring name, context ctx, F fn)
    {
        try_add_service(name, ctx, std::move(fn)).value();
    }
    template <class T, class M>
    void
    add_service(cstring name, context ctx, M T::*method, T *object)
    {
        try_add_service(name, ctx, method, object).value();
    }
#endif

    /* An exported object of class cls around obj, owned by the endpoint: its MAIN
     * methods run in the endpoint's dispatch (tether_host_new_object,
     * tether_client_new_object). Thread: any. */
    template <class T>
    result<object>
    try_new_object(const object_class<T> &cls, std::shared_ptr<T> obj)
    {
        return detail::new_object(cls, std::move(obj),
                                  [this](const tether_class *c, void *ud, tether_object **ret) {
                                      return Api::new_object(p_, c, ud, ret);
                                  });
    }
#if TETHER_CPP_EXCEPTIONS
    template <class T>
    object
    new_object(const object_class<T> &cls, std::shared_ptr<T> obj)
    {
        return try_new_object(cls, std::move(obj)).value();
    }
#endif

    /* tether_host_dispatch, tether_client_dispatch: true while work remains.
     * Thread: main. */
    result<bool>
    try_dispatch(std::chrono::microseconds budget = infinite)
    {
        int r = Api::dispatch(p_, to_usec(budget));
        if (r < 0) {
            return error_info::from_code(r);
        }
        return r > 0;
    }
    /* tether_host_wait, tether_client_wait: true if it ran something. Thread: main. */
    result<bool>
    try_wait(std::chrono::microseconds timeout = infinite)
    {
        int r = Api::wait(p_, to_usec(timeout));
        if (r < 0) {
            return error_info::from_code(r);
        }
        return r > 0;
    }
#if TETHER_CPP_EXCEPTIONS
    bool
    dispatch(std::chrono::microseconds budget = infinite)
    {
        return try_dispatch(budget).value();
    }
    bool
    wait(std::chrono::microseconds timeout = infinite)
    {
        return try_wait(timeout).value();
    }
#endif

    /* tether_host_get_fd, tether_client_get_fd. Thread: any. */
    int
    fd() const
    {
        return Api::fd(p_);
    }
    /* The C endpoint, borrowed. */
    handle *
    get() const noexcept
    {
        return p_;
    }

  protected:
    explicit endpoint(handle *p) : p_(p), services_(std::make_unique<service_list>())
    {
    }

    handle *p_ = nullptr;

  private:
    void
    close() noexcept
    {
        if (p_) {
            /* Stop, then drop the last reference: once both returned, no handler runs
             * or will start (see above), and the services they use may go. */
            (void)Api::stop(p_);
            p_ = Api::unref(p_);
        }
        services_.reset();
    }

    std::unique_ptr<service_list> services_;
};

} // namespace detail

/* One connected client, as tether_host_list_clients describes it, with its own copies. */
struct client_info {
    tether::conn conn;
    std::string name;
    std::int64_t pid = 0;
    std::string language, language_version; /* "c", "python"; "3.11.2" */
    std::int64_t connected_unix_usec = 0;   /* wall clock of its handshake */
    std::uint32_t calls_in_flight = 0;      /* its calls running here plus ours on it */
    std::uint64_t calls_in = 0, calls_out = 0, bytes_in = 0, bytes_out = 0;
    std::vector<std::string> services; /* the names it announced, in order */
};

/* ---------------------------------------------------------------------------------
 * Hosts: tether_host
 * ------------------------------------------------------------------------------- */

class host : public detail::endpoint<detail::host_api> {
  public:
    /* tether_host_new; the calling thread becomes the host's main thread. Thread: any. */
    static result<host>
    try_make(const tether_host_options &options = {})
    {
        tether_host *h = nullptr;
        int r = tether_host_new(&options, &h);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return host(h);
    }
#if TETHER_CPP_EXCEPTIONS
    explicit host(const tether_host_options &options = {}) : host(try_make(options).value())
    {
    }
#endif
    /* Destroying a host stops it (tether_host_stop), drops it, then frees its services
     * (see detail::endpoint). Thread: any but a handler's. */

    /* tether_host_start: listen and serve. Thread: any. */
    result<void>
    try_start()
    {
        return detail::check(tether_host_start(p_));
    }
#if TETHER_CPP_EXCEPTIONS
    void
    start()
    {
        try_start().value();
    }
#endif
    /* tether_host_stop. Thread: any but a handler's. */
    result<void>
    try_stop()
    {
        return detail::check(tether_host_stop(p_));
    }

    /*
     * Start a Python interpreter running options' script, module or object, and wait
     * until it is connected with its root object made (tether_host_spawn). A failure
     * carries the child's exception, with its traceback, when it raised (a SyntaxError,
     * an ImportError). Blocks: not from an IO handler. Thread: any.
     */
    result<child>
    try_spawn(const tether_spawn_options &options)
    {
        tether_child *c = nullptr;
        tether_error err = TETHER_ERROR_INIT;
        int r = tether_host_spawn(p_, &options, &c, &err);
        if (r < 0) {
            return error_info::take(r, &err);
        }
        tether_error_done(&err);
        return child::adopt(c);
    }
#if TETHER_CPP_EXCEPTIONS
    child
    spawn(const tether_spawn_options &options)
    {
        return try_spawn(options).value();
    }
#endif

    /* A connected client by its registered name (tether_host_get_client). Thread: any. */
    result<conn>
    try_client(cstring name) const
    {
        tether_conn *c = nullptr;
        int r = tether_host_get_client(p_, name.c_str(), &c);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return conn::adopt(c);
    }
#if TETHER_CPP_EXCEPTIONS
    conn
    client(cstring name) const
    {
        return try_client(name).value();
    }
#endif

    /* The connected clients, oldest first (tether_host_list_clients). Thread: any. */
    result<std::vector<client_info>>
    try_list_clients() const
    {
        tether_client_info *infos = nullptr;
        std::size_t count = 0;
        int r = tether_host_list_clients(p_, &infos, &count);
        if (r < 0) {
            return error_info::from_code(r);
        }
        /* Freed (with the references to the connections it holds) however this ends. */
        struct infos_guard {
            tether_client_info *infos;
            std::size_t count;
            ~infos_guard()
            {
                tether_client_infos_free(infos, count);
            }
        } guard{infos, count};
        std::vector<client_info> out;
        out.reserve(count);
        for (std::size_t i = 0; i < count; i++) {
            const tether_client_info &c = infos[i];
            client_info one;
            one.conn = tether::conn::borrow(c.conn);
            one.name = c.name ? c.name : "";
            one.pid = c.pid;
            one.language = c.language ? c.language : "";
            one.language_version = c.language_version ? c.language_version : "";
            one.connected_unix_usec = c.connected_unix_usec;
            one.calls_in_flight = c.calls_in_flight;
            one.calls_in = c.calls_in;
            one.calls_out = c.calls_out;
            one.bytes_in = c.bytes_in;
            one.bytes_out = c.bytes_out;
            one.services.assign(c.services, c.services + c.service_count);
            out.push_back(std::move(one));
        }
        return out;
    }
    /* Make a client reconnect (tether_host_reset_client), or tell it to go and not come
     * back (tether_host_disconnect_client): its calls in flight may finish first.
     * Thread: any. */
    result<void>
    try_reset_client(const tether::conn &client)
    {
        return detail::check(tether_host_reset_client(p_, client.get()));
    }
    result<void>
    try_disconnect_client(const tether::conn &client)
    {
        return detail::check(tether_host_disconnect_client(p_, client.get()));
    }
#if TETHER_CPP_EXCEPTIONS
    std::vector<client_info>
    list_clients() const
    {
        return try_list_clients().value();
    }
    void
    reset_client(const tether::conn &client)
    {
        try_reset_client(client).value();
    }
    void
    disconnect_client(const tether::conn &client)
    {
        try_disconnect_client(client).value();
    }
#endif

    /* tether_host_get_address ("" when none), tether_host_get_client_count.
     * Thread: any. */
    std::string
    address() const
    {
        const char *a = tether_host_get_address(p_);
        return a ? a : "";
    }
    int
    client_count() const
    {
        return tether_host_get_client_count(p_);
    }
  private:
    explicit host(tether_host *h) : endpoint(h)
    {
    }
};

/* ---------------------------------------------------------------------------------
 * Clients: tether_client
 * ------------------------------------------------------------------------------- */

class client : public detail::endpoint<detail::client_api> {
  public:
    /* tether_client_new (not connected); the calling thread becomes its main thread.
     * Thread: any. */
    static result<client>
    try_make(const tether_client_options &options = {})
    {
        tether_client *c = nullptr;
        int r = tether_client_new(&options, &c);
        if (r < 0) {
            return error_info::from_code(r);
        }
        return client(c);
    }
#if TETHER_CPP_EXCEPTIONS
    explicit client(const tether_client_options &options = {}) : client(try_make(options).value())
    {
    }
#endif
    /* Destroying a client closes the connection (tether_client_close), drops the
     * client, then frees its services (see detail::endpoint). Thread: any but a
     * handler's. */

    /* tether_client_connect; the error carries the host's reason. Thread: any. */
    result<void>
    try_connect()
    {
        tether_error err = TETHER_ERROR_INIT;
        int r = tether_client_connect(p_, &err);
        if (r < 0) {
            return error_info::take(r, &err);
        }
        tether_error_done(&err);
        return {};
    }
#if TETHER_CPP_EXCEPTIONS
    void
    connect()
    {
        try_connect().value();
    }
#endif

    /* The connection to the host (tether_client_get_conn; empty before the first
     * connect), valid across reconnects. Thread: any. */
    tether::conn
    conn() const
    {
        return tether::conn::borrow(tether_client_get_conn(p_));
    }
    /* tether_client_is_connected. Thread: any. */
    bool
    connected() const
    {
        return tether_client_is_connected(p_) == 1;
    }
    /* Close the connection without reconnecting, keeping the client and its services
     * (tether_client_close; its calls pending fail): connect() may connect it again.
     * Thread: any. */
    result<void>
    try_close()
    {
        return detail::check(tether_client_close(p_));
    }
#if TETHER_CPP_EXCEPTIONS
    void
    close()
    {
        try_close().value();
    }
#endif
  private:
    explicit client(tether_client *c) : endpoint(c)
    {
    }
};

} // namespace tether

#endif
