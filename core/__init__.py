"""The ground floor: settings and secrets, YAML files, durations, logs, Prometheus metrics and the
Kafka helpers that every component may import. It imports nothing above it in the house."""
