"""``shm-read``: print, follow or watch the values a shm-publisher writes.

The one-shot path (``--once``) imports nothing heavier than the standard
library and the layout: no psutil, no TUI library, and for the common
``--once [--json] [--name N] FIELD...`` form not even argparse or json (their
imports cost more than the read itself; scripts call this in loops).
"""

from __future__ import annotations

import os
import sys
import time

from shm_metrics import shm_layout as L
from shm_metrics.readers import format as fmt
from shm_metrics.readers.rates import RATE_KEYS, SERIES_FIELDS, recent_rates
from shm_metrics.readers.reader import (
    PUBLISHER_USER_ENV,
    IncompatibleSegment,
    NoSegment,
    Reader,
    ReaderError,
    SegmentBusy,
    SegmentStarting,
    Snapshot,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from shm_metrics.families import Family
    from shm_metrics.readers.selector import Selector

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_SEGMENT = 3
EXIT_INCOMPATIBLE = 4
EXIT_STALE = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  2    usage error (an unknown field or family names the closest ones)
  3    no segment: shm-publisher is not running under that name
  4    incompatible, corrupt or untrusted segment (bad magic, version, size,
       values or permissions; owned by a user other than root, you or
       --publisher-user)
  5    stale, stopped or dead publisher (data still printed, warning on
       stderr), or the publisher stopped in the middle of a write
  130  interrupted (Ctrl-C)
"""

HEADER_KEYS = ("seq", "sample_time", "full_sample_time", "interval", "publisher_pid", "state", "age", "hostname",
               "layout_version")
FAMILIES_KEY = "families"  # node_exporter's families, as --json prints them
ARRAY_KEYS = tuple(rec.name for rec in L.SAMPLE_ARRAYS) + (FAMILIES_KEY,)  # keys that need the arrays read
PROCESS_TABLES = ("top_cpu", "top_rss", "process_states")  # the --top scan's, filled while a reader asks
RATES_KEY = "rates"  # every rate in one object, as --json prints it
# Every key of --json, by name: header, scalars, single rates, the rates object, arrays.
FIELDS = HEADER_KEYS + L.SCALARS.names + RATE_KEYS + (RATES_KEY,) + ARRAY_KEYS
SUBCOMMANDS = ("top",)
FORMATS = ("text", "json", "prometheus")  # --format; json is --json
# Options of shm-read that take a value: what follows them is never the subcommand.
_VALUE_OPTIONS = ("--name", "--publisher-user", "--count", "--history", "--since", "--max-age")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from shm_metrics.readers.cliargs import ENVIRONMENT_HELP, OneLineParser, paragraph, positive_int, positive_seconds

    p = OneLineParser(prog="shm-read", formatter_class=argparse.RawDescriptionHelpFormatter,
                      usage="%(prog)s [options] [FIELD ...]\n       %(prog)s top [options]",
                      description=paragraph(
                          "Print, follow or watch the host metrics a shm-publisher writes to shared memory. On a "
                          "terminal with no options: a live view (q quits). Piped: like --once. `shm-read top` "
                          "shows the top processes (see shm-read top --help); options may come before or after it."),
                      epilog=EXIT_CODES_HELP + ENVIRONMENT_HELP)
    p.add_argument("fields", nargs="*", metavar="FIELD",
                   help="print only these: one prints its bare value, several print 'field value' lines. "
                        "Any key of --json (a scalar, a rate, 'rates', an array, a header key), or a "
                        "Prometheus selector: a node_exporter family and optional label matchers in PromQL's "
                        "syntax (node_load1, 'node_cpu_seconds_total{mode=\"idle\",cpu=~\"0|1\"}'); one "
                        "series prints its bare value, several 'name{labels} value' lines in shm-exporter's "
                        "order, --json {name, labels, value} objects. --list-fields lists both")
    add_common_options(p)
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true",
                   help="JSON: with --once one object, otherwise one line per new sample")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="text (the default), json (--json), or prometheus: the node_* families of the sample "
                        "exactly as shm-exporter serves them (the text exposition; with selectors, only "
                        "their series)")
    p.add_argument("-f", "--follow", action="store_true", help="print each new sample as text")
    p.add_argument("--count", type=positive_int, metavar="N", help="stop following after N samples")
    p.add_argument("--info", action="store_true", help="print segment metadata")
    p.add_argument("--history", metavar="FIELD",
                   help="print FIELD's values from the segment's history ring, oldest first (a chart on a "
                        "terminal, one 'time value' line per sample otherwise, an array with --json); "
                        "FIELD is a scalar or a rate (" + ", ".join(RATE_KEYS[:2]) + ", ...)")
    p.add_argument("--since", type=positive_seconds, metavar="SECONDS",
                   help="with --history: only the last SECONDS before the newest sample")
    p.add_argument("--list-fields", action="store_true",
                   help="print every FIELD name, one per line, then the segment's families (name, type, series "
                        "in the sample, label names, HELP), and exit")
    return p


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options every shm-read command takes, with the same meaning and the same checks."""
    from shm_metrics.readers.cliargs import positive_seconds, segment_name

    p.add_argument("--name", type=segment_name, default=None,
                   help=f"segment name (default {L.DEFAULT_NAME}, env {L.NAME_ENV})")
    p.add_argument("--publisher-user", metavar="USER", default=None,
                   help="trust segments owned by USER (name or uid) besides root and yourself: the user "
                        f"shm-publisher runs as (env {PUBLISHER_USER_ENV})")
    p.add_argument("--max-age", type=positive_seconds, metavar="SECONDS",
                   help="a sample older than this is stale (default 2 x interval + 1 s)")
    p.add_argument("--version", action="version",
                   version=f"shm-read {L.__version__} (layout {L.LAYOUT_VERSION})")


def unknown_field(field: str, valid: tuple[str, ...], listing: str, what: str = "field") -> str:
    """One short line: the closest valid names (difflib), or where the list is."""
    import difflib  # only a typo pays for it

    close = difflib.get_close_matches(field, valid, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else f"{listing} lists the {len(valid)} valid ones"
    return f"unknown {what} {field!r}; {hint}"


def selectors_of(fields: list[str]) -> dict[str, Selector]:
    """The FIELDs that are not keys of --json, parsed as Prometheus selectors (SelectorError if one is not)."""
    if all(f in FIELDS for f in fields):
        return {}
    from shm_metrics.readers.selector import Selector

    return {f: Selector.parse(f) for f in fields if f not in FIELDS}


def _check_fields(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from shm_metrics.readers.selector import SelectorError

    try:
        args.selectors = selectors_of(args.fields)
    except SelectorError as exc:
        parser.error(str(exc))
    if args.format == "json":
        args.json = True
    elif args.format is not None and args.json:
        parser.error(f"--json and --format {args.format} contradict each other")
    args.prometheus = args.format == "prometheus"
    if args.prometheus and len(args.selectors) != len(args.fields):
        other = next(f for f in args.fields if f not in args.selectors)
        parser.error(f"--format prometheus prints families: {other!r} is a field, not a family selector")
    if args.history is not None:
        if args.history not in SERIES_FIELDS:
            parser.error("--history: " + unknown_field(args.history, SERIES_FIELDS, "shm-read --list-fields"))
        if args.fields or args.follow or args.count or args.info or args.once:
            parser.error("--history takes one FIELD and no other mode")
    elif args.since is not None:
        parser.error("--since goes with --history")


def _warn(text: str) -> None:
    print(f"shm-read: {text}", file=sys.stderr, flush=True)


def _value(snap: Snapshot, field: str, rates: dict | None):
    if field in HEADER_KEYS:
        return snap.header()[field]
    if field in RATE_KEYS:
        return None if rates is None else rates[field]
    if field == RATES_KEY:
        return rates
    if field == FAMILIES_KEY:
        return snap.families_dict()
    return snap[field]


def _render(snap: Snapshot, fields: list[str], as_json: bool, rates: dict | None = None,
            selected: dict[str, Family] | None = None) -> str | None:
    """The text for one sample; None when there is nothing to print (selectors that matched nothing).
    ``selected``: the families the selectors among ``fields`` matched in this sample (``_select``)."""
    selected = selected or {}
    if as_json:
        import json

        if fields:
            data = {f: _series_json(selected[f], snap.family_time(selected[f].name)) if f in selected
                    else _value(snap, f, rates) for f in fields}
        else:
            data = snap.to_dict()
            data["rates"] = rates  # null until the ring holds two samples
        return json.dumps(fmt.json_safe(data), separators=(",", ":") if not sys.stdout.isatty() else (", ", ": "))
    if len(fields) == 1 and fields[0] in selected:
        fam = selected[fields[0]]
        if len(fam.series) == 1:
            return _bare_series_value(fam.series[0][1])
        return _series_lines(fam) or None
    if len(fields) == 1:
        return fmt.bare(_value(snap, fields[0], rates))
    if fields:
        lines = (_series_lines(selected[f]) if f in selected else f"{f} {fmt.bare(_value(snap, f, rates))}"
                 for f in fields)
        return "\n".join(line for line in lines if line) or None
    return fmt.table(snap, rates)


def _select(snap: Snapshot, selectors: dict[str, Selector]) -> dict[str, Family]:
    """Each selector's family in ``snap`` with only its matching series (each family decoded alone);
    UnknownFamily for a name the segment's catalog lacks."""
    view = snap.families
    return {text: selector.family(view) for text, selector in selectors.items()}


def _series_lines(fam: Family) -> str:
    """``name{labels} value`` lines, exactly as shm-exporter writes them (its renderer), without the last newline."""
    from shm_metrics.readers.exporter.render import render_series

    return render_series(fam)[:-1]


def _bare_series_value(value: float) -> str:
    """One series' value for a script: a whole number without exponent or '.0' (85136982016), any other
    as shm-exporter writes it (0.52, 1.5e-05, NaN)."""
    if value.is_integer() and abs(value) < 2.0 ** 53:
        return str(int(value))
    from shm_metrics.readers.exporter.render import go_float

    return go_float(value)


def _series_json(fam: Family, sample_time: float) -> list[dict[str, Any]]:
    """``{"name", "labels", "value", "sample_time"}`` per series: the family's own time (a family sampled on
    demand dates from the last full sample), as in the families of ``--json``."""
    from shm_metrics.readers.selector import samples

    return [{"name": s.name, "labels": s.labels, "value": s.value, "sample_time": sample_time}
            for s in samples(fam)]


def _exposition(snap: Snapshot, selected: dict[str, Family]) -> bytes:
    """``--format prometheus``: the node_* text shm-exporter serves for this sample, through its renderer;
    with selectors, only the families they name and the series they match."""
    from shm_metrics.readers.exporter.render import render_families, render_node_text

    if not selected:
        return render_node_text(snap)
    merged: dict[str, Family] = {}
    for fam in selected.values():  # two selectors of one family: the union of their series
        if fam.name in merged:
            series = merged[fam.name].series
            fam = fam._replace(series=series + [s for s in fam.series if s not in series])
        merged[fam.name] = fam
    return render_families(fam for fam in merged.values() if fam.series)


class _Output:
    """Prints one sample's output for the field and selector modes, with the notes a selector needs:
    an unknown family is a usage error (did-you-mean over the fields and the segment's families), a
    known family without matching series prints nothing and says so on stderr, once per selector; a
    family sampled on demand whose values are older than a sample may be (the publisher did not answer
    the request for a full sample) is said so on stderr, and a follower does not print it as new."""

    def __init__(self, args: argparse.Namespace | _OneShot):
        self.args = args
        self.noted: set[str] = set()
        self.old_said = False

    def emit(self, snap: Snapshot, rates: dict | None, follow: bool = False) -> int | None:
        """Print the sample; EXIT_USAGE when a selector names no family of the segment, EXIT_STALE when
        an on-demand family shown is old (printed all the same by a one-shot), else None."""
        selected: dict[str, Family] = {}
        if self.args.selectors:
            from shm_metrics.readers.selector import UnknownFamily

            try:
                selected = _select(snap, self.args.selectors)
            except UnknownFamily as exc:
                valid = FIELDS + tuple(snap.families.names())
                print("shm-read: error: " + unknown_field(exc.args[0], valid, "shm-read --list-fields",
                                                          "field or family"), file=sys.stderr, flush=True)
                return EXIT_USAGE
        for text, fam in selected.items():
            if not fam.series and text not in self.noted:
                self.noted.add(text)
                _warn(f"no series of {fam.name} matches {text}" if text != fam.name
                      else f"{fam.name}: no series in this sample (the publisher declares it; its collector "
                           f"found nothing on this host)")
        old = self._old_families(snap, selected)
        if old:
            if not self.old_said:
                _warn(f"{old} sampled on demand {fmt.seconds(_since(snap.full_sample_time))} ago, older "
                      f"than a sample may be ({fmt.seconds(snap.max_age())}): the publisher did not answer the "
                      f"request for a full sample" + ("; waiting for a new one" if follow else ""))
            self.old_said = True
            if follow:
                return EXIT_STALE  # not printed as new
        else:
            self.old_said = False
        if self.args.prometheus:
            sys.stdout.buffer.write(_exposition(snap, selected))
            sys.stdout.buffer.flush()
        else:
            text = _render(snap, self.args.fields, self.args.json, rates, selected)
            if text is not None:
                print(text + "\n" if follow and not (self.args.json or self.args.fields) else text, flush=True)
        return EXIT_STALE if old else None

    def _old_families(self, snap: Snapshot, selected: dict[str, Family]) -> str:
        """The families shown here that are sampled on demand and older than a sample may be, as text
        ("" when none): JSON says each family's own time instead."""
        if self.args.json or not (selected or self.args.prometheus):
            return ""
        if _since(snap.full_sample_time) <= snap.max_age():
            return ""
        view = snap.families
        names = sorted({fam.name for fam in selected.values()} if selected else view.names())
        old = [name for name in names if view.on_demand(name)]
        return old[0] if len(old) == 1 else f"{len(old)} families" if old else ""


def _attach(name: str | None, publisher_user: str | None = None) -> Reader:
    """Attach, giving a publisher that is creating the segment a moment to finish."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            return Reader(name, publisher_user=publisher_user)
        except SegmentStarting:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _first_sample(reader: Reader, arrays: bool) -> Snapshot:
    """The current snapshot; a publisher still starting gets a short grace period."""
    snap = reader.read(arrays=arrays, check_alive=True)
    deadline = time.monotonic() + min(2 * reader.interval + 1, 5.0)
    while snap.seq == 0 and snap.state == "starting" and time.monotonic() < deadline:
        time.sleep(0.01)
        snap = reader.read(arrays=arrays, check_alive=True)
    return snap


def _needs_arrays(args: argparse.Namespace | _OneShot) -> bool:
    return not args.fields or args.prometheus or bool(args.selectors) or any(f in ARRAY_KEYS for f in args.fields)


def _needs_rates(args: argparse.Namespace | _OneShot) -> bool:
    return not args.prometheus and (not args.fields or any(f in RATE_KEYS or f == RATES_KEY for f in args.fields))


def _since(unix: float) -> float:
    return max(0.0, time.time() - unix)


def _family_max_age(reader: Reader) -> float:
    """How old a family sampled on demand may be when shown: what shm-exporter allows at a scrape."""
    return max(reader.interval, 1.0)


def _shows_on_demand_families(args: argparse.Namespace | _OneShot, snap: Snapshot) -> bool:
    """This output shows a family the publisher samples on demand (see Reader.read_fresh)."""
    if FAMILIES_KEY in args.fields or (args.json and not args.fields) or (args.prometheus and not args.selectors):
        return True
    if not args.selectors:
        return False
    view = snap.families
    return any(view.on_demand(selector.name) for selector in args.selectors.values())


def _shows_process_tables(args: argparse.Namespace | _OneShot, reader: Reader) -> bool:
    """This output shows the --top scan's tables, which the publisher fills only while a reader asks."""
    if args.prometheus or args.selectors or not reader.capacities.get("top_cpu"):
        return False
    return not args.fields or any(f in PROCESS_TABLES for f in args.fields)


def cmd_once(args: argparse.Namespace) -> int:
    with _attach(args.name, args.publisher_user) as reader:
        snap = _first_sample(reader, _needs_arrays(args))
        if _shows_on_demand_families(args, snap):
            # Families the publisher samples on demand are asked for when older than an interval.
            snap = reader.read_fresh(_family_max_age(reader), arrays=True, check_alive=True)
        if _shows_process_tables(args, reader):
            from shm_metrics.readers.top import with_process_tables

            snap = with_process_tables(reader, snap)  # asked for, and waited for (bounded)
        rates = None
        if _needs_rates(args):
            rates = recent_rates(reader, snap)
            if rates is None and args.fields:
                _warn("rates need two samples in the history ring; printed as null")
        failed = _Output(args).emit(snap, rates)
        return failed if failed is not None else _freshness(snap, args.max_age)


def cmd_history(args: argparse.Namespace) -> int:
    from shm_metrics.readers.rates import series

    with _attach(args.name, args.publisher_user) as reader:
        snap = _first_sample(reader, arrays=False)
        points = series(reader.history(since=args.since), args.history)
        if args.json:
            import json

            print(json.dumps(fmt.json_safe([{"sample_time": t, "value": v} for t, v in points])))
        elif sys.stdout.isatty() and points:
            print(fmt.chart(points, args.history, snap.hostname), flush=True)
        else:
            for t, v in points:
                print(f"{fmt.iso_time(t)} {fmt.bare(v)}")
        return _freshness(snap, args.max_age)


def _freshness(snap: Snapshot, max_age: float | None) -> int:
    if snap.is_fresh(max_age):
        return EXIT_OK
    _warn(fmt.describe_not_fresh(snap, max_age))
    return EXIT_STALE


def cmd_info(args: argparse.Namespace) -> int:
    with _attach(args.name, args.publisher_user) as reader:
        snap = reader.read(check_alive=True)
        view = snap.families
        info = {
            "name": reader.name, "path": reader.path, "size_bytes": reader.size,
            "layout_version": L.LAYOUT_VERSION, "table_hash": f"0x{L.TABLE_HASH:016x}",
            "capacities": {k: v for k, v in reader.capacities.items() if k != "scalars"},
            "overflow": snap.overflow(), "state": snap.state, "publisher_alive": snap.alive,
            "publisher_pid": reader.publisher_pid,
            "publisher_start_time": reader.publisher_start_time, "instance_id": f"{reader.instance_id:016x}",
            "generation": snap.generation, "hostname": reader.hostname, "seq": snap.seq, "samples": snap.seq // 2,
            "sample_time": snap.sample_time, "age_seconds": snap.age, "interval_seconds": reader.interval,
            "sample_duration_seconds": snap.sample_duration_seconds, "overruns_total": snap.overruns_total,
            "history": _history_info(reader),
            "families": len(view.names()), "families_with_series": sum(1 for _ in view), "series": len(view),
            "wake": reader.wake,
        }
        if args.json:
            import json

            print(json.dumps(fmt.json_safe(info), indent=2 if sys.stdout.isatty() else None))
        else:
            width = max(map(len, info))
            for key, value in info.items():
                if key == "history":
                    value = (f"{value['capacity']} samples, {fmt.seconds(value['holds_seconds'])} at this "
                             f"interval; now {value['samples']} covering {fmt.seconds(value['covers_seconds'])}")
                elif isinstance(value, dict):
                    value = ", ".join(f"{k}={v}" for k, v in value.items())
                elif isinstance(value, float):
                    value = f"{value:.6f}"
                print(f"{key:<{width}}  {value}")
        return _freshness(snap, args.max_age)


def cmd_list_fields(args: argparse.Namespace) -> int:
    """Every FIELD, then the families of the segment under the name (their catalog, and how many series
    each has in the current sample); without a segment, the fields and a note."""
    try:
        reader = _attach(args.name, args.publisher_user)
    except ReaderError as exc:
        families, note = None, f"families: {exc}"
    else:
        with reader:
            view = reader.read(check_alive=True).families
            counts = {fam.name: len(fam.series) for fam in view}
            families = [(info, counts.get(info.name, 0)) for info in sorted(reader.origin.catalog.get().infos)]
            note = None
    if args.json:
        import json

        data: dict[str, Any] = {"fields": list(FIELDS)}
        if families is not None:
            data["families"] = [{"name": info.name, "type": info.type, "help": info.help, "labels": list(info.labels),
                                 "series": count} for info, count in families]
        print(json.dumps(data, indent=2 if sys.stdout.isatty() else None))
    else:
        print("\n".join(FIELDS))
        if families is not None:
            print(f"# {len(families)} families in {reader.name}, {sum(1 for _, n in families if n)} with series in "
                  f"this sample: name, type, series, label names, HELP")
            width = max((len(info.name) for info, _ in families), default=0)
            for info, count in families:
                print(f"{info.name:<{width}}  {info.type:<7}  {count:>4}  {{{','.join(info.labels)}}}  {info.help}")
    if note:
        _warn(note)
    return EXIT_OK


def _history_info(reader: Reader) -> dict:
    """The ring's capacity as a span of time (what it holds once full) and what it covers now."""
    entries = reader.history()
    span = entries[-1]["sample_time"] - entries[0]["sample_time"] if entries else 0.0
    capacity = reader.capacities["history"]
    return {"capacity": capacity, "holds_seconds": round(capacity * reader.interval, 3),
            "samples": len(entries), "covers_seconds": round(span, 3)}


def cmd_follow(args: argparse.Namespace) -> int:
    reader = Reader(args.name, attach=False, publisher_user=args.publisher_user)
    with_rates = _needs_rates(args)
    output = _Output(args)
    seen = 0
    printed = None
    next_ask = 0.0  # for the --top scan's tables, when they are shown: asked for at most once a second
    try:
        for snap in reader.follow(on_status=_warn, max_age=args.max_age, arrays=_needs_arrays(args)):
            if time.monotonic() >= next_ask and _shows_process_tables(args, reader):
                reader.ask(L.DEMAND_SCAN)  # the publisher scans for the next intervals, as for a top viewer
                next_ask = time.monotonic() + max(reader.interval, 1.0)
            fresh = _family_max_age(reader)
            if (not args.json and _since(snap.full_sample_time) > fresh and _shows_on_demand_families(args, snap)):
                # Text and the exposition carry no time (JSON has each family's): a family the publisher
                # samples on demand is asked for, once per sample, rather than printed old.
                snap = reader.read_fresh(fresh, arrays=True, check_alive=True)
            if (snap.instance_id, snap.seq) == printed:
                continue  # read_fresh gave the sample follow() yields next
            printed = (snap.instance_id, snap.seq)
            failed = output.emit(snap, recent_rates(reader, snap) if with_rates else None, follow=True)
            if failed == EXIT_USAGE:
                return failed
            if failed is not None:
                continue  # an old family: not printed as new
            seen += 1
            if args.count and seen >= args.count:
                return EXIT_OK
    finally:
        reader.close()
    return EXIT_OK


def cmd_live(args: argparse.Namespace) -> int:
    from shm_metrics.readers.live import run_live  # rich is imported only here

    return run_live(args.name, args.max_age, args.publisher_user)


class _OneShot:
    """What argparse would return for the fast path's few options."""

    info = follow = prometheus = False
    once = True
    count = max_age = history = since = publisher_user = None

    def __init__(self, name: str | None, as_json: bool, fields: list[str], selectors: dict[str, Selector]):
        self.name, self.json, self.fields, self.selectors = name, as_json, fields, selectors


def _parse_one_shot(argv: list[str]) -> _OneShot | None:
    """``--once [--json] [--name N] FIELD...`` without argparse; None for anything else
    (including every error, so that argparse reports it the usual way)."""
    name, as_json, once, fields = None, False, False, []
    tokens = iter(argv)
    for token in tokens:
        if token == "--once":
            once = True
        elif token == "--json":
            as_json = True
        elif token == "--name":
            name = next(tokens, None)
            if name is None:
                return None
        elif token.startswith("--name="):
            name = token[len("--name="):]
        elif token.startswith("-") or token in SUBCOMMANDS:
            return None
        else:
            fields.append(token)
    if not once or os.environ.get(PUBLISHER_USER_ENV) is not None:
        return None  # the full parser validates the user name
    if name is None and os.environ.get(L.NAME_ENV):
        name = os.environ[L.NAME_ENV]  # validated below: a bad one goes to the full parser's message
    if name is not None:
        try:
            name = L.validate_name(name)
        except ValueError:
            return None
    try:
        selectors = selectors_of(fields)
    except ValueError:  # SelectorError: the full parser reports it
        return None
    return _OneShot(name, as_json, fields, selectors)


def subcommand(argv: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, the other arguments) when the first positional argument names one, wherever it is
    among the options: ``shm-read --name X top --once`` is ``shm-read top --name X --once``."""
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token == "--":
            return None
        elif token in _VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            return (token, argv[:i] + argv[i + 1:]) if token in SUBCOMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_one_shot(argv)
    if args is None:
        sub = subcommand(argv)
        if sub is not None:
            from shm_metrics.readers.top import main as top_main

            return top_main(sub[1])
        parser = build_parser()
        args = parser.parse_args(argv)
        _check_fields(parser, args)
        from shm_metrics.readers.cliargs import resolve_reader_options

        resolve_reader_options(parser, args)
        if args.list_fields:
            return run_guarded(cmd_list_fields, args)
    if args.history is not None:
        command = cmd_history
    elif args.info:
        command = cmd_info
    elif args.once:
        command = cmd_once
    elif args.json or args.follow or args.count:
        command = cmd_follow
    elif sys.stdout.isatty() and not args.fields and not args.prometheus:
        command = cmd_live
    else:
        command = cmd_once
    return run_guarded(command, args)


# First match wins: SegmentStarting is an IncompatibleSegment, every error a ReaderError.
_EXIT_FOR_ERROR = ((NoSegment, EXIT_NO_SEGMENT), (IncompatibleSegment, EXIT_INCOMPATIBLE),
                   (SegmentBusy, EXIT_STALE), (ReaderError, EXIT_INCOMPATIBLE))


def run_guarded(command: Callable[[Any], int], args: Any) -> int:
    """Run a command, turning every reader error into its one-line message and exit code."""
    try:
        return command(args)
    except ReaderError as exc:
        _warn(str(exc))
        return next(code for kind, code in _EXIT_FOR_ERROR if isinstance(exc, kind))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The consumer went away (e.g. `| head -1`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
