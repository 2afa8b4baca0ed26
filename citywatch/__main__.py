"""`python -m citywatch ...` is the `citywatch` command."""

from citywatch.cli import entrypoint

if __name__ == "__main__":  # guarded: spawned child processes (the collector) import this module too
    entrypoint()
