"""Sinks: where events leave Kafka: ClickHouse (the exactly-once sink) and the alert router (``hpcinsight.sinks.alerts``).

Sinks import only the ground (``core``) and ``schemas``; never agents, streams or the CLI.
The query library and ``diagnose`` live here, beside the SQL they run (``queries/``).
"""
