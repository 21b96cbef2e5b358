"""Stream processors (Faust): validation, rolling quantiles and anomaly detectors.

Streams import only :mod:`schemas` and :mod:`hpcinsight.config`; never agents or sinks.
"""
