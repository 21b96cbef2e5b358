"""The InfiniBand sysfs collector: rates from deltas, resets give null, a broken device never stops the others."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hpcinsight.agents.base import Collector
from hpcinsight.agents.ib_sysfs import IbConfig, IbSysfsCollector
from hpcinsight.schemas.catalog import IB_SAMPLES_RAW
from hpcinsight.schemas.columns import REAL_LIMIT
from hpcinsight.schemas.events import IbSample
from tests.fake_sysfs import FakeSysfs

NOW = 1_764_000_000_000
RATES = ("xmit_bytes_per_s", "rcv_bytes_per_s", "xmit_packets_per_s", "rcv_packets_per_s", "xmit_wait_per_s")
ERRORS = (
    "symbol_errors",
    "link_downed",
    "link_error_recovery",
    "rcv_errors",
    "rcv_remote_physical_errors",
    "xmit_discards",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
)


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "infiniband", devices=2)


def collector(fake: FakeSysfs, **kw: object) -> IbSysfsCollector:
    return IbSysfsCollector(IbConfig(node="node-1", root=fake.root, **kw))


def by_device(samples: list[IbSample]) -> dict[str, IbSample]:
    return {s.device: s for s in samples}


def test_first_tick_has_state_and_rate_but_no_rates(fake: FakeSysfs) -> None:
    samples = collector(fake).sample(NOW)
    assert [(s.node, s.device, s.port, s.ts) for s in samples] == [("node-1", "mlx5_0", 1, NOW), ("node-1", "mlx5_1", 1, NOW)]
    s = samples[0]
    assert (s.state, s.phys_state, s.rate_gbps) == ("ACTIVE", "LinkUp", 400.0)
    assert s.interval_s is None and s.hw_counters == {} and not s.counters_reset
    assert all(getattr(s, f) is None for f in RATES + ERRORS)


def test_second_tick_rates_are_deltas_over_the_interval(fake: FakeSysfs) -> None:
    c = collector(fake)
    c.sample(NOW)
    fake.add("mlx5_0", "port_xmit_data", 1_000_000)  # 4-octet words
    fake.add("mlx5_0", "port_rcv_data", 250_000)
    fake.add("mlx5_0", "port_xmit_packets", 3_000)
    fake.add("mlx5_0", "port_rcv_packets", 1_000)
    fake.add("mlx5_0", "port_xmit_wait", 50)
    s = by_device(c.sample(NOW + 2_000))["mlx5_0"]
    assert s.interval_s == 2.0
    assert s.xmit_bytes_per_s == 1_000_000 * 4 / 2.0
    assert s.rcv_bytes_per_s == 250_000 * 4 / 2.0
    assert (s.xmit_packets_per_s, s.rcv_packets_per_s, s.xmit_wait_per_s) == (1_500.0, 500.0, 25.0)
    assert all(getattr(s, f) == 0 for f in ERRORS) and not s.counters_reset


def test_error_counters_are_counts_in_the_interval(fake: FakeSysfs) -> None:
    c = collector(fake)
    fake.set("mlx5_1", "symbol_error", 10)
    fake.set("mlx5_1", "link_downed", 2)
    c.sample(NOW)
    fake.add("mlx5_1", "symbol_error", 7)
    fake.add("mlx5_1", "link_downed", 1)
    fake.add("mlx5_1", "port_rcv_errors", 3)
    fake.add("mlx5_1", "excessive_buffer_overrun_errors", 4)
    s = by_device(c.sample(NOW + 500))["mlx5_1"]
    assert (s.symbol_errors, s.link_downed, s.rcv_errors, s.excessive_buffer_overrun_errors) == (7, 1, 3, 4)
    assert s.link_error_recovery == 0 and s.xmit_discards == 0


def test_a_counter_that_goes_back_is_a_reset_then_the_next_tick_is_normal(fake: FakeSysfs) -> None:
    c = collector(fake)
    fake.set("mlx5_0", "port_xmit_data", 5_000_000)
    fake.set("mlx5_0", "symbol_error", 9)
    c.sample(NOW)
    fake.add("mlx5_0", "port_rcv_data", 1_000)
    fake.set("mlx5_0", "port_xmit_data", 100)  # driver reload: counters restart near 0
    fake.set("mlx5_0", "symbol_error", 0)
    s = by_device(c.sample(NOW + 1_000))["mlx5_0"]
    assert s.counters_reset and s.xmit_bytes_per_s is None and s.symbol_errors is None
    assert s.rcv_bytes_per_s == 4_000.0  # counters that did not go back are still reported
    fake.add("mlx5_0", "port_xmit_data", 1_000)
    fake.add("mlx5_0", "symbol_error", 1)
    s = by_device(c.sample(NOW + 2_000))["mlx5_0"]
    assert not s.counters_reset and s.xmit_bytes_per_s == 4_000.0 and s.symbol_errors == 1


def test_a_saturated_counter_stays_at_zero_delta(fake: FakeSysfs) -> None:
    c = collector(fake)
    fake.set("mlx5_0", "port_xmit_wait", 2**32 - 1)
    c.sample(NOW)
    s = by_device(c.sample(NOW + 1_000))["mlx5_0"]
    assert s.xmit_wait_per_s == 0.0 and not s.counters_reset


def test_an_absurd_jump_is_treated_as_a_reset(fake: FakeSysfs) -> None:
    c = collector(fake)
    c.sample(NOW)
    limit_words = int(400e9 / 8 * 10 / 4)  # 10x a 400 Gb/s link for 1 s, in 4-octet words
    fake.add("mlx5_0", "port_xmit_data", limit_words + 1)
    fake.add("mlx5_0", "port_rcv_data", limit_words)  # exactly at the limit: still believed
    s = by_device(c.sample(NOW + 1_000))["mlx5_0"]
    assert s.counters_reset and s.xmit_bytes_per_s is None and s.rcv_bytes_per_s == limit_words * 4.0
    fake.add("mlx5_0", "port_xmit_data", 1_000)
    s = by_device(c.sample(NOW + 2_000))["mlx5_0"]
    assert not s.counters_reset and s.xmit_bytes_per_s == 4_000.0  # the jumped value became the baseline


def test_a_rate_past_the_schema_s_limit_is_a_reset_and_the_message_is_accepted(fake: FakeSysfs) -> None:
    """A packet or hw counter that jumps by more than any link could count (a reset to a higher
    value, a driver bug) would give a rate past REAL_LIMIT, and the worker would refuse the whole
    message; the collector takes it as a reset, and what it sends decodes."""
    c = collector(fake)
    fake.set("mlx5_0", "port_xmit_packets", 5)
    fake.set_hw("mlx5_0", "out_of_buffer", 5)
    fake.set_hw("mlx5_0", "rx_write_requests", 5)
    c.sample(NOW)
    fake.add("mlx5_0", "port_xmit_packets", 2 * int(REAL_LIMIT))  # 2e15 in one second
    fake.add("mlx5_0", "port_rcv_packets", 1_000)
    fake.set_hw("mlx5_0", "out_of_buffer", 5 + 2 * int(REAL_LIMIT))
    fake.set_hw("mlx5_0", "rx_write_requests", 5 + int(REAL_LIMIT))  # exactly at the limit: still believed
    samples = c.sample(NOW + 1_000)
    s = by_device(samples)["mlx5_0"]
    assert s.counters_reset and s.xmit_packets_per_s is None and s.rcv_packets_per_s == 1_000.0
    assert "out_of_buffer" not in s.hw_counters and s.hw_counters["rx_write_requests"] == REAL_LIMIT
    assert IB_SAMPLES_RAW.codec.decode(IB_SAMPLES_RAW.codec.encode(samples)) == samples


def test_a_missing_counter_file_is_null_and_the_rest_is_read(fake: FakeSysfs, caplog: pytest.LogCaptureFixture) -> None:
    fake.remove("mlx5_0", "counters/port_xmit_wait")
    fake.remove("mlx5_0", "rate")
    c = collector(fake)
    c.sample(NOW)
    fake.add("mlx5_0", "port_xmit_packets", 10)
    c.sample(NOW + 1_000)
    s = by_device(c.sample(NOW + 2_000))["mlx5_0"]
    assert s.xmit_wait_per_s is None and s.rate_gbps is None and not s.counters_reset
    assert s.xmit_packets_per_s == 0.0 and s.state == "ACTIVE"
    assert sum("port_xmit_wait" in r.message for r in caplog.records if r.levelno == logging.WARNING) == 1


def test_a_broken_or_removed_device_does_not_stop_the_others(fake: FakeSysfs, caplog: pytest.LogCaptureFixture) -> None:
    c = collector(fake)
    c.sample(NOW)
    fake.break_port("mlx5_0")
    fake.add("mlx5_1", "port_xmit_data", 100)
    broken, ok = c.sample(NOW + 1_000)
    assert broken.device == "mlx5_0" and broken.state is None and broken.rate_gbps is None
    assert broken.xmit_bytes_per_s is None and broken.symbol_errors is None and broken.hw_counters == {}
    assert ok.xmit_bytes_per_s == 400.0 and ok.state == "ACTIVE"
    c.sample(NOW + 2_000)
    assert sum("mlx5_0/ports/1/state" in r.message for r in caplog.records) == 1  # logged once, not every tick
    fake.remove_device("mlx5_0")
    fake.add("mlx5_1", "port_xmit_data", 100)
    (ok,) = c.sample(NOW + 3_000)
    assert ok.device == "mlx5_1" and ok.xmit_bytes_per_s == 400.0


def test_hw_counters_are_rates_and_lifespan_is_not_a_counter(fake: FakeSysfs) -> None:
    c = collector(fake)
    fake.set_hw("mlx5_0", "out_of_buffer", 5)
    assert by_device(c.sample(NOW))["mlx5_0"].hw_counters == {}
    fake.set_hw("mlx5_0", "out_of_buffer", 25)
    fake.set_hw("mlx5_0", "np_cnp_sent", 300)
    s = by_device(c.sample(NOW + 4_000))["mlx5_0"]
    assert s.hw_counters == {"out_of_buffer": 5.0, "rx_write_requests": 0.0, "np_cnp_sent": 75.0}
    fake.set_hw("mlx5_0", "out_of_buffer", 1)
    s = by_device(c.sample(NOW + 5_000))["mlx5_0"]
    assert s.counters_reset and "out_of_buffer" not in s.hw_counters and s.hw_counters["np_cnp_sent"] == 0.0


def test_without_hw_counters_and_only_chosen_devices(tmp_path: Path) -> None:
    fake = FakeSysfs(tmp_path, devices=3, rate="100 Gb/sec (4X EDR)", hw_counters=False)
    c = collector(fake, devices=("mlx5_2", "mlx5_0"))
    c.sample(NOW)
    samples = c.sample(NOW + 1_000)
    assert [s.device for s in samples] == ["mlx5_0", "mlx5_2"]
    assert samples[0].rate_gbps == 100.0 and samples[0].hw_counters == {}


def test_no_infiniband_on_this_node_gives_no_samples(tmp_path: Path) -> None:
    assert IbSysfsCollector(IbConfig(node="n", root=tmp_path / "absent")).sample(NOW) == []


def test_is_a_collector_and_records_round_trip_the_codec(fake: FakeSysfs) -> None:
    with collector(fake) as c:
        assert isinstance(c, Collector) and c.topic is IB_SAMPLES_RAW
        first = c.sample(NOW)
        fake.add("mlx5_0", "port_xmit_data", 123)
        fake.add("mlx5_1", "link_downed", 1)
        fake.set_hw("mlx5_1", "out_of_buffer", 3)
        second = c.sample(NOW + 1_000)
    # close() forgot the baselines: a collector reused after close starts afresh
    assert all(s.interval_s is None for s in c.sample(NOW + 2_000))
    batch = first + second
    assert IB_SAMPLES_RAW.codec.decode(IB_SAMPLES_RAW.codec.encode(batch)) == batch
