"""Prometheus metrics and the /healthz endpoint, served over HTTP by the service process.

Why counters live here and job gauges are read from the state store at scrape time: the SCP, completion and
sender run in the service process and count as they go; jobs are shared with worker processes, so their
per-state numbers and the queue age come from SQLite, the single source of truth, whenever Prometheus asks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import logs
from gateway.storage.state import JobState, StateStore

log = logs.get("gateway.metrics")


class _JobsCollector(Collector):
    def __init__(self, state: StateStore) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        jobs = GaugeMetricFamily("enhance_gw_jobs", "Jobs by state (received = series still arriving)", labels=["state"])
        counts = self.state.counts()
        for name, count in counts.items():
            jobs.add_metric([name], count)
        yield jobs
        held = GaugeMetricFamily("enhance_gw_held", "Jobs the QA gate held, waiting for `release` or `reject`")
        held.add_metric([], counts.get(JobState.HELD, 0))
        yield held
        # Workers are other processes: the series each verdict was given are counted from the state store
        verdicts = CounterMetricFamily(
            "enhance_gw_qa_verdicts", "Series judged by the QA gate, by verdict", labels=["verdict"]
        )
        for verdict, count in self.state.qa_verdict_counts().items():
            verdicts.add_metric([verdict], count)
        yield verdicts
        oldest = self.state.oldest_waiting()
        age = GaugeMetricFamily("enhance_gw_queue_age_seconds", "Age of the oldest job not yet finished")
        age.add_metric([], 0.0 if oldest is None else max(0.0, time.time() - oldest.created_at))
        yield age


class _DiskCollector(Collector):
    def __init__(self, free_bytes: Callable[[], float], min_free_mb: float) -> None:
        self.free_bytes = free_bytes
        self.min_free_mb = min_free_mb

    def collect(self) -> Iterator[GaugeMetricFamily]:
        free = GaugeMetricFamily("enhance_gw_disk_free_bytes", "Free bytes on the file system of var_dir")
        free.add_metric([], float(self.free_bytes()))
        yield free
        mark = GaugeMetricFamily(
            "enhance_gw_disk_watermark_bytes", "gateway.min_free_mb: below it reception is refused, work waits"
        )
        mark.add_metric([], self.min_free_mb * 1e6)
        yield mark


class Metrics:
    """The gateway's metrics in their own registry (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter("enhance_gw_instances_received", "Instances stored and acknowledged", registry=r)
        self.bytes_received = Counter("enhance_gw_received_bytes", "Bytes of instances stored", registry=r)
        self.instances_refused = Counter("enhance_gw_instances_refused", "C-STOREs refused", ["status"], registry=r)
        self.series_completed = Counter("enhance_gw_series_completed", "Series that became jobs", registry=r)
        self.enhancement_seconds = Histogram(
            "enhance_gw_enhancement_seconds", "Wall time to enhance one job", ["enhancer", "device"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800), registry=r,
        )
        self.send_attempts = Counter("enhance_gw_send_attempts", "Delivery attempts", ["destination"], registry=r)
        self.send_failures = Counter("enhance_gw_send_failures", "Failed delivery attempts", ["destination"], registry=r)

    def watch_state(self, state: StateStore) -> None:
        self.registry.register(_JobsCollector(state))

    def watch_disk(self, free_bytes: Callable[[], float], min_free_mb: float) -> None:
        """Free bytes under var_dir and the watermark, read at scrape time.

        Why a gauge beside /healthz: the health check says ok or what is wrong; monitoring needs the number
        itself to warn before the watermark is reached (and it is the truth also when the watermark is off).
        """
        self.registry.register(_DiskCollector(free_bytes, min_free_mb))


def health_checks(
    state: StateStore, scp_port: Callable[[], int | None] | None, spool_check: Callable[[], None]
) -> dict[str, str]:
    """Each check: "ok" or what is wrong. Healthy only when the SCP accepts, the store writes, disk is fine.

    `scp_port` None: a process without the receive role (`serve --role`), which has no SCP to check.
    """
    out: dict[str, str] = {}
    port = scp_port() if scp_port is not None else None
    if scp_port is None:
        pass
    elif port is None:
        out["scp"] = "not listening"
    else:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                out["scp"] = "ok"
        except OSError as exc:
            out["scp"] = f"port {port} refuses connections: {exc}"
    try:
        state.check_writable()
        out["state"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a health check reports any failure, it never raises
        out["state"] = f"not writable: {exc}"
    try:
        spool_check()
        out["disk"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a health check reports any failure, it never raises
        out["disk"] = str(exc)
    return out


class HttpEndpoint:
    """/metrics (Prometheus text format) and /healthz (200 or 503 with the failing checks) on one port."""

    def __init__(self, host: str, port: int, metrics: Metrics, checks: Callable[[], dict[str, str]]) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    results = checks()
                    healthy = all(v == "ok" for v in results.values())
                    text = "\n".join(f"{k}: {v}" for k, v in results.items()) + "\n"
                    body, status, ctype = text.encode(), 200 if healthy else 503, "text/plain; charset=utf-8"
                else:
                    body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()
        log.info("http.listening", port=self.port, paths=["/metrics", "/healthz"])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
