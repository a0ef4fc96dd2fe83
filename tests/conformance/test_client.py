"""What a conforming client must do (docs/protocol.md, "Conformance"), checked on the C
client (build/tether-conformance-client, from conformance-client.c) connecting to the
suite's raw peer acting as host. One test per rule, named after it."""

import time

from peer import (
    CANCEL,
    CONTROL,
    HELLO,
    NOTIFY,
    PING,
    PONG,
    PROGRESS,
    RELEASE,
    REQUEST,
    RESPONSE,
    WELCOME,
    Error,
    Ref,
    notify,
    request,
)


def test_client_hello_is_its_first_frame_with_every_key(listener, client_of):
    client = client_of("call")
    p = listener.accept()
    f = p.recv()
    assert f[0] == HELLO
    h = f[1]
    assert h["versions"][0] <= 1 <= h["versions"][1]
    assert h["name"] == "conformance-client"
    assert h["pid"] == client.proc.pid
    assert h["language"] == "c" and isinstance(h["language_version"], str)
    assert "token" not in h  # not over a Unix socket


def test_client_sends_nothing_before_welcome(listener, client_of):
    client_of("call")
    p = listener.accept()
    assert p.recv()[0] == HELLO
    assert p.quiet(0.5)  # still waiting for the answer: no request yet
    welcome = {
        "version": 1,
        "name": "late",
        "pid": 1,
        "max_frame_size": 1 << 24,
        "max_in_flight": 8,
        "client_name": "conformance-client",
    }
    p.send([WELCOME, welcome])
    assert p.recv_kind(REQUEST)[4] == "add"


def test_client_request_has_nonzero_id_chain_and_empty_kwargs(listener, client_of):
    client = client_of("call")
    p, _ = listener.accept_client()
    f = p.recv_kind(REQUEST)
    _, id, chain, target, method, args, kwargs, timeout_ms = f
    assert id != 0 and chain != 0 and target == 0
    assert (method, args, kwargs) == ("add", [2, 3], {})
    assert timeout_ms > 0
    p.send([RESPONSE, id, False, 5])
    f = p.recv_kind(NOTIFY)
    assert f[0] == NOTIFY and f[3:6] == ["bye", ["done"], {}]
    assert f[1] != 0  # a notification outside any handler starts a chain of its own
    status, out, err = client.finish()
    assert (status, out) == (0, "add=5\n"), err


def test_client_ignores_response_to_unknown_id(listener, client_of):
    client = client_of("call")
    p, _ = listener.accept_client()
    f = p.recv_kind(REQUEST)
    p.send([RESPONSE, f[1] + 1000, False, 99], [RESPONSE, f[1], False, 5])
    status, out, err = client.finish()
    assert (status, out) == (0, "add=5\n"), err


def test_client_accepts_error_response(listener, client_of):
    client = client_of("timeout")
    p, _ = listener.accept_client()
    f = p.recv_kind(REQUEST)
    p.send([RESPONSE, f[1], True, Error("tether.NoSuchService", "no busy here", None)])
    status, out, err = client.finish()
    assert status == 1 and "no busy here" in err


def test_client_progress_keeps_a_call_alive(listener, client_of):
    client = client_of("timeout")  # a 1 s silence timeout
    p, _ = listener.accept_client()
    f = p.recv_kind(REQUEST)
    assert f[7] == 1000
    for _ in range(25):  # 2.5 s in all, never 1 s of silence
        time.sleep(0.1)
        p.send([PROGRESS, [f[1]]])
    p.send([RESPONSE, f[1], False, "done late"])
    status, out, err = client.finish()
    assert (status, out) == (0, "busy=done late\n"), err


def test_client_cancels_a_call_after_its_silence_timeout(listener, client_of):
    client = client_of("timeout")
    p, _ = listener.accept_client()
    f = p.recv_kind(REQUEST)
    t0 = time.monotonic()
    assert p.recv_kind(CANCEL) == [CANCEL, f[1]]
    assert time.monotonic() - t0 >= 0.9
    status, out, err = client.finish()
    assert (status, out) == (0, "busy=error ETIMEDOUT\n"), err


def serving(listener, client_of):
    """A client in serve mode, after its announcement and its started() notification."""
    client = client_of("serve")
    p, _ = listener.accept_client()
    assert p.recv_kind(NOTIFY)[3] == "tether.announce"
    assert p.recv_kind(NOTIFY)[3] == "started"
    return client, p


def test_client_announces_its_services_right_after_welcome(listener, client_of):
    client_of("serve")
    p, _ = listener.accept_client()
    f = p.recv()
    assert f[:4] == [NOTIFY, 0, 0, "tether.announce"] and f[5] == {}
    assert sorted(f[4][0]) == ["call_host", "echo", "notify_back", "record", "recorded"]


def test_client_answers_ping_with_the_same_nonce(listener, client_of):
    _, p = serving(listener, client_of)
    p.send([PING, 2**64 - 1])
    assert p.recv() == [PONG, 2**64 - 1]


def test_client_answers_each_request_once(listener, client_of):
    _, p = serving(listener, client_of)
    p.send(request(1, "echo", ["a"]), request(2, "echo", ["b"]))
    got = sorted(p.recv_kind(RESPONSE)[1:] for _ in range(2))
    assert got == [[1, False, ["a"]], [2, False, ["b"]]]
    assert p.quiet(0.3)


def test_client_answers_unknown_service_with_no_such_service(listener, client_of):
    _, p = serving(listener, client_of)
    f = p.call(1, "nothing_here")
    assert f[2] is True and f[3].type == "tether.NoSuchService"


def test_client_notification_carries_its_handlers_chain(listener, client_of):
    _, p = serving(listener, client_of)
    p.send(request(1, "notify_back", chain=777))
    f = p.recv_kind(NOTIFY)
    assert f[1] == 777 and f[3] == "noted"
    assert p.recv_kind(RESPONSE)[1] == 1


def test_client_waiting_call_runs_its_chains_notifications(listener, client_of):
    _, p = serving(listener, client_of)
    p.send(request(1, "call_host", chain=4242))
    work = p.recv_kind(REQUEST)
    assert work[4] == "work" and work[2] == 4242  # the handler's call carries its chain
    # While the client's main thread waits for work(): a notification of another chain
    # (queued for later), one of the waiting chain, then a call-back of that chain.
    p.send(
        notify("record", ["other chain"], chain=99),
        notify("record", ["same chain"], chain=4242),
        request(2, "recorded", chain=4242),
    )
    assert p.recv_kind(RESPONSE) == [RESPONSE, 2, False, "same chain"]
    p.send([RESPONSE, work[1], False, "worked"])
    assert p.recv_kind(RESPONSE) == [RESPONSE, 1, False, "worked"]
    assert p.call(3, "recorded")[3] == "same chain,other chain"


def test_client_passes_our_object_back_as_owner_1_and_releases_it(listener, client_of):
    _, p = serving(listener, client_of)
    f = p.call(1, "echo", [Ref(0, 31, "PeerThing")])
    assert f[3] == [Ref(1, 31, "PeerThing")] and f[3][0].owner == 1
    assert p.recv_kind(RELEASE) == [RELEASE, [[31, 1]]]


def test_client_ignores_unknown_control_action(listener, client_of):
    _, p = serving(listener, client_of)
    p.send([CONTROL, "frobnicate", "a later version's action"])
    assert p.alive()


def test_client_disconnects_on_control_disconnect(listener, client_of):
    client, p = serving(listener, client_of)
    p.send([CONTROL, "disconnect", "go away"])
    assert p.closed()
    status, out, err = client.finish()
    assert status == 0 and out == "disconnected go away\n", err


def test_client_closes_on_unknown_kind(listener, client_of):
    client, p = serving(listener, client_of)
    p.send([14, 0])
    assert p.closed()
    assert client.finish()[1] == "lost\n"


def test_client_closes_on_welcome_after_the_handshake(listener, client_of):
    client, p = serving(listener, client_of)
    p.send([WELCOME, {"version": 1}])
    assert p.closed()
    assert client.finish()[1] == "lost\n"


def test_client_closes_on_request_id_zero(listener, client_of):
    client, p = serving(listener, client_of)
    p.send(request(0, "echo"))
    assert p.closed()
    assert client.finish()[1] == "lost\n"


def test_client_closes_on_duplicate_request_id_in_flight(listener, client_of):
    client, p = serving(listener, client_of)
    # call_host keeps id 1 in flight while it waits for work(); id 1 again is refused.
    p.send(request(1, "call_host"))
    assert p.recv_kind(REQUEST)[4] == "work"
    p.send(request(1, "echo", ["again"]))
    assert p.closed()
    assert client.finish()[1] == "lost\n"


def test_client_sends_progress_for_a_long_request(listener, client_of):
    _, p = serving(listener, client_of)
    p.send(request(1, "call_host", timeout_ms=300))
    work = p.recv_kind(REQUEST, skip=(PROGRESS,))
    f = p.recv()  # while we hold work() unanswered, the client's call_host keeps running
    assert f[0] == PROGRESS and 1 in f[1], f
    p.send([RESPONSE, work[1], False, "ok"])
    assert p.recv_kind(RESPONSE) == [RESPONSE, 1, False, "ok"]
