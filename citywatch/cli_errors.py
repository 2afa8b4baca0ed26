"""Errors the CLI reports as one line saying what to do (no traceback, no usage dump).

click's own UsageError prints the usage and a "Try --help" line before the message; for a value
that is simply wrong (an unknown --reason, a broker URL that is not MQTT) one line naming the
right values is more use. Exit code 2, like click's usage errors and citywatch's configuration
errors; failures of the world (a broker that does not answer) stay click.ClickException, exit 1.
"""

from __future__ import annotations

import click


class UsageProblem(click.ClickException):
    """A wrong option or argument: one line saying what to give instead; exit code 2."""

    exit_code = 2
