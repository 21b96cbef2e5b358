"""hpcinsight: telemetry for GPU clusters that train models at scale.

This folder is the CLI floor: argument parsing and wiring. The rooms install beside it under the
same namespace (``hpcinsight.core``, ``hpcinsight.agents``, ...); see docs/architecture.md.
"""

__version__ = "0.1.0"
