"""Streams: the transport-free pipeline core and the runners that drive it."""
