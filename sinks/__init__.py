"""Sinks: where events leave Kafka: ClickHouse (the exactly-once sink) and the alert router (``sinks.alerts``).

Sinks import only :mod:`schemas` and :mod:`hpcinsight.config`; never agents or streams.
"""
