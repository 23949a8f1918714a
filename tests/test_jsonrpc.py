"""The JSON-RPC 2.0 codec (controller/jsonrpc.py), checked against the specification.

Section numbers are those of https://www.jsonrpc.org/specification. Pure: no sockets, no daemon.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.wire import jsonrpc
from controller.wire.errors import InvalidParams, InvalidRequest, MethodNotFound, NotConfirmed, ParseError
from controller.wire.jsonrpc import Invalid, Message, Request, decode, encode, error, notification, result

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def only(message: Message) -> Request | Invalid:
    """The single item of a non-batch message."""
    assert message.batch is False
    assert len(message.items) == 1
    return message.items[0]


def assert_invalid(item: Request | Invalid, code: int, id_: Any = None) -> None:
    assert isinstance(item, Invalid), item
    assert item.error.code == code
    assert item.id == id_
    # The id must be exactly what was echoed (1 and True compare equal in Python).
    assert type(item.id) is type(id_)


def assert_parse_error(text: str | bytes) -> Invalid:
    item = only(decode(text))
    assert_invalid(item, PARSE_ERROR, None)
    assert isinstance(item.error, ParseError)
    return item  # type: ignore[return-value]


def req(**members: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", **members})


# -- well-formed requests and notifications --------------------------------------------------------


def test_request_with_positional_params():
    """§4 request object, §4.2 by-position params (spec §7 example: subtract [42, 23])."""
    item = only(decode('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}'))
    assert item == Request("subtract", [42, 23], 1)
    assert not item.is_notification


def test_request_with_named_params():
    """§4.2 by-name params (spec §7 example: subtract {"subtrahend": 23, "minuend": 42})."""
    item = only(decode('{"jsonrpc": "2.0", "method": "subtract", '
                       '"params": {"subtrahend": 23, "minuend": 42}, "id": 3}'))
    assert item == Request("subtract", {"subtrahend": 23, "minuend": 42}, 3)


def test_params_may_be_omitted():
    """§4 "params ... MAY be omitted"."""
    item = only(decode('{"jsonrpc": "2.0", "method": "system.ping", "id": 7}'))
    assert item == Request("system.ping", None, 7)


@pytest.mark.parametrize("params", [{}, []])
def test_empty_structured_params_are_valid(params):
    """§4.2 params is a structured value: an empty object or array is still one."""
    item = only(decode(req(method="m", params=params, id=1)))
    assert isinstance(item, Request)
    assert item.params == params


def test_notification_has_no_id():
    """§4.1 notifications: a request object without an "id" member (spec §7 example: update)."""
    item = only(decode('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}'))
    assert isinstance(item, Request)
    assert item.is_notification
    assert item.method == "update"
    assert item.params == [1, 2, 3, 4, 5]


def test_null_id_is_a_request_not_a_notification():
    """§4 id may be Null (discouraged), and §4.1: only an *absent* id makes a notification."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "id": null}'))
    assert isinstance(item, Request)
    assert item.id is None
    assert not item.is_notification


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ('"1"', "1"),
        ('"abc-ü"', "abc-ü"),
        ('""', ""),
        ("0", 0),
        ("-5", -5),
        ("18446744073709551615", 2**64 - 1),  # the largest integer orjson keeps exact
        ("1.5", 1.5),
        ("null", None),
    ],
)
def test_string_number_and_null_ids_are_preserved(raw_id, expected):
    """§4 id: "a String, Number, or NULL value"; §5 the response id MUST be the same as the request's."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "id": ' + raw_id + '}'))
    assert isinstance(item, Request)
    assert item.id == expected
    assert type(item.id) is type(expected)
    reply = encode([result(item.id, "ok")], batch=False)
    assert json.loads(reply)["id"] == expected


@pytest.mark.parametrize("raw_id", ["true", "false", "{}", '{"a": 1}', "[1]", "[]",
                                    "1180591620717411303424", "1e30"])
def test_boolean_or_structured_id_is_rejected(raw_id):
    """§4 id must be a String, Number or Null; a boolean is none of them. §5: id unknown ⇒ null.
    A number beyond 64 bits could not be echoed back exactly (§5: the same id), so it is refused."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "id": ' + raw_id + '}'))
    assert_invalid(item, INVALID_REQUEST, None)


def test_boolean_id_rejected_even_inside_a_batch():
    """§6 each batch member is judged on its own; §4 boolean id invalid."""
    message = decode('[{"jsonrpc": "2.0", "method": "m", "id": true}, {"jsonrpc": "2.0", "method": "m", "id": 1}]')
    assert message.batch is True
    assert_invalid(message.items[0], INVALID_REQUEST, None)
    assert message.items[1] == Request("m", None, 1)


def test_bytes_input_in_utf8_is_accepted():
    """§4 request object; the frame may arrive as UTF-8 bytes."""
    item = only(decode('{"jsonrpc":"2.0","method":"grüße","id":1}'.encode()))
    assert item == Request("grüße", None, 1)


# -- invalid requests (-32600) ---------------------------------------------------------------------


def test_spec_example_invalid_request_object():
    """§7 example "rpc call with invalid Request object": method 1, params "bar" ⇒ -32600, id null."""
    item = only(decode('{"jsonrpc": "2.0", "method": 1, "params": "bar"}'))
    assert_invalid(item, INVALID_REQUEST, None)
    assert isinstance(item.error, InvalidRequest)
    assert error(item.id, item.error) == {
        "jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": item.error.message}}


@pytest.mark.parametrize(
    "text",
    [
        '{"method": "m", "id": 1}',  # missing
        '{"jsonrpc": "1.0", "method": "m", "id": 1}',
        '{"jsonrpc": 2.0, "method": "m", "id": 1}',  # a number, not the string
        '{"jsonrpc": 2, "method": "m", "id": 1}',
        '{"jsonrpc": "2.0 ", "method": "m", "id": 1}',
        '{"jsonrpc": "2", "method": "m", "id": 1}',
        '{"jsonrpc": null, "method": "m", "id": 1}',
    ],
)
def test_missing_or_wrong_jsonrpc_member(text):
    """§4 jsonrpc: "MUST be exactly "2.0"". The id was readable, so it is echoed (§5)."""
    assert_invalid(only(decode(text)), INVALID_REQUEST, 1)


@pytest.mark.parametrize("method", ["1", "null", "true", "[]", '["m"]', "{}", "1.5"])
def test_non_string_method(method):
    """§4 method: "A String containing the name of the method"."""
    item = only(decode('{"jsonrpc": "2.0", "method": ' + method + ', "id": "a"}'))
    assert_invalid(item, INVALID_REQUEST, "a")


def test_missing_method():
    """§4 method is REQUIRED."""
    assert_invalid(only(decode('{"jsonrpc": "2.0", "id": 4}')), INVALID_REQUEST, 4)


@pytest.mark.parametrize("params", ['"bar"', "1", "0", "true", "false", "null", "1.5"])
def test_scalar_params_rejected(params):
    """§4 / §4.2 params "MUST be a Structured value" (object or array), when present; null included."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "params": ' + params + ', "id": 9}'))
    assert_invalid(item, INVALID_REQUEST, 9)


@pytest.mark.parametrize(
    "extra",
    ['"foo": 1', '"result": 1', '"error": null', '"ID": 1', '"Jsonrpc": "2.0"'],
)
def test_extra_members_rejected(extra):
    """§4 the request object has exactly jsonrpc, method, params and id; anything else is invalid."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "id": 2, ' + extra + '}'))
    assert_invalid(item, INVALID_REQUEST, 2)
    assert "unexpected member" in item.error.message


def test_invalid_notification_is_still_answered_with_null_id():
    """§5 a request that is not valid cannot be a notification; the error goes out with id null."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "params": 3}'))
    assert_invalid(item, INVALID_REQUEST, None)


@pytest.mark.parametrize("text", ['"foo"', "1", "null", "true", '"{}"'])
def test_top_level_scalar_is_invalid_request(text):
    """§4 a request is a JSON object; valid JSON of another type is an Invalid Request, not a parse error."""
    assert_invalid(only(decode(text)), INVALID_REQUEST, None)


# -- parse errors (-32700) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',  # §7 "invalid JSON" example
        '[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
        '  {"jsonrpc": "2.0", "method"\n]',  # §7 "batch, invalid JSON" example
        "",
        "   ",
        "{",
        '{"a":',
        "{'jsonrpc': '2.0'}",  # single quotes are not JSON
        '{"jsonrpc": "2.0", "method": "m", "id": 1} trailing',
        "[1,]",
    ],
)
def test_malformed_json_is_a_parse_error(text):
    """§5.1 -32700 "Invalid JSON was received"; §5 its id is null; §7: one error object, not a batch."""
    assert_parse_error(text)


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        '{"jsonrpc": "2.0", "method": "m", "params": [NaN], "id": 1}',
        '{"jsonrpc": "2.0", "method": "m", "params": {"t": Infinity}, "id": 1}',
        '{"jsonrpc": "2.0", "method": "m", "params": [-Infinity], "id": 1}',
        '{"jsonrpc": "2.0", "method": "m", "id": NaN}',
    ],
)
def test_nan_and_infinity_constants_are_parse_errors(text):
    """§5.1 parse error: NaN/Infinity are not JSON (RFC 8259 §6), though Python's json accepts them."""
    item = assert_parse_error(text)
    assert "expected a JSON value" in item.error.message or "no digit after sign" in item.error.message


@pytest.mark.parametrize(
    "text",
    [
        "1e999",
        "-1e999",
        "1E400",
        '{"jsonrpc": "2.0", "method": "m", "params": [1e999], "id": 1}',
        '{"jsonrpc": "2.0", "method": "m", "id": 1e999}',
    ],
)
def test_float_overflowing_to_infinity_is_a_parse_error(text):
    """§5.1 parse error: a number that overflows to inf cannot be represented (RFC 8259 §6)."""
    item = assert_parse_error(text)
    assert "infinity" in item.error.message


def test_float_underflow_is_accepted_as_zero():
    """§4.2 params: a tiny number is still a finite JSON number (contrast with overflow above)."""
    item = only(decode('{"jsonrpc": "2.0", "method": "m", "params": [1e-999], "id": 1}'))
    assert item == Request("m", [0.0], 1)


@pytest.mark.parametrize(
    "text",
    [
        "9" * 5000,
        "-" + "9" * 5000,
        '{"jsonrpc": "2.0", "method": "m", "params": [' + "1" * 5000 + '], "id": 1}',
        '{"jsonrpc": "2.0", "method": "m", "id": ' + "7" * 5000 + "}",
    ],
)
def test_huge_integer_is_a_parse_error_not_an_exception(text):
    """§5.1 parse error: a 5000-digit number cannot be represented; decode must not raise."""
    assert_parse_error(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100000 + "]" * 100000,
        '{"a":' * 100000 + "1" + "}" * 100000,
        '{"jsonrpc": "2.0", "method": "m", "params": ' + "[" * 100000 + "]" * 100000 + ', "id": 1}',
    ],
    ids=["arrays", "objects", "in-params"],
)
def test_deep_nesting_is_a_parse_error_not_an_exception(text):
    """§5.1 parse error: 100000 levels of nesting exhaust recursion; decode must return, not raise."""
    assert_parse_error(text)


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc": "2.0", "method": "\xff", "id": 1}',
        b'{"jsonrpc": "2.0", "method": "m\xc3", "id": 1}',  # truncated 2-byte sequence
        b"\xc0\xaf",  # overlong encoding
    ],
)
def test_invalid_utf8_bytes_are_a_parse_error(data):
    """§5.1 parse error: bytes that are not UTF-8 are not JSON text (RFC 8259 §8.1)."""
    assert_parse_error(data)


def test_utf8_encoded_surrogate_bytes_are_a_parse_error():
    """§5.1 parse error: ED A0 80 (a UTF-16 surrogate encoded as if UTF-8) is invalid UTF-8
    (RFC 3629 §3); it must not decode into a method name holding a lone surrogate."""
    assert_parse_error(b'{"jsonrpc": "2.0", "method": "\xed\xa0\x80", "id": 1}')


def test_invalid_utf8_parse_error_is_not_mislabelled_as_a_number_problem():
    """§5.1 the parse error message should describe the problem; invalid UTF-8 has no number in it."""
    item = assert_parse_error(b'{"jsonrpc": "2.0", "method": "\xff", "id": 1}')
    assert "number" not in item.error.message, item.error.message


# -- batches (§6) ----------------------------------------------------------------------------------


def test_batch_of_one_invalid_member():
    """§7 "rpc call with an invalid Batch (but not empty)": [1] ⇒ an array with one -32600, id null."""
    message = decode("[1]")
    assert message.batch is True
    assert len(message.items) == 1
    assert_invalid(message.items[0], INVALID_REQUEST, None)
    reply = encode([error(i.id, i.error) for i in message.items], message.batch)
    assert isinstance(json.loads(reply), list)


def test_batch_of_three_invalid_members():
    """§7 "rpc call with invalid Batch": [1,2,3] ⇒ three -32600 errors with id null, as an array."""
    message = decode("[1,2,3]")
    assert message.batch is True
    assert len(message.items) == 3
    for item in message.items:
        assert_invalid(item, INVALID_REQUEST, None)
    reply = json.loads(encode([error(i.id, i.error) for i in message.items], message.batch))
    assert [r["error"]["code"] for r in reply] == [INVALID_REQUEST] * 3
    assert [r["id"] for r in reply] == [None, None, None]


@pytest.mark.parametrize("text", ["[]", " [ ] "])
def test_empty_array_is_one_invalid_request_not_a_batch(text):
    """§6 / §7 "rpc call with an empty Array": a single -32600 response object, id null, not an array."""
    message = decode(text)
    item = only(message)  # asserts batch is False
    assert_invalid(item, INVALID_REQUEST, None)
    reply = json.loads(encode([error(item.id, item.error)], message.batch))
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == INVALID_REQUEST
    assert reply["id"] is None


def test_spec_mixed_batch_with_notifications():
    """§6 batch; §7 "rpc call Batch" example: requests, a notification and an invalid member, in order."""
    text = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
    message = decode(text)
    assert message.batch is True
    items = message.items
    assert len(items) == 6
    assert items[0] == Request("sum", [1, 2, 4], "1")
    assert isinstance(items[1], Request) and items[1].is_notification
    assert (items[1].method, items[1].params) == ("notify_hello", [7])
    assert items[2] == Request("subtract", [42, 23], "2")
    assert_invalid(items[3], INVALID_REQUEST, None)
    assert items[4] == Request("foo.get", {"name": "myself"}, "5")
    assert items[5] == Request("get_data", None, "9")

    # The server answers everything but the notification (§6: "The Response objects being returned
    # from a batch call MAY be returned in any order"; the §7 expected reply).
    replies = [
        result("1", 7),
        result("2", 19),
        error(None, items[3].error),
        error("5", MethodNotFound()),
        result("9", ["hello", 5]),
    ]
    out = json.loads(encode(replies, message.batch))
    assert out == [
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": items[3].error.message}, "id": None},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ]


def test_all_notification_batch_gets_no_reply():
    """§6 "If there are no Response objects contained within the Response array ... the Server MUST NOT
    return an empty Array and should return nothing at all"; §7 "rpc call Batch (all notifications)"."""
    message = decode('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]}, '
                     '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]')
    assert message.batch is True
    assert all(isinstance(i, Request) and i.is_notification for i in message.items)
    assert encode([], message.batch) is None


def test_single_notification_gets_no_reply():
    """§4.1 "The Server MUST NOT reply to a Notification"."""
    message = decode('{"jsonrpc": "2.0", "method": "update", "params": [1]}')
    assert encode([], message.batch) is None


def test_batch_with_one_response_is_still_an_array():
    """§6 the reply to a batch is an Array, even with a single response object in it."""
    message = decode('[{"jsonrpc": "2.0", "method": "m", "id": 1}, {"jsonrpc": "2.0", "method": "n"}]')
    assert message.batch is True
    assert encode([result(1, True)], message.batch) == '[{"jsonrpc":"2.0","id":1,"result":true}]'


def test_nested_batch_member_is_invalid():
    """§6 batch members are request objects; a nested array is an invalid member, not a sub-batch."""
    message = decode('[[{"jsonrpc": "2.0", "method": "m", "id": 1}], {"jsonrpc": "2.0", "method": "m", "id": 2}]')
    assert message.batch is True
    assert_invalid(message.items[0], INVALID_REQUEST, None)
    assert message.items[1] == Request("m", None, 2)


@pytest.mark.parametrize("max_batch", [1, 3, 50])
def test_batch_larger_than_max_batch_is_a_single_invalid_request(max_batch):
    """§6 batch: over the configured limit the whole frame is refused as one -32600 with id null,
    and the reply is not an array."""
    members = [{"jsonrpc": "2.0", "method": "m", "id": i} for i in range(max_batch + 1)]
    message = decode(json.dumps(members), max_batch=max_batch)
    item = only(message)
    assert_invalid(item, INVALID_REQUEST, None)
    assert "too large" in item.error.message


@pytest.mark.parametrize("max_batch", [1, 3, 50])
def test_batch_of_exactly_max_batch_is_accepted(max_batch):
    """§6 batch: the limit itself is allowed."""
    members = [{"jsonrpc": "2.0", "method": "m", "id": i} for i in range(max_batch)]
    message = decode(json.dumps(members), max_batch=max_batch)
    assert message.batch is True
    assert message.items == tuple(Request("m", None, i) for i in range(max_batch))


def test_default_max_batch_is_50():
    """§6 batch: the codec's default limit (the config default) is 50 members."""
    members = [{"jsonrpc": "2.0", "method": "m"}] * 50
    assert decode(json.dumps(members)).batch is True
    assert decode(json.dumps(members * 2)).batch is False


# -- responses (§5, §5.1) --------------------------------------------------------------------------


def test_result_object():
    """§5 response object: jsonrpc "2.0", result, and the id of the request; no error member."""
    assert result(1, {"pong": True}) == {"jsonrpc": "2.0", "id": 1, "result": {"pong": True}}
    assert result("a", None) == {"jsonrpc": "2.0", "id": "a", "result": None}  # result null is valid
    assert "error" not in result(1, 0)


def test_error_object_without_data():
    """§5.1 error object: code (integer), message (string); data "MAY be omitted"; no result member."""
    out = error(3, InvalidParams("unknown param 'x'"))
    assert out == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "unknown param 'x'"}}
    assert "result" not in out


def test_error_object_with_data():
    """§5.1 error object: data holds additional information (pictl's application codes, README *Errors*)."""
    err = NotConfirmed("door did not open", expected="open", observed="closed", elapsed_ms=2000.0,
                       recovery="actuator released")
    assert error(7, err) == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {
            "code": -32002,
            "message": "door did not open",
            "data": {"expected": "open", "observed": "closed", "elapsed_ms": 2000.0, "recovery": "actuator released"},
        },
    }


@pytest.mark.parametrize(
    ("err", "code", "message"),
    [
        (ParseError(), -32700, "parse error"),
        (InvalidRequest(), -32600, "invalid request"),
        (MethodNotFound(), -32601, "method not found"),
        (InvalidParams(), -32602, "invalid params"),
    ],
)
def test_standard_error_codes(err, code, message):
    """§5.1 the pre-defined error codes."""
    assert error(None, err)["error"] == {"code": code, "message": message}


def test_parse_error_reply_has_null_id():
    """§5 "If there was an error in detecting the id in the Request object (e.g. Parse error ...),
    it MUST be Null"."""
    message = decode("{")
    item = only(message)
    reply = json.loads(encode([error(item.id, item.error)], message.batch))
    assert reply["id"] is None
    assert reply["error"]["code"] == PARSE_ERROR
    assert set(reply) == {"jsonrpc", "id", "error"}


# -- encoding --------------------------------------------------------------------------------------


def test_encode_single_response_is_compact_object():
    """§5 one response object per request; compact separators (no spaces) keep frames small."""
    assert encode([result(1, {"a": [1, 2], "b": "x y"})], batch=False) == \
        '{"jsonrpc":"2.0","id":1,"result":{"a":[1,2],"b":"x y"}}'


def test_encode_batch_is_compact_array():
    """§6 batch reply is one array; compact separators."""
    text = encode([result(1, 1), error(2, MethodNotFound())], batch=True)
    assert text == ('[{"jsonrpc":"2.0","id":1,"result":1},'
                    '{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"method not found"}}]')


def test_encode_empty_is_none_even_for_a_single_message():
    """§4.1 / §6 nothing owed ⇒ nothing sent (None), never "[]" or "null"."""
    assert encode([], batch=False) is None
    assert encode([], batch=True) is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), {"t": float("nan")}])
def test_encode_turns_nan_and_infinity_into_null(value):
    """§5 the response must be JSON; NaN/Infinity are not (RFC 8259 §6): they go out as null,
    so a reply is always sendable."""
    text = encode([result(1, value)], batch=False)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["result"] in (None, {"t": None})
    assert json.loads(jsonrpc.notification("event", {"v": value}))["params"]["v"] in (None, {"t": None})


def test_encode_round_trips_non_ascii():
    """§5 the reply is JSON text that any client can parse back to the same value."""
    text = encode([result("ü-1", {"name": "Küche ☕"})], batch=False)
    assert json.loads(text) == {"jsonrpc": "2.0", "id": "ü-1", "result": {"name": "Küche ☕"}}
    text.encode("utf-8")  # a WebSocket text frame must be UTF-8


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc": "2.0", "method": "m", "id": "\\ud800"}',  # lone high surrogate, escaped in JSON
        '{"jsonrpc": "2.0", "method": "m", "id": "x\\udfff"}',  # lone low surrogate
    ],
)
def test_reply_to_any_decoded_request_is_valid_utf8(text):
    """§5 the response id MUST be the same as the request's; the reply frame must still be UTF-8
    (RFC 8259 §8.1/§8.2, RFC 6455 text frames). A lone surrogate escaped in the request must either be
    refused at decode or escaped again on the way out, never emitted raw."""
    message = decode(text)
    item = only(message)
    if isinstance(item, Invalid):
        reply = encode([error(item.id, item.error)], message.batch)
    else:
        reply = encode([result(item.id, "ok")], message.batch)
    reply.encode("utf-8")  # raises UnicodeEncodeError if a raw surrogate got through


def test_notification_text():
    """§4.1 a notification is a request object without "id"; sent server→client as compact JSON text."""
    text = notification("event", {"topic": "door.state", "seq": 42, "data": {"state": "open"}})
    assert text == (b'{"jsonrpc":"2.0","method":"event",'
                    b'"params":{"topic":"door.state","seq":42,"data":{"state":"open"}}}')
    decoded = only(decode(text))
    assert isinstance(decoded, Request) and decoded.is_notification
    assert decoded.method == "event"


def test_decode_never_raises_on_assorted_garbage():
    """§5.1 every malformed frame becomes an error response; the codec itself never raises."""
    samples: list[str | bytes] = [
        "\x00", "\ufeff{}", "[" * 5000, "]" * 5000, '"' * 3, "{" * 100000, b"\x80" * 10, "1" * 100000,
        '{"jsonrpc": "2.0", "method": "m", "id": 1, "id": 2}',
    ]
    for sample in samples:
        message = decode(sample)
        assert isinstance(message, Message)
        assert message.items
