"""Ingest: the device contract (topics, payload schemas) and the MQTT collector."""
