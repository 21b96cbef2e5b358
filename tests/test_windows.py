"""Window specifications: sizes are whole multiples of the hop; labels read as durations."""

from __future__ import annotations

import pytest

from hpcinsight.streams.windows import WindowSpec


def test_window_size_must_be_a_multiple_of_hop() -> None:
    with pytest.raises(ValueError):
        WindowSpec(10_000, 3_000)


def test_labels() -> None:
    assert [WindowSpec(s, 10_000).label for s in (20_000, 60_000, 300_000, 3_600_000)] == ["20s", "1m", "5m", "1h"]
