"""People in the loop (issue 15): accounts with roles and scopes, the policy that decides what each
may do, and the tamper-evident audit trail of every action.

Modules, each with one job (what other parts build on):

* `users`: accounts in registry.db (`User`, `UserBook`: add, rotate, disable, authenticate), their
  tokens (`cwt.<public id>.<secret>`, only a salted HMAC-SHA256 of the secret stored), and the
  built-in principals `BOOTSTRAP` (the old single API token: admin, whole city), `LOCAL` (the CLI
  working on the data dir's files directly) and `DISPATCH_SYSTEM` (the signed inbound endpoint).
* `policy`: `authorize(user, action, target) -> Decision` from one table of role x action -> reach
  (anywhere, within the user's scope, only what is assigned to them); `Target`s of alerts,
  incidents, silences and devices.
* `audit`: the append-only hash-chained trail (`Actor`, `Entry`, `AuditLog.append` inside the
  caller's transaction, `verify`, `query`); one chain per database file: state.db (alert actions,
  silences, refusals) and registry.db (device and account changes).
* `archive`: moving old audit records of state.db into archive/audit-YYYY-MM-DD.jsonl.gz, keeping
  the chain verifiable across the boundary (retention).
* `throttle`: failed authentications per client address (429 with a growing Retry-After).
* `api`: the HTTP middleware (who is calling, may they, audit) and the route -> action table every
  API route is listed in; helpers for handlers (`acting_name`, `tx_hook`).
* `client`: which token a CLI command sends to the running owner's API.
* `cli`: `citywatch users ...` and `citywatch audit ...`.
"""
