"""Node agents: collectors that sample a source and a runner that ships samples to Kafka.

Agents import only the ground (``core``) and ``schemas``; never streams, sinks or the CLI.
"""
