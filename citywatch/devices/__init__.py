"""Devices: the registry (SQLite), credentials and the installers' CLI."""
