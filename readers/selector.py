"""PromQL instant-vector selectors over a snapshot's families: ``name{label="v", l2!="x", l3=~"re", l4!~"re"}``.

The syntax and meaning are PromQL's: a metric name, then optional label matchers in braces, separated
by commas (a trailing one allowed); values in double quotes, single quotes (both with Go's escapes) or
backquotes (raw). ``=`` and ``!=`` compare, ``=~`` and ``!~`` match a regular expression anchored at both
ends (``^(?s:re)$``, as Prometheus compiles them: ``.`` matches a newline too; ``\\d``, ``\\w``, ``\\s`` are
ASCII, as in Go's RE2). A label a series lacks has the empty value, so ``device!="lo"`` keeps series
without a ``device`` and ``mountpoint=""`` selects the ones without a mount point. The name may also be
given as ``{__name__="node_load1"}``; a selector names exactly one family (no regex on ``__name__``).

Regular expressions use Python's ``re``, which accepts everything RE2 does that a label matcher needs
(not RE2's ``\\C``, its Unicode classes ``\\pN``, nor a flag group such as ``(?i)`` anywhere but at the start:
``(?i:...)`` works everywhere); ``re`` is imported only when a selector has one.

    >>> sel = Selector.parse('node_cpu_seconds_total{mode=~"user|system"}')
    >>> with Reader("/sysmetrics") as reader:
    ...     for sample in reader.read().select(sel):   # or .select('node_load1')
    ...         print(sample.labels, sample.value)
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from shm_metrics.families import Family, FamilyView

Sample = namedtuple("Sample", "name labels value")
Sample.__doc__ = ("One series of a family: its name, its labels (a dict, by label name, as the exposition "
                  "writes them; labels a series lacks are left out) and its value.")

EQUAL, NOT_EQUAL, REGEX, NOT_REGEX = "=", "!=", "=~", "!~"
NAME_LABEL = "__name__"
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_NAME_REST = _NAME_START | frozenset("0123456789")
_LABEL_START = _NAME_START - {":"}
_LABEL_REST = _NAME_REST - {":"}
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
            '"': '"', "'": "'"}


class SelectorError(ValueError):
    """The text is not a selector (the message says where and why)."""


class UnknownFamily(KeyError):
    """The segment's catalog has no family of that name."""

    def __str__(self) -> str:
        return f"no family {self.args[0]!r} in the segment's catalog"


class Matcher:
    """One label matcher (``label``, ``op``, ``value``); ``matches(value)`` tells whether a label value passes it."""

    __slots__ = ("label", "op", "value")

    def __init__(self, label: str, op: str, value: str):
        self.label, self.op, self.value = label, op, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Matcher) and (self.label, self.op, self.value) == (other.label, other.op, other.value)

    def __hash__(self) -> int:
        return hash((self.label, self.op, self.value))

    def __repr__(self) -> str:
        return f"Matcher({self.label!r}, {self.op!r}, {self.value!r})"

    def matches(self, value: str) -> bool:
        if self.op == EQUAL:
            return value == self.value
        if self.op == NOT_EQUAL:
            return value != self.value
        hit = _compiled(self.value).fullmatch(value) is not None
        return hit if self.op == REGEX else not hit

    def __str__(self) -> str:
        return f"{self.label}{self.op}{_quote(self.value)}"


class Selector:
    """A parsed selector: the family ``name`` and the label ``matchers`` its series must all pass."""

    __slots__ = ("name", "matchers")

    def __init__(self, name: str, matchers: tuple[Matcher, ...] = ()):
        self.name = name
        self.matchers = matchers

    @classmethod
    def parse(cls, text: str) -> Selector:
        """``name``, ``name{matchers}`` or ``{__name__="name", matchers}``; SelectorError if it is none."""
        return _Parser(text).selector()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every matcher passes; a label missing from ``labels`` is the empty string."""
        for m in self.matchers:
            if not m.matches(self.name if m.label == NAME_LABEL else labels.get(m.label, "")):
                return False
        return True

    def family(self, view: FamilyView) -> Family:
        """This selector's family in ``view`` (one snapshot's families), with only the matching series,
        in the exporter's order; decodes that family alone.  UnknownFamily if the catalog lacks it."""
        from shm_metrics.families import ABSENT_LABEL
        from shm_metrics.readers.exporter.render import sorted_series

        if self.name not in view:
            raise UnknownFamily(self.name)
        fam = view[self.name]
        series = sorted_series(fam)
        if self.matchers:
            names = fam.labels
            series = [s for s in series
                      if self.matches({n: v for n, v in zip(names, s[0]) if v != ABSENT_LABEL})]
        return fam._replace(series=series)

    def select(self, view: FamilyView) -> list[Sample]:
        """The matching series of ``view`` as Samples, in the exporter's order (see ``family``)."""
        return samples(self.family(view))

    def __str__(self) -> str:
        if not self.matchers:
            return self.name
        return f"{self.name}{{{','.join(map(str, self.matchers))}}}"

    def __repr__(self) -> str:
        return f"Selector.parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and (self.name, self.matchers) == (other.name, other.matchers)

    def __hash__(self) -> int:
        return hash((self.name, self.matchers))


def samples(fam: Family) -> list[Sample]:
    """A family's series as Samples, labels by name in the exposition's order (absent ones left out)."""
    from shm_metrics.families import ABSENT_LABEL

    order = sorted(fam.labels)
    position = {n: i for i, n in enumerate(fam.labels)}
    return [Sample(fam.name, {n: values[position[n]] for n in order if values[position[n]] != ABSENT_LABEL}, value)
            for values, value in fam.series]


def is_name(text: str) -> bool:
    """A valid metric name (``[a-zA-Z_:][a-zA-Z0-9_:]*``)."""
    return bool(text) and text[0] in _NAME_START and all(c in _NAME_REST for c in text)


_REGEXES: dict = {}


def _compiled(pattern: str):
    rx = _REGEXES.get(pattern)
    if rx is None:
        import re

        # fullmatch: anchored at both ends, as Prometheus's ^(?s:re)$; flags as RE2's: . matches \n, \d is ASCII
        rx = _REGEXES[pattern] = re.compile(pattern, re.ASCII | re.DOTALL)
    return rx


def _quote(value: str) -> str:
    return '"' + value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"') + '"'


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> SelectorError:
        return SelectorError(f"bad selector {self.text!r}: {why} at position {self.pos + 1}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\n\r":
            self.pos += 1

    def word(self, start: frozenset, rest: frozenset) -> str:
        text, begin = self.text, self.pos
        if begin < len(text) and text[begin] in start:
            self.pos += 1
            while self.pos < len(text) and text[self.pos] in rest:
                self.pos += 1
        return text[begin:self.pos]

    def selector(self) -> Selector:
        self.skip_space()
        name = self.word(_NAME_START, _NAME_REST)
        self.skip_space()
        matchers: list[Matcher] = []
        if self.pos < len(self.text) and self.text[self.pos] == "{":
            self.pos += 1
            matchers = self.matchers()
        elif self.pos < len(self.text):
            raise self.fail("expected a metric name, then '{'" if name else "expected a metric name or '{'")
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the selector")
        named = [m for m in matchers if m.label == NAME_LABEL]
        if not name:
            if len(named) != 1 or named[0].op != EQUAL or not is_name(named[0].value):
                raise SelectorError(f"bad selector {self.text!r}: name one family, before the braces or as "
                                    f'{{__name__="..."}} (shm-read selects from one family at a time)')
            name = named[0].value
            matchers.remove(named[0])
        elif named and any(m.op == EQUAL for m in named):
            raise SelectorError(f"bad selector {self.text!r}: metric name must not be set twice")
        return Selector(name, tuple(matchers))

    def matchers(self) -> list[Matcher]:
        out = []
        while True:
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == "}":
                self.pos += 1
                return out
            label = self.word(_LABEL_START, _LABEL_REST)
            if not label:
                raise self.fail("expected a label name or '}'")
            self.skip_space()
            op = next((o for o in (REGEX, NOT_REGEX, NOT_EQUAL, EQUAL) if self.text.startswith(o, self.pos)), None)
            if op is None:
                raise self.fail(f"expected one of = != =~ !~ after {label!r}")
            self.pos += len(op)
            self.skip_space()
            value = self.string()
            if op in (REGEX, NOT_REGEX):
                import re

                try:
                    _compiled(value)
                except re.error as exc:
                    raise SelectorError(f"bad selector {self.text!r}: regular expression {value!r}: {exc}") from None
            out.append(Matcher(label, op, value))
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == ",":
                self.pos += 1
            elif not (self.pos < len(self.text) and self.text[self.pos] == "}"):
                raise self.fail("expected ',' or '}'")

    def string(self) -> str:
        text = self.text
        if self.pos >= len(text) or text[self.pos] not in "\"'`":
            raise self.fail("expected a quoted string")
        quote = text[self.pos]
        self.pos += 1
        out = []
        while True:
            if self.pos >= len(text):
                raise self.fail("unterminated string")
            c = text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\" and quote != "`":
                out.append(self.escape(quote))
            elif c == "\n" and quote != "`":
                raise self.fail("newline in string")
            else:
                out.append(c)

    def escape(self, quote: str) -> str:
        """Go's escapes, as PromQL's lexer takes them (``\\n``, ``\\x41``, ``\\101``, ``\\u00e9``...)."""
        text = self.text
        if self.pos >= len(text):
            raise self.fail("unterminated string")
        c = text[self.pos]
        self.pos += 1
        if c in _ESCAPES and (c not in "\"'" or c == quote):
            return _ESCAPES[c]
        digits = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}.get(c)
        if digits is None and c in "01234567":
            digits, self.pos = (3, 8), self.pos - 1
        if digits is None:
            raise self.fail(f"unknown escape sequence \\{c}")
        count, base = digits
        chunk = text[self.pos:self.pos + count]
        try:
            code = int(chunk, base) if len(chunk) == count and chunk.isalnum() else -1
        except ValueError:
            code = -1
        if not 0 <= code <= 0x10FFFF or (base == 8 and code > 255):
            raise self.fail(f"bad escape sequence \\{c}{chunk}")
        self.pos += count
        return chr(code)
