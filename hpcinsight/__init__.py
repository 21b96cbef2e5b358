"""hpcinsight: telemetry for GPU clusters that train models at scale.

This package holds what every component shares (configuration) and the CLI that wires
agents, streams and sinks together. It must not import the CLI from here, so components
can import :mod:`hpcinsight.config` without pulling the others in.
"""

__version__ = "0.1.0"
