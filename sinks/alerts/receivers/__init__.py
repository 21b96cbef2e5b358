"""Receiver kinds, one module each: the YAML key ``<kind>_configs`` of a receiver lists its
integrations of that kind. Adding a kind is adding a module here (and its test) and naming it below.
"""

from __future__ import annotations

from types import ModuleType

from hpcinsight.sinks.alerts.receivers import alertmanager, apprise_url, discord, mattermost, msteams, slack, webhook

KINDS: dict[str, ModuleType] = {m.KIND: m for m in (webhook, alertmanager, slack, mattermost, msteams, discord, apprise_url)}
