"""The declarative layout: derived offsets, the header checks, names, docs in sync."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from shm_metrics import shm_layout as L

DOC = Path(__file__).resolve().parent.parent / "docs" / "LAYOUT.md"


def test_docs_tables_are_generated_from_the_code():
    text = DOC.read_text()
    assert L.render_doc(text) == text, "run: python -m shm_metrics.shm_layout --update-docs docs/LAYOUT.md"


def test_docs_list_of_families_is_generated_from_the_collectors():
    from shm_metrics.publisher import collectors

    text = DOC.read_text()
    assert collectors.render_doc(text) == text, \
        "run: python -m shm_metrics.publisher.collectors --update-docs docs/LAYOUT.md"
    assert "| uname | `node_uname_info` | gauge | sysname, release, version, machine, nodename, domainname |" in text


def test_docs_prose_numbers_match_the_code():
    text = DOC.read_text()
    layout = L.Layout.for_capacities(1, 1, 1, 1)
    assert f"file size >= {L.HEADER.size}" in text
    assert f"`section_count` == {len(L.SECTIONS)}, `section_size` == {L.SECTION.size}, " \
           f"`sections_offset` == {layout.sections_offset}" in text
    assert f"= {layout.header_size}` (= `header_size`)" in text
    assert f"version {L.LAYOUT_VERSION}" in text.splitlines()[0]


@pytest.mark.parametrize("rec", [L.HEADER, L.SECTION, *L.SECTIONS], ids=lambda r: r.name)
def test_fields_are_naturally_aligned_and_records_padded(rec):
    for f in rec.fields:
        assert rec.offsets[f.name] % f.align == 0, f.name
    assert rec.size % 8 == 0
    assert rec.struct.size == rec.size


def test_sections_are_cache_line_aligned_and_file_is_whole_pages():
    layout = L.Layout.for_capacities(3, 5, 7, 11)
    assert all(off % L.SECTION_ALIGN == 0 for off in layout.offsets)
    assert layout.total_size % L.PAGE_SIZE == 0
    ends = [off + rec.size * cap for off, rec, cap in zip(layout.offsets, L.SECTIONS, layout.capacities)]
    assert all(end <= nxt for end, nxt in zip(ends, layout.offsets[1:]))
    assert ends[-1] <= layout.total_size
    assert layout.offsets[0] == layout.header_size >= layout.sections_offset + len(L.SECTIONS) * L.SECTION.size


def test_seq_is_aligned_for_8_byte_stores_and_a_futex_word():
    assert L.HEADER_SEQ_OFFSET % 8 == 0


def test_every_issue_field_is_in_the_table():
    wanted = ["procs_total", "threads_total", "procs_running", "procs_blocked", "forks_total", "load1", "load5",
              "load15", "cpu_count", "cpu_percent", "ctx_switches_total", "interrupts_total", "boot_time",
              "uptime_seconds", "filefd_allocated", "filefd_maximum"]
    wanted += [f"cpu_seconds_{m}" for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")]
    wanted += [f"mem_{m}_bytes" for m in ("total", "available", "used", "free", "buffers", "cached")]
    wanted += [f"swap_{m}_bytes" for m in ("total", "used", "free")]
    wanted += ["net_rx_bytes_total", "net_tx_bytes_total", "disk_read_bytes_total", "disk_written_bytes_total"]
    assert set(wanted) == set(L.SCALARS.names)
    assert L.NET.names == ("device", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors",
                           "rx_dropped", "tx_dropped")


def _header(layout: L.Layout) -> bytearray:
    buf = bytearray(layout.total_size)
    values = dict.fromkeys(L.HEADER.names, 0)
    values.update(magic=L.MAGIC, layout_version=L.LAYOUT_VERSION, header_size=layout.header_size,
                  total_size=layout.total_size, table_hash=L.TABLE_HASH, state=L.STATE_RUNNING,
                  section_count=len(L.SECTIONS), section_size=L.SECTION.size,
                  sections_offset=layout.sections_offset, hostname=b"h", publisher_start_time=0.0,
                  interval_seconds=1.0, sample_time=0.0, sample_monotonic=0.0, sample_duration_seconds=0.0)
    L.HEADER.struct.pack_into(buf, 0, *(values[n] for n in L.HEADER.names))
    for i, rec in enumerate(L.SECTIONS):
        L.SECTION.struct.pack_into(buf, layout.section_entry_offset(i), layout.offsets[i], rec.size,
                                   layout.capacities[i], 0, 0)
    return buf


def test_parse_header_accepts_a_good_header():
    layout = L.Layout.for_capacities(2, 8, 8, 8)
    hdr, parsed = L.parse_header(_header(layout), layout.total_size)
    assert parsed == layout and hdr["hostname"] == "h"


@pytest.mark.parametrize("field,value,message", [
    ("magic", b"NOTOURS\0", "bad magic"),
    ("magic", bytes(8), "not initialised"),
    ("layout_version", 99, "layout version"),
    ("table_hash", 1, "hash"),
    ("total_size", 4096, "file has"),
    ("section_count", 4, "directory"),
    ("state", 7, "state"),
])
def test_parse_header_rejects(field, value, message):
    layout = L.Layout.for_capacities(2, 8, 8, 8)
    buf = _header(layout)
    f = L.HEADER.by_name[field]
    struct.pack_into("<" + f.code, buf, L.HEADER.offsets[field], value)
    with pytest.raises(L.LayoutError, match=message):
        L.parse_header(buf, layout.total_size)


def test_parse_header_rejects_a_short_file_and_lying_capacities():
    layout = L.Layout.for_capacities(2, 8, 8, 8)
    buf = _header(layout)
    with pytest.raises(L.LayoutError, match="too small"):
        L.parse_header(buf[:100], 100)
    cap_at = layout.section_entry_offset(2) + L.SECTION.offsets["capacity"]
    struct.pack_into("<I", buf, cap_at, 10**6)
    with pytest.raises(L.LayoutError):
        L.parse_header(buf, layout.total_size)


def test_random_corruption_never_raises_anything_but_layout_error():
    rng = random.Random(1234)
    layout = L.Layout.for_capacities(2, 8, 8, 8)
    good = _header(layout)
    for _ in range(3000):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(layout.header_size)] = rng.randrange(256)
        try:
            hdr, parsed = L.parse_header(buf, layout.total_size)
        except L.LayoutError:
            continue
        assert parsed.total_size == layout.total_size  # accepted only if still self-consistent


@pytest.mark.parametrize("name", ["sysmetrics", "/sysmetrics", "/a", "/A.b-c_9", "/" + "x" * 200])
def test_valid_names(name):
    assert L.validate_name(name) == "/" + name.lstrip("/")


@pytest.mark.parametrize("name", ["", "/", "//x", "/a/b", "a b", "/" + "x" * 201, "/..", "/.", "é", "/x\n"])
def test_invalid_names(name):
    with pytest.raises(ValueError):
        L.validate_name(name)


def test_paths():
    assert L.segment_path("/sysmetrics") == "/dev/shm/sysmetrics"
    assert L.semaphore_name("sysmetrics") == "/sysmetrics.lock"
    assert L.semaphore_path("/sysmetrics") == "/dev/shm/sem.sysmetrics.lock"


def test_strings_are_cut_on_a_character_boundary_and_nul_terminated():
    raw = L.encode_string("é" * 10, 8)
    assert len(raw) == 8 and raw.endswith(b"\0")
    assert L.decode_string(raw) == "ééé"
    assert L.decode_string(b"\xff\xfeab\0\0") == "\ufffd\ufffdab"
