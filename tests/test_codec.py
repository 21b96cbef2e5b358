"""Bad input gets a clear reason, never an exception the worker would die of."""

from __future__ import annotations

import json

import pytest

from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import GpuSample

codec = GPU_SAMPLES_RAW.codec
GOOD = {"node": "n0", "gpu_index": 1, "gpu_uuid": "GPU-1", "ts": 1_764_000_000_000, "gpu_util": 50.0}


def envelope(records: list, v: int = 1, schema: str = "gpu_sample") -> bytes:
    return json.dumps({"schema": schema, "v": v, "records": records}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "bad envelope"),
        (envelope([GOOD], v=7), "unknown schema version 7"),
        (envelope([GOOD], schema="anomaly"), "does not belong here"),
        (envelope([{**GOOD, "gpu_index": "one"}]), "Expected `int`, got `str`"),
        (envelope([{**GOOD, "gpu_util": 250.0}]), "Expected `float` <= 100.0"),
        (envelope([{**GOOD, "ts": 1_764_000_000}]), "Expected `int` >= "),  # seconds, not ms
        (envelope([{**GOOD, "surprise": 1}]), "unknown field `surprise`"),
        (envelope([{k: v for k, v in GOOD.items() if k != "gpu_uuid"}]), "missing required field `gpu_uuid`"),
        (
            b'{"schema":"gpu_sample","v":1,"records":[{"node":"n0","gpu_index":1,"gpu_uuid":"u","ts":1764000000000,"power_w":NaN}]}',
            "malformed JSON",
        ),
        (envelope([{**GOOD, "power_w": 1e999}]), "malformed JSON"),  # json.dumps writes Infinity
        (envelope([GOOD]).replace(b'"n0"', b'"n\xc3\x28"'), "utf-8"),  # not UTF-8: a DecodeError, not a crash
        (b'\xff{"schema": "gpu_sample"}', "malformed JSON"),
    ],
)
def test_bad_messages_raise_decode_error_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        codec.decode(raw)
    assert reason in str(err.value)


def test_nan_cannot_be_built_or_sent() -> None:
    with pytest.raises(ValueError, match="only finite numbers"):
        GpuSample("n0", 0, "GPU-1", 1_764_000_000_000, gpu_util=float("nan"))


def test_nulls_are_allowed_for_unsupported_readings() -> None:
    record = codec.decode(envelope([{**GOOD, "gpu_util": None, "power_w": None}]))[0]
    assert record.gpu_util is None and record.power_w is None


def test_version_travels_in_every_message() -> None:
    raw = codec.encode([GpuSample(**GOOD)])
    assert json.loads(raw)["v"] == GpuSample.__version__ and json.loads(raw)["schema"] == "gpu_sample"
