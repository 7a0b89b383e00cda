"""Done means: a real Prometheus scrapes a real shm-exporter and answers node_processes_pids like shm-read.

Prometheus (Debian's ``prometheus``) runs on 127.0.0.1 with temporary storage
and the configuration of ``deploy/prometheus/`` (file-based service discovery,
the alert rules), with the intervals shortened to 1 s and the host list
pointing at this test's exporter.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import yaml
from conftest import READER, wait_for
from exporter_util import Exporter, Process, free_port, get, need

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def _api(base: str, path: str, **params) -> dict:
    status, _, body = get(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    data = json.loads(body)
    assert data["status"] == "success", data
    return data["data"]


def _wait(what: str, fn):
    """Prometheus moves at its 1 s scrape interval: poll slowly, allow a minute."""
    return wait_for(fn, timeout=60.0, what=what, poll=0.2)


@pytest.fixture
def prometheus_dir():
    with tempfile.TemporaryDirectory(prefix="shm-exporter-prometheus-") as d:
        yield Path(d)


def test_prometheus_scrapes_the_exporter(name, start_publisher, prometheus_dir):
    binary = need("prometheus", "prometheus")
    start_publisher(name, "--interval", "0.5")
    exporter = Exporter(name)
    prom = None
    try:
        # deploy/'s configuration, with 1 s intervals and this test's exporter as the fleet.
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / "shm-metrics-alerts.yml")]
        (prometheus_dir / "shm-metrics").mkdir()
        (prometheus_dir / "shm-metrics" / "hosts.json").write_text(json.dumps(
            [{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"role": "test"}}]))
        (prometheus_dir / "prometheus.yml").write_text(yaml.safe_dump(config))

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        prom = Process([binary, f"--config.file={prometheus_dir / 'prometheus.yml'}",
                        f"--storage.tsdb.path={prometheus_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn"], cwd=str(prometheus_dir))

        def target_up():
            if prom.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {prom.proc.returncode}:\n{prom.output()}")
            try:
                targets = _api(base, "targets")["activeTargets"]
            except OSError:
                return None  # not listening yet
            return [t for t in targets if t["labels"]["job"] == "shm-metrics" and t["health"] == "up"]

        (target,) = _wait("the shm-metrics target to be up", target_up)
        assert target["labels"]["role"] == "test"

        def query(expr: str) -> list:
            return _api(base, "query", query=expr)["result"]

        result = _wait("node_processes_pids in Prometheus", lambda: query('node_processes_pids{job="shm-metrics"}'))
        pids = float(result[0]["value"][1])
        out = subprocess.run([*READER, "--name", name, "--once", "procs_total"], capture_output=True, text=True,
                             timeout=20)
        assert out.returncode == 0, out.stderr
        assert abs(pids - int(out.stdout)) <= 5, (pids, out.stdout)

        assert float(query('shm_metrics_up{job="shm-metrics"}')[0]["value"][1]) == 1
        # Per-CPU counters arrive as node_exporter's, usable by the usual rate() queries.
        _wait("a CPU rate", lambda: query('sum(rate(node_cpu_seconds_total{job="shm-metrics"}[5s]))'))
        # The Node Exporter Full dashboard's template variables: label_values(node_uname_info, job), then
        # the instances and node names of that job. Without node_uname_info the dashboard lists no host.
        jobs = _wait("node_uname_info's jobs", lambda: _api(base, "label/job/values", **{"match[]": "node_uname_info"}))
        assert "shm-metrics" in jobs
        nodenames = _api(base, "label/nodename/values", **{"match[]": 'node_uname_info{job="shm-metrics"}'})
        assert nodenames == [os.uname().nodename]
        # Families the node-mixin's alerts need (issue 11) answer as they do from node_exporter.
        for expr in ('node_filesystem_readonly{job="shm-metrics", mountpoint="/"}',
                     'node_filesystem_files_free{job="shm-metrics", mountpoint="/"}',
                     'rate(node_disk_io_time_weighted_seconds_total{job="shm-metrics"}[5s])',
                     'node_network_up{job="shm-metrics"}', 'rate(node_vmstat_pgmajfault{job="shm-metrics"}[5s])',
                     'node_scrape_collector_success{job="shm-metrics", collector="meminfo"} == 1'):
            assert _wait(expr, lambda expr=expr: query(expr)), expr
        # deploy/'s alert rules are loaded and evaluate without error.
        def rules_evaluated():
            rules = [r for g in _api(base, "rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r.get("health") == "ok" for r in rules) else None

        rules = _wait("the alert rules to be evaluated", rules_evaluated)
        assert {r["name"] for r in rules} >= {"ShmExporterDown", "ShmPublisherDown", "ShmSamplesStale", "HostHighLoad",
                                              "HostFilesystemReadOnly", "HostDiskIOSaturated",
                                              "HostMemoryMajorPageFaults"}
        assert not [r for r in rules if r.get("state") == "firing"]  # a healthy host: nothing fires
    finally:
        if prom is not None:
            assert prom.stop() == 0, prom.output()
        exporter.stop()
