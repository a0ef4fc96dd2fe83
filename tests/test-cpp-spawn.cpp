/*
 * test-cpp-spawn: a C++ host spawns a Python child (include/tether.hpp), calls the
 * script's functions through its root proxy with typed results, receives the child's
 * exceptions with their tracebacks, serves a call-back from the child (to a C++ object
 * it was given) while calling it, and ends it. A plain program: exit status 0 passes.
 *
 * ctest: needs the Python package (the children import it from this build).
 */
#include "cpp-fixtures.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

#define CHECK(cond) CHECK_OR_EXIT(cond)

static const char script[] =
    "def add(a, b):\n"
    "    return a + b\n"
    "def scale(points, k):\n"
    "    return {name: [x * k for x in xs] for name, xs in points.items()}\n"
    "def boom():\n"
    "    raise KeyError('no such thing')\n"
    "def ask_host(calculator, x):\n"
    "    return calculator.triple(x) + 1\n";

int
main()
{
    tether_host_options ho{};
    ho.no_unix = true;
    tether::host h(ho);
    h.start();
    struct calculator {
        int calls = 0;
    };
    tether::object_class<calculator> calculator_class("Calculator");
    calculator_class.method("triple", tether::context::main, [](calculator &self, int x) {
        self.calls++;
        return 3 * x;
    });
    auto calc = std::make_shared<calculator>();

    tether_spawn_options so{};
    so.script = script;
    so.name = "cpp-child";
    tether::child c = h.spawn(so);
    CHECK(c.pid() > 0);
    tether::object root = c.root();
    CHECK(root.remote());

    CHECK(root.call<int>("add", 2, 3) == 5);
    CHECK(root.call<std::string>("add", "con", "cat") == "concat");
    using points = std::map<std::string, std::vector<double>>;
    points scaled = root.call<points>("scale", points{{"a", {1, 2}}, {"b", {}}}, 2);
    CHECK((scaled == points{{"a", {2, 4}}, {"b", {}}}));

    /* The child's exception, with its traceback. */
    bool caught = false;
    try {
        root.call<int>("boom");
    } catch (const tether::remote_error &e) {
        caught = true;
        CHECK(e.type() == "KeyError");
        CHECK(e.message().find("no such thing") != std::string::npos);
        CHECK(e.traceback().find("boom") != std::string::npos);
    }
    CHECK(caught);
    /* A result of the wrong type. */
    auto wrong = root.try_call<int>("add", "a", "b");
    CHECK(wrong.code() == TETHER_EINVAL && wrong.error().message == "expected int, got str");

    /* The host's main thread calls the child, which calls a MAIN method back. */
    tether::object calc_object = h.new_object(calculator_class, calc);
    CHECK(root.call<int>("ask_host", calc_object, 5) == 16);
    CHECK(calc->calls == 1);

    c.terminate();
    int status = c.wait(std::chrono::seconds(5));
    CHECK(status == 0 || status == -15);
    std::puts("ok");
    return 0;
}
