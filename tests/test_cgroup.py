"""The cgroup parser finds container, pod and Slurm job in every layout the agent meets."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinsight.agents.cgroup import attribution, read_attribution

CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"
CID2 = "aa" * 32
POD = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
POD_US = POD.replace("-", "_")


@pytest.mark.parametrize(
    ("text", "container", "pod", "job"),
    [
        pytest.param(  # containerd, systemd driver, cgroup v2, burstable QoS
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/cri-containerd-{CID}.scope\n",
            CID,
            POD,
            None,
            id="v2-containerd-systemd-burstable",
        ),
        pytest.param(  # CRI-O, systemd driver, besteffort QoS
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/crio-{CID}.scope\n",
            CID,
            POD,
            None,
            id="v2-crio-besteffort",
        ),
        pytest.param(  # Guaranteed QoS has no QoS slice
            f"0::/kubepods.slice/kubepods-pod{POD_US}.slice/cri-containerd-{CID}.scope\n",
            CID,
            POD,
            None,
            id="v2-guaranteed",
        ),
        pytest.param(  # cgroup v1, cgroupfs driver: dashes kept, bare container id
            f"12:memory:/kubepods/besteffort/pod{POD}/{CID}\n"
            f"11:devices:/kubepods/besteffort/pod{POD}/{CID}\n"
            "1:name=systemd:/kubepods/besteffort/pod" + POD + "/" + CID + "\n",
            CID,
            POD,
            None,
            id="v1-cgroupfs-besteffort",
        ),
        pytest.param(  # cgroup v1 with the systemd driver (underscores) and CRI-O
            f"10:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/crio-{CID}.scope\n",
            CID,
            POD,
            None,
            id="v1-crio-systemd",
        ),
        pytest.param(f"0::/system.slice/docker-{CID}.scope\n", CID, None, None, id="docker-systemd"),
        pytest.param(f"13:pids:/docker/{CID}\n4:memory:/docker/{CID}\n", CID, None, None, id="docker-cgroupfs-v1"),
        pytest.param(f"0::/user.slice/user-1000.slice/user@1000.service/libpod-{CID}.scope\n", CID, None, None, id="podman"),
        pytest.param(  # CRI-O's conmon monitor is not the container
            f"0::/kubepods.slice/kubepods-pod{POD_US}.slice/crio-conmon-{CID}.scope\n",
            None,
            POD,
            None,
            id="crio-conmon",
        ),
        pytest.param(  # kind: a pod's container inside the node container; the inner one wins
            f"0::/docker/{CID2}/kubepods/burstable/pod{POD}/{CID}\n",
            CID,
            POD,
            None,
            id="nested-innermost",
        ),
        pytest.param(  # static pod: 32-hex-digit UID
            "0::/kubepods/burstable/pod6f5bd4a8e4a1b4f9c7c3d2e1f0a9b8c7/" + CID + "\n",
            CID,
            "6f5bd4a8e4a1b4f9c7c3d2e1f0a9b8c7",
            None,
            id="static-pod",
        ),
        pytest.param("0::/system.slice/slurmstepd.scope/job_123/step_0/user/task_0\n", None, None, "123", id="slurm-v2"),
        pytest.param(
            "7:devices:/slurm/uid_1000/job_4567/step_batch/task_0\n4:memory:/slurm/uid_1000/job_4567/step_batch/task_0\n",
            None,
            None,
            "4567",
            id="slurm-v1",
        ),
        pytest.param(  # hybrid host: the unified line is read first even when listed last
            f"4:memory:/docker/{CID2}\n0::/system.slice/docker-{CID}.scope\n",
            CID,
            None,
            None,
            id="hybrid-v2-first",
        ),
        pytest.param("0::/user.slice/user-1000.slice/session-3.scope\n", None, None, None, id="plain-user-session"),
        pytest.param("0::/job_99/step_0\n", None, None, None, id="job-outside-slurm-ignored"),
        pytest.param("", None, None, None, id="empty"),
        pytest.param("garbage\n\n0::\n", None, None, None, id="malformed"),
    ],
)
def test_attribution(text: str, container: str | None, pod: str | None, job: str | None) -> None:
    assert attribution(text) == {"container_id": container, "pod_uid": pod, "slurm_job_id": job}


def test_read_attribution_reads_the_pid_and_tolerates_a_vanished_one(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_77/step_0/user/task_0\n")
    assert read_attribution(42, proc_root=tmp_path)["slurm_job_id"] == "77"
    assert read_attribution(43, proc_root=tmp_path) == {"container_id": None, "pod_uid": None, "slurm_job_id": None}


def test_read_attribution_of_this_process_does_not_fail() -> None:
    import os

    got = read_attribution(os.getpid())
    assert set(got) == {"container_id", "pod_uid", "slurm_job_id"}
