/*
 * test-cpp-noexcept: include/tether.hpp in a program built with -fno-exceptions (the
 * build adds it for this file): only the try_ forms exist, every failure comes back as a
 * tether::result holding the error_info, and a service reports its errors by returning
 * a result. A plain program: exit status 0 passes.
 */
#include "cpp-fixtures.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

#if TETHER_CPP_EXCEPTIONS
#error "this test must be built with -fno-exceptions"
#endif

#define CHECK(cond) CHECK_OR_EXIT(cond)

int
main()
{
    test_runtime_dir runtime_dir;
    {
        std::string name = "cpp-noexcept-" + std::to_string(getpid());
        tether_host_options ho{};
        ho.name = name.c_str();
        auto made = tether::host::try_make(ho);
        CHECK(made.ok());
        tether::host h = std::move(made).value();
        auto halve = [](int x) -> tether::result<int> {
            if (x % 2) {
                return tether::error_info{TETHER_EREMOTE, "ValueError", "odd number", {}};
            }
            return x / 2;
        };
        CHECK(h.try_add_service("halve", tether::context::pool, halve).ok());
        /* Errors the C API would not send as they are: without a type, and a local
         * failure (a call of the handler's that timed out) passed on. */
        auto untyped = []() -> tether::result<void> {
            return tether::error_info{TETHER_EREMOTE, "", "no type", {}};
        };
        CHECK(h.try_add_service("untyped", tether::context::io, untyped).ok());
        auto timed_out = []() -> tether::result<int> {
            return tether::error_info::from_code(TETHER_ETIMEDOUT);
        };
        CHECK(h.try_add_service("timed_out", tether::context::io, timed_out).ok());
        auto kept = [](tether::request &req) {
            tether::reply<int> r = req.keep<int>();
            CHECK(r.try_send(7).ok());
            CHECK(r.try_send(8).code() == TETHER_EALREADY);
        };
        CHECK(h.try_add_service("kept", tether::context::io, kept).ok());
        CHECK(h.try_start().ok());

        auto c = test_connect_client(h, "noexcept");
        CHECK(c.ok());
        tether::conn to_host = c.value().conn();

        auto seven = to_host.try_call<int>("kept");
        CHECK(seven.ok() && seven.value() == 7);
        auto r = to_host.try_call<int>("halve", 8);
        CHECK(r.ok() && r.value() == 4);
        auto odd = to_host.try_call<int>("halve", 3);
        CHECK(odd.code() == TETHER_EREMOTE);
        CHECK(odd.error().type == "ValueError" && odd.error().message == "odd number");
        auto mismatch = to_host.try_call<int>("halve", "x");
        CHECK(mismatch.code() == TETHER_EREMOTE && mismatch.error().type == "TypeError");
        CHECK(mismatch.error().message == "item 1: expected int, got str");
        auto no_type = to_host.try_call<void>("untyped");
        CHECK(no_type.code() == TETHER_EREMOTE && no_type.error().type == "RuntimeError");
        CHECK(no_type.error().message == "no type");
        auto passed_on = to_host.try_call<int>("timed_out");
        CHECK(passed_on.code() == TETHER_EREMOTE && passed_on.error().type == "RuntimeError");
        CHECK(passed_on.error().message ==
              std::string("a tether operation in the handler failed: tether.Timeout: ") +
                  tether_strerror(TETHER_ETIMEDOUT));
        auto f = to_host.try_call_async<int>("halve", 10);
        CHECK(f.ok());
        auto got = f.value().try_get();
        CHECK(got.ok() && got.value() == 5);

        auto v = tether::value::try_from(std::vector<int>{1, 2});
        CHECK(v.ok());
        auto wrong = v.value().try_as<std::string>();
        CHECK(wrong.code() == TETHER_EINVAL && wrong.error().message == "expected str, got array");
    }
    std::puts("ok");
    return 0;
}
