"""``unirank serve --workers 2``: two processes on one port; health reflects every worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from unirank.client import RecommenderClient, UniRankError
from unirank.client.monitor import StatsClient

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _listens(pid: int, inodes: set[str]) -> bool:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""A channel that opens its own connection: gRPC shares one between channels to the same target
while it lives (a closed channel's may still be closing), and the kernel spreads connections,
not channels, over the workers (CI once sent all 24 "new connections" to one worker)."""


def _wait_health(client: RecommenderClient, wanted: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.health() == wanted:
                return True
        except UniRankError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_two_workers_share_the_port_and_health_reflects_both(artifact_dir: Path) -> None:
    port = _free_port()
    profile = str(REPO / "profiles/cpu-realtime.toml")
    supervisor = subprocess.Popen(
        [
            sys.executable, "-m", "unirank.cli", "serve", "--profile", profile,
            "--artifact", str(artifact_dir), "--port", str(port), "--workers", "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    try:
        with RecommenderClient(target, timeout=2) as client:
            assert _wait_health(client, "SERVING", 60), "workers never became SERVING"
            workers = _children(supervisor.pid)
            workers = [pid for pid in workers if _listens(pid, _listening_inodes(port))]
            assert len(workers) == 2, "both workers must listen on the shared port"
            # New connections are spread by the kernel; every one is answered.
            for _ in range(10):
                with RecommenderClient(target, timeout=5, channel_options=OWN_CONNECTION) as fresh:
                    assert fresh.search("zzqx").items
            os.kill(workers[0], signal.SIGKILL)
            assert _wait_health(client, "NOT_SERVING", 10), "health did not reflect a dead worker"
            assert _wait_health(client, "SERVING", 60), "the dead worker was not restarted"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_two_workers_keep_one_set_of_metrics_and_one_monitor_view(artifact_dir: Path) -> None:
    port, metrics_port = _free_port(), _free_port()
    profile = str(REPO / "profiles/cpu-realtime.toml")
    supervisor = subprocess.Popen(
        [
            sys.executable, "-m", "unirank.cli", "serve", "--profile", profile,
            "--artifact", str(artifact_dir), "--port", str(port), "--workers", "2",
            "--metrics-exporter", "prometheus", "--prometheus-port", str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    sent = 24
    try:
        with RecommenderClient(target, timeout=2) as client:
            assert _wait_health(client, "SERVING", 60), "workers never became SERVING"
        for _ in range(sent):  # a new connection each: the kernel spreads them over the workers
            with RecommenderClient(target, timeout=5, channel_options=OWN_CONNECTION) as fresh:
                fresh.category("drama")
        # The supervisor's one endpoint has both workers' series, and they add up to what was sent.
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        counted: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "unirank_server_requests_total"
                    and sample.labels.get("unirank_task_type") == "category"
                ):
                    worker = sample.labels["worker"]
                    counted[worker] = counted.get(worker, 0.0) + sample.value
        assert set(counted) == {"0", "1"}, counted
        assert sum(counted.values()) == sent, counted
        # GetServingStats answers for the group, whichever worker a call reaches.
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(seen) < 6:
            with StatsClient(target, timeout=5) as stats:
                category = stats.fetch().tasks.get("category")
            total = sum(category.rpcs_by_code.values()) if category else 0
            if total == sent:
                seen.append(total)
            else:
                time.sleep(0.2)  # the other worker's snapshot is at most 0.5 s old
        assert len(seen) == 6, f"GetServingStats did not add the workers up to {sent}"
        supervisor.send_signal(signal.SIGTERM)
        output, _ = supervisor.communicate(timeout=30)
        assert supervisor.returncode == 0
        assert b"restarting" not in output and b"Address already in use" not in output, output.decode()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
