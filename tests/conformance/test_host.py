"""What a conforming host must do (docs/protocol.md, "Conformance"), checked on a real
C host (build/tether-testhost) by the raw peer of peer.py. One test per rule, named
after it."""

import fcntl
import os
import struct
import time

import msgpack
import pytest
from peer import (
    Error,
    BUFFERS_DONE,
    CANCEL,
    CONTROL,
    LOG,
    PING,
    PONG,
    PROGRESS,
    REFUSE,
    RELEASE,
    REQUEST,
    RESPONSE,
    WELCOME,
    Ref,
    frame,
    hello,
    notify,
    request,
)

# ---- handshake (section 6) ---------------------------------------------------------


def test_host_sends_nothing_before_hello(host):
    p = host.connect()
    assert p.quiet(0.3)
    p.close()


def test_welcome_carries_every_key(host):
    p = host.connect()
    w = p.handshake(name="keys")
    assert w["version"] == 1
    assert isinstance(w["name"], str) and w["name"]
    assert isinstance(w["pid"], int) and w["pid"] == host.proc.pid
    assert w["max_frame_size"] >= 1024
    assert w["max_in_flight"] >= 1
    assert w["client_name"] == "keys"
    p.close()


def test_version_is_highest_in_common_and_versions_are_full_uints(host):
    p = host.connect()
    # 2 where the host has buffers, 1 where its build has no shared memory for them.
    assert p.handshake(versions=(1, 2**64 - 1))["version"] in (1, 2)
    p.close()


def test_no_version_in_common_is_refused_version(host):
    p = host.connect()
    p.send(hello(versions=(3, 4)))
    f = p.recv()
    assert f[0] == REFUSE and f[1] == "version" and isinstance(f[2], str)
    assert p.closed()


def test_unknown_hello_keys_are_ignored(host):
    p = host.connect()
    assert p.handshake(name="extra", future_key={"a": [1, 2]})["client_name"] == "extra"
    p.close()


def refused(host, *bodies):
    p = host.connect()
    p.send(*bodies)
    f = p.recv()
    code = f[1] if f[0] == REFUSE else f
    assert p.closed()
    return code


def test_hello_without_name_is_refused_protocol(host):
    assert refused(host, hello(name=None)) == "protocol"


def test_hello_with_control_character_in_name_is_refused_protocol(host):
    assert refused(host, hello(name="a\x07b")) == "protocol"


def test_first_frame_not_hello_is_refused_protocol(host):
    assert refused(host, [4, 1, 0, 0, "add", [1, 2], {}, 0]) == "protocol"


def test_first_frame_not_msgpack_is_refused_protocol(host):
    assert refused(host, b"\xc1") == "protocol"


def test_hello_with_invalid_utf8_is_refused_protocol(host):
    body = b"\x92\x01\x82\xa8versions\x92\x01\x01\xa4name\xa2\xc3\x28"
    assert refused(host, body) == "protocol"


def test_first_frame_over_the_size_limit_is_refused_protocol(host):
    p = host.connect()
    p.send_raw(struct.pack(">I", 16 * 1024 * 1024 + 1))
    f = p.recv()
    assert f[0] == REFUSE and f[1] == "protocol"
    assert p.closed()


def test_missing_hello_is_refused_timeout(host):
    p = host.connect()
    f = p.recv(timeout=15)
    assert f[0] == REFUSE and f[1] == "timeout"
    assert p.closed()


def test_frames_sent_with_the_hello_are_served_after_welcome(host):
    p = host.connect()
    p.send(hello(name="eager"), request(1, "add", [2, 3]))
    assert p.recv()[0] == WELCOME
    assert p.recv_kind(RESPONSE) == [RESPONSE, 1, False, 5]
    p.close()


def test_frames_sent_with_a_refused_hello_are_discarded(host):
    p = host.connect()
    p.send(hello(name="eager-refused", versions=(5, 6)), notify("note", ["after a refusal"]))
    f = p.recv()
    assert f[0] == REFUSE and f[1] == "version"
    assert p.closed()
    q = host.open()
    notes = q.call(1, "notes")[3]
    assert ["after a refusal"] not in notes
    q.close()


def test_second_hello_closes_the_connection(conn):
    conn.send(hello())
    assert conn.closed()


def test_welcome_sent_to_a_host_closes_the_connection(conn):
    conn.send([WELCOME, {"version": 1}])
    assert conn.closed()


def test_refuse_sent_to_a_host_closes_the_connection(conn):
    conn.send([REFUSE, "busy", "no"])
    assert conn.closed()


# ---- framing and limits (sections 3, 5, 11, 12) ---------------------------------------


def test_frame_over_max_frame_size_closes_without_answer(conn):
    limit = conn.welcome["max_frame_size"]
    conn.send_raw(struct.pack(">I", limit + 1))
    assert conn.closed()


def test_body_with_bytes_after_the_array_closes(conn):
    conn.send(msgpack.packb([PING, 1]) + b"\x00")
    assert conn.closed()


def test_body_that_is_not_an_array_closes(conn):
    conn.send(msgpack.packb({"kind": 9}))
    assert conn.closed()


def test_declared_length_past_the_frame_closes(conn):
    conn.send(b"\xdd\xff\xff\xff\xff")
    assert conn.closed()


def test_unknown_kind_closes(conn):
    conn.send([15, 1])
    assert conn.closed()


def test_buffers_done_is_unknown_in_version_1(conn):
    assert conn.welcome["version"] == 1
    conn.send([BUFFERS_DONE, [1]])
    assert conn.closed()


def test_kind_zero_closes(conn):
    conn.send([0])
    assert conn.closed()


def test_missing_field_closes(conn):
    conn.send([REQUEST, 1, 0, 0, "add", [1, 2], {}])
    assert conn.closed()


def test_field_of_wrong_type_closes(conn):
    conn.send([REQUEST, 1, 0, 0, 42, [1, 2], {}, 0])
    assert conn.closed()


def test_request_id_zero_closes(conn):
    conn.send(request(0, "add", [1, 2]))
    assert conn.closed()


def test_elements_after_the_fields_are_ignored(conn):
    conn.send(request(1, "add", [1, 2]) + ["later", {"field": 1}])
    assert conn.recv_kind(RESPONSE) == [RESPONSE, 1, False, 3]


# ---- values (section 4) -------------------------------------------------------------


def test_every_integer_encoding_is_accepted(conn):
    # id 7 as uint 64, chain as int 8, target 0 as int 32, args 2 (int 8) and 3 (uint 16)
    body = (
        b"\x98\x04\xcf\x00\x00\x00\x00\x00\x00\x00\x07\xd0\x00\xd2\x00\x00\x00\x00"
        b"\xa3add\x92\xd0\x02\xcd\x00\x03\x80\x00"
    )
    conn.send(body)
    assert conn.recv_kind(RESPONSE) == [RESPONSE, 7, False, 5]


def test_negative_uint_field_closes(conn):
    conn.send(b"\x92\x09\xff")  # PING with nonce -1
    assert conn.closed()


def test_invalid_utf8_string_closes(conn):
    conn.send(b"\x98\x04\x01\x00\x00\xa4echo\x91\xa2\xed\xa0\x80\x00")  # a surrogate
    assert conn.closed()


def test_nesting_of_64_levels_is_accepted(conn):
    value = "deep"
    for _ in range(61):  # frame array, args array, then 61 more arrays: level 64 for the str
        value = [value]
    assert conn.call(1, "echo", [value])[2] is False


def test_nesting_over_64_levels_closes(conn):
    value = "deep"
    for _ in range(63):
        value = [value]
    conn.send(request(1, "echo", [value]))
    assert conn.closed()


def test_ref_with_owner_2_closes(conn):
    conn.send(request(1, "echo", [Ref(2, 5, "X")]))
    assert conn.closed()


def test_ref_with_object_id_0_closes(conn):
    conn.send(request(1, "echo", [Ref(0, 0, "X")]))
    assert conn.closed()


def test_error_ext_with_wrong_payload_closes(conn):
    payload = msgpack.packb(["TypeError", 42, None])
    conn.send(request(1, "echo", [msgpack.ExtType(2, payload)]))
    assert conn.closed()


def test_other_ext_types_pass_unchanged(conn):
    ext = msgpack.ExtType(42, b"\x00\x00\x00\x01")
    assert conn.call(1, "echo", [ext])[3] == ext


# ---- calls (section 8) ----------------------------------------------------------------


def test_unknown_service_answers_no_such_service(conn):
    f = conn.call(1, "no_such_thing")
    assert f[2] is True and f[3].type == "tether.NoSuchService"


def test_unknown_object_answers_no_such_object(conn):
    f = conn.call(1, "get", target=2**62)
    assert f[2] is True and f[3].type == "tether.NoSuchObject"


def test_handler_error_travels_with_its_type_name(conn):
    f = conn.call(1, "fail", ["KeyError", "no such key"])
    assert f[2] is True and (f[3].type, f[3].message) == ("KeyError", "no such key")


def test_responses_may_come_in_any_order(conn):
    conn.send(request(1, "slow", [300]), request(2, "add", [1, 1]))
    assert conn.recv_kind(RESPONSE)[1] == 2
    assert conn.recv_kind(RESPONSE)[1] == 1


def test_each_request_gets_exactly_one_response(conn):
    conn.send(*[request(i, "add", [i, 0]) for i in range(1, 21)])
    got = sorted(conn.recv_kind(RESPONSE)[1] for _ in range(20))
    assert got == list(range(1, 21))
    assert conn.quiet(0.3)


def test_duplicate_request_id_in_flight_closes(conn):
    conn.send(request(1, "slow", [2000]), request(1, "add", [1, 1]))
    assert conn.closed()


def test_id_may_be_reused_after_its_response(conn):
    assert conn.call(1, "add", [1, 1])[3] == 2
    assert conn.call(1, "add", [2, 2])[3] == 4


def test_each_side_has_its_own_id_space(host):
    p = host.open(name="ids-a")
    # The host calls us with its id space while our id 1 is in flight.
    p.send(request(1, "call_client", ["ids-a", "hi", []]))
    f = p.recv_kind(REQUEST)
    assert f[1] != 0
    p.send([RESPONSE, f[1], False, "hello"])
    assert p.recv_kind(RESPONSE) == [RESPONSE, 1, False, "hello"]
    p.close()


def test_notification_gets_no_answer_even_on_error(conn):
    conn.send(notify("no_such_thing"), notify("fail", ["KeyError", "x"]), [PING, 9])
    assert conn.recv() == [PONG, 9]


def test_requests_are_served_in_order_notification_before_later_call(conn):
    conn.call(1, "notes")  # forget older notes
    conn.send(notify("note", ["first"]), request(2, "notes"))
    assert ["first"] in conn.recv_kind(RESPONSE)[3]


def test_progress_lists_running_requests(conn):
    # Every 100 ms at least (a third of 300 ms): several before the answer at 900 ms.
    conn.send(request(1, "slow", [900], timeout_ms=300))
    f = conn.recv()
    assert f[0] == PROGRESS and 1 in f[1], f
    assert conn.recv_kind(RESPONSE)[1] == 1


def test_no_progress_for_timeout_zero(conn):
    conn.send(request(1, "slow", [700], timeout_ms=0))
    assert conn.recv()[0] == RESPONSE


def test_cancel_stops_the_response(conn):
    before = conn.call(1, "stuck_state")[3]
    conn.send(request(2, "stuck", timeout_ms=0))
    time.sleep(0.2)
    conn.send([CANCEL, 2])
    time.sleep(0.2)
    after = conn.call(3, "stuck_state")[3]
    assert after == [before[0] + 1, before[1] + 1]
    assert conn.quiet(0.3)


def test_cancel_of_unknown_id_is_ignored(conn):
    conn.send([CANCEL, 12345])
    assert conn.alive()


def test_too_many_requests_answered_with_error_connection_stays(host):
    p = host.open(name="flood")
    limit = p.welcome["max_in_flight"]
    # The first limit calls run for 5 s: the one past them is answered long before.
    p.send(*[request(i, "slow", [5000], timeout_ms=0) for i in range(1, limit + 2)])
    f = p.recv_kind(RESPONSE)
    assert f[:3] == [RESPONSE, limit + 1, True] and f[3].type == "tether.TooManyRequests"
    assert p.alive()
    p.close()


def test_a_cancelled_request_leaves_the_window(host):
    p = host.open(name="flood-cancel")
    limit = p.welcome["max_in_flight"]
    p.send(*[request(i, "slow", [5000], timeout_ms=0) for i in range(1, limit + 1)])
    # Still running, but cancelled: no longer counted (section 11, Limits).
    p.send([CANCEL, 1], request(limit + 1, "add", [2, 3]))
    f = p.recv_kind(RESPONSE)
    assert f[:4] == [RESPONSE, limit + 1, False, 5]
    p.close()


def test_response_to_unknown_id_is_dropped(conn):
    conn.send([RESPONSE, 999, False, None])
    assert conn.alive()


# ---- references (section 9) ---------------------------------------------------------


def make_counter(p, id, start=0):
    f = p.call(id, "make_counter", [start])
    assert f[2] is False
    return f[3]


def test_host_object_travels_as_ref_owner_0_nonzero_id(conn):
    ref = make_counter(conn, 1)
    assert isinstance(ref, Ref) and ref.owner == 0 and ref.object_id != 0
    assert ref.type_name == "Counter"


def test_request_with_object_target_calls_its_method(conn):
    ref = make_counter(conn, 1, 40)
    assert conn.call(2, "add", [2], target=ref.object_id)[3] == 42


def test_distinct_objects_have_distinct_ids(conn):
    a, b = make_counter(conn, 1), make_counter(conn, 2)
    assert a.object_id != b.object_id


def test_ref_owner_1_resolves_to_the_receivers_object(conn):
    ref = make_counter(conn, 1)
    back = Ref(1, ref.object_id, "Counter")
    # [the same object, a proxy]: both arguments are the host's own Counter, not proxies.
    assert conn.call(2, "same", [back, back])[3] == [True, False]


def test_our_object_comes_back_as_owner_1(conn):
    mine = Ref(0, 77, "Mine")
    slot = conn.call(1, "hold", [mine])[3]
    f = conn.call(2, "get_held", [slot])
    assert f[3] == Ref(1, 77, "Mine")
    conn.call(3, "drop", [slot])
    assert conn.recv_kind(RELEASE, timeout=5) == [RELEASE, [[77, 1]]]


def released(p, id):
    return p.call(id, "counters_released")[3]


def test_release_to_zero_frees_the_object(conn):
    ref = make_counter(conn, 1)
    before = released(conn, 2)
    conn.send([RELEASE, [[ref.object_id, 1]]])
    deadline = time.monotonic() + 5
    n = 3
    while released(conn, n) == before and time.monotonic() < deadline:
        n += 1
    assert released(conn, n + 1) == before + 1
    f = conn.call(n + 2, "get", target=ref.object_id)
    assert f[2] is True and f[3].type == "tether.NoSuchObject"


def test_release_beyond_the_count_drops_the_object_and_keeps_the_connection(conn):
    ref = make_counter(conn, 1)
    conn.send([RELEASE, [[ref.object_id, 5]]])
    assert conn.alive()
    f = conn.call(2, "get", target=ref.object_id)
    assert f[2] is True and f[3].type == "tether.NoSuchObject"


def test_release_of_unknown_id_is_ignored(conn):
    ref = make_counter(conn, 1)
    conn.send([RELEASE, [[2**63, 1], [ref.object_id + 10**9, 3]]])
    assert conn.alive()
    assert conn.call(2, "add", [1], target=ref.object_id)[3] == 1


def test_each_ref_sent_counts_one_reference(conn):
    ref = make_counter(conn, 1)
    slot = conn.call(2, "hold", [Ref(1, ref.object_id, "Counter")])[3]
    again = conn.call(3, "get_held", [slot])[3]  # the same object, sent a second time
    assert again == ref
    conn.call(4, "drop", [slot])
    conn.send([RELEASE, [[ref.object_id, 1]]])
    assert conn.call(5, "get", target=ref.object_id)[2] is False  # one reference left
    conn.send([RELEASE, [[ref.object_id, 1]]])
    assert conn.call(6, "get", target=ref.object_id)[3].type == "tether.NoSuchObject"


def test_closing_the_connection_releases_its_references(host):
    watcher = host.open(name="watcher")
    before = released(watcher, 1)
    p = host.open(name="holder")
    make_counter(p, 1)
    p.close()
    deadline = time.monotonic() + 5
    n = 2
    while released(watcher, n) == before and time.monotonic() < deadline:
        n += 1
    assert released(watcher, n + 1) == before + 1
    watcher.close()


def test_describe_lists_methods_without_operations(conn):
    ref = make_counter(conn, 1)
    info = conn.call(2, "__tether_describe__", target=ref.object_id)[3]
    assert info == {"type": "Counter", "methods": ["add", "get", "fail"], "per_type": True}


def test_unsupported_operation_answers_attribute_error(conn):
    ref = make_counter(conn, 1)
    f = conn.call(2, "__iter__", target=ref.object_id)
    assert f[2] is True and f[3].type == "AttributeError"


# ---- other messages (section 10) ---------------------------------------------------------


def test_ping_is_answered_with_the_same_nonce(conn):
    conn.send([PING, 2**64 - 1])
    assert conn.recv() == [PONG, 2**64 - 1]


def test_pong_may_overtake_an_earlier_response(conn):
    conn.send(request(1, "slow", [300], timeout_ms=0), [PING, 5])
    assert conn.recv() == [PONG, 5]
    assert conn.recv()[:2] == [RESPONSE, 1]


def test_pong_is_ignored_by_the_host(conn):
    conn.send([PONG, 3])
    assert conn.alive()


def test_log_goes_to_the_hosts_log(host, conn):
    conn.send([LOG, 4, "conformance.logger", "a record from the raw peer"])
    assert host.wait_log("a record from the raw peer")
    assert host.log_level_of("a record from the raw peer") == 4
    assert conn.alive()


def test_log_with_unknown_level_is_kept(host, conn):
    conn.send([LOG, 99, "conformance.logger", "a record at level 99"])
    assert host.wait_log("a record at level 99")
    assert host.log_level_of("a record at level 99") == 6  # info
    assert conn.alive()


def test_control_sent_to_a_host_is_ignored(conn):
    conn.send([CONTROL, "disconnect", "from a client"])
    assert conn.alive()
    assert conn.call(1, "add", [1, 2])[3] == 3


def test_peer_frames_match_the_worked_example():
    # The suite's own framing, checked against protocol.md's example call of add(2, 3).
    assert frame(request(1, "add", [2, 3], timeout_ms=30000)).hex() == (
        "000000109804010000a3616464920203" "80cd7530"
    )


# ---- built-in services (section 10) --------------------------------------------------


def test_builtin_services_are_sorted_names(conn):
    f = conn.call(1, "tether.services")
    assert f[2] is False
    names = f[3]
    assert names == sorted(names, key=lambda n: n.encode())
    assert {"tether.services", "tether.clients", "tether.call_client"} <= set(names)


def test_builtin_clients_describe_each_client(host):
    first = host.open(name="described-first")
    second = host.open(name="described-second")
    f = second.call(1, "tether.clients")
    assert f[2] is False
    keys = {"name", "pid", "language", "language_version", "connected_since",
            "calls_in_flight", "calls_in", "calls_out", "bytes_in", "bytes_out", "services"}
    clients = f[3]
    for c in clients:
        assert keys <= set(c), c
        assert isinstance(c["services"], list) and isinstance(c["connected_since"], float)
    names = [c["name"] for c in clients]
    assert names.index("described-first") < names.index("described-second")
    first.close()
    second.close()


def test_builtin_call_client_forwards_answers_and_errors(host):
    target = host.open(name="forward-target")
    caller = host.open(name="forward-caller")
    caller.send(request(1, "tether.call_client", ["forward-target", "double", [21]]))
    f = target.recv_kind(REQUEST)
    assert f[4] == "double" and f[5] == [21]
    target.send([RESPONSE, f[1], False, 42])
    assert caller.recv_kind(RESPONSE)[1:] == [1, False, 42]
    caller.send(request(2, "tether.call_client", ["forward-target", "fail", []]))
    f = target.recv_kind(REQUEST)
    target.send([RESPONSE, f[1], True, Error("ValueError", "no good")])
    r = caller.recv_kind(RESPONSE)
    assert r[1] == 2 and r[2] is True
    assert (r[3].type, r[3].message) == ("ValueError", "no good")
    target.close()
    caller.close()


def test_builtin_client_names_that_are_unknown_are_lookup_errors(conn):
    for i, method in enumerate(("tether.call_client", "tether.reset_client",
                                "tether.disconnect_client")):
        args = ["nobody-here", "x"] if method == "tether.call_client" else ["nobody-here"]
        f = conn.call(10 + i, method, args)
        assert f[2] is True and f[3].type == "LookupError", (method, f)


# ---- buffers (protocol version 2, docs/protocol.md "Buffers") ------------------------


def sealed_memfd(data, seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL):
    fd = os.memfd_create("conformance", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def buffer_ext(size):
    return msgpack.ExtType(3, msgpack.packb([size]))


def host_fds(host):
    return len(os.listdir(f"/proc/{host.proc.pid}/fd"))


def host_shared_mappings(host):
    with open(f"/proc/{host.proc.pid}/maps") as maps:
        return sum("/memfd:" in line for line in maps)


def open_version_2(host, **hello):
    p = host.open(versions=(1, 2), **hello)
    if p.welcome["version"] < 2:
        p.close()
        pytest.skip("the host speaks version 1 only (a build without shared memory)")
    return p


def test_version_2_buffers_travel_as_descriptors_both_ways(host):
    p = open_version_2(host)
    data = bytes(range(256)) * 4096  # 1 MiB
    fd = sealed_memfd(data)
    p.send_with_fds(request(1, "echo", [buffer_ext(len(data))]), [fd])
    os.close(fd)
    f = p.recv_kind(RESPONSE)
    assert f[:3] == [RESPONSE, 1, False]
    assert f[3] == buffer_ext(len(data))
    assert len(p.fds) == 1, "the echoed buffer came back as a descriptor"
    back = p.fds[0]
    assert os.fstat(back).st_size == len(data)
    assert os.pread(back, len(data), 0) == data
    assert fcntl.fcntl(back, fcntl.F_GET_SEALS) & (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    p.close()


def test_buffers_are_said_done_both_ways(host):
    """The host holds a buffer it sent until the peer says BUFFERS_DONE, and says it of
    the peer's buffer once it no longer maps it: here the echo's copy goes only when the
    peer is done with what came back."""
    p = open_version_2(host)
    data = b"\x07" * 100_000
    fd = sealed_memfd(data)
    inode = os.fstat(fd).st_ino
    p.send_with_fds(request(1, "echo", [buffer_ext(len(data))]), [fd])
    os.close(fd)
    assert p.recv_kind(RESPONSE)[:3] == [RESPONSE, 1, False]
    (back,) = p.fds
    assert os.fstat(back).st_ino == inode, "the same memory came back"
    assert p.quiet(0.2), "the host holds it while this peer maps what it sent back"
    p.send([BUFFERS_DONE, [inode]])
    assert p.recv_kind(BUFFERS_DONE, skip=(PROGRESS, LOG)) == [BUFFERS_DONE, [inode]]
    # An inode the host never sent is ignored; the connection goes on.
    p.send([BUFFERS_DONE, [inode, 12345]])
    assert p.call(2, "add", [2, 3])[3] == 5
    p.close()


def test_ext_type_3_is_opaque_on_a_version_1_connection(conn):
    assert conn.welcome["version"] == 1
    assert conn.call(1, "echo", [buffer_ext(5)])[3] == buffer_ext(5)


def breaks_the_connection(host, body, fds):
    """The frame closes its connection, the host keeps every other, and no descriptor of
    it stays open in the host, nor any mapping."""
    # What earlier tests' connections held goes as the host finishes closing them.
    fds_before, last = host_fds(host), -1
    for _ in range(100):
        if fds_before == last:
            break
        time.sleep(0.05)
        fds_before, last = host_fds(host), fds_before
    mappings_before = host_shared_mappings(host)
    bystander = open_version_2(host, name="bystander")
    p = open_version_2(host, name="offender")
    if fds:
        p.send_with_fds(body, fds)
    else:
        p.send(body)
    assert p.closed()
    assert bystander.call(1, "add", [2, 3])[3] == 5
    bystander.close()
    p.close()
    for fd in fds:
        os.close(fd)
    deadline = time.monotonic() + 5
    while host_fds(host) != fds_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host_fds(host) == fds_before
    assert host_shared_mappings(host) == mappings_before
    assert "closing it" in host.log_text()


def test_a_frame_naming_a_buffer_without_its_descriptor_closes(host):
    breaks_the_connection(host, request(1, "echo", [buffer_ext(5)]), [])


def test_descriptors_with_a_frame_that_names_no_buffer_close(host):
    breaks_the_connection(host, request(1, "echo", ["x"]), [sealed_memfd(b"12345")])


def test_fewer_descriptors_than_buffers_close(host):
    body = request(1, "echo", [buffer_ext(5), buffer_ext(5)])
    breaks_the_connection(host, body, [sealed_memfd(b"12345")])


def test_a_descriptor_that_is_not_a_memfd_closes(host):
    r, w = os.pipe()
    os.close(w)
    breaks_the_connection(host, request(1, "echo", [buffer_ext(5)]), [r])


def test_a_memfd_whose_size_may_change_closes(host):
    fd = sealed_memfd(b"12345", seals=fcntl.F_SEAL_SHRINK)
    breaks_the_connection(host, request(1, "echo", [buffer_ext(5)]), [fd])


def test_a_bad_descriptor_after_a_good_one_closes_and_unmaps_both(host):
    good, bad = sealed_memfd(b"x" * 100_000), sealed_memfd(b"12345", seals=0)
    body = request(1, "echo", [buffer_ext(100_000), buffer_ext(5)])
    breaks_the_connection(host, body, [good, bad])


def test_a_size_that_disagrees_with_the_memfd_closes(host):
    fd = sealed_memfd(b"12345")
    breaks_the_connection(host, request(1, "echo", [buffer_ext(6)]), [fd])
