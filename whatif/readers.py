"""Read openb-style trace files (pods and nodes CSV) into :mod:`hpcinsight.whatif.model` records.

Bad input is said in one line naming the file, the line and the field (a
:class:`~hpcinsight.whatif.model.WhatifError`); nothing is skipped silently, because a what-if answer
built on a quietly truncated trace would mislead. The GPU share is read as the FGD authors'
converter reads it: for a GPU pod, ``gpu_milli`` above 1000 counts as a whole GPU and a
non-positive one as none; a pod asking no GPU has no share.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from hpcinsight.whatif.model import MILLI, Job, Node, WhatifError

POD_FIELDS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
NODE_FIELDS = ("sn", "cpu_milli", "memory_mib", "gpu")


def _rows(path: Path, required: Sequence[str]) -> Iterable[tuple[int, dict[str, str]]]:
    try:
        handle = open(path, newline="")
    except OSError as err:
        raise WhatifError(f"{path}: cannot read ({err.strerror or err})") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [f for f in required if f not in header]
        if missing:
            raise WhatifError(f"{path}: missing column(s) {', '.join(missing)} in the header")
        for row in reader:
            yield reader.line_num, row


def _int(path: Path, line: int, row: dict[str, str], field: str, default: int | None = None) -> int:
    raw = (row.get(field) or "").strip()
    if not raw and default is not None:
        return default
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            raise WhatifError(f"{path} line {line}: field '{field}' is not a number: {raw!r}") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise WhatifError(f"{path} line {line}: field '{field}' is not a whole number: {raw!r}") from None
        value = int(as_float)
    if value < 0:
        raise WhatifError(f"{path} line {line}: field '{field}' is negative: {raw!r}")
    return value


def _time(path: Path, line: int, row: dict[str, str], field: str) -> float | None:
    raw = (row.get(field) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise WhatifError(f"{path} line {line}: field '{field}' is not a time in seconds: {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise WhatifError(f"{path} line {line}: field '{field}' is not a time in seconds: {raw!r}")
    return value


def gpu_share(num_gpu: int, gpu_milli: int) -> int:
    """The per-GPU share in thousandths, as the FGD authors' converter reads the trace."""
    if num_gpu == 0:
        return 0
    if gpu_milli > MILLI:
        return MILLI
    return max(gpu_milli, 0)


def read_nodes(path: Path | str) -> list[Node]:
    """The node list: ``sn, cpu_milli, memory_mib, gpu, model`` (``zone`` optional)."""
    path = Path(path)
    nodes: list[Node] = []
    seen: set[str] = set()
    for line, row in _rows(path, NODE_FIELDS):
        name = (row.get("sn") or "").strip()
        if not name:
            raise WhatifError(f"{path} line {line}: field 'sn' is empty")
        if name in seen:
            raise WhatifError(f"{path} line {line}: field 'sn' repeats node {name!r}")
        seen.add(name)
        gpus = _int(path, line, row, "gpu")
        model = (row.get("model") or "").strip()
        nodes.append(
            Node(
                name=name,
                cpu_milli=_int(path, line, row, "cpu_milli"),
                memory_mib=_int(path, line, row, "memory_mib"),
                gpus=gpus,
                model=model if gpus else "",
                zone=(row.get("zone") or "").strip(),
            )
        )
    if not nodes:
        raise WhatifError(f"{path}: the cluster is empty (no node rows)")
    return nodes


def read_pods(path: Path | str, *, times: bool = False) -> list[Job]:
    """The pod list; with ``times`` the creation/scheduled/deletion times become submit/start/end."""
    path = Path(path)
    jobs: list[Job] = []
    for line, row in _rows(path, POD_FIELDS + (("creation_time",) if times else ())):
        name = (row.get("name") or "").strip()
        if not name:
            raise WhatifError(f"{path} line {line}: field 'name' is empty")
        num_gpu = _int(path, line, row, "num_gpu")
        milli = gpu_share(num_gpu, _int(path, line, row, "gpu_milli", default=0))
        if num_gpu > 1 and 0 < milli < MILLI:
            raise WhatifError(f"{path} line {line}: field 'gpu_milli' shares a GPU ({milli}) across {num_gpu} GPUs")
        submit = start = end = None
        if times:
            submit = _time(path, line, row, "creation_time")
            if submit is None:
                raise WhatifError(f"{path} line {line}: field 'creation_time' is empty")
            start = _time(path, line, row, "scheduled_time")
            end = _time(path, line, row, "deletion_time")
            if end is not None and end < submit:
                raise WhatifError(f"{path} line {line}: field 'deletion_time' is before 'creation_time'")
        jobs.append(
            Job(
                name=name,
                cpu_milli=_int(path, line, row, "cpu_milli"),
                memory_mib=_int(path, line, row, "memory_mib"),
                num_gpu=num_gpu,
                gpu_milli=milli,
                gpu_spec=(row.get("gpu_spec") or "").strip(),
                qos=(row.get("qos") or "").strip(),
                submit=submit,
                start=start,
                end=end,
                team=(row.get("team") or "").strip(),
                user=(row.get("user") or "").strip(),
                priority=(row.get("priority") or "").strip(),
            )
        )
    return jobs


def check_fits(jobs: Sequence[Job], nodes: Sequence[Node], *, source: str = "PODS") -> None:
    """Refuse a job larger than every node (it could never run); name it and what is too big.

    A job that fits some node's size but can never be placed for another reason (a GPU model
    no node has) is not refused here: the run reports it as unschedulable.
    """
    if not nodes:
        raise WhatifError("the cluster is empty (no nodes)")
    max_cpu = max(n.cpu_milli for n in nodes)
    max_mem = max(n.memory_mib for n in nodes)
    max_gpu = max(n.gpus for n in nodes)
    for i, job in enumerate(jobs):
        where = f"{source} job {job.name!r} (#{i + 1})"
        if job.cpu_milli > max_cpu:
            raise WhatifError(f"{where}: cpu_milli {job.cpu_milli} is larger than any node ({max_cpu})")
        if job.memory_mib > max_mem:
            raise WhatifError(f"{where}: memory_mib {job.memory_mib} is larger than any node ({max_mem})")
        if job.num_gpu > max_gpu:
            raise WhatifError(f"{where}: num_gpu {job.num_gpu} is more than any node has ({max_gpu})")
