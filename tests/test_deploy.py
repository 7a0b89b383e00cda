"""deploy/: the systemd units, the Prometheus configuration and rules, the Grafana dashboard, the examples."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from exporter_util import need

from shm_metrics.publisher.collectors import declared_families
from shm_metrics.readers.exporter.collector import OWN_NAMES
from shm_metrics.readers.exporter.webconfig import parse as parse_web_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = DEPLOY / "systemd"
PROM = DEPLOY / "prometheus"
EXPORTED = {f.name for f in declared_families()} | set(OWN_NAMES)


@pytest.fixture
def scratch():
    """A temporary directory removed after the test (keys and configs do not outlive it)."""
    with tempfile.TemporaryDirectory(prefix="shm-exporter-test-") as d:
        yield Path(d)


def _unit(name: str) -> dict[str, list[str]]:
    """A unit file as {key: [values]} (comments skipped)."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _installed_bin() -> Path:
    """Where this environment's console scripts are (the units' /opt/shm-metrics/bin/ stands for it)."""
    found = shutil.which("shm-exporter")
    for directory in (Path(sys.executable).parent, *([Path(found).parent] if found else [])):
        if (directory / "shm-publisher").exists() and (directory / "shm-exporter").exists():
            return directory
    pytest.skip("shm-publisher/shm-exporter console scripts not installed (pip install -e .)")


def test_units_pass_systemd_analyze_verify_and_security(scratch):
    analyze = need("systemd-analyze", "systemd")
    bindir = _installed_bin()
    for unit in ("shm-publisher.service", "shm-exporter.service", "shm-exporter.socket"):
        text = (UNITS / unit).read_text().replace("/opt/shm-metrics/bin/", f"{bindir}/")
        (scratch / unit).write_text(text)
    units = [str(scratch / u) for u in ("shm-publisher.service", "shm-exporter.service")]
    out = subprocess.run([analyze, "verify", *units, str(scratch / "shm-exporter.socket")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    # systemd's own exposure score (0 best .. 10 worst): both must rate "OK" (below 2.0).
    for unit in units:
        out = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", unit], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr


def test_units_are_hardened_and_keep_shared_memory_working():
    pub, exp = _unit("shm-publisher.service"), _unit("shm-exporter.service")
    for unit in (pub, exp):
        for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                           ("PrivateDevices", "yes"), ("CapabilityBoundingSet", "")):
            assert unit.get(key) == [value], key
        assert unit["User"] and unit["User"] != ["root"] and not unit.get("DynamicUser")
    assert pub["User"] != exp["User"]  # the exporter cannot write the segment
    assert pub["ReadWritePaths"] == ["/dev/shm"] and exp["ReadOnlyPaths"] == ["/dev/shm"]
    assert pub.get("RemoveIPC", ["no"]) == ["no"]  # --keep-on-exit must keep the segment
    # What would change what the publisher measures (see the unit's comments).
    assert "PrivateNetwork" not in pub and "ProtectProc" not in pub and "ProcSubset" not in pub
    assert pub["ProtectHome"] == ["read-only"]
    # The exporter comes after the publisher and pulls it in, but keeps serving (up 0) when it is down.
    assert "shm-publisher.service" in " ".join(exp["After"]) and exp["Wants"] == ["shm-publisher.service"]
    assert "Requires" not in exp and "BindsTo" not in exp
    assert re.search(r"--name /sysmetrics\b", pub["ExecStart"][0]) and "--name /sysmetrics" in exp["ExecStart"][0]


def test_sysusers_creates_system_users(scratch):
    sysusers = need("systemd-sysusers", "systemd")
    (scratch / "etc").mkdir()
    out = subprocess.run([sysusers, f"--root={scratch}", "-"], stdin=(UNITS / "shm-metrics-sysusers.conf").open(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    users = {line.split(":")[0]: int(line.split(":")[2]) for line in (scratch / "etc/passwd").read_text().splitlines()}
    assert {_unit("shm-publisher.service")["User"][0], _unit("shm-exporter.service")["User"][0]} <= set(users)
    assert all(uid < 1000 for uid in users.values())  # system users: logind's RemoveIPC leaves them alone


def test_prometheus_config_and_rules():
    promtool = need("promtool", "prometheus")
    out = subprocess.run([promtool, "check", "config", str(PROM / "prometheus.yml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout + out.stderr
    out = subprocess.run([promtool, "check", "rules", str(PROM / "shm-metrics-alerts.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # The alerts fire when they should, on synthetic series (promtool's rule unit tests).
    out = subprocess.run([promtool, "test", "rules", "shm-metrics-alerts.test.yml"], cwd=PROM, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {r["alert"] for g in yaml.safe_load((PROM / "shm-metrics-alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    assert {"ShmExporterDown", "ShmPublisherDown", "ShmSamplesStale", "HostHighLoad"} <= names


def test_file_sd_example_and_web_config_example():
    groups = json.loads((PROM / "shm-metrics" / "hosts.json.example").read_text())
    assert groups and all(set(g) <= {"targets", "labels"} and g["targets"] for g in groups)
    assert all(t.endswith(":19100") for g in groups for t in g["targets"])
    config = parse_web_config((DEPLOY / "web-config.yml.example").read_text(), str(DEPLOY / "web-config.yml.example"))
    assert config.tls and config.users


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "shm-metrics-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    assert len(exprs) > 20
    return exprs


# Panels of families a default publisher does not export: node_exporter's processes collector, off by default
# in both (shm-publisher --collector.processes); their descriptions say so.
OPT_IN = {"node_processes_state": "--collector.processes", "node_processes_threads_state": "--collector.processes"}


def test_dashboard_uses_only_exported_metric_names():
    used = set()
    for expr in _dashboard_exprs():
        used |= set(re.findall(r"\b((?:node|shm_metrics)_[A-Za-z0-9_]+)", expr))
    unknown = used - EXPORTED - set(OPT_IN)
    assert not unknown, f"the dashboard uses names shm-exporter does not export: {unknown}"
    dashboard = json.loads((DEPLOY / "grafana" / "shm-metrics-dashboard.json").read_text())
    for name, switch in OPT_IN.items():
        panels = [p for p in dashboard["panels"] if any(name in t["expr"] for t in p.get("targets", []))]
        assert panels and all(switch in p.get("description", "") for p in panels), name
    assert {"node_cpu_seconds_total", "node_processes_pids", "node_memory_MemAvailable_bytes", "shm_metrics_up",
            "node_filesystem_avail_bytes", "node_network_receive_bytes_total"} <= used


def test_dashboard_queries_are_valid_promql(scratch):
    promtool = need("promtool", "prometheus")
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        if expr.startswith("label_values("):
            expr = expr[len("label_values("):].rsplit(",", 1)[0]
        expr = expr.replace("$__rate_interval", "5m").replace("$job", "shm-metrics").replace("$instance", ".+")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = scratch / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_merges_the_prometheus_job_and_never_overwrites_the_config():
    readme = (DEPLOY.parent / "README.md").read_text()
    assert not re.search(r"cp [^\n]*prometheus\.yml [^\n]*/etc/prometheus", readme)
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    snippet = next(block for block in blocks if "job_name: shm-metrics" in block)
    merged = yaml.safe_load(snippet)
    shipped = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert merged["rule_files"] == shipped["rule_files"]
    assert merged["scrape_configs"] == shipped["scrape_configs"]  # the README and the file say the same
    assert merged["alerting"] == shipped["alerting"] and shipped["alerting"]["alertmanagers"]


def test_remove_ipc_only_where_it_cannot_delete_the_segment():
    assert _unit("shm-exporter.service")["User"] == ["shm-exporter"]
    assert _unit("shm-publisher.service")["User"] == ["shm-metrics"]  # the segment's owner keeps RemoveIPC=no
    exporter_unit = (UNITS / "shm-exporter.service").read_text()
    assert "RemoveIPC=yes" in exporter_unit and "owns none" in exporter_unit  # and says why it is safe
