"""Tools the tests drive that come from the Go module proxy (Helm, Alertmanager): see :mod:`hpcinsight.deploy.tools.go`."""
