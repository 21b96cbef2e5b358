"""The stored scheduler history: scheduler events and node inventory read back from the store as the
catalog's records, for what replays a cluster's past (``hpcinsight whatif store``).

Times are bound as parameters by ClickHouse, never spliced. The events of a range come in time
order, at most ``limit`` of them (a guard against a mistyped range); the inventory is every record up
to the range's end, so the nodes are known as they stood then.
"""

from __future__ import annotations

from typing import Any

from hpcinsight.schemas.events import NodeInventory, SchedulerEvent

#: scheduler events read at most (a guard against a mistyped range)
EVENT_LIMIT = 2_000_000


def read_scheduler_history(
    client: Any, lo_ms: int, hi_ms: int, source: str | None = None, limit: int = EVENT_LIMIT
) -> tuple[list[SchedulerEvent], list[NodeInventory]]:
    """Scheduler events stamped in [``lo_ms``, ``hi_ms``) (of one ``source`` if given), and the node
    inventory up to ``hi_ms``."""
    ev_cols = [f for f in SchedulerEvent.__struct_fields__ if f != "ts"]
    params: dict[str, Any] = {"lo": lo_ms, "hi": hi_ms}
    where = "toUnixTimestamp64Milli(ts) >= {lo:Int64} AND toUnixTimestamp64Milli(ts) < {hi:Int64}"
    if source:
        where += " AND source = {source:String}"
        params["source"] = source
    q = (
        f"SELECT toUnixTimestamp64Milli(ts) AS ts_ms, {', '.join(ev_cols)} FROM scheduler_events "
        f"WHERE {where} ORDER BY ts LIMIT {int(limit)}"
    )
    rows = client.query(q, parameters=params).named_results()
    events = [
        SchedulerEvent(ts=int(r.pop("ts_ms")), **{k: v for k, v in r.items() if v is not None or k == "gpu_ids"}) for r in rows
    ]
    inv_cols = [f for f in NodeInventory.__struct_fields__ if f != "ts"]
    q = (
        f"SELECT toUnixTimestamp64Milli(ts) AS ts_ms, {', '.join(inv_cols)} FROM node_inventory "
        "WHERE toUnixTimestamp64Milli(ts) < {hi:Int64} ORDER BY ts"
    )
    inventory = [
        NodeInventory(ts=int(r.pop("ts_ms")), **{k: v for k, v in r.items() if v is not None or k == "labels"})
        for r in client.query(q, parameters={"hi": hi_ms}).named_results()
    ]
    return events, inventory
