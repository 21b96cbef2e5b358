"""The alert router: anomalies leave the system here, as chat messages and webhooks.

Modules: :mod:`~sinks.alerts.config` (the YAML file), :mod:`~sinks.alerts.engine` (routing, grouping,
dedup, repeat, resolve, inhibition, silences; no I/O), :mod:`~sinks.alerts.store` (state and outbox in
SQLite), :mod:`~sinks.alerts.delivery` (a sender per integration: backoff, rate limit),
:mod:`~sinks.alerts.router` (the Kafka loop), :mod:`~sinks.alerts.silences` (the silence CLI's Kafka
side), and :mod:`~sinks.alerts.receivers`, one module per receiver kind.
"""
