"""Readers speak Prometheus (issue 17): selectors in shm-read and the API, the exposition locally.

Every check through the commands compares with a real shm-exporter's answer for the same sample: the
publisher runs at a 3600 s interval, so after its first sample nothing changes until the test ends
(the sample stays fresh for 2 x 3600 + 1 s) and the exporter and shm-read read the very same one.
Processes are real and stopped by their PIDs.  The parser's own cases need no process.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from conftest import run_reader, segment_header, wait_for
from exporter_util import Exporter, metrics, need

from shm_metrics.readers import Reader
from shm_metrics.readers.selector import Selector, SelectorError, UnknownFamily

ONE_SAMPLE = ("--interval", "3600")
_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_line(line: str) -> tuple[str, dict[str, str], str]:
    """(name, labels, value text) of one exposition line (values unescaped: none in these families has one)."""
    m = _LINE.match(line)
    assert m, line
    return m["name"], dict(_PAIR.findall(m["labels"] or "")), m["value"]


@pytest.fixture
def same_sample(name, start_publisher):
    """(segment name, the exporter's node_* text for the sample every command of the test reads)."""
    start_publisher(name, *ONE_SAMPLE)
    exporter = Exporter(name, "--web.disable-exporter-metrics")
    try:
        body = metrics(exporter.url + "/metrics")
        assert "shm_metrics_up 1\n" in body, body[:2000]
        node = segment_families(body)
        assert segment_families(metrics(exporter.url + "/metrics")) == node  # one sample: the same text every time
    finally:
        exporter.stop()
    yield name, node


def segment_families(body: str) -> str:
    """The node_* families of the segment in an exporter's body, in its order: without what the exporter adds
    at scrape time (its textfile collector: node_textfile_* and the collector="textfile" scrape rows)."""
    blocks = re.split(r"(?m)^(?=# HELP )", body)
    return "".join("".join(line + "\n" for line in block.splitlines() if 'collector="textfile"' not in line)
                   for block in blocks
                   if block.startswith("# HELP node_") and not block.startswith("# HELP node_textfile_"))


def series_lines(node: str, family: str) -> list[str]:
    return [line for line in node.splitlines() if not line.startswith("#") and parse_line(line)[0] == family]


def ok(out) -> str:
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    return out.stdout


# ----------------------------------------------------------------- through the commands, against the exporter
MATCHERS = [  # (selector, the same filter in Python over the exporter's labels)
    ("node_cpu_seconds_total", lambda lb: True),
    ('node_cpu_seconds_total{mode="idle"}', lambda lb: lb["mode"] == "idle"),
    ('node_cpu_seconds_total{mode!="idle", cpu="0"}', lambda lb: lb["mode"] != "idle" and lb["cpu"] == "0"),
    ('node_cpu_seconds_total{mode=~"user|system"}', lambda lb: lb["mode"] in ("user", "system")),
    ('node_cpu_seconds_total{mode=~"idl"}', lambda lb: False),  # anchored: a part of the value is no match
    ('node_cpu_seconds_total{mode!~"i.*", }', lambda lb: not lb["mode"].startswith("i")),
    ("{__name__='node_cpu_seconds_total', mode=~`s.*`}", lambda lb: lb["mode"].startswith("s")),
    ('node_cpu_seconds_total{nosuchlabel=""}', lambda lb: True),  # a missing label is the empty string
    ('node_network_up{device!~"lo"}', lambda lb: lb["device"] != "lo"),
]


@pytest.mark.parametrize("selector,keep", MATCHERS, ids=[m[0] for m in MATCHERS])
def test_every_selector_form_prints_the_exporters_series(same_sample, selector, keep):
    name, node = same_sample
    family = Selector.parse(selector).name
    expected = [line for line in series_lines(node, family) if keep(parse_line(line)[1])]
    assert series_lines(node, family), f"the exporter has no {family}"
    out = run_reader("--name", name, "--once", selector)
    if len(expected) == 1:  # one series: its bare value
        assert float(ok(out)) == float(parse_line(expected[0])[2]), (out.stdout, expected)
    else:  # several: the exporter's own lines, in its order
        assert ok(out).splitlines() == expected
    if not expected:
        assert out.stdout == "" and f"no series of {family} matches" in out.stderr
    as_json = json.loads(ok(run_reader("--name", name, "--once", "--json", selector)))
    assert list(as_json) == [selector]
    assert [(s["name"], s["labels"], s["value"]) for s in as_json[selector]] == \
        [(n, labels, float(v)) for n, labels, v in map(parse_line, expected)]
    followed = run_reader("--name", name, "-f", "--count", "1", selector)
    assert ok(followed) == out.stdout
    with Reader(name) as reader:
        samples = reader.read().select(selector)
    assert [(s.name, s.labels, s.value) for s in samples] == \
        [(n, labels, float(v)) for n, labels, v in map(parse_line, expected)]


def test_one_series_is_a_bare_value_and_fields_mix_with_selectors(same_sample):
    name, node = same_sample
    (load,) = series_lines(node, "node_load1")
    assert ok(run_reader("--name", name, "--once", "node_load1")).strip() == load.split()[1]
    (total,) = series_lines(node, "node_memory_MemTotal_bytes")
    bare = ok(run_reader("--name", name, "node_memory_MemTotal_bytes")).strip()  # piped: --once implied
    assert bare.isdigit() and float(bare) == float(total.split()[1])  # a whole number, for scripts
    mixed = ok(run_reader("--name", name, "--once", "load1", "node_load1", "node_network_up")).splitlines()
    assert mixed[0].startswith("load1 ") and mixed[1:] == [load, *series_lines(node, "node_network_up")]
    as_json = json.loads(ok(run_reader("--name", name, "--once", "--json", "load1", "node_load1", "sample_time")))
    assert list(as_json) == ["load1", "node_load1", "sample_time"]
    assert as_json["node_load1"] == [{"name": "node_load1", "labels": {}, "value": float(load.split()[1]),
                                      "sample_time": as_json["sample_time"]}]  # the family's own time


def test_a_family_sampled_on_demand_is_asked_for_not_printed_old(name, start_publisher):
    """node_time_seconds is not among the families sampled every interval: its value dates from the last
    full sample, which a one-shot or a text follower asks for when it is older than an interval."""
    start_publisher(name, "--interval", "0.2")
    wait_for(lambda: time.time() - segment_header(name)["full_sample_time"] > 2.0, what="the full sample to age")
    began = time.time()
    assert float(ok(run_reader("--name", name, "--once", "node_time_seconds"))) >= began - 1.0
    followed = [float(v) for v in ok(run_reader("--name", name, "-f", "--count", "3", "node_time_seconds")).split()]
    # Each at most max(interval, 1 s) old when printed, as shm-exporter serves them: samples that close share one.
    assert len(followed) == 3 and followed == sorted(followed) and followed[0] >= began - 1.0
    as_json = json.loads(ok(run_reader("--name", name, "--once", "--json", "node_time_seconds", "full_sample_time")))
    assert as_json["node_time_seconds"][0]["sample_time"] == as_json["full_sample_time"]


def test_format_prometheus_writes_the_exporters_bytes(same_sample):
    name, node = same_sample
    out = run_reader("--name", name, "--format", "prometheus")
    assert ok(out) == node
    selected = ok(run_reader("--name", name, "--format", "prometheus", "node_load1", 'node_cpu_seconds_total{cpu="0"}'))
    blocks = re.findall(r"# HELP (node_cpu_seconds_total|node_load1) .*\n# TYPE .*\n(?:[^#].*\n)*", node)
    assert blocks == ["node_cpu_seconds_total", "node_load1"]
    cpu0 = [line for line in series_lines(node, "node_cpu_seconds_total") if parse_line(line)[1]["cpu"] == "0"]
    head = [line for line in node.splitlines() if line.startswith(("# HELP node_cpu_seconds_total ",
                                                                   "# TYPE node_cpu_seconds_total ",
                                                                   "# HELP node_load1 ", "# TYPE node_load1 "))]
    assert selected.splitlines() == [*head[:2], *cpu0, *head[2:], *series_lines(node, "node_load1")]
    refused = run_reader("--name", name, "--format", "prometheus", "load1")
    assert refused.returncode == 2 and "is a field" in refused.stderr


def test_format_prometheus_parses_in_promtool(same_sample):
    """promtool check metrics: exit 1 is a text it cannot parse; 3 is lint only (node_exporter's own names:
    node_memory_MemTotal_bytes is not snake_case, node_entropy_available_bits not in bytes)."""
    promtool = need("promtool", "prometheus")
    name, _ = same_sample
    text = ok(run_reader("--name", name, "--format", "prometheus"))
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    report = check.stdout + check.stderr
    assert check.returncode in (0, 3) and "error while linting" not in report, report
    assert all(line.startswith("node_") for line in report.splitlines()), report


def test_unknown_names_and_bad_selectors_are_usage_errors(same_sample):
    name, _ = same_sample
    typo = run_reader("--name", name, "--once", "node_lod1")
    assert typo.returncode == 2 and typo.stdout == "" and typo.stderr.count("\n") == 1
    assert "unknown field or family 'node_lod1'" in typo.stderr and "node_load1" in typo.stderr
    field_typo = run_reader("--name", name, "--once", "load_1")  # the fields are offered too
    assert field_typo.returncode == 2 and "load1" in field_typo.stderr.split("did you mean")[1]
    follow = run_reader("--name", name, "-f", "node_cpu_secnds_total{mode='idle'}")
    assert follow.returncode == 2 and "did you mean node_cpu_seconds_total" in follow.stderr
    for bad in ("node_load1{", 'node_load1{mode="x"', "node_load1{mode=x}", 'node_load1{mode=~"("}', '{mode="x"}',
                'node_load1{mode="\\q"}', "1node"):
        out = run_reader("--name", name, "--once", bad)
        assert out.returncode == 2 and out.stderr.startswith("shm-read: error: ") and out.stderr.count("\n") == 1, \
            (bad, out.stderr)
        assert "Traceback" not in out.stderr
    empty = run_reader("--name", name, "--once", 'node_network_up{device="no-such-device"}')
    assert ok(empty) == "" and "no series of node_network_up matches" in empty.stderr


def test_no_segment_is_exit_3_even_for_a_selector(name):
    out = run_reader("--name", name, "--once", "node_load1")
    assert out.returncode == 3 and "no segment" in out.stderr


def test_list_fields_lists_the_families_and_info_counts_them(same_sample):
    name, node = same_sample
    listed = ok(run_reader("--name", name, "--list-fields")).splitlines()
    assert "procs_total" in listed and "load1" in listed  # the fields, one per line, as before
    rows = {line.split()[0]: line.split(None, 4) for line in listed if line.startswith("node_")}
    assert rows["node_cpu_seconds_total"][1:4] == ["counter", str(len(series_lines(node, "node_cpu_seconds_total"))),
                                                   "{cpu,mode}"]
    assert rows["node_load1"][1:4] == ["gauge", "1", "{}"] and rows["node_load1"][4] == "1m load average."
    with_series = {m for m in re.findall(r"^# TYPE (\S+) ", node, re.M)}
    assert {n for n, row in rows.items() if row[2] != "0"} == with_series
    as_json = json.loads(ok(run_reader("--name", name, "--list-fields", "--json")))
    assert {"name": "node_load1", "type": "gauge", "help": "1m load average.", "labels": [], "series": 1} \
        in as_json["families"]
    info = json.loads(ok(run_reader("--name", name, "--info", "--json")))
    assert info["families"] == len(rows) and info["families_with_series"] == len(with_series)
    assert info["series"] == sum(1 for line in node.splitlines() if not line.startswith("#"))
    without = run_reader("--name", name + "-absent", "--list-fields")
    assert ok(without).splitlines() == listed[:listed.index("families") + 1] and "no segment" in without.stderr


# ----------------------------------------------------------------- the parser alone
@pytest.mark.parametrize("text,name,matchers", [
    ("node_load1", "node_load1", []),
    (" node_load1 { } ", "node_load1", []),
    ('a:b_c{x="1",y!="2",z=~"3",w!~"4",}', "a:b_c", [("x", "=", "1"), ("y", "!=", "2"), ("z", "=~", "3"),
                                                      ("w", "!~", "4")]),
    ("""m{a='it\\'s', b=`raw\\n`, c="tab\\there", d="\\x41\\101\\u00e9"}""", "m",
     [("a", "=", "it's"), ("b", "=", "raw\\n"), ("c", "=", "tab\there"), ("d", "=", "AAé")]),
    ('{__name__="m", a="1"}', "m", [("a", "=", "1")]),
])
def test_selector_syntax(text, name, matchers):
    sel = Selector.parse(text)
    assert sel.name == name and [(m.label, m.op, m.value) for m in sel.matchers] == matchers
    assert Selector.parse(str(sel)) == sel


@pytest.mark.parametrize("text", ["", "{}", "m{", "m}", "m{a}", "m{a=}", "m{a=1}", 'm{a="1" b="2"}', 'm{a=="1"}',
                                  'm{1a="x"}', 'm{a="\\z"}', 'm{a="x}', 'm{__name__="n"}', '{__name__=~"m.*"}',
                                  'm{a=~"["}', "m n", 'm{a="x"} extra', "m{a='\\\"'}"])
def test_bad_selectors_are_refused_with_a_reason(text):
    with pytest.raises(SelectorError, match="bad selector"):
        Selector.parse(text)


def test_matching_is_promql_s():
    sel = Selector.parse('m{a=~"x|y", b!~"", c!="v", d=~"(?i)MIXED"}')
    assert sel.matches({"a": "x", "b": "set", "d": "mixed"})  # c absent: "" != "v"
    assert not sel.matches({"a": "xy", "b": "set", "d": "mixed"})  # anchored at both ends
    assert not sel.matches({"a": "x", "d": "mixed"})  # b absent: "" matches ""
    assert not sel.matches({"a": "x", "b": "set", "c": "v", "d": "mixed"})
    assert Selector.parse('m{a=~"a.b"}').matches({"a": "a\nb"})  # (?s): . matches a newline, as in Prometheus
    assert not Selector.parse('m{a=~"\\\\d"}').matches({"a": "٣"})  # \d is ASCII, as in RE2


def test_unknown_family_is_a_key_error(name, start_publisher):
    start_publisher(name, *ONE_SAMPLE)
    with Reader(name) as reader:
        snap = reader.read()
        with pytest.raises(UnknownFamily) as exc:
            snap.select("node_no_such_family")
        assert isinstance(exc.value, KeyError)
        assert snap.select('node_load1{x="y"}') == []
        (load,) = snap.select("node_load1")
        assert load.name == "node_load1" and load.labels == {} and load.value == snap.load1
