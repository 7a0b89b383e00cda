"""node_exporter 1.5.0's end-to-end test (tests/fixtures/node_exporter-1.5.0), run here.

First the oracle: Debian's prometheus-node-exporter (1.5.0), run on the unpacked
fixture tree with the script's own flags, reproduces ``e2e-output.txt`` family by
family, but for Debian's own two differences.  That proves the harness (tree,
flags, skip_re, comparison) before anything of ours is judged by it.
"""

from __future__ import annotations

import pytest
from exporter_util import Process, free_port, metrics, need
from node_e2e import EXPECTED, compare, diff_lines, families, filtered, flags, render, unpack

# Debian's build differs from upstream's in two places (the fixture's README): the HELP text of
# node_exporter_build_info, and a systemd collector switched on by default (failing here).
DEBIAN_OWN = {"node_exporter_build_info", "node_scrape_collector_success"}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("node-e2e"))


def test_debian_node_exporter_reproduces_the_expected_output(fixture_root):
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    # Debian's build excludes lo by default, and include/exclude are mutually exclusive (the fixture's README).
    args = [a for a in flags() if not a.startswith("--collector.netdev.device-include")]
    args += ["--collector.netdev.device-exclude=", "--collector.netdev.device-include=lo"]
    proc = Process([binary, *args, f"--web.listen-address=127.0.0.1:{port}"], cwd=str(fixture_root))
    try:
        proc.wait_for_line("Listening on")
        text = metrics(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.stop()
    expected = families(EXPECTED.read_text())
    actual = families(filtered(text))
    assert len(expected) == 995
    table = compare(expected, actual)
    print("\n" + render(table))
    wrong = {name for row in table.values() for key in ("different", "missing") for name in row[key]}
    assert wrong <= DEBIAN_OWN, {name: diff_lines(expected[name], actual.get(name, "")) for name in wrong}
