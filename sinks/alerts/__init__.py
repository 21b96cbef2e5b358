"""The alert router: anomalies leave the system here, as chat messages and webhooks.

Modules: :mod:`~hpcinsight.sinks.alerts.config` (the YAML file), :mod:`~hpcinsight.sinks.alerts.engine` (routing, grouping,
dedup, repeat, resolve, inhibition, silences; no I/O), :mod:`~hpcinsight.sinks.alerts.store` (state and outbox in
SQLite), :mod:`~hpcinsight.sinks.alerts.delivery` (a sender per integration: backoff, rate limit),
:mod:`~hpcinsight.sinks.alerts.router` (the Kafka loop), :mod:`~hpcinsight.sinks.alerts.silences` (the silence CLI's Kafka
side), and :mod:`~hpcinsight.sinks.alerts.receivers`, one module per receiver kind.
"""
