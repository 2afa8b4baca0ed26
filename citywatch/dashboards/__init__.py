"""Operators' view: Grafana dashboards as code over the InfluxDB schema, checked against real data.

- `queries`: the InfluxQL of every panel (Grafana template syntax) and `substitute`
- `panels`: the three dashboards with grafana-foundation-sdk builders
- `build`: dashboard JSON + provisioning files for deploy/grafana (deterministic)
- `push`: upload to a running Grafana with grafana-client
- `points`: line-protocol fields the dashboards need until `sinks.lineprotocol` writes them
- `scenario`: a recent simulated city day through the real pipeline (data for checks and demos)
- `cli`: `citywatch dashboards build|push`
"""

from pathlib import Path

DEFAULT_OUT = Path("deploy/grafana")  # relative to the repository root (the working directory)
FOLDER = "citywatch"  # Grafana folder uid and title
