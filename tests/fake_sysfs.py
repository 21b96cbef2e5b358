"""A stand-in for ``/sys/class/infiniband``, for machines without InfiniBand.

It writes the same files the kernel exposes (``ports/<n>/state``, ``phys_state``, ``rate``,
``counters/``, ``hw_counters/``) under a temporary directory, with the kernel's text formats,
and lets a test move counters between ticks. Only the hardware is faked: the collector under
test reads real files with its real code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

COUNTERS = (
    "port_xmit_data",
    "port_rcv_data",
    "port_xmit_packets",
    "port_rcv_packets",
    "port_xmit_wait",
    "symbol_error",
    "link_downed",
    "link_error_recovery",
    "port_rcv_errors",
    "port_rcv_remote_physical_errors",
    "port_xmit_discards",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
)
HW_COUNTERS = ("out_of_buffer", "rx_write_requests", "np_cnp_sent")


class FakeSysfs:
    """Devices ``mlx5_0`` .. ``mlx5_{n-1}``, each with port 1, every counter at 0."""

    def __init__(self, root: Path, devices: int = 2, rate: str = "400 Gb/sec (4X NDR)", hw_counters: bool = True) -> None:
        self.root = root
        self.devices = [f"mlx5_{i}" for i in range(devices)]
        for dev in self.devices:
            port = self.port(dev)
            (port / "counters").mkdir(parents=True)
            self.write(dev, "state", "4: ACTIVE")
            self.write(dev, "phys_state", "5: LinkUp")
            self.write(dev, "rate", rate)
            for name in COUNTERS:
                self.set(dev, name, 0)
            if hw_counters:
                (port / "hw_counters").mkdir()
                for name in HW_COUNTERS:
                    self.set_hw(dev, name, 0)
                self.write(dev, "hw_counters/lifespan", "12")  # a setting in ms, not a counter

    def port(self, dev: str, n: int = 1) -> Path:
        return self.root / dev / "ports" / str(n)

    def write(self, dev: str, relpath: str, text: str, n: int = 1) -> None:
        (self.port(dev, n) / relpath).write_text(text + "\n")

    def set(self, dev: str, counter: str, value: int, n: int = 1) -> None:
        """Set ``counters/<counter>`` (raw kernel value: data counters are in 4-octet words)."""
        self.write(dev, f"counters/{counter}", str(value), n)

    def add(self, dev: str, counter: str, amount: int, n: int = 1) -> None:
        path = self.port(dev, n) / "counters" / counter
        self.set(dev, counter, int(path.read_text()) + amount, n)

    def set_hw(self, dev: str, counter: str, value: int, n: int = 1) -> None:
        self.write(dev, f"hw_counters/{counter}", str(value), n)

    def remove(self, dev: str, relpath: str, n: int = 1) -> None:
        (self.port(dev, n) / relpath).unlink()

    def break_port(self, dev: str, n: int = 1) -> None:
        """Every file of the port becomes unreadable (EISDIR, which fails even for root)."""
        port = self.port(dev, n)
        shutil.rmtree(port)
        for relpath in ("state", "phys_state", "rate", *(f"counters/{c}" for c in COUNTERS)):
            (port / relpath).mkdir(parents=True)

    def remove_device(self, dev: str) -> None:
        shutil.rmtree(self.root / dev)
