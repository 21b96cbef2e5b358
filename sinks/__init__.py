"""Sinks: where events leave Kafka (ClickHouse today; alert webhooks later).

Sinks import only :mod:`schemas` and :mod:`hpcinsight.config`; never agents or streams.
"""
