"""The operator console (issue 15): a web page at /console on the runner's API for the people who work
the city's cases, server-rendered, in the city's language and time zone, usable with no internet access.

Modules, each with one job:

* `app`: the routes (a sub-application mounted at /console), sign-in, pages, actions, security headers;
* `sessions`: server-side sessions (opaque cookie, expiry, CSRF token);
* `sse`: live updates as server-sent events, fed by the runner's listeners, filtered per user;
* `views`: who sees what (the policy), filters, deadlines, the queue's rows;
* `map`: the city map as inline SVG from the devices' coordinates (no tiles);
* `chart`: a device's recent readings as inline SVG;
* `readings`: the bounded in-memory buffer of recent readings those charts read;
* `templates/` (Jinja2) and `static/` (one script, one stylesheet, the icon).

Comments on cases live in citywatch/loop/comments.py (state.db, audited).
"""
