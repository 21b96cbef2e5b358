"""The simulator's inputs as plain typed records: nodes and jobs.

Kept free of any file format so that the trace readers, the store adapter on the CLI floor
and the tests all build the same objects. GPU requests follow the openb trace: ``num_gpu``
whole GPUs, or one GPU shared at ``gpu_milli`` thousandths (``num_gpu == 1``, ``gpu_milli <
1000``); ``gpu_spec`` lists the GPU models a job accepts ('|'-separated, empty = any).
"""

from __future__ import annotations

from dataclasses import dataclass

MILLI = 1000  # one whole GPU in thousandths
MAX_SPEC_CPU = 128_000  # the largest node's CPU (milli) in the openb cluster: the score scale
MAX_SPEC_GPU = 8_000  # the largest node's GPU (milli): 8 GPUs
DEFAULT_CPU_REQUEST = 100  # Kubernetes counts a pod asking no CPU as asking 100m when scoring


class WhatifError(ValueError):
    """Bad input said in one line (the CLI prints it and exits 2)."""


@dataclass(frozen=True, slots=True)
class Node:
    """A host: its CPU (milli), memory (MiB), GPUs of one model, and its zone (pod) if any."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str = ""
    zone: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    """One schedulable unit (a pod, or one task of a gang) and, when known, its life.

    ``submit``/``start``/``end`` are seconds; ``start`` is when it was placed in reality (for
    the "as recorded" replay), ``end`` when it ended (its duration is ``end - start``, or
    ``end - submit`` when it never recorded a start). ``gang`` names the distributed job a
    task belongs to (all tasks of one gang are placed together or not at all when gang
    scheduling is on); ``gang_size`` is its number of tasks.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str = ""
    qos: str = ""
    submit: float | None = None
    start: float | None = None
    end: float | None = None
    team: str = ""
    user: str = ""
    priority: str = ""
    gang: str = ""
    gang_size: int = 1
    node: str = ""  # the node it ran on, when recorded

    @property
    def gpu_share(self) -> bool:
        """A fraction of one GPU (the GPU can be shared with other such jobs)."""
        return self.num_gpu == 1 and 0 < self.gpu_milli < MILLI

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def score_cpu(self) -> int:
        """The CPU request as Kubernetes scores it (a pod asking none counts as 100m)."""
        return self.cpu_milli if self.cpu_milli > 0 else DEFAULT_CPU_REQUEST

    def shape(self) -> tuple[int, int, int, int, str]:
        """What placement depends on: jobs of one shape score alike on a node."""
        return (self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.gpu_spec)

    def affinity(self) -> str:
        """GPU-clustering's tag: no GPU, a shared GPU, or k whole GPUs."""
        if self.num_gpu == 0 or self.gpu_milli == 0:
            return "no-gpu"
        if self.gpu_share:
            return "share"
        return f"{self.num_gpu}-gpu"


def accepts(gpu_spec: str, model: str) -> bool:
    """Whether a job with this ``gpu_spec`` may run on a GPU of ``model``."""
    wanted = [m for m in gpu_spec.split("|") if m]
    if not wanted:
        return True
    return bool(model) and model in wanted
