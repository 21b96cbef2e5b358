"""The alert router's configuration: one YAML file, validated at start-up.

Shaped like Alertmanager's, so its users find their way: a ``route`` tree with ``matchers``,
``continue``, ``group_by``, ``group_wait``, ``group_interval``, ``repeat_interval`` (children inherit
what they do not set), ``receivers`` with ``<kind>_configs`` lists, and ``inhibit_rules``. Ours on
top: ``global.dashboard_url`` (a link template for the messages), ``global.retry`` (backoff) and a
``rate_limit`` per receiver. Every error names the file and the key path; none shows a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinsight.core.settings import ConfigError
from hpcinsight.core.yamlfile import YamlSyntaxError, load_yaml
from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.matchers import Matcher
from hpcinsight.sinks.alerts.message import check_template
from hpcinsight.sinks.alerts.model import LABELS
from hpcinsight.sinks.alerts.receivers import KINDS

DEFAULT_GROUP_WAIT_S = 30.0
DEFAULT_GROUP_INTERVAL_S = 300.0
DEFAULT_REPEAT_INTERVAL_S = 4 * 3600.0
GROUP_BY_ALL = ("...",)


@dataclass(frozen=True)
class RouteConfig:
    id: str  # stable while the tree keeps its shape: the path of matchers and positions
    receiver: str
    group_by: tuple[str, ...]  # ("...",): every label
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    matchers: tuple[Matcher, ...] = ()
    continue_: bool = False
    routes: tuple[RouteConfig, ...] = ()

    def walk(self) -> list[RouteConfig]:
        return [self, *(r for child in self.routes for r in child.walk())]


@dataclass(frozen=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


#: a node-level fault mutes that node's GPU alerts: a node anomaly, or a GPU anomaly saying the
#: node must be drained (e.g. XID 79, fallen off the bus), mutes the other GPU alerts of its node
DEFAULT_INHIBIT_RULES = (
    InhibitRule((Matcher.parse("subject_type=node"),), (Matcher.parse("subject_type=gpu"),), ("node",)),
    InhibitRule((Matcher.parse("drain=true"),), (Matcher.parse("subject_type=gpu"),), ("node",)),
)


@dataclass(frozen=True)
class RateLimit:
    count: int
    per_s: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.per_s]
        return f"{self.count}/{unit}"


@dataclass(frozen=True)
class ReceiverConfig:
    name: str
    integrations: tuple[Any, ...]  # each kind's config (has build(), describe())
    rate_limit: RateLimit | None = None
    max_in_flight: int = 4  # notifications of different groups sent at once to each integration


@dataclass(frozen=True)
class RetryConfig:
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    give_up_after_s: float = 24 * 3600.0


@dataclass(frozen=True)
class AlertsConfig:
    route: RouteConfig
    receivers: dict[str, ReceiverConfig]
    inhibit_rules: tuple[InhibitRule, ...] = DEFAULT_INHIBIT_RULES
    dashboard_url: str | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    source: str = "<config>"

    def describe(self) -> str:
        """The routing tree and receivers, safe to print (no URL, no token)."""
        lines = [f"alert routing from {self.source}"]

        def route(r: RouteConfig, depth: int) -> None:
            pad = "  " * depth
            what = ", ".join(str(m) for m in r.matchers) or "everything (default route)"
            lines.append(
                f"{pad}- {what} -> {r.receiver}{' (continue)' if r.continue_ else ''}; group_by "
                f"{list(r.group_by)}, wait {r.group_wait_s:g}s, interval {r.group_interval_s:g}s, "
                f"repeat {r.repeat_interval_s:g}s"
            )
            for child in r.routes:
                route(child, depth + 1)

        route(self.route, 1)
        lines.append("receivers:")
        for rc in self.receivers.values():
            limit = f" (rate limit {rc.rate_limit})" if rc.rate_limit else ""
            lines.append(f"  {rc.name}{limit}:")
            lines += [f"    - {i.describe()}" for i in rc.integrations]
        lines.append("inhibit rules:")
        for rule in self.inhibit_rules:
            lines.append(
                f"  - [{', '.join(map(str, rule.source))}] mutes [{', '.join(map(str, rule.target))}] "
                f"with equal {list(rule.equal)}"
            )
        return "\n".join(lines)


# -- parsing ---------------------------------------------------------------------------
def _label_name(node: Node) -> str:
    name = node.string()
    if name not in LABELS:
        raise node.error(f"unknown label {name!r}; alerts carry: {', '.join(LABELS)}")
    return name


def _matchers(node: Node) -> tuple[Matcher, ...]:
    out = []
    for item in node.items():
        if not isinstance(item.value, str):
            raise item.error("a matcher is a string like 'severity=critical'")
        try:
            m = Matcher.parse(item.value)
        except ValueError as err:
            raise item.error(str(err)) from None
        if m.name not in LABELS:
            raise item.error(f"unknown label {m.name!r}; alerts carry: {', '.join(LABELS)}")
        out.append(m)
    return tuple(out)


def _group_by(node: Node) -> tuple[str, ...]:
    names = [item.string() for item in node.items()]
    if "..." in names:
        if names != ["..."]:
            raise node.error("'...' (group by every label) stands alone")
        return GROUP_BY_ALL
    for i, item in enumerate(node.items()):
        _label_name(item)
        if names.index(names[i]) != i:
            raise item.error(f"label {names[i]!r} listed twice")
    return tuple(names)


_ROUTE_KEYS = ("receiver", "group_by", "group_wait", "group_interval", "repeat_interval", "matchers", "continue", "routes")


def _route(node: Node, parent: RouteConfig | None, route_id: str, receivers: set[str]) -> RouteConfig:
    f = node.mapping(_ROUTE_KEYS, required=("receiver",) if parent is None else ())
    if parent is None and ("matchers" in f or "continue" in f):
        raise node.error("the root route matches everything: it takes no matchers and no continue")
    receiver = f["receiver"].string() if "receiver" in f else parent.receiver
    if receiver not in receivers:
        raise (f.get("receiver") or node).error(f"receiver {receiver!r} is not defined under receivers")
    matchers = _matchers(f["matchers"]) if "matchers" in f else ()
    if parent is not None and not matchers:
        raise node.error("a child route needs matchers (the parent route already takes everything else)")
    inherit = parent or RouteConfig("", receiver, (), DEFAULT_GROUP_WAIT_S, DEFAULT_GROUP_INTERVAL_S, DEFAULT_REPEAT_INTERVAL_S)
    own_id = route_id if parent is None else f"{route_id}/{{{','.join(map(str, matchers))}}}"
    this = RouteConfig(
        id=own_id,
        receiver=receiver,
        group_by=_group_by(f["group_by"]) if "group_by" in f else inherit.group_by,
        group_wait_s=f["group_wait"].duration() if "group_wait" in f else inherit.group_wait_s,
        group_interval_s=f["group_interval"].duration(allow_zero=False) if "group_interval" in f else inherit.group_interval_s,
        repeat_interval_s=f["repeat_interval"].duration(allow_zero=False)
        if "repeat_interval" in f
        else inherit.repeat_interval_s,
        matchers=matchers,
        continue_=f["continue"].boolean() if "continue" in f else False,
    )
    if "routes" in f:
        children = tuple(_route(child, this, f"{own_id}/{i}", receivers) for i, child in enumerate(f["routes"].items()))
        this = RouteConfig(**{**this.__dict__, "routes": children})
    return this


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")


def _receiver(node: Node) -> ReceiverConfig:
    keys = ("name", "rate_limit", "max_in_flight", *(f"{kind}_configs" for kind in KINDS))
    f = node.mapping(keys, required=("name",))
    name = f["name"].string()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise f["name"].error("a receiver name has letters, digits, '_', '.', '-' (at most 64)")
    integrations = []
    for kind, module in KINDS.items():
        if f"{kind}_configs" in f:
            integrations += [module.parse(item) for item in f[f"{kind}_configs"].items()]
    rate = None
    if "rate_limit" in f:
        m = _RATE.match(f["rate_limit"].string())
        if not m or int(m.group(1)) < 1:
            raise f["rate_limit"].error("write COUNT/UNIT with a unit of s, m or h, e.g. 30/m")
        rate = RateLimit(int(m.group(1)), {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)])
    in_flight = f["max_in_flight"].integer(minimum=1) if "max_in_flight" in f else 4
    return ReceiverConfig(name, tuple(integrations), rate, in_flight)


def _inhibit_rule(node: Node) -> InhibitRule:
    f = node.mapping(("source_matchers", "target_matchers", "equal"), required=("source_matchers", "target_matchers"))
    source, target = _matchers(f["source_matchers"]), _matchers(f["target_matchers"])
    if not source or not target:
        raise node.error("source_matchers and target_matchers each need at least one matcher")
    equal = tuple(_label_name(item) for item in f["equal"].items()) if "equal" in f else ()
    return InhibitRule(source, target, equal)


def parse(data: Any, source: str = "<config>", env: dict[str, str] | None = None) -> AlertsConfig:
    root = Node(data, "", source, env)
    f = root.mapping(("global", "route", "receivers", "inhibit_rules"), required=("route", "receivers"))
    dashboard, retry = None, RetryConfig()
    if "global" in f:
        g = f["global"].mapping(("dashboard_url", "retry"))
        if "dashboard_url" in g:
            dashboard = g["dashboard_url"].string()
            if not dashboard.startswith(("http://", "https://")):
                raise g["dashboard_url"].error("must be an http:// or https:// URL (template)")
            try:
                check_template(dashboard)
            except ValueError as err:
                raise g["dashboard_url"].error(str(err)) from None
        if "retry" in g:
            r = g["retry"].mapping(("initial_backoff", "max_backoff", "give_up_after"))
            retry = RetryConfig(
                r["initial_backoff"].duration(allow_zero=False) if "initial_backoff" in r else retry.initial_backoff_s,
                r["max_backoff"].duration(allow_zero=False) if "max_backoff" in r else retry.max_backoff_s,
                r["give_up_after"].duration(allow_zero=False) if "give_up_after" in r else retry.give_up_after_s,
            )
            if retry.max_backoff_s < retry.initial_backoff_s:
                raise g["retry"].error("max_backoff is shorter than initial_backoff")
    receivers: dict[str, ReceiverConfig] = {}
    for item in f["receivers"].items():
        rc = _receiver(item)
        if rc.name in receivers:
            raise item.error(f"receiver {rc.name!r} is defined twice")
        receivers[rc.name] = rc
    if not receivers:
        raise f["receivers"].error("define at least one receiver")
    route = _route(f["route"], None, "root", set(receivers))
    rules = tuple(_inhibit_rule(item) for item in f["inhibit_rules"].items()) if "inhibit_rules" in f else DEFAULT_INHIBIT_RULES
    if isinstance(data, dict) and data.get("inhibit_rules", ()) is None:
        rules = ()  # `inhibit_rules:` with nothing: none at all
    return AlertsConfig(route, receivers, rules, dashboard, retry, source)


def load(path: str | Path, env: dict[str, str] | None = None) -> AlertsConfig:
    """Read and validate the YAML file; :class:`ConfigError` names the key path of any mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = load_yaml(text)
    except YamlSyntaxError as err:
        where = f" at line {err.line}, column {err.column}" if err.line is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {err.problem}") from None
    return parse(data, str(path), env)
