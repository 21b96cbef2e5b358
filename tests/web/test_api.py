"""The Insight API against its own OpenAPI spec, the token, hostile parameters and the live stream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.web.conftest import TOKEN, Served

SAMPLE_PATH_VALUES = {"node": "node-0002", "uuid": "GPU-node-0002-5", "job": "job-0000", "name": "cluster_now"}


def get(s: Served, path: str, token: str | None = "default", **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", {})
    token = s.token if token == "default" else token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(s.url + path, headers=headers, timeout=20, **kw)


SAMPLE_QUERY_VALUES = {"job": "job-0000", "node": "node-0002", "gpu_uuid": "GPU-node-0002-5"}


def api_paths(s: Served) -> list[str]:
    """Every GET path of the spec with sample values; required query parameters filled in, typed
    as the spec says (so a per-query route whose spec is wrong fails here)."""
    spec = get(s, "/openapi.json").json()
    paths = []
    for template, ops in spec["paths"].items():
        assert "get" in ops and set(ops) == {"get"}, f"{template} is not read-only: {sorted(ops)}"
        if template.startswith("/api/") and template != "/api/stream":
            path = template
            for key, value in SAMPLE_PATH_VALUES.items():
                path = path.replace("{" + key + "}", value)
            required = [p for p in ops["get"].get("parameters", []) if p["in"] == "query" and p.get("required")]
            if required:
                path += "?" + "&".join(
                    f"{p['name']}={SAMPLE_QUERY_VALUES.get(p['name'], 1 if p['schema']['type'] == 'integer' else 'x')}"
                    for p in required
                )
            paths.append(path)
    return paths


def test_every_endpoint_of_the_spec_answers_json(served: Served) -> None:
    paths = api_paths(served)
    assert {
        "/api/cluster",
        "/api/kpis",
        "/api/anomalies",
        "/api/queries",
        "/api/jobs/job-0000",
        "/api/nodes/node-0002",
        "/api/gpus/GPU-node-0002-5",
        "/api/queries/cluster_now",
    } <= set(paths)
    for path in paths:
        r = get(served, path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json")
        json.loads(r.text)  # NaN in the store comes back as null, valid JSON
        assert "NaN" not in r.text


def test_live_state(served: Served) -> None:
    c = get(served, "/api/cluster").json()
    assert c["gpus"] == 96 and c["nodes"] == 12 and c["open_anomalies"] == 1
    gpu = get(served, "/api/gpus/GPU-node-0002-5").json()
    assert gpu["open_anomalies"] == ["gpu_outlier"] and gpu["job"] == "job-0000" and gpu["model"] in ("A100", "H100")
    job = get(served, "/api/jobs/job-0000").json()
    assert len(job["gpus"]) == 24 and job["threshold_pct"] == 30.0
    assert [a["kind"] for a in job["open_anomalies"]] == ["gpu_outlier"]
    assert get(served, "/api/nodes/nope").status_code == 404
    assert get(served, "/api/gpus/nope").status_code == 404
    outliers = get(served, "/api/gpus", params={"kind": "gpu_outlier"}).json()
    assert [g["uuid"] for g in outliers] == ["GPU-node-0002-5"]


def test_each_library_query_is_documented_with_its_typed_parameters(served: Served) -> None:
    spec = get(served, "/openapi.json").json()
    summary = spec["paths"]["/api/queries/job_summary"]["get"]
    params = {p["name"]: p for p in summary["parameters"]}
    assert params["job"]["required"] is True and params["job"]["schema"]["type"] == "string"
    within = {p["name"]: p for p in spec["paths"]["/api/queries/cluster_now"]["get"]["parameters"]}["within_s"]
    assert within["required"] is False and within["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**32 - 1,
        "default": 300,
    }
    listed = {q["name"] for q in get(served, "/api/queries").json()}
    assert {f"/api/queries/{n}" for n in listed} <= set(spec["paths"])


def test_library_queries_bind_parameters_server_side(served: Served, stub_client: Any) -> None:
    r = get(served, "/api/queries/cluster_now", params={"within_s": "60"})
    assert r.status_code == 200 and r.json()["rows"] == [{"x": 1, "y": None}]
    sql, params, settings = stub_client.calls[-1]
    assert params == {"within_s": 60} and settings == {"readonly": 1} and "{within_s:UInt32}" in sql


@pytest.mark.parametrize(
    "path, params, status, says",
    [
        ("/api/queries/cluster_now", {"within_s": "1; DROP TABLE gpu_samples"}, 400, "within_s"),
        ("/api/queries/cluster_now", {"within_s": "99999999999999"}, 400, "out of range"),
        ("/api/queries/cluster_now", {"evil": "1"}, 400, "unknown: evil"),
        ("/api/queries/job_summary", {}, 400, "needs --param job"),
        ("/api/queries/job_summary", {"job": "x" * 5000}, 400, "longer than 1024"),
        ("/api/queries/SELECT%201", {}, 404, "no such query"),
        ("/api/queries/..%2f..%2fetc%2fpasswd", {}, 404, ""),
        ("/api/gpus", {"team": "a' OR 1=1 --"}, 422, "pattern"),
        ("/api/gpus", {"user": "x" * 200}, 422, ""),
        ("/api/stream", {"metrics": "util,secret"}, 400, "metrics"),
        ("/api/stream", {"view": "admin"}, 422, ""),
        ("/api/stream", {"view": "user"}, 400, "user=NAME"),
        ("/api/stream", {"job": "<script>alert(1)</script>"}, 422, ""),
        ("/api/kpis", {"kpi": "\x00\n"}, 422, ""),
        ("/api/jobs/%27%3B%20DROP", {}, 400, "not a job id"),
        ("/static/..%2fapp.py", {}, 404, ""),
    ],
)
def test_hostile_parameters_are_refused_with_a_clear_message(
    served: Served, stub_client: Any, path: str, params: dict[str, str], status: int, says: str
) -> None:
    r = get(served, path, params=params)
    assert r.status_code == status, r.text[:300]
    assert says in r.text
    assert not stub_client.calls, "a refused request reached the store"


def test_repeated_parameter_is_refused(served: Served, stub_client: Any) -> None:
    r = get(served, "/api/queries/cluster_now?within_s=1&within_s=2")
    assert r.status_code == 400 and "once" in r.text and not stub_client.calls


def test_token(served: Served) -> None:
    paths = api_paths(served) + ["/api/stream"]
    if served.token is None:
        assert get(served, "/api/cluster").status_code == 200
        return
    for path in paths:
        for bad in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
            r = get(served, path, token=bad)
            assert r.status_code == 401, (path, bad)
            assert r.headers["www-authenticate"] == "Bearer" and TOKEN not in r.text
    assert get(served, "/api/cluster", token=None, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    # the page and the spec hold no data and no secret
    for public in ("/", "/openapi.json", "/static/unit.js", "/healthz"):
        r = get(served, public, token=None)
        assert r.status_code == 200 and TOKEN not in r.text


def read_events(s: Served, params: dict[str, str], frames: int = 2) -> list[tuple[str, Any]]:
    headers = {"Authorization": f"Bearer {s.token}"} if s.token else {}
    events, kind = [], None
    with httpx.stream("GET", s.url + "/api/stream", params=params, headers=headers, timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if sum(k == "frame" for k, _ in events) >= frames:
                    break
    return events


def test_stream_sends_the_layout_then_compact_frames(served: Served) -> None:
    events = read_events(served, {})
    assert [k for k, _ in events] == ["layout", "frame", "frame"]
    layout, frame = events[0][1], events[1][1]
    assert len(layout["gpus"]) == 96 and layout["fields"] == ["node", "gpu", "uuid", "zone", "pool", "model"]
    assert frame["n"] == 96 and all(len(frame[m]) == 96 for m in ("util", "power", "mem", "temp", "p95", "job", "anom"))
    assert all(isinstance(v, int) for v in frame["util"])
    assert frame["kinds"] == ["gpu_outlier"]
    flagged = [layout["gpus"][i][2] for i, a in enumerate(frame["anom"]) if a]
    assert flagged == ["GPU-node-0002-5"]


def test_stream_filters_server_side(served: Served) -> None:
    layout = read_events(served, {"kind": "gpu_outlier"}, 1)[0][1]
    assert [g[2] for g in layout["gpus"]] == ["GPU-node-0002-5"]
    layout, frame = [d for _, d in read_events(served, {"view": "user", "user": "user1"}, 1)]
    assert layout["gpus"] and {j[1] for j in frame["jobs"]} == {"user1"}
    layout, frame = [d for _, d in read_events(served, {"job": "job-0002", "metrics": "util"}, 1)]
    assert len(layout["gpus"]) == 24 and "power" not in frame
    assert read_events(served, {"team": "nobody"}, 1)[0][1]["gpus"] == []
