"""Segment requests on the channel: every request and reply survives encoding, blobs travel apart from
the header, integer keys stay integers, and a message that is not a known request is refused."""

import pytest

from madlib_dl.segment import requests as r

TABLE = r.TableRef("s", "t", "y", "x", 16384)
SAMPLES = [
    r.Start(2, "-1", None),
    r.Start(None, None, 512, worker_session=False),
    r.BeginRun("run", "madlib_dl", {"train": TABLE, "validation": r.TableRef("s", "v", "y", "x", 16390),
                                    "multi_io": r.TableRef("s", "m", "y", "x", 16391, dependents=("y", "y2"),
                                                           independents=("x", "x2", "x3"))},
               {1: r.ModelConstants("{}", "loss='mse'", "epochs=1"), 7: r.ModelConstants("{}", "c")}),
    r.CountRows(TABLE),
    r.InitialWeights("{}", 42),
    r.Fit("run", "train", 3, 7, 99, 120, True, False, True, b"\x00\x01", None),
    r.Fit("run", "train", 0, 1, 5, 10, False, True, False, b"w", bytearray(b"state")),
    r.Evaluate("run", "validation", 1, "validation", 7, 30, True, True, False, b"w"),
    r.Release(None),
    r.Release("run"),
    r.Stop(),
    r.Reply({"loss": 0.5, "pid": 12, "metric": None}, b"w", b"o"),
]


@pytest.mark.parametrize("request_", SAMPLES, ids=lambda x: type(x).__name__)
def test_every_request_survives_encoding(request_):
    header, blobs = r.encode(request_)
    assert r.decode(header, blobs) == request_
    assert all(isinstance(b, (bytes, bytearray, memoryview)) for b in blobs)


def test_state_travels_as_blobs_not_in_the_header():
    header, blobs = r.encode(r.Fit("run", "train", 0, 1, 5, 10, False, True, False, b"W" * 100, b"O" * 50))
    assert header["blobs"] == ["weights", "optimizer_state"] and [len(b) for b in blobs] == [100, 50]
    assert "W" * 100 not in str(header)


def test_model_keys_stay_integers():
    header, blobs = r.encode(SAMPLES[2])
    assert set(r.decode(header, blobs).models) == {1, 7}


@pytest.mark.parametrize("header, blobs, message", [
    ({"type": "Popen", "fields": {}}, [], "not a madlib_dl segment request"),
    ("nonsense", [], "not a madlib_dl segment request"),
    ({"type": "Fit", "fields": {"run_id": 3}}, [], "Fit.run_id: expected"),
    ({"type": "Fit", "fields": {"segment": True}}, [], "Fit.segment: expected"),
    ({"type": "Release", "fields": {"run_id": None, "command": "rm"}}, [], "Release has no field 'command'"),
    ({"type": "Release", "fields": {}, "blobs": ["run_id"]}, [], "malformed Release"),
    ({"type": "Stop", "fields": {}, "blobs": ["x"]}, [b"x"], "Stop has no field 'x'"),
    ({"type": "Fit", "fields": {"run_id": "r"}}, [], "Fit: "),
    ({"type": "BeginRun", "fields": {"run_id": "r", "schema": "s", "tables": [["t", {"evil": 1}]]}}, [],
     "BeginRun.tables: malformed"),
    ({"type": "BeginRun", "fields": {"run_id": "r", "schema": "s", "models": [[True, {"model_arch": "a",
                                                                                    "compile_params": "c"}]]}},
     [], "BeginRun.models: malformed"),
])
def test_what_is_not_a_request_is_refused(header, blobs, message):
    with pytest.raises(r.BadRequest, match=message):
        r.decode(header, blobs)
