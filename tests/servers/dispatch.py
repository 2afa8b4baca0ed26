"""A dispatch system that behaves like one, for the closed-loop tests: a real HTTP server receiving
citywatch's webhooks (signatures verified) and calling back with its own signed messages (assigned,
on_site, rectified; sometimes too early, sometimes never). The simulator itself lives in the package
(citywatch/loop/dispatch_sim.py) because `citywatch demo` runs it too; it signs and verifies with the
standardwebhooks package, independently of citywatch's own endpoint code."""

from citywatch.loop.dispatch_sim import PLANS, Case, Delays, DispatchSystem, Sent, new_secret

__all__ = ["PLANS", "Case", "Delays", "DispatchSystem", "Sent", "new_secret"]
