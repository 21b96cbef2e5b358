"""The cluster's free resources as numpy arrays, so a policy scores every node in one pass.

``gpu_left[n, g]`` is GPU ``g`` of node ``n``'s free share in thousandths (1000 = fully free);
nodes with fewer GPUs than the widest are padded with 0, which no request ever fits. Every
change to a node bumps its ``stamp``: scores computed for a job shape stay valid for every
node whose stamp has not moved, which is what makes a 10,000-pod replay cheap (only the node
just used is scored again for the next pod of the same shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpcinsight.whatif.model import MILLI, Job, Node, accepts


@dataclass(frozen=True, slots=True)
class Shape:
    """A job's request as placement sees it; jobs of one shape share cached scores."""

    cpu: int
    mem: int
    num_gpu: int
    milli: int  # per GPU, thousandths
    spec: str
    affinity: str

    @classmethod
    def of(cls, job: Job) -> Shape:
        return cls(job.cpu_milli, job.memory_mib, job.num_gpu, job.gpu_milli, job.gpu_spec, job.affinity())

    @property
    def wants_gpu(self) -> bool:
        return self.num_gpu > 0 and self.milli > 0

    @property
    def share(self) -> bool:
        return self.num_gpu == 1 and 0 < self.milli < MILLI

    @property
    def score_cpu(self) -> int:
        return self.cpu if self.cpu > 0 else 100

    @property
    def total_milli(self) -> int:
        return self.num_gpu * self.milli if self.wants_gpu else 0


class ClusterState:
    """Free CPU, memory and GPU shares per node, and who runs where."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        n = len(self.nodes)
        width = max([node.gpus for node in self.nodes] + [1])
        self.names = [node.name for node in self.nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.cpu_cap = np.array([node.cpu_milli for node in self.nodes], dtype=np.int64)
        self.mem_cap = np.array([node.memory_mib for node in self.nodes], dtype=np.int64)
        self.ngpu = np.array([node.gpus for node in self.nodes], dtype=np.int64)
        self.models = [node.model for node in self.nodes]
        self.zones = [node.zone for node in self.nodes]
        self.cpu_left = self.cpu_cap.copy()
        self.mem_left = self.mem_cap.copy()
        self.gpu_left = np.zeros((n, width), dtype=np.int64)
        for i, node in enumerate(self.nodes):
            self.gpu_left[i, : node.gpus] = MILLI
        self.gpu_cap_milli = self.ngpu * MILLI
        self.total_gpus = int(self.ngpu.sum())
        self.allocated = 0  # GPU thousandths in use, kept as jobs come and go
        self.stamp = np.zeros(n, dtype=np.int64)
        self.clock = 0
        self.affinity: list[dict[str, int]] = [{} for _ in range(n)]
        self._access: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    # -- what fits -----------------------------------------------------------------------
    def access(self, spec: str) -> np.ndarray:
        """Nodes whose GPU model the spec accepts (all of them for an empty spec)."""
        got = self._access.get(spec)
        if got is None:
            got = np.array([accepts(spec, m) for m in self.models], dtype=bool)
            self._access[spec] = got
        return got

    def feasible(self, shape: Shape, idx: np.ndarray) -> np.ndarray:
        """Which of the nodes ``idx`` can take one job of ``shape`` now (the Filter step)."""
        ok = (self.cpu_left[idx] >= shape.cpu) & (self.mem_left[idx] >= shape.mem)
        if shape.wants_gpu:
            ok &= self.ngpu[idx] > 0
            ok &= self.access(shape.spec)[idx]
            fits = (self.gpu_left[idx] >= shape.milli).sum(axis=1)
            ok &= fits >= shape.num_gpu
        return ok

    def fits_empty(self, shape: Shape) -> bool:
        """Whether any node could take the job if the cluster were empty."""
        ok = (self.cpu_cap >= shape.cpu) & (self.mem_cap >= shape.mem)
        if shape.wants_gpu:
            ok &= (self.ngpu >= shape.num_gpu) & self.access(shape.spec)
        return bool(ok.any())

    # -- which GPUs ------------------------------------------------------------------------
    def best_fit_gpus(self, shape: Shape, node: int) -> list[int]:
        """The default GPU choice: the tightest-fitting GPU for a share, else the first free ones."""
        if not shape.wants_gpu:
            return []
        left = self.gpu_left[node]
        if shape.share:
            fit = np.flatnonzero(left >= shape.milli)
            return [int(fit[np.argmin(left[fit])])]
        free = np.flatnonzero(left >= MILLI) if shape.milli >= MILLI else np.flatnonzero(left >= shape.milli)
        return [int(g) for g in free[: shape.num_gpu]]

    # -- changes ---------------------------------------------------------------------------
    def _touch(self, node: int) -> None:
        self.clock += 1
        self.stamp[node] = self.clock

    def place(self, shape: Shape, node: int, gpus: Sequence[int]) -> None:
        self.cpu_left[node] -= shape.cpu
        self.mem_left[node] -= shape.mem
        for g in gpus:
            self.gpu_left[node, g] -= shape.milli
        self.allocated += shape.milli * len(gpus)
        if shape.affinity != "no-gpu":
            tags = self.affinity[node]
            tags[shape.affinity] = tags.get(shape.affinity, 0) + 1
        self._touch(node)

    def release(self, shape: Shape, node: int, gpus: Sequence[int]) -> None:
        self.cpu_left[node] += shape.cpu
        self.mem_left[node] += shape.mem
        for g in gpus:
            self.gpu_left[node, g] += shape.milli
        self.allocated -= shape.milli * len(gpus)
        if shape.affinity != "no-gpu":
            tags = self.affinity[node]
            tags[shape.affinity] -= 1
            if tags[shape.affinity] <= 0:
                del tags[shape.affinity]
        self._touch(node)

    # -- summaries -------------------------------------------------------------------------
    def allocated_milli(self) -> int:
        """GPU thousandths in use across the cluster."""
        return self.allocated
