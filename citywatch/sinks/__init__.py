"""Sinks: the edges where pipeline output leaves (alert store, dead letters, InfluxDB, webhooks)."""
