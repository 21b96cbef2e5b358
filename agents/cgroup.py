"""Which container, Kubernetes pod and Slurm job a process belongs to, from its cgroup.

NVML names the processes on a GPU only by PID. To charge a shared GPU to the right tenant we
read ``/proc/<pid>/cgroup``: every container runtime and Slurm put their ids in the cgroup
path, and that file is readable for any PID without privileges. The parser is a pure
function over the file's text, so each runtime's layout is tested from a literal string.

Layouts understood (cgroup v1 ``ID:controllers:/path`` lines and the v2 ``0::/path`` line):

* Kubernetes, cgroupfs driver: ``/kubepods/burstable/pod<uid>/<container-id>``
* Kubernetes, systemd driver: ``/kubepods.slice/kubepods-besteffort.slice/
  kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope`` (or ``crio-<id>``,
  ``docker-<id>``); the pod UID's dashes are underscores there and are put back
* Docker: ``/docker/<id>`` and ``/system.slice/docker-<id>.scope``; Podman ``libpod-<id>``
* Slurm: ``/slurm/uid_1000/job_123/step_0/task_0`` (v1) and
  ``/system.slice/slurmstepd.scope/job_123/step_0/user/task_0`` (v2)

The Kubernetes namespace is not in the cgroup path; it is joined later from the pod UID.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypedDict


class Attribution(TypedDict):
    """Where a process belongs; ``None`` where its cgroup does not say."""

    container_id: str | None
    pod_uid: str | None
    slurm_job_id: str | None


# One path component each. A container id is 64 hex digits, bare (cgroupfs) or wrapped by
# the runtime's systemd scope. ``crio-conmon-<id>`` is CRI-O's monitor, not the container,
# and does not match (``conmon-`` is not hex).
_CONTAINER = re.compile(r"^(?:(?:docker|cri-containerd|crio|libpod|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")
# Pod UIDs are RFC 4122 UUIDs (dashes, or underscores under the systemd driver); static pods
# have a 32-hex-digit hash instead.
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})(?:\.slice)?$")
_SLURM_JOB = re.compile(r"^job_(\d+)$")


def attribution(cgroup_text: str) -> Attribution:
    """Container id, pod UID and Slurm job id found in the text of a ``/proc/<pid>/cgroup``.

    The v2 line (``0::``) is read first: on hybrid hosts it is the authoritative hierarchy.
    Within one path the innermost container id wins (a container nested in a ``kind`` node
    container belongs to the inner one).
    """
    paths = []
    for line in cgroup_text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        if parts[0] == "0" and parts[1] == "":
            paths.insert(0, parts[2])
        else:
            paths.append(parts[2])
    out = Attribution(container_id=None, pod_uid=None, slurm_job_id=None)
    for path in paths:
        components = [c for c in path.split("/") if c]
        if out["container_id"] is None:
            for component in reversed(components):
                if m := _CONTAINER.match(component):
                    out["container_id"] = m.group(1)
                    break
        if out["pod_uid"] is None and "kubepods" in path:
            for component in reversed(components):
                if m := _POD.search(component):
                    out["pod_uid"] = m.group(1).replace("_", "-")
                    break
        if out["slurm_job_id"] is None and "slurm" in path:
            for component in components:
                if m := _SLURM_JOB.match(component):
                    out["slurm_job_id"] = m.group(1)
                    break
    return out


def read_attribution(pid: int, proc_root: Path = Path("/proc")) -> Attribution:
    """:func:`attribution` of a live process; all ``None`` if it has exited or is not visible.

    A GPU process can exit between NVML listing it and this read, and an agent without the
    host's PID namespace does not see it at all: neither is an error worth more than nulls.
    """
    try:
        text = (proc_root / str(pid) / "cgroup").read_text(errors="replace")
    except OSError:  # FileNotFoundError, ProcessLookupError (ESRCH), PermissionError
        return Attribution(container_id=None, pod_uid=None, slurm_job_id=None)
    return attribution(text)
