"""Detectors: domain rules per kind, device health, and (later) learned baselines.

Every rule is transport-free: it sees a Reading, the Device and that device's state mapping,
and returns a Finding or None (no opinion: the alert keeps its current state).
"""
