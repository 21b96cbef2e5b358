"""Column types: one annotation carries the wire rule, the Arrow type and the ClickHouse type.

An event field is declared once, e.g. ``gpu_util: Percent | None``. From that single
annotation the wire codec (msgspec) learns its validation rule, and :mod:`hpcinsight.schemas.derive`
learns the Arrow type and the ClickHouse column type. Adding a field to an event therefore
adds it everywhere at once; there is no second column list to forget.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import msgspec

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """Storage facts of a field: its ClickHouse type, Arrow type and compression codec.

    The Arrow type is named (``"float32"``, ``"timestamp[ms, UTC]"``, ``"list<string>"``,
    ``"map<string, float64>"``) and built on first use: the agent, which only encodes events,
    never loads pyarrow (some 40 MB of its resident memory)."""

    clickhouse: str
    arrow_name: str
    codec: str | None = None

    @property
    def arrow(self) -> pa.DataType:
        return arrow_type(self.arrow_name)


@functools.cache
def arrow_type(name: str) -> pa.DataType:
    """The Arrow type a :class:`Column` names."""
    import pyarrow as pa

    if m := re.fullmatch(r"list<(.+)>", name):
        return pa.list_(arrow_type(m.group(1)))
    if m := re.fullmatch(r"map<([^,]+), (.+)>", name):
        return pa.map_(arrow_type(m.group(1)), arrow_type(m.group(2)))
    if m := re.fullmatch(r"timestamp\[(\w+), (.+)\]", name):
        return pa.timestamp(m.group(1), tz=m.group(2))
    return pa.type_for_alias(name)


# Identity and labels: few distinct values, so LowCardinality in ClickHouse.
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=256), Column("LowCardinality(String)", "string")]
Text = Annotated[str, msgspec.Meta(max_length=65536), Column("String", "string", "ZSTD(3)")]
Bytes = Annotated[bytes, Column("String", "binary", "ZSTD(3)")]

# Time: Unix epoch milliseconds (UTC) on the wire, DateTime64(3) in ClickHouse.
# Bounds reject obvious garbage (seconds instead of ms, negative, year > 2200).
TimestampMs = Annotated[
    int,
    msgspec.Meta(ge=946_684_800_000, le=7_258_118_400_000),
    Column("DateTime64(3, 'UTC')", "timestamp[ms, UTC]", "DoubleDelta, ZSTD(1)"),
]

UInt8 = Annotated[int, msgspec.Meta(ge=0, le=255), Column("UInt8", "uint8")]
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1), Column("UInt32", "uint32", "T64, ZSTD(1)")]
UInt64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1), Column("UInt64", "uint64", "T64, ZSTD(1)")]
Bytes64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1), Column("UInt64", "uint64", "T64, ZSTD(1)")]

# Codecs as measured by bench/storage.py (bytes per sample after merge, an hour of 64 simulated
# GPUs): gauges read from NVML are quantised (whole percent, 0.1 W, whole degrees) and noisy
# second to second, so plain ZSTD beats Gorilla's XOR encoding on them (gpu_util 1.6 vs 2.8 B);
# byte rates are wide floats where Gorilla + ZSTD wins (PCIe 4.4 vs 5.7 B).
Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0), Column("Float32", "float32", "ZSTD(1)")]
Watts = Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0), Column("Float32", "float32", "ZSTD(1)")]
Celsius = Annotated[float, msgspec.Meta(ge=-100.0, le=300.0), Column("Float32", "float32", "ZSTD(1)")]
Mhz = Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0), Column("Float32", "float32", "ZSTD(1)")]
# Any other number: no reading or figure here comes near 1e15 in its unit (a petabyte a second, 30
# million years), and the bound keeps every sum a window, a job or a KPI takes over them finite.
# Unbounded, two schema-valid rates of 1e308 made a window mean of infinity, which JSON writes as
# null, and the job stage refused the whole message of sketches it was in.
_WIDE = Column("Float64", "float64", "Gorilla, ZSTD(1)")
REAL_LIMIT = 1e15
Real = Annotated[float, msgspec.Meta(ge=-REAL_LIMIT, le=REAL_LIMIT), _WIDE]
# A number of GPUs or CPUs as a scheduler states it (a fraction for a shared GPU): at most ten
# million either way, so that the KPIs' sums of them over every job of a cluster stay far inside
# Real's limit (a KPI row past it would be refused by its consumers, with its whole message).
AMOUNT_LIMIT = 1e7
Amount = Annotated[float, msgspec.Meta(ge=-AMOUNT_LIMIT, le=AMOUNT_LIMIT), _WIDE]

Flag = Annotated[bool, Column("Bool", "bool")]
LabelList = Annotated[list[str], Column("Array(LowCardinality(String))", "list<string>")]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1), Column("UInt64", "uint64", "T64, ZSTD(1)")]

_NUMBER_MAP = Column("Map(LowCardinality(String), Float64)", "map<string, float64>")
# Numeric evidence of an anomaly: name -> value, queryable as a ClickHouse Map.
Evidence = Annotated[dict[str, float], _NUMBER_MAP]
# Numbers read outside, by name (an IB port's counter rates, a training step's phase times):
# each bounded as a Real is, so that no sum or mean over them can overflow.
Readings = Annotated[dict[str, Real], _NUMBER_MAP]
# Free-form string labels (e.g. node labels): name -> value.
StringMap = Annotated[
    dict[str, str],
    Column("Map(LowCardinality(String), String)", "map<string, string>"),
]
