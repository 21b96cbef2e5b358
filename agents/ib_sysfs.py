"""InfiniBand port samples read from sysfs (``/sys/class/infiniband/<dev>/ports/<n>/``).

The kernel exposes cumulative counters; a sample is the delta since the previous tick of the
same port, so the first tick of a port carries only its state and link rate. A counter that
went backwards (reset, driver reload, wrap) or jumped beyond what the link can carry (or, for any
rate, past the schema's limit for a number, which the worker would refuse with the whole record)
gives a null for that interval and ``counters_reset``, and its new value becomes the baseline: a
negative or absurd rate would poison every aggregate downstream.

Each tick reads a few dozen tiny files per port, so reads are bare ``os.open``/``os.read``
(no buffered file object, no subprocess). A file that cannot be read is null and logged
once; one broken device never stops the others.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.schemas.catalog import IB_SAMPLES_RAW
from hpcinsight.schemas.columns import REAL_LIMIT
from hpcinsight.schemas.events import IbSample

log = logging.getLogger(__name__)

# counters/<file> -> (IbSample field, scale to the field's unit, is a per-second rate)
_COUNTERS: tuple[tuple[str, str, int, bool], ...] = (
    ("port_xmit_data", "xmit_bytes_per_s", 4, True),  # the kernel counts 4-octet words
    ("port_rcv_data", "rcv_bytes_per_s", 4, True),
    ("port_xmit_packets", "xmit_packets_per_s", 1, True),
    ("port_rcv_packets", "rcv_packets_per_s", 1, True),
    ("port_xmit_wait", "xmit_wait_per_s", 1, True),
    ("symbol_error", "symbol_errors", 1, False),
    ("link_downed", "link_downed", 1, False),
    ("link_error_recovery", "link_error_recovery", 1, False),
    ("port_rcv_errors", "rcv_errors", 1, False),
    ("port_rcv_remote_physical_errors", "rcv_remote_physical_errors", 1, False),
    ("port_xmit_discards", "xmit_discards", 1, False),
    ("local_link_integrity_errors", "local_link_integrity_errors", 1, False),
    ("excessive_buffer_overrun_errors", "excessive_buffer_overrun_errors", 1, False),
)
_MAX_COUNT = 2**63 - 1  # the schema's Count bound; a larger delta can only be garbage
_ABSURD_FACTOR = 10.0  # a byte rate above 10x the link rate is a reset, not traffic
_NOT_COUNTERS = frozenset({"lifespan"})  # hw_counters/lifespan is a setting (ms), not a counter


@dataclass(frozen=True)
class IbConfig:
    node: str = socket.gethostname()
    root: Path = Path("/sys/class/infiniband")
    devices: tuple[str, ...] | None = None  # None: every device under ``root``

    def __post_init__(self) -> None:
        check(bool(self.node), "node", "must be a node name")


@dataclass
class _Port:
    """Paths of one port, resolved once, and the previous tick's values."""

    device: str
    port: int
    base: str
    hw_names: tuple[str, ...]
    prev_ms: int | None = None
    prev: dict[str, int | None] = field(default_factory=dict)
    prev_hw: dict[str, int | None] = field(default_factory=dict)


class IbSysfsCollector(Collector[IbConfig]):
    """Samples every port of every InfiniBand device of this node."""

    topic = IB_SAMPLES_RAW

    def __init__(self, config: IbConfig) -> None:
        super().__init__(config)
        self._failures: dict[str, str] = {}
        self._ports: list[_Port] = []
        self._devices: tuple[str, ...] = ()
        self._discover(self._device_names())
        if not self._ports:
            log.info("no InfiniBand ports under %s", config.root)

    def _device_names(self) -> tuple[str, ...]:
        try:
            present = os.listdir(self.config.root)
        except OSError:
            return ()
        wanted = self.config.devices
        return tuple(sorted(d for d in present if wanted is None or d in wanted))

    def _discover(self, devices: tuple[str, ...]) -> None:
        """(Re)build the port list, keeping the baselines of ports that are still there."""
        known = {(p.device, p.port): p for p in self._ports}
        ports = []
        for dev in devices:
            try:
                numbers = sorted(int(n) for n in os.listdir(self.config.root / dev / "ports") if n.isdigit())
            except OSError as err:
                self._log_once(str(self.config.root / dev / "ports"), err)
                continue
            for n in numbers:
                base = str(self.config.root / dev / "ports" / str(n))
                try:
                    hw = tuple(sorted(set(os.listdir(f"{base}/hw_counters")) - _NOT_COUNTERS))
                except OSError:
                    hw = ()  # most HCAs other than mlx5 have none: not a failure
                ports.append(known.get((dev, n)) or _Port(dev, n, base, hw))
        self._ports, self._devices = ports, devices

    def _log_once(self, path: str, err: Exception) -> None:
        # Log a failing read once per file (again only if the error changes), not every tick.
        if self._failures.get(path) != str(err):
            self._failures[path] = str(err)
            log.warning("InfiniBand: reading %s failed: %s", path, err)

    def _read(self, path: str) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError as err:
            self._log_once(path, err)
            return None

    def _read_int(self, path: str) -> int | None:
        raw = self._read(path)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError as err:
            self._log_once(path, err)
            return None

    def sample(self, now_ms: int) -> list[IbSample]:
        devices = self._device_names()  # one listdir: notices a device that came or went
        if devices != self._devices:
            self._discover(devices)
        return [self._sample_port(p, now_ms) for p in self._ports]

    def _sample_port(self, p: _Port, now_ms: int) -> IbSample:
        base = p.base
        rate_gbps = _gbps(self._read(f"{base}/rate"))
        interval = (now_ms - p.prev_ms) / 1000.0 if p.prev_ms is not None and now_ms > p.prev_ms else None
        p.prev_ms = now_ms
        max_bytes = rate_gbps * 1e9 / 8 * _ABSURD_FACTOR * interval if rate_gbps and interval else None
        values: dict[str, float | int] = {}
        reset = False
        for name, field_name, scale, is_rate in _COUNTERS:
            value = self._read_int(f"{base}/counters/{name}")
            old = p.prev.get(name)
            p.prev[name] = value  # also after a reset: the new value is the baseline
            if value is None or old is None:
                continue
            delta = (value - old) * scale
            if delta < 0 or delta > _MAX_COUNT or (scale == 4 and max_bytes is not None and delta > max_bytes):
                reset = True
            elif not is_rate:
                values[field_name] = delta
            elif interval is not None:
                rate = delta / interval
                if rate > REAL_LIMIT:
                    reset = True
                else:
                    values[field_name] = rate
        hw: dict[str, float] = {}
        for name in p.hw_names:
            value = self._read_int(f"{base}/hw_counters/{name}")
            old = p.prev_hw.get(name)
            p.prev_hw[name] = value
            if value is None or old is None or interval is None:
                continue
            rate = (value - old) / interval
            if rate < 0 or rate > REAL_LIMIT:
                reset = True
            else:
                hw[name] = rate
        return IbSample(
            node=self.config.node,
            device=p.device,
            port=p.port,
            ts=now_ms,
            interval_s=interval,
            state=_word(self._read(f"{base}/state")),
            phys_state=_word(self._read(f"{base}/phys_state")),
            rate_gbps=rate_gbps,
            hw_counters=hw,
            counters_reset=reset,
            **values,
        )

    def close(self) -> None:
        """Nothing stays open between ticks; forget the baselines so a reuse starts afresh."""
        self._ports = []
        self._devices = ()


def _word(raw: bytes | None) -> str | None:
    """``b"4: ACTIVE\\n"`` -> ``"ACTIVE"``: the number is the kernel's enum, the word is readable."""
    if raw is None:
        return None
    word = raw.rpartition(b":")[2].strip().decode(errors="replace")
    return word or None


def _gbps(raw: bytes | None) -> float | None:
    """``b"400 Gb/sec (4X NDR)\\n"`` -> ``400.0``."""
    if raw is None:
        return None
    try:
        value = float(raw.split()[0])
    except (IndexError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


@collector_kind("ib_sysfs", IbConfig)
def ib_sysfs(config: IbConfig) -> list[Collector[Any]]:
    """This node's InfiniBand ports from sysfs (``[agent.collectors.ib_sysfs]``)."""
    return [IbSysfsCollector(config)]
