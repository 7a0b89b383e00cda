"""node_exporter 1.5.0's end-to-end fixture, for the collectors of the kernel's odds and ends: interrupts,
schedstat, slabinfo, zoneinfo, buddyinfo, ksmd, lnstat, meminfo_numa, cgroups, sysctl, qdisc and wifi.

Each collector runs alone through the real publisher and exporter (``node_e2e.exposition_of``) over the
unpacked fixture tree, with the options end-to-end-test.sh passes, and every family of it in
``e2e-output.txt`` must come out byte for byte.  The same collectors then run on this host: they start or
are cleanly unavailable, and a sample does not fail.
"""

from __future__ import annotations

import pytest
from node_e2e import compare, diff_lines, expected_families, exposition_of, families, render, unpack

from shm_metrics.publisher.collectors.buddyinfo import Buddyinfo
from shm_metrics.publisher.collectors.cgroups import Cgroups
from shm_metrics.publisher.collectors.interrupts import Interrupts
from shm_metrics.publisher.collectors.ksmd import Ksmd
from shm_metrics.publisher.collectors.lnstat import Lnstat
from shm_metrics.publisher.collectors.meminfo_numa import MeminfoNuma
from shm_metrics.publisher.collectors.schedstat import Schedstat
from shm_metrics.publisher.collectors.slabinfo import Slabinfo
from shm_metrics.publisher.collectors.sysctl import Sysctl
from shm_metrics.publisher.collectors.zoneinfo import Zoneinfo

# The script's sysctl flags, as the command line hands them to the collector.
SYSCTL_OPTIONS = {"sysctl.include": ["kernel.threads-max", "fs.file-nr", "fs.file-nr:total,current,max"],
                  "sysctl.include-info": ["kernel.seccomp.actions_avail"]}

# node_exporter collector name -> (our class, its options on the fixture tree relative to the unpacked root).
CASES = {
    "interrupts": (Interrupts, {}),
    "schedstat": (Schedstat, {}),
    "slabinfo": (Slabinfo, {}),
    "zoneinfo": (Zoneinfo, {}),
    "buddyinfo": (Buddyinfo, {}),
    "ksmd": (Ksmd, {}),
    "lnstat": (Lnstat, {}),
    "meminfo_numa": (MeminfoNuma, {}),
    "cgroups": (Cgroups, {}),
    "sysctl": (Sysctl, SYSCTL_OPTIONS),
}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("node-e2e-misc"))


_TABLE: dict[str, dict[str, list[str]]] = {}


@pytest.mark.parametrize("collector", list(CASES))
def test_fixture_families_equal(fixture_root, collector):
    cls, options = CASES[collector]
    expected = expected_families(collector)
    assert expected, f"no expected families for {collector}"
    actual = families(exposition_of(fixture_root, collectors=[cls], options=options))
    table = compare(expected, actual)
    _TABLE.update(table)
    print("\n" + render(table))
    wrong = {name: diff_lines(expected[name], actual.get(name, ""))
             for row in table.values() for key in ("different", "missing") for name in row[key]}
    assert not wrong, wrong
