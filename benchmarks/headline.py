"""(g) Headline: N devices reporting once a minute through Mosquitto into `citywatch run`, every detector on.

Usage: python benchmarks/headline.py [--devices 1000000] [--minutes 10] [--qos 0] [--rate DEVICES/60]
                                     [--sample-s 10] [--incident-rate 0.01]

What runs, all local: a real Mosquitto; the embedded runner as a subprocess (`python -m citywatch run`,
its MQTT collector child process, validation, every fixed and learned detector, one SQLite commit per
batch); a webhook receiver (`Receiver` from soak.py), so alert delivery is real HTTP with signing and
the outbox. InfluxDB is off: influx.url is left unset (every inherited CITYWATCH_* variable is dropped),
and then the runner builds no InfluxDB sink at all, so the figure is the pipeline's, not InfluxDB's.

Device state is checkpointed every 300 s by default (--state-checkpoint-s, ingest.state_checkpoint_s):
with one report a minute from each device, writing every device's ~1.2 KB of learned state with every
batch is 16.7k SQLite row writes a second, which measured here as the runner's largest single cost
after the detectors themselves. Alerts, transitions, dead letters, the outbox and the reading counters
are still committed with every batch (and the state of any device whose alerts changed).

With QoS 0 the publisher is a load generator, like wrk for HTTP: it writes pre-encoded MQTT 3.1.1
PUBLISH packets to a raw socket, a slice every few milliseconds, so that on this 2-core machine it takes
a few percent of a core instead of the ~60% paho takes at 16.7k msg/s (real devices are on other
machines). `--paho` publishes with paho instead.

QoS 0 by default, for the publisher and for the runner's subscription (CITYWATCH_MQTT__QOS=0): on this
2-core machine the bare QoS 1 ceiling of paho -> Mosquitto -> paho is about 11.8k msg/s, below the
16.7k msg/s of 1M devices a minute, so QoS 1 could not carry the headline rate whatever the runner
does. `--qos 1` runs it anyway.

The publisher must not be the bottleneck, nor steal CPU from the runner while the clock runs: it
generates every message of the run with the simulator *before* the timed phase (in its own spawned
process, printing how long that took), then only paces them out on a deadline schedule (t0 + i/rate,
no sleep while behind) and reports its achieved rate and how far behind schedule it got.
Timestamps are close to the wall clock and never ahead of it when published: the simulator starts at
the predicted end of generation (from a short calibration run), and publishing starts no earlier than
the latest `ts - i/rate` over the pre-generated messages, so message i's ts <= its publish time.

Every --sample-s seconds it prints elapsed s, published (paho wrote it to the socket; with QoS 1, the
broker acknowledged it), processed (the runner's counter of accepted readings), processed rate over the
interval, backlog (published - processed - dead-lettered), runner RSS (main process + children, e.g.
the collector) and CPU % over the interval (process tree; 100% = one core), and the same CPU for the
broker and the publisher, so a reader sees when the two cores are saturated. Then a summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.soak import SECRET, Receiver, Runner, store_figures  # noqa: E402
from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from tests.servers.mosquitto import MosquittoServer, free_port  # noqa: E402

SEED = 11
API_TOKEN = "headline-bench-token"
TS_MARGIN_S = 0.05  # publishing starts this much after the latest ts - i/rate (we may publish 1 ms early)
MAX_AHEAD_S = 0.001  # sleep only when at least this far ahead of schedule: a sleep per message would cost more


class Shared:
    """What the publisher process reports back (mp values, shared at spawn)."""

    def __init__(self, ctx: Any) -> None:
        self.sent = ctx.Value("q", 0, lock=False)  # single writer: the publisher
        self.generated = ctx.Value("q", 0, lock=False)
        self.started = ctx.Event()  # generation done, the timed phase begins
        self.finished = ctx.Event()  # last message written (QoS 0) or acknowledged (QoS 1)
        self.t0_wall = ctx.Value("d", 0.0, lock=False)
        self.ts_lag_s = ctx.Value("d", 0.0, lock=False)  # the least publish time - ts over the run (by schedule)
        self.duration_s = ctx.Value("d", 0.0, lock=False)  # first to last publish call
        self.max_behind_s = ctx.Value("d", 0.0, lock=False)


def _estimate_generation_s(devices: list[Any], rate: float, seconds: float, incident_rate: float,
                           raw: bool) -> float:
    """Predict how long generating the run takes, from a small simulator run, so the real one can start
    its clock where generation will end: timestamps then start close to the wall clock."""
    m = min(len(devices), 20_000)
    t = time.perf_counter()
    sim = Simulator(devices[:m], seed=SEED, start=time.time(), incident_rate=incident_rate, horizon_s=600)
    init_per_device = (time.perf_counter() - t) / m
    topics: list[str] = []
    payloads: list[bytes] = []
    t = time.perf_counter()
    for topic, payload, _ts in sim.messages(60.0):
        topics.append(topic)
        payloads.append(publish_packet(topic, payload) if raw else payload)
    per_message = (time.perf_counter() - t) / max(1, len(payloads))
    # a bigger heap is a bit slower per message: pad the estimate (too long only delays the start)
    return 1.3 * (init_per_device * len(devices) + per_message * rate * seconds) + 0.5


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 0."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + payload
    return b"\x30" + _remaining_length(len(body)) + body


def raw_connect(port: int, client_id: str) -> socket.socket:
    """An MQTT 3.1.1 connection (clean session, no keepalive) that only ever publishes at QoS 0."""
    sock = socket.create_connection(("127.0.0.1", port))
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    connack = sock.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        raise ConnectionError(f"CONNACK refused: {connack!r}")
    return sock


def publish_raw(port: int, packets: list[bytes], rate: float, seconds: float, shared: Shared) -> None:
    """Write the packets on schedule: every few ms, all that are due, in one sendall."""
    sock = raw_connect(port, "headline-publisher")
    t0 = time.monotonic()
    shared.t0_wall.value = time.time()
    shared.started.set()
    sent, total, max_behind = 0, len(packets), 0.0
    while sent < total:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        due = min(total, int((now - t0) * rate) + 1)
        if due > sent:
            sock.sendall(b"".join(packets[sent:due]))
            max_behind = max(max_behind, time.monotonic() - now)
            sent = due
            shared.sent.value = sent
        time.sleep(0.004)
    shared.duration_s.value = time.monotonic() - t0
    shared.max_behind_s.value = max_behind
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    shared.finished.set()


def publisher(port: int, n_devices: int, rate: float, seconds: float, qos: int, incident_rate: float,
              shared: Shared, raw: bool) -> None:
    """Generate the whole run, then publish it on schedule; the counts go back through `shared`."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    gc.disable()  # millions of young objects: collections would only slow generation down
    t_setup = time.perf_counter()
    devices = make_devices(n_devices, seed=SEED)  # the same list the main process registered
    sim_seconds = seconds * rate * 60.0 / n_devices  # simulated time in which the devices send `rate` msg/s
    estimate = _estimate_generation_s(devices, rate, seconds, incident_rate, raw)
    # start the simulation where generation should end; with speed > 1 simulated time outruns the wall
    # clock, so start that much earlier: the latest ts - i/rate is then about the predicted end either way
    sim_start = time.time() + estimate - max(0.0, sim_seconds - seconds)
    sim = Simulator(devices, seed=SEED, start=sim_start, incident_rate=incident_rate, horizon_s=sim_seconds * 0.8)
    t_gen = time.perf_counter()
    setup_s = t_gen - t_setup
    topics: list[str] = []
    payloads: list[bytes] = []
    latest = float("-inf")  # max over i of ts_i - i/rate: publishing at t0 >= this keeps every ts in the past
    interval = 1.0 / rate
    for i, (topic, payload, ts) in enumerate(sim.messages(sim_seconds)):
        if raw:
            payloads.append(publish_packet(topic, payload))  # the whole packet; no topic list needed
        else:
            topics.append(topic)
            payloads.append(payload)
        if ts - i * interval > latest:
            latest = ts - i * interval
    del devices, sim
    gc.collect()
    gc.freeze()  # the pre-generated messages never become garbage: keep them out of later collections
    gc.enable()
    generation_s = time.perf_counter() - t_gen
    total = len(payloads)
    shared.generated.value = total
    print(f"generated {total:,} messages in {generation_s:.1f} s ({total / max(1e-9, generation_s):,.0f} msg/s) "
          f"after {setup_s:.1f} s of device, calibration and simulator setup "
          f"(predicted {estimate:.1f} s for simulator setup + generation)", flush=True)

    start_wall = latest + TS_MARGIN_S
    if raw:
        wait = start_wall - time.time()
        if wait > 0:
            time.sleep(wait)  # a schedule, not synchronisation: the clock is what we wait for
        shared.ts_lag_s.value = time.time() - latest
        publish_raw(port, payloads, rate, seconds, shared)
        return

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="headline-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    sent = 0
    shared_sent = shared.sent

    def on_publish(*_: Any) -> None:  # paho's thread: written to the socket (QoS 0) or acknowledged (QoS 1)
        nonlocal sent
        sent += 1
        shared_sent.value = sent  # an unlocked shared int, one writer: as cheap as keeping it local

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait = start_wall - time.time()
    if wait > 0:
        print(f"waiting {wait:.1f} s for the wall clock to reach the first timestamps", flush=True)
        time.sleep(wait)  # a schedule, not synchronisation: the clock is what we wait for
    t0 = time.monotonic()
    shared.t0_wall.value = time.time()
    shared.ts_lag_s.value = shared.t0_wall.value - latest
    shared.started.set()
    publish, out_packet, out_messages = client.publish, client._out_packet, client._out_messages
    monotonic = time.monotonic
    max_behind = 0.0
    last = t0
    for i in range(total):
        now = monotonic()
        if now - t0 >= seconds:
            break  # sustained for `seconds`: what did not go out by then was not published
        due = t0 + i * interval
        if due - now >= MAX_AHEAD_S:
            time.sleep(due - now)
        elif now - due > max_behind:
            max_behind = now - due
        publish(topics[i], payloads[i], qos=qos)
        last = now
        # bounded client memory (falling behind shows as achieved rate instead), and fewer than 65,535
        # QoS 1 messages in flight (message ids wrap)
        while len(out_packet) > 5000 or len(out_messages) > 20000:
            time.sleep(0.001)
    shared.duration_s.value = last - t0
    shared.max_behind_s.value = max_behind
    deadline = monotonic() + 120
    while (out_packet or out_messages) and monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    shared.finished.set()


class ProcTree:
    """RSS and cumulative CPU seconds of a process and all its children (a child that exited keeps
    the CPU it had when last seen, so the total never goes backwards)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.procs: dict[int, psutil.Process] = {}
        self.cpu: dict[int, float] = {}

    def sample(self) -> tuple[float, float]:
        """(RSS MiB, CPU seconds so far)."""
        rss = 0
        try:
            live = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            live = []
        for p in live:
            proc = self.procs.setdefault(p.pid, p)
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
                self.cpu[p.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return rss / 2**20, sum(self.cpu.values())


@dataclass
class Sample:
    t: float  # seconds since publishing started
    published: int
    processed: int
    dead: int
    received: int  # by the runner's MQTT collector
    rss_mib: float
    runner_cpu_s: float
    broker_cpu_s: float
    pub_cpu_s: float
    stale: bool  # /stats did not answer: counters are from the previous sample

    @property
    def backlog(self) -> int:
        return self.published - self.processed - self.dead


class Stats:
    """The runner's GET /stats."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.last: dict[str, Any] | None = None

    def get(self, timeout: float = 10.0) -> tuple[dict[str, Any], bool]:
        """(stats, fresh): the previous answer when the runner is too busy to reply in time."""
        request = urllib.request.Request(self.url + "/stats", headers={"Authorization": f"Bearer {API_TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                self.last = json.loads(response.read())
            return self.last, True
        except (OSError, ValueError):
            if self.last is None:
                raise
            return self.last, False

    def wait_ready(self, runner: Runner, timeout: float) -> float:
        """Poll /health until the runner is connected and subscribed; seconds it took."""
        t = time.monotonic()
        deadline = t + timeout
        while time.monotonic() < deadline:
            if runner.proc is not None and runner.proc.poll() is not None:
                raise RuntimeError(f"the runner exited with {runner.proc.returncode}; see runner.log")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - t
            except (urllib.error.HTTPError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the runner was not ready after {timeout:.0f} s; see runner.log")


def runner_env(data_dir: Path, tmp: Path, broker: MosquittoServer, receiver: Receiver, api_port: int,
               qos: int, checkpoint_s: float) -> dict[str, str]:
    """The runner's environment: defaults plus ours. Inherited CITYWATCH_* are dropped (an exported
    CITYWATCH_INFLUX__URL would switch the InfluxDB sink on) and the config file is an empty one."""
    config = tmp / "config.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CITYWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(CITYWATCH_CONFIG=str(config), CITYWATCH_DATA_DIR=str(data_dir), CITYWATCH_MQTT__URL=broker.url,
               CITYWATCH_MQTT__CLIENT_ID="cw-headline", CITYWATCH_MQTT__QOS=str(qos),
               CITYWATCH_INGEST__STATE_CHECKPOINT_S=str(checkpoint_s),
               CITYWATCH_WEBHOOKS__URL=f"http://127.0.0.1:{receiver.port}/h", CITYWATCH_WEBHOOKS__SECRET=SECRET,
               CITYWATCH_API__PORT=str(api_port), CITYWATCH_API__TOKEN=API_TOKEN, CITYWATCH_LOG_LEVEL="WARNING")
    return env


def stop_runner(runner: Runner) -> None:
    """SIGTERM (it drains and closes its stores), SIGKILL if that takes over a minute."""
    try:
        runner.stop()
    except subprocess.TimeoutExpired:
        print("the runner did not stop within 60 s of SIGTERM: killed", flush=True)
        runner.kill()


def compiled_modules() -> int:
    """Extension modules under citywatch/: Python loads them before a .py of the same name, so the
    figure depends on whether they were built."""
    return sum(1 for _ in (ROOT / "citywatch").rglob("*.so"))


def slope(samples: list[Sample]) -> float:
    """Least-squares backlog trend, msgs/s."""
    if len(samples) < 2:
        return 0.0
    return statistics.linear_regression([s.t for s in samples], [float(s.backlog) for s in samples]).slope


def nearest(samples: list[Sample], t: float) -> Sample:
    return min(samples, key=lambda s: abs(s.t - t))


HEADER = (f"{'elapsed s':>9} {'published':>11} {'processed':>11} {'rate/s':>8} {'backlog':>9} "
          f"{'RSS MiB':>8} {'CPU %':>6} {'broker %':>8} {'pub %':>6}")


def line(s: Sample, prev: Sample, note: str = "") -> str:
    dt = max(1e-9, s.t - prev.t)
    return (f"{s.t:>9.0f} {s.published:>11,} {s.processed:>11,}{'*' if s.stale else ' '}"
            f"{(s.processed - prev.processed) / dt:>8,.0f} {s.backlog:>9,} {s.rss_mib:>8.0f} "
            f"{100 * (s.runner_cpu_s - prev.runner_cpu_s) / dt:>6.0f} "
            f"{100 * (s.broker_cpu_s - prev.broker_cpu_s) / dt:>8.0f} "
            f"{100 * (s.pub_cpu_s - prev.pub_cpu_s) / dt:>6.0f}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--paho", action="store_true", help="publish QoS 0 with paho, not raw pre-encoded packets")
    parser.add_argument("--state-checkpoint-s", type=float, default=300.0,
                        help="ingest.state_checkpoint_s: how often a quiet device's learned state is written")
    parser.add_argument("--rate", type=float, default=None, help="msg/s (default: devices/60, one report a minute)")
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--incident-rate", type=float, default=0.01, help="share of devices with a scripted incident")
    args = parser.parse_args()
    rate = args.rate or args.devices / 60.0
    seconds = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="citywatch-headline-"))
    data_dir = tmp / "data"
    print(f"headline: {args.devices:,} devices, {rate:,.0f} msg/s for {args.minutes:g} min, QoS {args.qos}, "
          f"{'paho' if args.paho or args.qos else 'raw-socket'} publisher, "
          f"state checkpoint {args.state_checkpoint_s:g} s; "
          f"{compiled_modules()} compiled modules; work dir {tmp}", flush=True)

    t = time.perf_counter()
    devices = make_devices(args.devices, seed=SEED)
    make_s = time.perf_counter() - t
    t = time.perf_counter()
    registry = Registry(registry_path(data_dir))
    registry.add_many([(d, None) for d in devices])
    registry.close()
    insert_s = time.perf_counter() - t
    del devices
    print(f"devices: made in {make_s:.1f} s; registered in {insert_s:.1f} s "
          f"({insert_s / args.devices * 1e6:.1f} us per device)", flush=True)

    broker = MosquittoServer(tmp / "broker")
    receiver = Receiver(free_port())
    runner: Runner | None = None
    pub: Any = None
    try:
        broker.start()
        receiver.up()
        api_port = free_port()
        runner = Runner(data_dir, runner_env(data_dir, tmp, broker, receiver, api_port, args.qos,
                                                   args.state_checkpoint_s))
        runner.start()
        assert runner.proc is not None
        stats = Stats(api_port)
        ready_s = stats.wait_ready(runner, timeout=600)
        print(f"runner ready (connected, subscribed, {args.devices:,} devices loaded) in {ready_s:.1f} s", flush=True)

        ctx = mp.get_context("spawn")
        shared = Shared(ctx)
        pub = ctx.Process(target=publisher, args=(broker.port, args.devices, rate, seconds, args.qos,
                                                  args.incident_rate, shared, args.qos == 0 and not args.paho),
                          daemon=True)
        pub.start()
        while not shared.started.wait(1.0):
            if not pub.is_alive():
                raise RuntimeError(f"the publisher exited with {pub.exitcode} before publishing")
        clock0 = time.monotonic()
        trees = {"runner": ProcTree(runner.proc.pid), "broker": ProcTree(broker.proc.pid),  # type: ignore[union-attr]
                 "pub": ProcTree(pub.pid)}

        def sample() -> Sample:
            if runner.proc is None or runner.proc.poll() is not None:
                raise RuntimeError("the runner exited during the run; see runner.log")
            data, fresh = stats.get()
            published = shared.sent.value  # after the runner's counters: backlog never shows negative
            t_now = time.monotonic() - clock0
            rss, runner_cpu = trees["runner"].sample()
            return Sample(t_now, published, data["counters"].get("processed", 0),
                          data["counters"].get("dead_letters", 0), data["mqtt"]["received"], rss, runner_cpu,
                          trees["broker"].sample()[1], trees["pub"].sample()[1], not fresh)

        print(f"publishing: timestamps trail the wall clock by at least {shared.ts_lag_s.value:.2f} s", flush=True)
        print(HEADER, flush=True)
        samples = [sample()]
        next_t = args.sample_s
        while True:  # the timed phase: a sample every sample_s until the publisher is done
            grace = 2.0 if next_t >= seconds else 0.0  # the last tick waits for the publisher's last messages
            done = shared.finished.wait(max(0.0, clock0 + next_t + grace - time.monotonic()))
            if not done and not pub.is_alive():
                raise RuntimeError(f"the publisher died with {pub.exitcode}")
            samples.append(sample())
            print(line(samples[-1], samples[-2], "  (publishing done)" if done else ""), flush=True)
            if done:
                break
            next_t += args.sample_s
        publishing = samples
        pub.join(30)

        # drain: until processed + dead-lettered reach published and the outbox is empty, or stop moving
        final_published = shared.sent.value
        drain = [publishing[-1]]
        last_done, moved_at, t_drain = -1, time.monotonic(), time.monotonic()
        next_print = time.monotonic() + args.sample_s
        while True:
            s = sample()
            pending = (stats.last or {}).get("webhooks", {}).get("pending", 0)
            if s.processed + s.dead != last_done:
                last_done, moved_at = s.processed + s.dead, time.monotonic()
            settled = s.processed + s.dead >= final_published and not pending
            if settled or time.monotonic() - moved_at >= 10 or time.monotonic() - t_drain >= 120:
                break
            if time.monotonic() >= next_print:
                drain.append(s)
                print(line(drain[-1], drain[-2], "  (draining)"), flush=True)
                next_print += args.sample_s
            time.sleep(0.5)  # polling interval of the drain check
        end = s
        if end.t - drain[-1].t >= 1.0:
            print(line(end, drain[-1], "  (drained)" if settled else "  (stopped moving; gave up waiting)"),
                  flush=True)
        final_stats = stats.last or {}
        stop_runner(runner)
        figures = store_figures(data_dir)
    finally:
        if pub is not None and pub.is_alive():
            pub.terminate()
        if runner is not None:
            stop_runner(runner)
        receiver.down()
        broker.stop()

    # -- summary ------------------------------------------------------------------------------
    pub_end = publishing[-1]
    warm = max(args.sample_s, 0.1 * seconds)  # the steady part skips the start-up transient
    steady = [s for s in publishing if s.t >= warm - 1e-6] or publishing
    a, b = (steady[0], steady[-1]) if len(steady) >= 2 else (publishing[0], pub_end)
    span = max(1e-9, b.t - a.t)
    second_half = [s for s in publishing if s.t >= pub_end.t / 2]
    counters = final_stats.get("counters", {})
    dead_store = sum(figures["dead"].values())
    lost = final_published - figures["processed"] - dead_store
    generated, pub_s = shared.generated.value, shared.duration_s.value
    print()
    print(f"{'figure':<34}value")
    rows = [
        ("devices / target rate", f"{args.devices:,} / {rate:,.0f} msg/s for {args.minutes:g} min, QoS {args.qos} "
                                  f"({compiled_modules()} compiled modules, "
                                  f"{'paho' if args.paho or args.qos else 'raw-socket'} publisher, "
                                  f"state checkpoint {args.state_checkpoint_s:g} s)"),
        ("messages generated", f"{generated:,}"),
        ("messages published", f"{final_published:,}"),
        ("publisher achieved rate", f"{final_published / max(1e-9, pub_s):,.0f} msg/s over {pub_s:.1f} s "
                                    f"(max {shared.max_behind_s.value:.3f} s behind schedule)"),
        ("received by the runner (MQTT)", f"{end.received:,}"),
        ("processed", f"{end.processed:,} (committed, from state.db: {figures['processed']:,})"),
        ("dead-lettered", f"{dead_store:,} {figures['dead'] or ''}"),
        ("lost", f"{lost:,}"),
        ("mean processed rate, steady", f"{(b.processed - a.processed) / span:,.0f} msg/s (t = {a.t:.0f}..{b.t:.0f} s; "
                                        f"publisher {(b.published - a.published) / span:,.0f})"),
        ("backlog start / middle / end", f"{publishing[min(1, len(publishing) - 1)].backlog:,} / "
                                         f"{nearest(publishing, pub_end.t / 2).backlog:,} / {pub_end.backlog:,} "
                                         f"(max {max(s.backlog for s in publishing):,})"),
        ("backlog trend, last half", f"{slope(second_half):+,.1f} msgs/s (~0: no growing backlog)"),
        ("drain after publishing", f"{end.t - pub_end.t:.1f} s ({'settled' if settled else 'gave up waiting'})"),
        ("runner RSS start / end", f"{publishing[0].rss_mib:.0f} / {pub_end.rss_mib:.0f} MiB "
                                   f"(after drain {end.rss_mib:.0f})"),
        ("mean CPU, steady (100% = 1 core)", f"runner {100 * (b.runner_cpu_s - a.runner_cpu_s) / span:.0f}%, "
                                             f"broker {100 * (b.broker_cpu_s - a.broker_cpu_s) / span:.0f}%, "
                                             f"publisher {100 * (b.pub_cpu_s - a.pub_cpu_s) / span:.0f}% "
                                             f"of {psutil.cpu_count()} cores"),
        ("alert transitions / webhooks", f"{len(figures['transitions']):,} / {sum(receiver.ids.values()):,} "
                                         f"delivered ({figures['pending']} pending)"),
        ("collector hand-off blocked", f"{final_stats.get('mqtt', {}).get('handoff_blocked_s', 0.0):.1f} s"),
        ("late readings (runner counter)", f"{counters.get('late', 0):,}"),
        ("work dir", str(tmp)),
    ]
    for name, value in rows:
        print(f"{name:<34}{value}")


if __name__ == "__main__":
    main()
