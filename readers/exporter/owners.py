"""Which node_exporter collector each family belongs to, for ``collect[]`` (node_exporter's URL filter).

node_exporter answers ``/metrics?collect[]=loadavg&collect[]=meminfo`` with only
those collectors' families (and its own metrics).  The segment's catalog says
what each family is (name, type, HELP, labels) but not which collector declared
it, so the exporter derives the owner from the name, as node_exporter names its
families: ``node_<subsystem>_...``, where the subsystem is the collector's name
but for the collectors listed in ``_OWNERS`` (cpufreq's ``node_cpu_frequency_*``,
stat's ``node_forks_total``, netdev's ``node_network_receive_*`` beside
netclass's ``node_network_*``...).  ``tests/test_exporter_dropin.py`` checks the
owner of every family the publisher's collectors declare (on node_exporter's
end-to-end fixture, where every collector has data) against the collector that
declared it, so a new family that breaks the rule fails there.

Which collectors exist and which are switched on come from node_exporter's list
(``NODE_EXPORTER_COLLECTORS``) and the segment itself: every collector the
publisher runs has a ``node_scrape_collector_success`` series, as in
node_exporter; ``textfile`` runs in the exporter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from shm_metrics.publisher.switches import NODE_EXPORTER_COLLECTORS

SCRAPE_FAMILIES = ("node_scrape_collector_success", "node_scrape_collector_duration_seconds")
TEXTFILE = "textfile"

# node_exporter's families whose name does not start with node_<collector>_, first match wins.
_OWNERS = [(re.compile(pattern), owner) for pattern, owner in (
    (r"node_textfile_", TEXTFILE),
    (r"node_cpu_(frequency|scaling)_", "cpufreq"),
    (r"node_cpu_", "cpu"),
    (r"node_(boot_time_seconds|context_switches_total|forks_total|intr_total|procs_(running|blocked)"
     r"|softirqs_total)$", "stat"),
    (r"node_load(1|5|15)$", "loadavg"),
    (r"node_memory_numa_", "meminfo_numa"),
    (r"node_memory_", "meminfo"),
    (r"node_network_(receive|transmit)_\w+_total$", "netdev"),
    (r"node_network_", "netclass"),
    (r"node_disk_", "diskstats"),
    (r"node_(thermal_zone|cooling_device)_", "thermal_zone"),
    (r"node_power_supply_", "powersupplyclass"),
    (r"node_md_", "mdadm"),
    (r"node_nf_conntrack_", "conntrack"),
    (r"node_udp_queues$", "udp_queues"),
    (r"node_tape_", "tapestats"),
    (r"node_tcp_connection_states$", "tcpstat"),
)]
_SUBSYSTEM = re.compile(r"node_([a-z0-9]+)_")


@functools.lru_cache(maxsize=8192)  # catalogs are a few thousand names at most
def owner(family: str) -> str | None:
    """The node_exporter collector that exposes ``family``, or None (not a collector's: the scrape families,
    the exporter's own)."""
    for pattern, name in _OWNERS:
        if pattern.match(family):
            return name
    match = _SUBSYSTEM.match(family)
    return match[1] if match and match[1] in NODE_EXPORTER_COLLECTORS else None


class FilterError(ValueError):
    """A ``collect[]`` that node_exporter refuses (400): its message is node_exporter's."""


def check_filter(names: Iterable[str], enabled: frozenset[str] | None) -> frozenset[str]:
    """The ``collect[]`` values as a set, checked in order as node_exporter's NewNodeCollector checks them:
    an unknown name is ``missing collector: NAME``, a known one that is not running ``disabled collector:
    NAME``.  ``enabled`` None: not known (no sample to tell): only unknown names are refused."""
    chosen = []
    for name in names:
        if name not in NODE_EXPORTER_COLLECTORS:
            raise FilterError(f"missing collector: {name}")
        if enabled is not None and name not in enabled:
            raise FilterError(f"disabled collector: {name}")
        chosen.append(name)
    return frozenset(chosen)


def refusal_body(error: FilterError) -> bytes:
    """node_exporter's 400 body for a refused filter (no trailing newline, as it writes it)."""
    return f"Couldn't create filtered metrics handler: couldn't create collector: {error}".encode()
