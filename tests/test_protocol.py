"""The wire protocol without sockets: frames, handshake, auth, errors, hostile bytes."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spoolq
from spoolq.engines import LeasedRecord, StoredRecord
from spoolq.protocol import (
    ClientProtocol,
    ErrorCode,
    FrameDecoder,
    FrameTooLarge,
    FrameType,
    ProtocolError,
    ServerProtocol,
    code_for,
    decode_leased,
    decode_records,
    encode_error,
    encode_frame,
    encode_leased,
    encode_records,
    encode_reply,
    error_for,
    record_count,
)
from spoolq.protocol import encode_preamble as preamble


def _request(ident: int, op: str, **args: object) -> bytes:
    return encode_frame(FrameType.REQUEST, ident, {"op": op, **args})


def _frames(data: bytes) -> list[tuple[int, int, object]]:
    return [(f.type, f.id, cbor2.loads(f.body)) for f in FrameDecoder().feed(data)]


def test_frame_layout_is_length_type_id_body() -> None:
    frame = encode_frame(FrameType.REQUEST, 7, {"op": "queues"})
    body = cbor2.dumps({"op": "queues"})
    assert frame == struct.pack(">IBI", len(body) + 5, 2, 7) + body


def test_decoder_takes_bytes_in_any_chunks() -> None:
    data = b"".join(_request(i, "counts", queue=f"q{i}") for i in range(1, 6))
    whole = FrameDecoder().feed(data)
    dec = FrameDecoder()
    one_by_one = [f for b in data for f in dec.feed(bytes([b]))]
    assert one_by_one == whole and [f.id for f in whole] == [1, 2, 3, 4, 5]
    assert dec.pending == 0


def test_length_above_max_frame_is_refused_before_the_body() -> None:
    dec = FrameDecoder(max_frame=1024)
    assert dec.feed(b"\x00\x00") == []
    with pytest.raises(FrameTooLarge, match="exceeds the limit of 1024"):
        dec.feed(b"\x04\x01")  # with the two bytes before: a length of 1025
    assert dec.pending == 0
    with pytest.raises(FrameTooLarge):
        dec.feed(b"more")  # a failed decoder stays failed


def test_length_shorter_than_a_header_is_refused() -> None:
    with pytest.raises(ProtocolError, match="shorter than its header"):
        FrameDecoder().feed(struct.pack(">I", 3) + b"abc")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_only_ever_raise_protocol_error(chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_frame=4096)
    try:
        for chunk in chunks:
            for frame in dec.feed(chunk):
                assert 5 <= len(frame.body) + 5 <= 4096
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([None, "secret"]))
def test_random_bytes_after_the_preamble_never_crash_the_server_side(
        junk: bytes, token: str | None) -> None:
    server = ServerProtocol(max_frame=4096, token=token)
    try:
        server.receive_data(preamble() + junk)
    except (ProtocolError, spoolq.AuthenticationError):
        assert server.data_to_send()  # an error frame went out before closing


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_valid_frames_split_anywhere_decode_the_same(cuts: list[int]) -> None:
    data = b"".join(_request(i, "append", queue="q", records=[b"x" * i], sizes=[i], now=1.0)
                    for i in range(1, 8))
    dec, got, pos = FrameDecoder(), [], 0
    for cut in cuts:
        got += dec.feed(data[pos:pos + cut])
        pos += cut
    got += dec.feed(data[pos:])
    assert got == FrameDecoder().feed(data)


def test_handshake_and_requests_without_a_token() -> None:
    server = ServerProtocol()
    requests = server.receive_data(preamble() + _request(1, "counts", queue="jobs"))
    assert server.data_to_send() == preamble()
    assert [(r.id, r.op, r.args) for r in requests] == [(1, "counts", {"queue": "jobs"})]


def test_defaults_are_filled_in_and_bad_arguments_answered_not_fatal() -> None:
    server = ServerProtocol()
    server.receive_data(preamble())
    server.data_to_send()
    (req,) = server.receive_data(_request(2, "take", queue="q", n=5, now=1.0))
    assert req.args == {"queue": "q", "n": 5, "now": 1.0, "lease": None, "wait": 0.0,
                        "max_attempts": None}
    assert server.receive_data(_request(3, "take", queue="q", n="five", now=1.0)) == []
    assert server.receive_data(_request(4, "frobnicate")) == []
    assert server.receive_data(_request(5, "append", queue="q", records=[b"a"], sizes=[],
                                        now=1.0)) == []
    errors = _frames(server.data_to_send())
    assert [(i, body["code"]) for _, i, body in errors] == [  # type: ignore[index]
        (3, ErrorCode.BAD_REQUEST), (4, ErrorCode.BAD_REQUEST), (5, ErrorCode.BAD_REQUEST)]
    assert server.receive_data(_request(6, "queues"))[0].op == "queues"


def test_bad_magic_and_bad_cbor_close_the_connection() -> None:
    server = ServerProtocol()
    with pytest.raises(ProtocolError, match="magic"):
        server.receive_data(b"GET / HTTP/1.1\r\n")
    assert _frames(server.data_to_send())[0][2]["code"] == ErrorCode.PROTOCOL  # type: ignore[index]
    server = ServerProtocol()
    with pytest.raises(ProtocolError, match="CBOR"):
        server.receive_data(preamble() + struct.pack(">IBI", 6, FrameType.REQUEST, 9) + b"\xff")
    ((ftype, ident, body),) = _frames(server.data_to_send()[8:])
    assert (ftype, ident, body["code"]) == (FrameType.ERROR, 9, ErrorCode.PROTOCOL)  # type: ignore[index]


@pytest.mark.parametrize("op, args", [
    ("append", {"queue": "q", "records": [b"a"], "sizes": [2**64], "now": 1.0}),
    ("append", {"queue": "q", "records": [b"a"], "sizes": [-1], "now": 1.0}),
    ("append", {"queue": "q", "records": [b"a"], "sizes": [1], "now": float("nan")}),
    ("take", {"queue": "q", "n": 1, "now": float("inf")}),
    ("ack", {"queue": "q", "deliveries": [[2**63, 1]], "owner": "o"}),
    ("release", {"queue": "q", "deliveries": [[1, 1]], "owner": "o",
                 "not_before": float("-inf")}),
    ("move", {"src": "a", "dst": "b", "ids": [1, -(2**63) - 1]}),
    ("move", {"src": "a", "dst": "b", "ids": [1, -1]}),
    ("hello", {"max_reply": -1}),
    ("take", {"queue": "q", "n": 1, "now": 1.0, "lease": ["o", 2.0], "max_attempts": -1}),
    ("release", {"queue": "q", "deliveries": [[1, 1]], "owner": "o", "not_before": 0.0,
                 "max_attempts": -3}),
    ("expire", {"queue": "q", "now": 1.0, "max_attempts": -1}),
    ("restore", {"queue": "q", "records": [2**64, b"d", 1, 0, 1.0, None]}),
    ("restore", {"queue": "q", "records": [1, b"d", 1, 0, float("nan"), None]}),
    ("restore", {"queue": "q", "records": [-1, b"d", 1, 0, 1.0, None]}),
    ("restore", {"queue": "q", "records": [1, b"d", -1, 0, 1.0, None]}),
    ("restore", {"queue": "q", "records": [1, b"d", 1, -1, 1.0, None]}),
])
def test_numbers_no_engine_can_store_are_bad_requests(op: str, args: dict[str, object]) -> None:
    """Out of 64-bit range or not finite: the client's mistake, answered as such."""
    server = ServerProtocol()
    server.receive_data(preamble())
    server.data_to_send()
    assert server.receive_data(_request(7, op, **args)) == []
    ((_, ident, body),) = _frames(server.data_to_send())
    assert (ident, body["code"]) == (7, ErrorCode.BAD_REQUEST)  # type: ignore[index]


def test_an_auth_frame_that_is_not_cbor_is_answered_before_the_close() -> None:
    server = ServerProtocol(token="s3cret")
    with pytest.raises(ProtocolError, match="CBOR"):
        server.receive_data(preamble() + struct.pack(">IBI", 6, FrameType.AUTH, 1) + b"\xff")
    ((ftype, ident, body),) = _frames(server.data_to_send()[8:])
    assert (ftype, ident, body["code"]) == (FrameType.ERROR, 1, ErrorCode.PROTOCOL)  # type: ignore[index]


def test_token_is_required_before_anything_else() -> None:
    server = ServerProtocol(token="s3cret")
    with pytest.raises(spoolq.AuthenticationError, match="requires a token"):
        server.receive_data(preamble() + _request(1, "queues"))
    server = ServerProtocol(token="s3cret")
    with pytest.raises(spoolq.AuthenticationError, match="refused"):
        server.receive_data(preamble() + encode_frame(FrameType.AUTH, 1, {"token": "guess"}))
    assert "guess" not in server.data_to_send().decode("latin-1")
    server = ServerProtocol(token="s3cret")
    reqs = server.receive_data(preamble() + encode_frame(FrameType.AUTH, 1, {"token": "s3cret"})
                               + _request(2, "queues"))
    assert [r.op for r in reqs] == ["queues"] and server.ready


def test_client_and_server_state_machines_talk_with_pipelined_replies() -> None:
    client, server = ClientProtocol(), ServerProtocol(token="t")
    opening, auth_ids = client.start("t")
    id_a, frame_a = client.request("take", {"queue": "q", "n": 1, "now": 0.0, "wait": 5.0})
    id_b, frame_b = client.request("counts", {"queue": "q"})
    reqs = server.receive_data(opening + frame_a + frame_b)
    assert [r.id for r in reqs] == [id_a, id_b]
    # the server answers the second request first: replies are matched by id
    back = server.data_to_send() + encode_reply(id_b, [0, 0, 0, 0]) + encode_reply(id_a, [])
    replies = client.receive_data(back)
    assert [(r.id, r.value) for r in replies] == [(*auth_ids, None), (id_b, [0, 0, 0, 0]),
                                                  (id_a, [])]


@pytest.mark.parametrize(("frame_type", "body", "message"), [
    (FrameType.ERROR, [4, "no"], "ERROR frame from the server whose body is a list, not a map"),
    (FrameType.REQUEST, {"op": "counts"}, f"unexpected frame type {int(FrameType.REQUEST)}"),
])
def test_client_names_what_was_wrong_with_a_frame_it_cannot_take(
        frame_type: FrameType, body: object, message: str) -> None:
    client = ClientProtocol()
    client.start(None)
    with pytest.raises(ProtocolError, match=message):
        client.receive_data(preamble() + encode_frame(frame_type, 1, body))


def test_client_refuses_a_server_of_an_older_protocol_version() -> None:
    with pytest.raises(ProtocolError, match="speaks protocol version 1"):
        ClientProtocol().receive_data(preamble(1))


def test_client_refuses_a_request_the_server_would_refuse() -> None:
    client = ClientProtocol()
    client.server_max_frame = 2048
    with pytest.raises(FrameTooLarge, match="server's limit"):
        client.request("append", {"queue": "q", "records": [b"x" * 4096], "sizes": [1],
                                  "now": 0.0})


ERRORS = [spoolq.Empty, spoolq.Full, spoolq.LeaseError, spoolq.FormatError, spoolq.CorruptError,
          spoolq.LockTimeout, spoolq.ClosedError, spoolq.ConfigurationError,
          spoolq.SerializationError, spoolq.EngineError, spoolq.AuthenticationError,
          spoolq.QueueShutDown, spoolq.SpoolqError, ProtocolError, FrameTooLarge, ValueError]


@pytest.mark.parametrize("cls", ERRORS, ids=[c.__name__ for c in ERRORS])
def test_errors_travel_as_codes_and_come_back_as_the_same_class(cls: type[Exception]) -> None:
    client = ClientProtocol()
    client.receive_data(preamble())
    (reply,) = client.receive_data(encode_error(3, code_for(cls("boom")), "boom"))
    assert type(reply.error) is cls and str(reply.error) == "boom"


def test_unexpected_exceptions_travel_as_internal_engine_errors() -> None:
    assert code_for(KeyError("x")) == ErrorCode.INTERNAL
    assert type(error_for(ErrorCode.INTERNAL, "x")) is spoolq.EngineError
    assert type(error_for(999, "x")) is spoolq.EngineError


def test_records_travel_as_one_flat_array_and_round_trip() -> None:
    recs = [StoredRecord(1, b"a", 2, 0, 5.5, None), StoredRecord(9, b"", 0, 3, 6.0, "boom")]
    wire = cbor2.loads(cbor2.dumps(encode_records(recs)))
    assert wire == [1, b"a", 2, 0, 5.5, None, 9, b"", 0, 3, 6.0, "boom"]
    assert record_count(wire) == 2 and decode_records(wire) == recs
    assert encode_records([]) == [] and decode_records([]) == [] and record_count([]) == 0
    whole_seconds = decode_records([4, b"x", 1, 0, 7, None])
    assert whole_seconds == [StoredRecord(4, b"x", 1, 0, 7.0, None)]
    assert type(whole_seconds[0].enqueued_at) is float


@pytest.mark.parametrize("value", [
    [[1, b"a", 2, 0, 5.5, None]],                           # an array per record (version 1)
    [1, b"a", 2, 0, 5.5],                                   # a field missing
    [1, b"a", 2, 0, 5.5, None, 2],
    [1, "not bytes", 2, 0, 5.5, None],
    [True, b"a", 2, 0, 5.5, None],                          # a bool is not an id
    [1, b"a", 2, 0, "late", None],
    [1, b"a", 2, 0, 5.5, 3],
    [1, b"a", 2.0, 0, 5.5, None],
    [1, b"a", -2, 0, 5.5, None],                            # a size is never negative
    {"ids": [1]}, None, (1, b"a", 2, 0, 5.5, None),
])
def test_records_of_a_bad_shape_are_refused(value: object) -> None:
    with pytest.raises(ProtocolError, match="unexpected shape"):
        decode_records(value)


def test_leased_records_travel_with_their_owners_and_lease_ends() -> None:
    leased = [LeasedRecord(StoredRecord(1, b"a", 2, 1, 5.5, None), "host:1:2:ab", 99.5),
              LeasedRecord(StoredRecord(4, b"b", 1, 2, 6.0, "nacked"), "other", 100.0)]
    wire = cbor2.loads(cbor2.dumps(encode_leased(leased)))
    assert wire[1:] == [["host:1:2:ab", "other"], [99.5, 100.0]]
    assert decode_leased(wire) == leased
    assert decode_leased(encode_leased([])) == []


@pytest.mark.parametrize("value", [
    [[1, b"a", 2, 1, 5.5, None], ["me"]],                   # no lease ends
    [[1, b"a", 2, 1, 5.5, None], ["me", "you"], [1.0, 2.0]],  # more owners than records
    [[1, b"a", 2, 1, 5.5, None], [7], [1.0]],               # an owner is text
    [[1, b"a", 2, 1, 5.5, None], ["me"], ["soon"]],
    [[1, b"a", 2, 1, 5.5], ["me"], [1.0]],                  # a record field missing
    {"records": []}, None,
])
def test_leased_records_of_a_bad_shape_are_refused(value: object) -> None:
    with pytest.raises(ProtocolError, match="unexpected shape"):
        decode_leased(value)


def test_a_restore_request_checks_its_records() -> None:
    server = ServerProtocol()
    server.receive_data(preamble())
    server.data_to_send()
    good = encode_records([StoredRecord(1, b"a", 1, 0, 1.0)])
    (req,) = server.receive_data(_request(1, "restore", queue="q", records=good))
    assert decode_records(req.args["records"]) == [StoredRecord(1, b"a", 1, 0, 1.0)]
    assert server.receive_data(_request(2, "restore", queue="q",
                                        records=[[1, b"a", 1, 0, 1.0, None]])) == []
    ((_, ident, body),) = _frames(server.data_to_send())
    assert (ident, body["code"]) == (2, ErrorCode.BAD_REQUEST)  # type: ignore[index]


def test_a_client_of_protocol_version_1_is_refused_with_a_code() -> None:
    server = ServerProtocol()
    with pytest.raises(ProtocolError, match="version 1 is not supported"):
        server.receive_data(preamble(1))
    out = server.data_to_send()
    assert out[:8] == preamble(1)  # the server answers with the version it would speak
    ((ftype, ident, body),) = _frames(out[8:])
    assert (ftype, ident, body["code"]) == (FrameType.ERROR, 0,  # type: ignore[index]
                                            ErrorCode.UNSUPPORTED_VERSION)
