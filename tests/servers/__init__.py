"""Real servers started for tests on 127.0.0.1 with free ports; each helper stops what it started."""
