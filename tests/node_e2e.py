"""node_exporter 1.5.0's own end-to-end test, as a harness: its fixture tree, its flags, its expected output.

The files under ``tests/fixtures/node_exporter-1.5.0`` are an unmodified copy of
node_exporter v1.5.0's ``collector/fixtures``, ``end-to-end-test.sh``, ``ttar``,
LICENSE and NOTICE (see its README.md).  This module reads the script itself
for the collector lists and the ``skip_re``, unpacks the trees into a
temporary directory, and compares two expositions family by family: a
family is its ``# HELP`` line, its ``# TYPE`` line and its samples, after the
script's ``skip_re`` has removed lines exactly as the script's ``grep -v``
does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent / "fixtures" / "node_exporter-1.5.0"
SCRIPT = (HERE / "end-to-end-test.sh").read_text()
FIXTURES = "collector/fixtures"
EXPECTED = HERE / FIXTURES / "e2e-output.txt"


def _heredoc(variable: str) -> list[str]:
    body = re.search(rf"{variable}=\$\(cat << COLLECTORS\n(.*?)\nCOLLECTORS", SCRIPT, re.S)
    assert body, f"{variable} not found in end-to-end-test.sh"
    return body.group(1).split()


ENABLED = _heredoc("enabled_collectors")
DISABLED = _heredoc("disabled_collectors")
SKIP_RE = re.compile(re.search(r'skip_re="(.*?)"\n', SCRIPT).group(1))
CPU_INFO_BUGS = r"^(cpu_meltdown|spectre_.*|mds)$"  # the script's x86_64 values
CPU_INFO_FLAGS = r"^(aes|avx.?|constant_tsc)$"


def unpack(dest: Path) -> Path:
    """The fixture tree as ``dest/collector/fixtures`` (ttar archives unpacked); returns ``dest``.

    Run the exporters with ``cwd=dest`` and ``flags()``: the script passes relative paths, and some
    of them end up in the output (the textfile collector's HELP texts name the file they read).
    """
    root = dest / FIXTURES
    shutil.copytree(HERE / FIXTURES, root, symlinks=True)
    for archive in ("sys.ttar", "udev.ttar"):
        subprocess.run(["bash", str(HERE / "ttar"), "-C", str(root), "-x", "-f", str(root / archive)],
                       check=True, capture_output=True)
    return dest


def flags() -> list[str]:
    """The flags end-to-end-test.sh passes (its x86_64 branch), relative to the unpacked directory."""
    root = FIXTURES
    return [
        f"--path.rootfs={root}", f"--path.procfs={root}/proc", f"--path.sysfs={root}/sys",
        f"--path.udev.data={root}/udev/data",
        *(f"--collector.{c}" for c in ENABLED), *(f"--no-collector.{c}" for c in DISABLED),
        f"--collector.textfile.directory={root}/textfile/two_metric_files/",
        f"--collector.wifi.fixtures={root}/wifi", f"--collector.qdisc.fixtures={root}/qdisc/",
        "--collector.qdisk.device-include=(wlan0|eth0)", "--collector.arp.device-exclude=nope",
        "--collector.netclass.ignored-devices=(dmz|int)", "--collector.netclass.ignore-invalid-speed",
        "--collector.netdev.device-include=lo", "--collector.bcache.priorityStats",
        "--collector.cpu.info", f"--collector.cpu.info.bugs-include={CPU_INFO_BUGS}",
        f"--collector.cpu.info.flags-include={CPU_INFO_FLAGS}", "--collector.stat.softirq",
        "--collector.sysctl.include=kernel.threads-max", "--collector.sysctl.include=fs.file-nr",
        "--collector.sysctl.include=fs.file-nr:total,current,max",
        "--collector.sysctl.include-info=kernel.seccomp.actions_avail",
    ]


def split_flags(names: dict[str, bool]) -> tuple[list[str], list[str], dict[str, str]]:
    """flags() divided for shm-metrics: (shm-publisher's, shm-exporter's, {collector: why its flags are left
    out}), given the publisher's collectors (``collector_names()``).  A switch or option of a collector the
    publisher does not have is left out (it would refuse it); turning one off is kept (it accepts that)."""
    from shm_metrics.publisher.switches import OPTIONS_BY_FLAG

    publisher, exporter, left_out = [], [], {}
    for flag in flags():
        key = flag.split("=", 1)[0]
        if key.startswith("--path."):
            publisher.append(flag)
            continue
        negated = key.startswith("--no-collector.")
        rest = key.split("collector.", 1)[1]
        collector = OPTIONS_BY_FLAG[rest].collector if rest in OPTIONS_BY_FLAG else rest.split(".", 1)[0]
        if collector == "textfile":
            if rest == "textfile.directory":
                exporter.append(flag)  # the textfile collector runs in shm-exporter, at scrape time
        elif negated or collector in names:
            publisher.append(flag)
        else:
            left_out[collector] = "not implemented yet"
    return publisher, exporter, left_out


def publisher_settings() -> tuple[dict[str, object], object]:
    """(``Context.options``, ``Filters``) as shm-publisher's own command line makes them from the script's
    flags: tests that run collectors in process get exactly what the publisher would."""
    from shm_metrics.publisher import cli, switches
    from shm_metrics.publisher.collectors import collector_names

    names = collector_names()
    parser = cli.build_parser(names)
    args, leftover = parser.parse_known_args(split_flags(names)[0])
    assert not leftover, leftover
    return switches.options(args), cli.filters_of(parser, args)


def filtered(text: str) -> str:
    """What the script keeps of an exposition: ``grep -E -v "${skip_re}"``."""
    return "".join(line + "\n" for line in text.splitlines() if not SKIP_RE.search(line))


def families(text: str) -> dict[str, str]:
    """Family name -> its block of lines (HELP, TYPE, samples), from a filtered exposition."""
    out: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            out[name] = ""
        elif name is None:
            continue
        out[name] += line + "\n"
    return out


# Which collector each family belongs to: (family-name regex, collector), first match wins.  The
# collector names are node_exporter's; the patterns come from its collectors' metric names.
_OWNERS = [
    (r"node_scrape_collector_", "scrape"), (r"node_textfile_|testmetric", "textfile"),
    (r"node_cpu_(frequency|scaling)_", "cpufreq"), (r"node_cpu_", "cpu"),
    (r"node_(boot_time_seconds|context_switches_total|forks_total|intr_total|procs_|softirqs_total)", "stat"),
    (r"node_load(1|5|15)$", "loadavg"), (r"node_memory_numa_", "meminfo_numa"), (r"node_memory_", "meminfo"),
    (r"node_network_(receive|transmit)_", "netdev"), (r"node_network_", "netclass"),
    (r"node_disk_", "diskstats"), (r"node_(thermal_zone|cooling_device)_", "thermal_zone"),
    (r"node_power_supply_", "powersupplyclass"), (r"node_md_", "mdadm"), (r"node_nf_conntrack_", "conntrack"),
    (r"node_interrupts_", "interrupts"), (r"node_udp_queues", "udp_queues"), (r"node_tape_", "tapestats"),
    (r"node_dmi_", "dmi"), (r"node_os_", "os"), (r"node_uname_", "uname"), (r"node_time_", "time"),
    (r"node_(timex_|adjtimex_)", "timex"), (r"node_filesystem_", "filesystem"),
    (r"^(go_|node_exporter_build_info$)", "Go runtime"),
    (r"^(process|promhttp)_", "exporter itself"),
]


def collector_of(family: str) -> str:
    for pattern, owner in _OWNERS:
        if re.match(pattern, family):
            return owner
    match = re.match(r"node_([a-z0-9]+)_", family)
    return match.group(1) if match else "other"


def compare(expected: dict[str, str], actual: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """Per collector: the families ``equal``, ``different`` and ``missing`` against ``expected``."""
    table: dict[str, dict[str, list[str]]] = {}
    for name, block in expected.items():
        row = table.setdefault(collector_of(name), {"equal": [], "different": [], "missing": []})
        if name not in actual:
            row["missing"].append(name)
        elif actual[name] == block:
            row["equal"].append(name)
        else:
            row["different"].append(name)
    return table


def render(table: dict[str, dict[str, list[str]]], skipped: dict[str, str] | None = None) -> str:
    """The per-collector table as Markdown, with totals and the reasons for skipped collectors."""
    lines = ["| collector | families expected | equal | different | missing | note |",
             "|---|---:|---:|---:|---:|---|"]
    totals = [0, 0, 0, 0]
    for collector in sorted(table):
        row = table[collector]
        counts = [sum(len(v) for v in row.values()), len(row["equal"]), len(row["different"]), len(row["missing"])]
        totals = [a + b for a, b in zip(totals, counts)]
        note = (skipped or {}).get(collector, "")
        lines.append(f"| {collector} | " + " | ".join(map(str, counts)) + f" | {note} |")
    lines.append("| **total** | " + " | ".join(f"**{n}**" for n in totals) + " | |")
    return "\n".join(lines) + "\n"


def diff_lines(expected: str, actual: str, limit: int = 12) -> Iterable[str]:
    """The first lines that differ between two family blocks, for a failure message."""
    import difflib

    return list(difflib.unified_diff(expected.splitlines(), actual.splitlines(), lineterm="", n=0))[:limit]


def expected_families(*collectors: str) -> dict[str, str]:
    """The blocks of ``e2e-output.txt`` that belong to ``collectors`` (names as ``collector_of`` gives them)."""
    return {name: block for name, block in families(EXPECTED.read_text()).items() if collector_of(name) in collectors}


def exposition_of(root: Path, collectors: list | None = None, name: str | None = None, **sampler_args) -> str:
    # sampler_args: e.g. options={"sysctl.include": [...]} (Context.options), filters=Filters(...)
    """What shm-exporter serves for one sample of ``collectors`` (classes; default: the default set) taken
    from the fixture tree under ``root`` (as ``unpack`` leaves it): the real path, in this process.

    The sample goes through the publisher's Sampler and OwnedSegment into a real segment under a unique
    name, and comes back through the exporter's SegmentSource and renderer; the segment is removed after.
    The text is filtered with the script's skip_re.
    """
    import os
    import time
    import uuid

    from shm_metrics import shm_layout as L
    from shm_metrics.publisher.sampler import Sampler
    from shm_metrics.publisher.segment import OwnedSegment
    from shm_metrics.readers.exporter.exposition import build
    from shm_metrics.readers.exporter.source import SegmentSource

    fixtures = Path(root) / FIXTURES
    sampler = Sampler(procfs=str(fixtures / "proc"), sysfs=str(fixtures / "sys"), rootfs=str(fixtures),
                      udev_data=str(fixtures / "udev" / "data"), collectors=collectors, **sampler_args)
    name = name or f"/shmtest-e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    segment = source = None
    try:
        layout = L.Layout.for_capacities(64, 64, 64, 64, history=2, top=0, **sampler.family_capacities())
        segment = OwnedSegment(name, layout, 0o600, 1.0, sampler.catalog)
        start = time.monotonic()
        sample = sampler.sample()
        segment.set_state(L.STATE_RUNNING)
        segment.publish(sample, time.time(), time.monotonic(), time.monotonic() - start, 0)
        source = SegmentSource(name)
        _, exposition = build(source, process_metrics=False)
        return filtered(_segment_only(exposition.render().decode()))
    finally:
        if source is not None:
            source.close()
        if segment is not None:
            segment.close(unlink=True)
        sampler.close()

def _segment_only(text: str) -> str:
    """An exposition without what the exporter adds at scrape time to the segment's families: its textfile
    collector (on without a directory: node_textfile_scrape_error 0, a textfile scrape row) and promhttp's
    handler metrics (kept with --web.disable-exporter-metrics, as node_exporter keeps them)."""
    keep, out = True, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            keep = not line.split()[2].startswith(("promhttp_", "node_textfile_"))
        if keep and not line.startswith('node_scrape_collector_duration_seconds{collector="textfile"}') \
                and not line.startswith('node_scrape_collector_success{collector="textfile"}'):
            out.append(line + "\n")
    return "".join(out)


# (path of the table file, Markdown table) of the last run of our end-to-end test; tests/conftest.py prints it
# at the end of the pytest session.
LAST_TABLE: tuple[str, str] | None = None
