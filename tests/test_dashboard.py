"""The Grafana dashboard: imports with a data-source prompt, keeps hosts apart, agrees with df and shm-read,
and every query returns data from a real Prometheus scraping a real shm-exporter."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from exporter_util import Exporter, Process, free_port, need
from test_exporter_prometheus import _api, _wait

from shm_metrics.readers import format as fmt

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana" / "shm-metrics-dashboard.json").read_text())
GIB = 1 << 30


def _panel(title: str) -> dict:
    return next(p for p in DASHBOARD["panels"] if p.get("title") == title)


def _queries() -> dict[str, str]:
    """{panel title and refId: expr} with Grafana's variables as the dashboard's defaults set them."""
    out = {}
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} {target['refId']}"] = target["expr"]
    return out


def _concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "5s").replace("$job", "shm-metrics").replace("$instance", ".+")


def test_import_asks_for_a_prometheus_data_source():
    (source,) = DASHBOARD["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == "prometheus"
    uids = set()

    def collect(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                uids.add(node["datasource"].get("uid"))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(DASHBOARD)
    assert uids == {"${datasource}"}, uids  # every query follows the data-source variable...
    variable = next(v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == "${" + source["name"] + "}"  # ...which starts on the one picked


def test_no_query_adds_hosts_together():
    for where, expr in _queries().items():
        for grouping in re.findall(r"\b(?:sum|avg|max|min|count)\s*(?:by\s*\(([^)]*)\))?\s*\(", expr):
            assert "instance" in grouping, f"{where}: {expr}"


def test_filesystem_use_is_dfs_figure(tmp_path):
    """Prometheus evaluates the panel's query on a filesystem of 110 GiB, 88 GiB free, 78 GiB available to
    users: df says 22 %, and so do shm-read's views (the old query, 1 - avail/size, said 29 %)."""
    promtool = need("promtool", "prometheus")
    expr = _concrete(_panel("Filesystem space used")["targets"][0]["expr"])
    labels = '{job="shm-metrics", instance="h1", mountpoint="/", device="/dev/sda1", fstype="ext4"}'
    series = [{"series": f"node_filesystem_{what}_bytes{labels}", "values": f"{value}x5"}
              for what, value in (("size", 110 * GIB), ("free", 88 * GIB), ("avail", 78 * GIB))]
    expected = fmt.df_use_percent(110 * GIB, 88 * GIB, 78 * GIB)
    assert expected == 22
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": f"round(100 * ({expr}) + 0.4999)", "eval_time": "2m",  # df rounds up
                              "exp_samples": [{"labels": labels, "value": expected}]}]}]}
    (tmp_path / "fs.test.yml").write_text(yaml.safe_dump(test))
    out = subprocess.run([promtool, "test", "rules", "fs.test.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_query_returns_data_from_a_real_prometheus(name, start_publisher):
    binary = need("prometheus", "prometheus")
    # --collector.processes: the process-state panels show node_exporter's processes collector (off by default).
    start_publisher(name, "--interval", "0.5", "--collector.processes")
    exporter = Exporter(name)
    prom = None
    with tempfile.TemporaryDirectory(prefix="shm-dashboard-prometheus-") as tmp:
        directory = Path(tmp)
        try:
            config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
            config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
            config.pop("rule_files", None)
            config.pop("alerting", None)
            (directory / "shm-metrics").mkdir()
            (directory / "shm-metrics" / "hosts.json").write_text(json.dumps(
                [{"targets": [f"127.0.0.1:{exporter.port}"]}]))
            (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            prom = Process([binary, f"--config.file={directory / 'prometheus.yml'}",
                            f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                            "--log.level=warn"], cwd=str(directory))

            def results(expr: str) -> list:
                if prom.proc.poll() is not None:
                    raise AssertionError(f"prometheus exited {prom.proc.returncode}:\n{prom.output()}")
                try:
                    return _api(base, "query", query=expr)["result"]
                except OSError:
                    return []  # not listening yet

            for where, expr in _queries().items():
                query = _concrete(expr)
                # rate() over 5 s needs two scrapes; the first queries wait for them
                _wait(f"data for {where!r}: {query}", lambda q=query: results(q))
            for variable in DASHBOARD["templating"]["list"]:
                if variable.get("definition"):
                    metric, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"]).groups()
                    found = {r["metric"].get(label) for r in results(_concrete(metric))}
                    assert found - {None}, variable["definition"]
        finally:
            if prom is not None:
                assert prom.stop() == 0, prom.output()
            exporter.stop()


@pytest.mark.parametrize("title", ["CPU busy", "CPU time by mode", "Filesystem space used"])
def test_legends_name_the_host(title):
    assert all("{{instance}}" in t["legendFormat"] for t in _panel(title)["targets"])
