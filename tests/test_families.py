"""The self-describing family sections: what the publisher encodes, a reader decodes, hostile bytes included."""

from __future__ import annotations

import struct

import pytest

from shm_metrics import families as F
from shm_metrics import shm_layout as L

LOAD = F.FamilyInfo("node_load1", F.GAUGE, "1m load average.", ())
NET = F.FamilyInfo("node_network_receive_bytes_total", F.COUNTER, "Network device statistic receive_bytes.",
                   ("device",))
INFO = F.FamilyInfo("node_network_info", F.GAUGE, 'Non-numeric "data", \\ and\nnewline.',
                    ("device", "address", "ifalias"))
VM = F.FamilyInfo("node_vmstat_pgfault", F.UNTYPED, "/proc/vmstat information field pgfault.", ())
CATALOG = (LOAD, NET, INFO, VM)


def roundtrip(series, catalog=CATALOG, **limits):
    rows, strings = F.encode_catalog(catalog)
    decoded = F.Catalog(F.decode_catalog(rows, strings))
    data, blob, kept, dropped = F.SeriesEncoder({f: i for i, f in enumerate(catalog)}).encode(series, **limits)
    assert len(data) == kept * L.SERIES.size and len(blob) % 8 == 0
    return F.FamilyView(decoded, data, blob), dropped


def test_catalog_and_series_round_trip_sorted_by_family_with_shared_label_bytes():
    series = [(NET, ("eth0",), 10), (INFO, ("eth0", "02:fc", ""), 1), (LOAD, (), 0.5), (NET, ("lo",), 2**53 + 1),
              (INFO, ("wlan\u00e9", "", "my \"uplink\""), 1), (VM, (), 7)]
    view, dropped = roundtrip(series)
    assert dropped == 0 and len(view) == 6
    assert [f.name for f in view] == [LOAD.name, NET.name, INFO.name, VM.name]  # catalog order
    assert view[LOAD.name] == F.Family(*LOAD, [((), 0.5)])
    assert view[NET.name].series == [(("eth0",), 10.0), (("lo",), float(2**53 + 1))]
    assert view[INFO.name].series == [(("eth0", "02:fc", ""), 1.0), (("wlan\u00e9", "", 'my "uplink"'), 1.0)]
    assert view[VM.name].type == "untyped" and view[INFO.name].help == INFO.help
    assert view.get("node_nothing") is None and view.to_dict()[NET.name]["series"][1] == {
        "labels": {"device": "lo"}, "value": float(2**53 + 1)}


def test_one_label_with_an_empty_value_is_not_confused_with_no_labels():
    view, _ = roundtrip([(NET, ("",), 1.0), (LOAD, (), 2.0)])
    assert view[NET.name].series == [(("",), 1.0)] and view[LOAD.name].series == [((), 2.0)]


def test_capacity_limits_and_unknown_families_are_counted_not_written():
    stranger = F.FamilyInfo("node_stranger", F.GAUGE, "not in the catalog", ())
    series = [(NET, (f"eth{i}",), i) for i in range(10)] + [(stranger, (), 1)]
    view, dropped = roundtrip(series, max_rows=4)
    assert len(view) == 4 and dropped == 7
    view, dropped = roundtrip(series, max_bytes=16)  # "eth0".."eth3" fit in 16 bytes
    assert [v for (v,), _ in view[NET.name].series] == ["eth0", "eth1", "eth2", "eth3"] and dropped == 7


def test_nul_cannot_split_a_label_value():
    view, _ = roundtrip([(NET, ("et\0h0",), 1.0)])
    assert view[NET.name].series == [(("eth0",), 1.0)]


def test_hostile_catalog_and_series_never_raise_anything_but_layout_error():
    rows, strings = F.encode_catalog(CATALOG)
    bad = bytearray(rows)
    struct.pack_into("<I", bad, 0, len(strings) + 100)  # name offset beyond the blob
    with pytest.raises(L.LayoutError):
        F.decode_catalog(bytes(bad), strings)
    bad = bytearray(rows)
    struct.pack_into("<I", bad, 24, 7)  # type 7
    with pytest.raises(L.LayoutError):
        F.decode_catalog(bytes(bad), strings)
    catalog = F.Catalog(F.decode_catalog(rows, strings))
    # Unsorted rows, a family index beyond the catalog, label bytes beyond the blob: decoding ends, skips them.
    pack = L.SERIES.struct.pack
    series = pack(1, 0, 4, 1.0) + pack(0, 0, 0, 2.0) + pack(1, 0, 4, 3.0) + pack(99, 0, 0, 4.0) + pack(1, 4, 900, 5.0)
    view = F.FamilyView(catalog, series, b"eth0\0\0\0\0")
    families = list(view)
    assert sum(len(f.series) for f in families) == 4 and all(f.name in catalog.index for f in families)


def test_repeated_series_reuse_the_previous_encoding_and_match_a_fresh_one():
    index = {f: i for i, f in enumerate(CATALOG)}
    reused = F.SeriesEncoder(index)

    def sample(values, devices=("eth0", "lo")):
        return [(NET, (d,), v) for d, v in zip(devices, values)] + [(LOAD, (), values[0] / 10)]

    three = ("eth0", "lo", "eth1")
    for series in (sample([1, 2]), sample([3, 4]), sample([5, 6, 7], three), sample([8, 9, 10], three),
                   [(LOAD, (), 1.5)], sample([11, 12]), [(LOAD, (), 2.5)], sample([13, 14]), [(LOAD, (), 3.5)]):
        assert reused.encode(series, max_rows=3) == F.SeriesEncoder(index).encode(series, max_rows=3)
    assert reused.encode([]) == (b"", b"", 0, 0)


def test_label_positions_cached_for_one_blob_are_not_used_for_another():
    rows, strings = F.encode_catalog(CATALOG)
    catalog = F.Catalog(F.decode_catalog(rows, strings))
    index = {f: i for i, f in enumerate(CATALOG)}
    views = []
    for device in ("eth0", "eth1", "eth0"):  # same positions, different bytes, then the first again
        data, blob, _, _ = F.SeriesEncoder(index).encode([(NET, (device,), 1.0)])
        views.append(F.FamilyView(catalog, data, blob))
        assert views[-1][NET.name].series == [((device,), 1.0)]
    assert views[0][NET.name].series == [(("eth0",), 1.0)]  # an older snapshot still decodes its own blob


def test_a_catalog_with_non_ascii_text_decodes_each_string_on_its_own():
    odd = F.FamilyInfo("node_odd_info", F.GAUGE, "Température \u00e9t\u00e9, 温度.", ("capteur",))
    for catalog in ((LOAD, odd, NET), (odd,), (LOAD, NET)):
        assert F.decode_catalog(*F.encode_catalog(catalog)) == catalog


def test_one_family_is_found_by_a_binary_search_equal_to_bisect():
    import bisect
    import random
    from array import array

    rng = random.Random(17)
    for n in (0, 1, 2, 7, 100):
        column = memoryview(array("I", sorted(rng.randrange(12) for _ in range(n))))
        for value in range(14):
            for lo in {0, n // 2, n}:
                assert F._search(column, value, lo) == bisect.bisect_left(column, value, lo), (n, value, lo)


def test_a_replayed_block_spliced_between_fresh_series_decodes_as_one_encoding_of_all():
    """Grid samples replay the families sampled on demand as one tuple, encoded once: the rows must come
    out sorted by family whatever families the block and the fresh series share, change or lose."""
    rows, strings = F.encode_catalog(CATALOG)
    catalog = F.Catalog(F.decode_catalog(rows, strings))
    index = {f: i for i, f in enumerate(CATALOG)}
    spliced = F.SeriesEncoder(index)
    block = ((INFO, ("eth0", "02:fc", ""), 1), (NET, ("lo",), 5), (VM, (), 7))
    other = ((INFO, ("eth1", "", ""), 1),)
    newer = ((INFO, ("eth0", "02:fc", ""), 2), (NET, ("lo",), 6), (VM, (), 9))  # the next full sample's block
    fresh = [[(LOAD, (), 0.5), (NET, ("eth0",), 10)], [(LOAD, (), 0.7), (NET, ("eth0",), 11)],
             [(NET, ("eth0",), 12)], [], [(LOAD, (), 0.9), (VM, (), 8), (NET, ("eth9",), 1)]]
    for replayed in (block, block, other, block, newer, other, newer):
        for series in fresh:
            data, blob, kept, dropped = spliced.encode(series, replayed=replayed)
            alone = F.SeriesEncoder(index).encode([*replayed, *series])
            assert (kept, dropped) == alone[2:] and len(data) == kept * L.SERIES.size
            metrics = [row[0] for row in L.SERIES.struct.iter_unpack(data)]
            assert metrics == sorted(metrics)
            assert list(F.FamilyView(catalog, data, blob)) == list(F.FamilyView(catalog, *alone[:2]))
    # Too little room for the block: everything encoded as one, and what is left out counted.
    data, blob, kept, dropped = spliced.encode(fresh[0], max_rows=3, replayed=block)
    assert (kept, dropped) == (3, 2) == F.SeriesEncoder(index).encode([*block, *fresh[0]], max_rows=3)[2:]


def test_render_view_reuses_only_the_text_of_families_whose_rows_catalog_and_labels_are_the_same():
    """The exporter renders a view family by family and keeps each family's text keyed by its raw rows:
    every render must still equal a render of the decoded families from scratch."""
    from shm_metrics.readers.exporter.render import FamilyRenderer

    rows, strings = F.encode_catalog(CATALOG)
    catalog = F.Catalog(F.decode_catalog(rows, strings))
    other_catalog = F.Catalog(F.decode_catalog(*F.encode_catalog((LOAD, NET, VM, INFO))))  # VM, INFO swapped
    index = {f: i for i, f in enumerate(CATALOG)}
    renderer = FamilyRenderer()
    samples = [
        [(LOAD, (), 0.5), (NET, ("eth0",), 10), (VM, (), 7)],
        [(LOAD, (), 0.5), (NET, ("eth0",), 11), (VM, (), 7)],  # one value changed
        [(LOAD, (), 0.5), (NET, ("eth0",), 11), (VM, (), 8)],  # one of a family left out changed
        [(LOAD, (), float("nan")), (NET, ("eth0",), 11), (VM, (), 8)],  # NaN is never equal to itself
        [(LOAD, (), float("nan")), (NET, ("eth0",), 12), (VM, (), 8)],
        [(LOAD, (), 0.5), (NET, ("eth1",), 11), (VM, (), 7)],  # same rows bytes, other label text
        [(LOAD, (), 0.5), (NET, ("eth1",), 11), (VM, (), 7), (INFO, ("eth1", "", ""), 1)],
    ]
    for cat in (catalog, catalog, other_catalog):
        for series in samples:
            data, blob, _, _ = F.SeriesEncoder(index).encode(series)
            view = F.FamilyView(cat, data, blob)
            texts, names = renderer.render_view(view, lambda name: name != VM.name)
            expected = FamilyRenderer().render(f for f in view if f.name != VM.name).decode()
            assert "".join(text for _, text in texts) == expected
            assert names == {f.name for f in view}



def test_render_view_writes_changed_values_in_their_places_among_many_series():
    """Only values move between two views with the same rows: each changed line is written again in its place in
    Go's order (label values sorted in label-name order: INFO's labels are not), NaN and infinities included, and
    a corrupt row (labels past the blob) stays out: every render equals a render from scratch."""
    import random

    from shm_metrics.readers.exporter.render import FamilyRenderer

    rows, strings = F.encode_catalog(CATALOG)
    catalog = F.Catalog(F.decode_catalog(rows, strings))
    index = {f: i for i, f in enumerate(CATALOG)}
    devices = ["wlan0", "eth10", "eth2", "lo", "bond0", "eth1"]  # not in Go's order
    rng = random.Random(7)
    specials = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e21, 2**53 + 1, 1.5e-7]
    renderer = FamilyRenderer()
    corrupt_done = False
    for round_ in range(40):
        def value(spot: int) -> float:
            return rng.choice(specials) if rng.random() < 0.2 else float(rng.randrange(3) + spot)

        series = [(LOAD, (), value(0)), *((NET, (d,), value(i)) for i, d in enumerate(devices)),
                  *((INFO, (d, f"02:{i}", "x"), value(i)) for i, d in enumerate(devices)), (VM, (), value(9))]
        data, blob, _, _ = F.SeriesEncoder(index).encode(series)
        if round_ >= 20:  # the same rows, one of them corrupt: its labels point past the blob
            if not corrupt_done:
                renderer = FamilyRenderer()
                corrupt_done = True
            words = bytearray(data)
            struct.pack_into("<I", words, 2 * F.ROW_SIZE + 4, len(blob) + 100)
            data = bytes(words)
        view = F.FamilyView(catalog, data, blob)
        texts, _ = renderer.render_view(view, lambda name: True)
        expected = FamilyRenderer().render(iter(view)).decode()
        assert "".join(text for _, text in texts) == expected, round_
    assert expected.count("node_network_receive_bytes_total{") == len(devices) - 1  # the corrupt row left out


def test_blocks_of_values_keep_their_place_among_the_rows_and_match_an_encoding_of_rows():
    """A learned file's series come as a block of doubles for a FixedSeries (families and labels): encoded, a
    family's series keep the order they were added in (blocks or rows), in the fresh encoding and in the fast
    path that only drops new values into place (in C with the publisher's extension, in Python without)."""
    from array import array

    from shm_metrics.publisher.collectors import numbers

    index = {f: i for i, f in enumerate(CATALOG)}
    first = numbers.FixedSeries([NET, LOAD, NET], [("b",), (), ("d",)])
    second = numbers.FixedSeries([NET, VM], [("f",), ()])

    def sample(k: float):
        rows = [(NET, ("a",), k), (NET, ("c",), k + 1), (NET, ("e",), k + 2)]
        fixed = [(first, array("d", [k + 10, k + 11, k + 12]).tobytes()),
                 (second, array("d", [k + 20, k + 21]).tobytes())]
        at = [1, 2]  # the first block before row 1 (c), the second before row 2 (e)
        as_rows = [rows[0], *first.rows(fixed[0][1]), rows[1], *second.rows(fixed[1][1]), rows[2]]
        return rows, fixed, at, as_rows

    for take in (numbers.take, None):  # (the same twice without the extension)
        encoder = F.SeriesEncoder(index, take)
        for k in (1.0, 2.0, 3.0, 3.0, 2**53 + 2.0):
            rows, fixed, at, as_rows = sample(k)
            got = encoder.encode(rows, fixed=fixed, fixed_at=at)
            assert got == F.SeriesEncoder(index).encode(as_rows)
            view = roundtrip(as_rows)[0]
            assert [labels for labels, _ in view[NET.name].series] == [("a",), ("b",), ("d",), ("c",), ("f",), ("e",)]
            assert view[VM.name].series == [((), k + 21)]
