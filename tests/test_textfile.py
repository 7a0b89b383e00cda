"""shm-exporter's textfile collector (--collector.textfile.directory) against node_exporter 1.5.0's own cases."""

from __future__ import annotations

import os
import shutil

import pytest
from exporter_util import Exporter, metrics
from node_e2e import HERE, families

from shm_metrics.readers.exporter.textfile import Textfile, go_float

CASES = HERE / "collector" / "fixtures" / "textfile"
# node_exporter's textfile_test.go reads each case from "fixtures/textfile/<case>" (one is a glob) with the
# files' mtime pinned to 1; the copy here has its files' mtime set to 1 instead.
CASE_DIRS = {"glob_extra_dimension": "fixtures/textfile/*_extra_dimension"}


@pytest.fixture
def cases(tmp_path, monkeypatch):
    shutil.copytree(CASES, tmp_path / "fixtures" / "textfile")
    for path in (tmp_path / "fixtures" / "textfile").rglob("*.prom"):
        os.utime(path, (1, 1))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.out")))
def test_node_exporters_textfile_cases(cases, case):
    directory = CASE_DIRS.get(case, f"fixtures/textfile/{case}")
    got = Textfile(directory).read().text.decode()
    expected = (CASES / f"{case}.out").read_text()
    assert families(got) == families(expected)


def test_a_hostile_file_sets_scrape_error_and_the_others_are_still_served(tmp_path):
    (tmp_path / "good.prom").write_text("# HELP ok_total fine\n# TYPE ok_total counter\nok_total 3\n")
    (tmp_path / "bad.prom").write_text('broken{label="x" 1\n')
    (tmp_path / "stamped.prom").write_text("stamped 1 1700000000000\n")
    (tmp_path / "ignored.txt").write_text("not read at all {{{\n")
    reading = Textfile(str(tmp_path)).read()
    text = reading.text.decode()
    assert reading.error
    got = families(text)
    assert got["ok_total"] == "# HELP ok_total fine\n# TYPE ok_total counter\nok_total 3\n"
    assert "node_textfile_scrape_error 1\n" in got["node_textfile_scrape_error"]
    assert "broken" not in text and "stamped" not in text
    mtimes = got["node_textfile_mtime_seconds"]
    assert "good.prom" in mtimes and "bad.prom" not in mtimes and "stamped.prom" not in mtimes


def test_a_fifo_or_a_device_named_prom_is_refused_without_blocking_and_problems_are_logged_once(tmp_path, caplog):
    """A FIFO would block the scrape's worker for good and /dev/zero would never end: only regular files
    are read.  A problem is logged when it appears, not at every scrape, and again after it went away."""
    (tmp_path / "good.prom").write_text("ok 1\n")
    os.mkfifo(tmp_path / "pipe.prom")
    (tmp_path / "zero.prom").symlink_to("/dev/zero")
    textfile = Textfile(str(tmp_path))
    with caplog.at_level("WARNING", logger="shm-exporter"):
        for _ in range(3):
            reading = textfile.read()
            assert reading.error and "ok 1\n" in reading.text.decode()
    warned = [r.getMessage() for r in caplog.records if "textfile" in r.getMessage()]
    assert len(warned) == 2 and all("not a regular file" in m for m in warned), warned
    (tmp_path / "pipe.prom").unlink()
    (tmp_path / "zero.prom").unlink()
    assert not textfile.read().error
    caplog.clear()
    os.mkfifo(tmp_path / "pipe.prom")
    with caplog.at_level("WARNING", logger="shm-exporter"):
        textfile.read()
    assert len([r for r in caplog.records if "pipe.prom" in r.getMessage()]) == 1


def test_a_family_the_segment_has_is_not_taken_by_a_file(tmp_path):
    (tmp_path / "x.prom").write_text("node_load1 99\nmine 1\n")
    got = families(Textfile(str(tmp_path)).read(taken={"node_load1"}).text.decode())
    assert "node_load1" not in got and "mine" in got


@pytest.mark.parametrize("value, text", [(10.0, "10"), (1e6, "1e+06"), (185209.0, "185209"), (4.35e-06, "4.35e-06"),
                                         (0.000571464, "0.000571464"), (1865216.6505091474, "1.8652166505091474e+06"),
                                         (-2.5, "-2.5"), (float("inf"), "+Inf"), (float("nan"), "NaN"), (0.0, "0")])
def test_numbers_are_written_as_go_writes_them(value, text):
    assert go_float(value) == text


def test_the_exporter_reads_the_files_at_scrape_time(tmp_path, name, start_publisher):
    start_publisher(name, "--top", "0")
    (tmp_path / "job.prom").write_text("job_last_success 1\n")
    exporter = Exporter(name, f"--collector.textfile.directory={tmp_path}")
    try:
        first = families(metrics(exporter.url + "/metrics"))
        assert first["job_last_success"].endswith("job_last_success 1\n")
        assert 'node_scrape_collector_success{collector="textfile"} 1\n' in first["node_scrape_collector_success"]
        (tmp_path / "job.prom").write_text("job_last_success 2\n")
        second = families(metrics(exporter.url + "/metrics"))
        assert second["job_last_success"].endswith("job_last_success 2\n")  # no sample in between needed
        assert "node_textfile_scrape_error 0\n" in second["node_textfile_scrape_error"]
    finally:
        exporter.stop()


@pytest.mark.parametrize("collectors", [["arp", "cpu", "thermal_zone", "zfs"], ["arp", "textfile", "time"],
                                        ["time", "udp_queues"], ["arp", "tapestats"], ["textfile"]])
def test_the_textfile_line_goes_where_the_go_client_sorts_it(collectors):
    """The unfiltered scrape renders node_scrape_collector_* with the rest of the sample and puts the textfile
    collector's line in per scrape: the same text as the family with its textfile row rendered whole (a planted
    row for a collector named textfile left out)."""
    from shm_metrics.families import Family
    from shm_metrics.readers.exporter.exposition import _cut_at_textfile, _with_textfile_line, _with_textfile_row
    from shm_metrics.readers.exporter.owners import SCRAPE_FAMILIES
    from shm_metrics.readers.exporter.render import FamilyRenderer

    for name, help_ in ((SCRAPE_FAMILIES[0], "node_exporter: Whether a collector succeeded."),
                        (SCRAPE_FAMILIES[1], "node_exporter: Duration of a collector scrape.")):
        fam = Family(name, "gauge", help_, ("collector",), [((c,), 0.25 + i) for i, c in enumerate(collectors)])
        text = FamilyRenderer().render([fam]).decode()
        cut = ((name, *_cut_at_textfile(text)),)
        assert _with_textfile_line(cut, 0.0125).decode() == FamilyRenderer().render(
            [_with_textfile_row(fam, 0.0125)]).decode()
