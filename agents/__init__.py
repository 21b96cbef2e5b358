"""Node agents: collectors that sample a source and a runner that ships samples to Kafka.

Agents import only :mod:`schemas` and :mod:`hpcinsight.config`; they never import streams
or sinks.
"""
