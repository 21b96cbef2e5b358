"""``hpcinsight whatif``: the JSON interface other tools read, and bad input said in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcinsight.cli import main
from hpcinsight.whatif.model import WhatifError
from hpcinsight.whatif_cli import parse_seeds

POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"


def write(tmp_path: Path, pods: list[str], nodes: list[str]) -> tuple[str, str]:
    p, n = tmp_path / "pods.csv", tmp_path / "nodes.csv"
    p.write_text(POD_HEADER + "".join(line + "\n" for line in pods))
    n.write_text(NODE_HEADER + "".join(line + "\n" for line in nodes))
    return str(p), str(n)


def small(tmp_path: Path) -> tuple[str, str]:
    pods = [
        f"pod-{i:03d},{2000 + 1000 * (i % 5)},4096,{2 if i % 4 == 3 else 1},{(250, 500, 1000, 1000)[i % 4]},,LS,Running,{i * 10},{i * 10 + 500},{i * 10}"
        for i in range(60)
    ]
    nodes = [f"node-{i},64000,262144,{(8, 4, 2)[i % 3]},{('G2', 'V100M16', 'T4')[i % 3]}" for i in range(6)]
    return write(tmp_path, pods, nodes)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["whatif", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_fill_json_interface(tmp_path: Path, capsys) -> None:
    pods, nodes = small(tmp_path)
    rc, out, err = run(
        capsys, "fill", pods, nodes, "--policy", "fgd,bestfit,random", "--seeds", "42-44", "--format", "json", "--procs", "1"
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert {r["policy"] for r in rows} == {"fgd", "bestfit", "random"}
    for r in rows:
        assert 0 <= r["arrived_pct"] <= 130 and 0 <= r["gpu_alloc_pct"] <= 100 and 1 <= r["seeds"] <= 3
    by = {(r["policy"], r["arrived_pct"]): r for r in rows}
    assert by[("fgd", 130)]["min_pct"] <= by[("fgd", 130)]["gpu_alloc_pct"] <= by[("fgd", 130)]["max_pct"]
    assert "published_pct" not in by[("fgd", 130)]  # not the authors' trace: their figures do not apply


def test_fill_csv_table_and_plot(tmp_path: Path, capsys) -> None:
    pods, nodes = small(tmp_path)
    rc, out, _ = run(
        capsys, "fill", pods, nodes, "--policy", "mostallocated", "--format", "csv", "--plots", str(tmp_path / "png")
    )
    assert rc == 0 and out.startswith("policy,arrived_pct,gpu_alloc_pct")
    assert (tmp_path / "png" / "fill_allocation.png").stat().st_size > 1000
    rc, out, _ = run(capsys, "fill", pods, nodes, "--policy", "leastallocated,firstfit")
    assert rc == 0 and "leastallocated" in out and "130%" in out


@pytest.mark.parametrize(
    "pods,nodes,expect",
    [
        (
            ["a,1000,1024,1,500,,LS,Running,0,10,0", "b,lots,1024,1,500,,LS,Running,0,10,0"],
            ["n,64000,262144,8,G2"],
            "pods.csv line 3: field 'cpu_milli' is not a number: 'lots'",
        ),
        (["a,1000,1024,1,500,,LS,Running,0,10,0"], ["n,64000,262144,eight,G2"], "nodes.csv line 2: field 'gpu' is not a number"),
        (["a,1000,1024,16,1000,,LS,Running,0,10,0"], ["n,64000,262144,8,G2"], "num_gpu 16 is more than any node has (8)"),
        (["a,100000,1024,1,1000,,LS,Running,0,10,0"], ["n,64000,262144,8,G2"], "cpu_milli 100000 is larger than any node"),
        (["a,1000,1024,1,1000,,LS,Running,0,10,0"], [], "the cluster is empty"),
        (["a,1000,1024,1,-5,,LS,Running,0,10,0"], ["n,64000,262144,8,G2"], "line 2: field 'gpu_milli' is negative"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, pods, nodes, expect) -> None:
    p, n = write(tmp_path, pods, nodes)
    rc, out, err = run(capsys, "fill", p, n, "--policy", "fgd")
    assert rc == 2 and expect in err and "Traceback" not in err and err.count("\n") == 1, err


def test_unknown_policy_and_seeds(tmp_path: Path, capsys) -> None:
    pods, nodes = small(tmp_path)
    rc, _, err = run(capsys, "fill", pods, nodes, "--policy", "fgd,tetris")
    assert rc == 2 and "unknown policy 'tetris'" in err
    rc, _, err = run(capsys, "fill", pods, nodes, "--seeds", "51-42")
    assert rc == 2 and "--seeds" in err
    rc, _, err = run(capsys, "fill", str(tmp_path / "missing.csv"), nodes)
    assert rc == 2 and "missing.csv: cannot read" in err
    assert parse_seeds("42-44,50") == [42, 43, 44, 50]
    with pytest.raises(WhatifError):
        parse_seeds("x")


def test_a_job_no_node_accepts_is_reported_not_retried(tmp_path: Path, capsys) -> None:
    p, n = write(
        tmp_path, ["a,1000,1024,1,1000,A100,LS,Running,0,10,0", "b,1000,1024,1,1000,,LS,Running,0,10,0"], ["n,64000,262144,8,G2"]
    )
    rc, out, err = run(capsys, "fill", p, n, "--policy", "bestfit", "--inflate", "0")
    assert rc == 0, err
    assert "1 pods / 1 GPUs" in out  # the A100 pod: never placed


def test_trace_mode_json_csv_and_plots(tmp_path: Path, capsys) -> None:
    pods, nodes = small(tmp_path)
    rc, out, err = run(
        capsys,
        "trace",
        pods,
        nodes,
        "--policy",
        "fgd,random",
        "--queue",
        "fifo,priority",
        "--reserve-gpus",
        "2",
        "--as-recorded",
        "--format",
        "json",
        "--plots",
        str(tmp_path / "ev"),
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["policy"], r["queue"]) for r in rows] == [
        ("fgd", "fifo"),
        ("fgd", "priority"),
        ("random", "fifo"),
        ("random", "priority"),
        ("as recorded", "-"),
    ]
    for r in rows:
        assert r["requests"] == 60 and 0 <= r["gpu_alloc_pct"] <= 100 and "wait_by" in r and "_waits" not in r
    assert (tmp_path / "ev" / "allocation_over_time.png").exists() and (tmp_path / "ev" / "wait_cdf_by_gpu_request.png").exists()
    rc, out, _ = run(capsys, "trace", pods, nodes, "--policy", "bestfit", "--format", "csv")
    assert rc == 0 and out.startswith("policy,queue,indicator,dimension,group,value,count")
    rc, out, _ = run(capsys, "trace", pods, nodes, "--policy", "mostallocated+profile", "--gang", "none")
    assert rc == 0 and "mostallocated+profile" in out


def test_trace_mode_bad_input(tmp_path: Path, capsys) -> None:
    p, n = write(tmp_path, ["a,1000,1024,1,500,,LS,Running,,10,0"], ["n,64000,262144,8,G2"])
    rc, _, err = run(capsys, "trace", p, n)
    assert rc == 2 and "line 2: field 'creation_time' is empty" in err
    p, n = write(tmp_path, ["a,1000,1024,1,500,,LS,Running,50,10,50"], ["n,64000,262144,8,G2"])
    rc, _, err = run(capsys, "trace", p, n)
    assert rc == 2 and "'deletion_time' is before 'creation_time'" in err
    pods, nodes = small(tmp_path)
    rc, _, err = run(capsys, "trace", pods, nodes, "--queue", "lottery")
    assert rc == 2 and "unknown queue 'lottery'" in err
    rc, _, err = run(capsys, "trace", pods, nodes, "--weights", "size=big")
    assert rc == 2 and "--weights: size must be a number" in err
