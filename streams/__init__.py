"""Stream processors (Faust): validation, rolling quantiles and anomaly detectors.

Streams import only the ground (``core``) and ``schemas``; never agents, sinks or the CLI.
"""
