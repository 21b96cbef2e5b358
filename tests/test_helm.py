"""deploy/helm/hpcinsight, checked by the tools that consume it: a real Helm (v4, built from the Go
module proxy by the set-up) lints and renders it for every value set in its ``ci/`` folder, and every
rendered manifest is validated strictly against Kubernetes' own schemas (kubernetes-validate) for the
oldest version the chart supports and the newest the package bundles. Then what the schemas cannot
say: the settings reach the real configuration loader, every command line parses with the real CLI,
secrets come only from existing Secrets, the RBAC is list/watch of pods and nodes, every pod but the
agent meets the restricted Pod Security profile, and a wrong value fails naming it."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinsight.deploy.tools.go import require

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "hpcinsight"
VALUE_SETS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
#: the oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate bundles
K8S_VERSIONS = ("1.29.0", "1.37.0")
#: kinds of the Prometheus Operator (CRDs: Kubernetes publishes no schema for them)
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def helm() -> Path:
    return require("helm")


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render(helm: Path, values: str | None, *sets: str, kube: str = K8S_VERSIONS[0]) -> subprocess.CompletedProcess[str]:
    args = ["template", "rel", str(CHART), "--namespace", "gpu-telemetry", "--kube-version", kube]
    if values:
        args += ["-f", str(CHART / "ci" / values)]
    for s in sets:
        args += ["--set", s]
    return run_helm(helm, *args)


_rendered: dict[tuple[str, str], list[dict[str, Any]]] = {}


def manifests(helm: Path, values: str, kube: str = K8S_VERSIONS[0]) -> list[dict[str, Any]]:
    if (values, kube) not in _rendered:
        result = render(helm, values, kube=kube)
        assert result.returncode == 0, result.stderr
        _rendered[values, kube] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[values, kube]


def values_of(name: str) -> dict[str, Any]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    return merge(defaults, yaml.safe_load((CHART / "ci" / name).read_text()))


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def test_the_value_sets_cover_what_operators_run() -> None:
    assert {
        "default-values.yaml",
        "sasl-ssl-values.yaml",
        "clickhouse-cluster-values.yaml",
        "no-prometheus-operator-values.yaml",
        "mtls-values.yaml",
    } <= set(VALUE_SETS)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_is_clean(helm: Path, values: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("kube", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(helm: Path, values: str, kube: str) -> None:
    import kubernetes_validate

    docs = manifests(helm, values, kube)
    assert docs
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # not silently passing a core kind
                kubernetes_validate.validate(doc, kube, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{values}: {doc['kind']}/{doc['metadata']['name']} is not valid on Kubernetes {kube}: {err}")


def test_what_each_value_set_deploys(helm: Path) -> None:
    def kinds(values: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for d in manifests(helm, values):
            out.setdefault(d["kind"], set()).add(d["metadata"]["name"])
        return out

    default = kinds("default-values.yaml")
    assert default["DaemonSet"] == {"rel-hpcinsight-agent"}
    assert default["Deployment"] == {f"rel-hpcinsight-{c}" for c in ("scheduler", "worker", "sink", "serve")}
    assert default["ServiceMonitor"] and default["PrometheusRule"] and default["NetworkPolicy"]
    assert "Secret" not in default  # secrets are the operator's: referenced, never created
    bare = kinds("no-prometheus-operator-values.yaml")
    assert not OPERATOR_KINDS & set(bare) and "NetworkPolicy" not in bare and "ClusterRole" not in bare
    assert "Job" not in bare  # clickhouse.migrate: false
    cluster = kinds("clickhouse-cluster-values.yaml")
    assert "rel-hpcinsight-alerts" in cluster["Deployment"] and cluster["PersistentVolumeClaim"] == {"rel-hpcinsight-alerts"}
    assert "Ingress" in kinds("sasl-ssl-values.yaml")
    mtls = manifests(helm, "mtls-values.yaml")
    [agent] = [d for d in mtls if d["kind"] == "DaemonSet"]
    assert agent["metadata"]["namespace"] == "hpcinsight-agents"


def test_worker_replicas_are_bounded_by_the_partitions() -> None:
    import json

    from hpcinsight.schemas.catalog import by_name

    schema = json.loads((CHART / "values.schema.json").read_text())
    [default] = [c["then"]["properties"] for c in schema["allOf"] if "topicPartitions" in json.dumps(c["if"])]
    assert default["worker"]["properties"]["replicas"]["maximum"] == by_name("gpu.samples.raw").partitions
    assert default["sink"]["properties"]["replicas"]["maximum"] == by_name("gpu.samples").partitions


def _pod_env(container: dict[str, Any], volumes: dict[str, dict[str, Any]], config_toml: str, tmp: Path) -> dict[str, str]:
    """The container's environment with its mounted files laid out under ``tmp``: the ConfigMap's
    config.toml and, for each Secret, a made-up value at the key the chart names."""
    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts", []):
        local = tmp / m["name"]
        local.mkdir(exist_ok=True)
        volume = volumes[m["name"]]
        if "configMap" in volume:
            (local / "config.toml").write_text(config_toml)
        for item in volume.get("secret", {}).get("items", []):
            (local / item["path"]).write_text("s3cr3t-value-0123456789\n")
        mounts[m["mountPath"]] = local
    env = {}
    for e in container.get("env", []):
        if "value" not in e:
            env[e["name"]] = "pod-0"
            continue
        value = e["value"]
        for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value.startswith(mount + "/"):
                value = str(local) + value[len(mount) :]
                break
        env[e["name"]] = value
    return env


@pytest.mark.parametrize("values", VALUE_SETS)
def test_the_settings_reach_the_components(helm: Path, values: str, tmp_path: Path) -> None:
    """Each container's environment, files mounted as the pod would have them, loads with
    hpcinsight.core.settings and says what the values said."""
    from hpcinsight.core.settings import load
    from hpcinsight.web.serve import api_token

    docs = manifests(helm, values)
    v = values_of(values)
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-hpcinsight"]
    config_toml = config_map["data"]["config.toml"]
    for where, pod in pod_templates(docs):
        volumes = {vol["name"]: vol for vol in pod.get("volumes", [])}
        for container in pod["containers"]:
            tmp = tmp_path / where.replace("/", "_")
            tmp.mkdir()
            env = _pod_env(container, volumes, config_toml, tmp)
            settings = load(env)
            assert (
                settings.kafka.bootstrap == v["kafka"]["bootstrap"] and settings.kafka.topic_prefix == v["kafka"]["topicPrefix"]
            )
            assert settings.kafka.security_protocol == v["kafka"]["securityProtocol"]
            assert settings.kafka.topic_partitions == v["kafka"]["topicPartitions"]
            if v["kafka"]["securityProtocol"].startswith("SASL"):
                assert settings.kafka.sasl_username == v["kafka"]["sasl"]["username"]
                assert settings.kafka.sasl_password.reveal() == "s3cr3t-value-0123456789"
            assert (settings.kafka.ssl_cafile is not None) == bool(v["kafka"]["tls"]["caSecret"]["name"])
            if v["kafka"]["tls"]["clientSecret"]["name"]:  # mutual TLS: the client certificate and key reach librdkafka
                conf = settings.kafka.client_config()
                assert conf["ssl.certificate.location"].endswith("/user.crt") and conf["ssl.key.location"].endswith("/user.key")
            assert settings.clickhouse.url == v["clickhouse"]["url"] and settings.clickhouse.cluster == (
                v["clickhouse"]["cluster"] or None
            )
            assert dict(settings.clickhouse.ttl_days) == v["clickhouse"]["ttlDays"]
            assert dict(settings.detectors) == v["detectors"]
            component = container["args"][0] if container["args"][:1] != ["agent"] else "agent"
            # the ClickHouse password only where the store is opened
            has_ch_password = settings.clickhouse.password is not None
            assert has_ch_password == (
                bool(v["clickhouse"]["passwordSecret"]["name"]) and component in ("sink", "serve", "db")
            ), where
            if component == "serve":
                assert (api_token(env) is not None) == bool(v["serve"]["apiTokenSecret"]["name"])


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_variable_set_is_one_the_components_read(helm: Path, values: str) -> None:
    known = (ROOT / "core" / "settings.py").read_text() + (ROOT / "web" / "serve.py").read_text()
    for where, pod in pod_templates(manifests(helm, values)):
        for container in pod["containers"]:
            for e in container.get("env", []):
                assert e["name"].removesuffix("_FILE") in known or e["name"] in (
                    "NODE_NAME",
                    "POD_NAME",
                    "NVIDIA_VISIBLE_DEVICES",
                    "NVIDIA_DRIVER_CAPABILITIES",
                ), f"{where} sets {e['name']}, which no component reads"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_command_line_parses_with_the_cli(helm: Path, values: str, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcinsight.cli import build_parser

    for where, pod in pod_templates(manifests(helm, values)):
        for container in pod["containers"]:
            args = [re.sub(r"\$\((NODE_NAME|POD_NAME)\)", "pod-0", a) for a in container["args"]]
            try:
                build_parser().parse_args(args)
            except SystemExit:
                pytest.fail(f"{where}: `hpcinsight {shlex.join(args)}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("values", VALUE_SETS)
def test_secrets_only_from_existing_secrets(helm: Path, values: str) -> None:
    docs = manifests(helm, values)
    text = yaml.safe_dump_all(docs)
    v = values_of(values)
    named = {
        v["kafka"]["sasl"]["passwordSecret"]["name"],
        v["kafka"]["tls"]["caSecret"]["name"],
        v["kafka"]["tls"]["clientSecret"]["name"],
        v["clickhouse"]["passwordSecret"]["name"],
        v["serve"]["apiTokenSecret"]["name"],
        v["alerts"]["envFromSecret"],
        v["serve"]["ingress"]["tlsSecret"],
    } - {""}
    referenced = set(re.findall(r"secretName: (\S+)", text)) | {
        e["secretRef"]["name"] for _w, pod in pod_templates(docs) for c in pod["containers"] for e in c.get("envFrom", [])
    }
    assert referenced == named
    for _where, pod in pod_templates(docs):
        for c in pod["containers"]:
            for e in c.get("env", []):
                assert not re.search(r"PASSWORD$|TOKEN$|KEY$", e["name"]), f"{e['name']} as a plain value"
    assert "s3cr3t" not in text


def test_rbac_is_list_and_watch_of_pods_and_nodes(helm: Path) -> None:
    docs = manifests(helm, "default-values.yaml")
    [role] = [d for d in docs if d["kind"] == "ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list", "watch"]}]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    [binding] = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-hpcinsight-scheduler", "namespace": "gpu-telemetry"}]
    for where, pod in pod_templates(docs):
        token = pod.get("automountServiceAccountToken", True)
        assert token == (where == "Deployment/rel-hpcinsight-scheduler"), where
    [scheduler] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-hpcinsight-scheduler"]
    assert scheduler["spec"]["replicas"] == 1


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What breaks Kubernetes' restricted Pod Security Standard (its documented checks, baseline's included)."""
    bad = [f"{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    bad += [f"volume {v['name']}" for v in pod.get("volumes", []) if not RESTRICTED_VOLUMES & set(v)]
    psc = pod.get("securityContext", {})
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            bad.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{c['name']}: runAsUser 0")
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: capabilities")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{c['name']}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{c['name']}: hostPort")
    return bad


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_pod_but_the_agent_is_restricted(helm: Path, values: str) -> None:
    pods = pod_templates(manifests(helm, values))
    assert len(pods) >= 3
    for where, pod in pods:
        if where.endswith("-agent"):
            continue
        assert restricted_violations(pod) == [], where
        assert all(c["securityContext"].get("readOnlyRootFilesystem") for c in pod["containers"]), where


def test_the_agent_takes_exactly_the_privileges_its_readme_lists(helm: Path) -> None:
    docs = manifests(helm, "default-values.yaml")
    [agent] = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = agent["spec"]["template"]["spec"]
    [c] = pod["containers"]
    # what it takes beyond the restricted profile, and nothing else
    assert sorted(restricted_violations(pod)) == sorted(
        ["hostPID", "volume spool", "volume host-sys", "agent: runAsNonRoot", "agent: runAsUser 0"]
    )
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"spool": "/var/lib/hpcinsight/spool", "host-sys": "/sys"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["host-sys"]["readOnly"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "--ib-root=/host/sys/class/infiniband" in c["args"] and "--node=$(NODE_NAME)" in c["args"]
    readme = (CHART / "README.md").read_text()
    for privilege in ("hostPID", "runtimeClassName", "/sys", "/var/lib/hpcinsight/spool", "root", "NVIDIA_VISIBLE_DEVICES"):
        assert privilege in readme, privilege
    # sized from the agent benchmark: the limit is well above what it measured
    import json

    measured = json.loads((ROOT / "bench" / "results.json").read_text())["results"]["agent"]
    assert measured["extras"]["rss_mb"] * 2**20 * 3 < 256 * 2**20 and c["resources"]["limits"]["memory"] == "256Mi"


def test_the_prometheus_rule_alerts_on_the_pipeline(helm: Path) -> None:
    docs = manifests(helm, "default-values.yaml")
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "HpcinsightConsumerLagGrowing",
        "HpcinsightSinkFailing",
        "HpcinsightAgentSilent",
        "HpcinsightDeadLettersRising",
    } <= set(alerts)
    for name, r in alerts.items():
        assert r["expr"].strip() and r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"], name
        assert r["expr"].count("(") == r["expr"].count(")"), name
    # the metric names it reads are the ones the chart's README promises and the components serve
    readme = (CHART / "README.md").read_text()
    exprs = " ".join(r["expr"] for r in alerts.values())
    metrics = {m for m in re.findall(r"hpcinsight_[a-z_]+", exprs) if not m.endswith("_")}
    for alternatives, rest in re.findall(r"hpcinsight_\(([a-z|]+)\)_([a-z_]+)", exprs):  # __name__=~"hpcinsight_(a|b)_x"
        metrics |= {f"hpcinsight_{a}_{rest}" for a in alternatives.split("|")}
    served = "\n".join(
        p.read_text() for top in ("core", "agents", "streams", "sinks", "web", "hpcinsight") for p in (ROOT / top).rglob("*.py")
    )
    assert len(metrics) >= 8
    for metric in metrics:
        assert f"`{metric}`" in readme, metric
        family = metric.removesuffix("_total")  # prometheus-client adds _total to a counter family's name
        prefix = family.rsplit("_", 1)[0]
        assert f'"{family}"' in served or f'f"{prefix}_{{k}}"' in served, f"no component serves {metric}"
    [monitor] = [d for d in docs if d["kind"] == "ServiceMonitor"]
    metric_services = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["labels"].get("hpcinsight.io/metrics") == "true"
    ]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in metric_services} == {
        "agent",
        "scheduler",
        "worker",
        "sink",
        "serve",
    }
    for s in metric_services:
        assert all(s["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


WRONG_VALUES = [
    (("worker.replicas=7",), "/worker/replicas"),
    (("sink.replicas=7",), "/sink/replicas"),
    (("kafka.topicPartitions=0",), "/kafka/topicPartitions"),
    (("kafka.securityProtocol=SASL",), "/kafka/securityProtocol"),
    (("clickhouse.url=chdb:///var/lib/store",), "/clickhouse/url"),
    (("kafka.bootstrap=kafka",), "/kafka/bootstrap"),
    (("kafka.sasl.pasword=hunter2",), "pasword"),
    (("clickhouse.ttlDays.gpu_samples=-1",), "/clickhouse/ttlDays/gpu_samples"),
    (("clickhouse.cluster=my cluster",), "/clickhouse/cluster"),
    (("metrics.port=80",), "/metrics/port"),
    (("kafka.securityProtocol=SASL_SSL", "kafka.sasl.username=u"), "kafka.sasl.passwordSecret.name"),
    (("kafka.tls.clientSecret.name=user-tls",), "kafka.tls.clientSecret"),
    (("serve.ingress.enabled=true",), "/serve/ingress/host"),
    (("alerts.enabled=true",), "alerts.config"),
    (("alerts.enabled=true", "alerts.config.rout.receiver=ops"), "/alerts/config"),
]


@pytest.mark.parametrize("sets,named", WRONG_VALUES, ids=[s[0][-1] for s in WRONG_VALUES])
def test_a_wrong_value_fails_naming_it(helm: Path, sets: tuple[str, ...], named: str) -> None:
    result = render(helm, "default-values.yaml", *sets)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


def test_required_values_are_named_when_missing(helm: Path) -> None:
    result = render(helm, None)
    assert result.returncode != 0
    assert "/kafka/bootstrap" in result.stderr and "/clickhouse/url" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def promtool() -> Path:
    return require("promtool")


def _rules_file(helm: Path, tmp_path: Path, values: str = "default-values.yaml") -> Path:
    [rule] = [d for d in manifests(helm, values) if d["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_promtool_accepts_the_rules(helm: Path, promtool: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(promtool), "check", "rules", str(_rules_file(helm, tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_pipeline_alerts_fire_on_what_they_describe(helm: Path, promtool: Path, tmp_path: Path) -> None:
    """promtool's rule tests: series shaped like the components' metrics, and the alerts that must
    (and must not) fire on them."""
    rules = _rules_file(helm, tmp_path)
    ns, agents = 'namespace="gpu-telemetry"', 'namespace="gpu-telemetry"'
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # the worker group 20k behind on a partition and falling further behind; the sink keeping up
                    {
                        "series": f'hpcinsight_consumer_lag{{{ns}, group="hpcinsight.worker", topic="hpcinsight.gpu.samples.raw", partition="0"}}',
                        "values": "0+5000x40",
                    },
                    {
                        "series": f'hpcinsight_consumer_lag{{{ns}, group="hpcinsight.clickhouse-sink", topic="hpcinsight.gpu.samples", partition="0"}}',
                        "values": "10+0x40",
                    },
                    # a sink retrying and storing nothing
                    {"series": f'hpcinsight_sink_insert_retries_total{{{ns}, pod="sink-0"}}', "values": "0+3x40"},
                    {"series": f'hpcinsight_sink_rows_total{{{ns}, pod="sink-0", table="gpu_samples"}}', "values": "100+0x40"},
                    # two agents: one delivering, one silent since minute 0
                    {
                        "series": f'hpcinsight_agent_messages_delivered_total{{{agents}, pod="agent-a", node="gpu-01"}}',
                        "values": "0+60x40",
                    },
                    {
                        "series": f'hpcinsight_agent_messages_delivered_total{{{agents}, pod="agent-b", node="gpu-02"}}',
                        "values": "500+0x40",
                    },
                    {
                        "series": f'hpcinsight_agent_messages_dropped_total{{{agents}, pod="agent-a", node="gpu-01"}}',
                        "values": "0+0x40",
                    },
                    # one agent's GPU reporting an impossible reading every tick, the other's none
                    {
                        "series": f'hpcinsight_agent_values_out_of_range_total{{{agents}, pod="agent-a", node="gpu-01"}}',
                        "values": "0+60x40",
                    },
                    {
                        "series": f'hpcinsight_agent_values_out_of_range_total{{{agents}, pod="agent-b", node="gpu-02"}}',
                        "values": "0+0x40",
                    },
                    # dead letters from the worker
                    {"series": f'hpcinsight_worker_dead_letters_total{{{ns}, pod="worker-0"}}', "values": "0x10 5+1x30"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "40m",
                        "alertname": "HpcinsightConsumerLagGrowing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "gpu-telemetry",
                                    "group": "hpcinsight.worker",
                                    "topic": "hpcinsight.gpu.samples.raw",
                                },
                                "exp_annotations": {
                                    "summary": "hpcinsight: group hpcinsight.worker is 200k messages behind on "
                                    "hpcinsight.gpu.samples.raw and falling further behind",
                                    "description": "Add workers (up to the topic's partitions) or sinks, or look for a stuck pod.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "HpcinsightConsumerLagGrowing",
                        "exp_alerts": [],
                    },  # above 100k, not yet for 10 min
                    {
                        "eval_time": "40m",
                        "alertname": "HpcinsightSinkFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "namespace": "gpu-telemetry", "pod": "sink-0"},
                                "exp_annotations": {
                                    "summary": "hpcinsight: sink sink-0 retries inserts and stores nothing",
                                    "description": "ClickHouse refuses or is unreachable; nothing is lost while Kafka keeps "
                                    "the topics (see docs/deploy.md).",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "40m",
                        "alertname": "HpcinsightAgentSilent",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "gpu-telemetry",
                                    "pod": "agent-b",
                                    "node": "gpu-02",
                                },
                                "exp_annotations": {
                                    "summary": "hpcinsight: the agent on gpu-02 delivered nothing for 5m",
                                    "description": "Broker unreachable from the node (the agent spools to disk), or NVML stopped answering.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "40m", "alertname": "HpcinsightAgentDroppingMessages", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "HpcinsightAgentReadingsOutOfRange", "exp_alerts": []},
                    {
                        "eval_time": "40m",
                        "alertname": "HpcinsightAgentReadingsOutOfRange",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "gpu-telemetry",
                                    "pod": "agent-a",
                                    "node": "gpu-01",
                                },
                                "exp_annotations": {
                                    "summary": "hpcinsight: a GPU or port on gpu-01 keeps reporting values no hardware can have "
                                    "(sent as unknown)",
                                    "description": "The agent's log names the device and the field once; a sensor or driver "
                                    "fault on that node (nvidia-smi -q).",
                                },
                            }
                        ],
                    },
                    {"eval_time": "5m", "alertname": "HpcinsightDeadLettersRising", "exp_alerts": []},
                    {
                        "eval_time": "40m",
                        "alertname": "HpcinsightDeadLettersRising",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "namespace": "gpu-telemetry"},
                                "exp_annotations": {
                                    "summary": "hpcinsight: 15 records went to the dead-letter topic in 15 min",
                                    "description": "Read them with `hpcinsight query dead_letters`: each holds the reason.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([str(promtool), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_routing_loads_with_the_router(helm: Path, tmp_path: Path) -> None:
    """The ConfigMap's alerts.yaml is what the router accepts, its ${VAR}s filled from the Secret
    the values name (here made up); a misspelt key in alerts.config is refused naming its path."""
    from hpcinsight.core.settings import ConfigError
    from hpcinsight.sinks.alerts.config import load as load_alerts

    [config_map] = [
        d
        for d in manifests(helm, "clickhouse-cluster-values.yaml")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-hpcinsight"
    ]
    path = tmp_path / "alerts.yaml"
    path.write_text(config_map["data"]["alerts.yaml"])
    config = load_alerts(path, env={"OPS_WEBHOOK_URL": "https://hooks.example.invalid/ops"})
    assert "ops" in config.describe()
    bad = render(helm, "clickhouse-cluster-values.yaml", "alerts.config.route.group_wiat=30s")
    assert bad.returncode == 0  # the chart passes the routing through; the router is its judge
    data = yaml.safe_load(
        [
            d
            for d in yaml.safe_load_all(bad.stdout)
            if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-hpcinsight"
        ][0]["data"]["alerts.yaml"]
    )
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="group_wiat"):
        load_alerts(path, env={"OPS_WEBHOOK_URL": "https://hooks.example.invalid/ops"})
