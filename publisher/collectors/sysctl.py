"""/proc/sys: node_exporter's ``sysctl`` collector (off by default), for the sysctls asked for.

Options (node_exporter's flags, each may be given several times):

* ``sysctl.include``: ``name`` or ``name:key1,key2,...``.  A numeric sysctl
  with one value gives node_sysctl_<name>; with several, one series per
  position (label ``index``), or, with keys, one family per key
  node_sysctl_<name>_<key>.
* ``sysctl.include-info``: ``name``; its words as node_sysctl_info{name,
  value, index} = 1.

Whether a sysctl has one value or several decides its family's labels, so
each one is read when the collector starts (a missing one makes the
collector unavailable, as node_exporter fails then).
"""

from __future__ import annotations

import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, gauge, register, untyped
from shm_metrics.publisher.collectors.zoneinfo import parse_go_int

INFO = gauge("node_sysctl_info", "sysctl info", "name", "value", "index")
_NOT_IN_NAME = re.compile(r"_*[^0-9A-Za-z_]+_*")


def _metric_name(sysctl: str) -> str:
    return _NOT_IN_NAME.sub("_", sysctl)


def _strings(pf: ProcFile) -> list[str]:
    return pf.read().split()


def _ints(name: str, pf: ProcFile) -> list[int]:
    values = []
    for i, word in enumerate(_strings(pf)):
        try:
            values.append(parse_go_int(word))
        except ValueError:
            raise ValueError(f"field {i} in sysctl {name} is not a valid int: {word!r}") from None
    return values


def _as_list(option: object) -> list[str]:
    if option is None:
        return []
    return [option] if isinstance(option, str) else [str(o) for o in option]


class _Numeric:
    """One ``sysctl.include`` entry: its file and the families its values go to."""

    def __init__(self, include: str, procfs: str, opener):
        self.name, _, keys = include.partition(":")
        self.keys = keys.split(",") if keys else []
        self.file: ProcFile = opener(f"{procfs}/sys/{self.name.replace('.', '/')}")
        count = len(_ints(self.name, self.file))
        if count == 0:
            raise ValueError(f"sysctl {self.name} has no values")
        metric = f"node_sysctl_{_metric_name(self.name)}"
        if self.keys:
            if count != len(self.keys):
                raise ValueError(f"sysctl {self.name} has {count} values but {len(self.keys)} keys")
            self.families = tuple(untyped(f"{metric}_{key}", f"sysctl {self.name}, field {i}")
                                  for i, key in enumerate(self.keys))
        elif count == 1:
            self.families = (untyped(metric, f"sysctl {self.name}"),)
        else:
            self.families = (untyped(metric, f"sysctl {self.name}", "index"),)

    def collect(self, out: Sample) -> None:
        values = _ints(self.name, self.file)
        if self.keys:
            if len(values) != len(self.keys):
                raise ValueError(f"sysctl {self.name} has {len(values)} values but {len(self.keys)} keys")
            for family, value in zip(self.families, values):
                out.add(family, (), value)
        elif self.families[0].labels:
            for i, value in enumerate(values):
                out.add(self.families[0], (str(i),), value)
        elif len(values) == 1:
            out.add(self.families[0], (), values[0])
        else:
            raise ValueError(f"sysctl {self.name} had one value and now has {len(values)}")


@register
class Sysctl(Collector):
    name = "sysctl"
    reports = ("sysctl",)
    default_enabled = False
    families = (INFO,)  # with the families of the sysctls asked for, declared at start
    described = (("node_sysctl_<name>[_<key>]", "untyped", "[index]",
                  "each --collector.sysctl.include (dots and dashes become _); HELP \"sysctl <name>\""),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._numeric: list[_Numeric] = []
        for include in dict.fromkeys(_as_list(ctx.option("sysctl.include", []))):
            self._numeric.append(_Numeric(include, ctx.procfs, self.open))
        self._info: list[tuple[str, ProcFile]] = [
            (name, self.open(f"{ctx.procfs}/sys/{name.replace('.', '/')}"))
            for name in dict.fromkeys(_as_list(ctx.option("sysctl.include-info", [])))]
        families: list[FamilyInfo] = [fam for n in self._numeric for fam in n.families]
        if self._info:
            families.append(INFO)
        self.families = tuple(dict.fromkeys(families))

    def collect(self, out: Sample) -> None:
        for numeric in self._numeric:
            numeric.collect(out)
        for name, pf in self._info:
            words = _strings(pf)
            if not words:
                raise ValueError(f"sysctl {name} has no values")
            for i, word in enumerate(words):
                out.add(INFO, (name, word, str(i)), 1)
