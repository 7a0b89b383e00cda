"""Helpers the hardware collectors share: Go's number parsing and procfs's one-read sysfs attributes.

node_exporter's values come from Go's ``strconv``, which refuses what Python's
``float``/``int`` accept (surrounding blanks, ``_`` digit separators): a value
Go cannot parse is left out there, so it is here.  (Series order is the
exporter's business: it sorts each family's series by label values as the Go
client does.)
"""

from __future__ import annotations

import fnmatch
import os
import re

from shm_metrics.publisher.collectors import ProcFile

# Go's SysReadFile reads attributes with one read(2) of this many bytes.
SYSFS_READ_SIZE = 128


def go_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64), or None where Go returns an error."""
    if not text or text != text.strip() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def go_int(text: str) -> int | None:
    """strconv.ParseInt/ParseUint(text, 10, 64), or None where Go returns an error."""
    if not text or text != text.strip() or "_" in text:
        return None
    try:
        return int(text, 10)
    except ValueError:
        return None


_INVALID_RUN = re.compile("[\udc80-\udcff]+")


def go_text(raw: bytes) -> str:
    """Bytes as text the way Go's strings.ToValidUTF8(s, "\ufffd") shows them: each run of invalid bytes
    becomes one replacement character (Python's "replace" makes one per byte)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _INVALID_RUN.sub("\ufffd", raw.decode("utf-8", "surrogateescape"))


def sys_read_raw(path: str) -> bytes | None:
    """One read(2) of at most SYSFS_READ_SIZE bytes (broken drivers return EAGAIN rather than block), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, SYSFS_READ_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)


def sys_read(path: str) -> str | None:
    """A sysfs attribute as procfs's util.SysReadFile gives it (one read, blanks trimmed), or None on error."""
    raw = sys_read_raw(path)
    return None if raw is None else go_text(raw).strip()


class OpenFiles:
    """Files opened on first use and kept open while they are still read (a set that changes rarely:
    bonds' slaves, power supplies' attributes); ``sweep`` closes the ones the last sample did not read."""

    def __init__(self) -> None:
        self._files: dict[str, ProcFile] = {}
        self._used: set[str] = set()

    def read(self, path: str) -> str:
        """The whole file as text (``go_text``; OSError when it cannot be opened or read)."""
        return go_text(self.read_bytes(path))

    def read_bytes(self, path: str) -> bytes:
        pf = self._files.get(path)
        if pf is None:
            pf = self._files[path] = ProcFile(path)
        self._used.add(path)
        try:
            return pf.read_bytes()
        except OSError:
            self._files.pop(path).close()
            raise

    def sweep(self) -> None:
        for path in [p for p in self._files if p not in self._used]:
            self._files.pop(path).close()
        self._used.clear()

    def close(self) -> None:
        for pf in self._files.values():
            pf.close()
        self._files.clear()


def go_uint0(text: str) -> int | None:
    """strconv.ParseUint(text, 0, 64): decimal, 0x hex, 0o or leading-0 octal, 0b binary; None on error
    (digit separators, which Go accepts after a prefix, are refused: sysfs does not write them)."""
    if not text or text != text.strip() or text[0] in "+-" or "_" in text:
        return None
    digits, base = text.lower(), 10
    if digits[:2] in ("0x", "0o", "0b"):
        digits, base = digits[2:], {"x": 16, "o": 8, "b": 2}[digits[1]]
    elif len(digits) > 1 and digits[0] == "0":
        base = 8
    try:
        value = int(digits, base)
    except ValueError:
        return None
    return value if value < 1 << 64 else None


def entries(root: str, pattern: str = "*") -> list[str]:
    """``glob.glob(f"{root}/{pattern}")`` for a one-level pattern, in the directory's order; [] without
    ``root``.  One listdir: a scrape runs the filesystem collectors whose sysfs directory most hosts lack
    (bcache, Btrfs, XFS), and glob's machinery cost more than the lookup itself (issue 16)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return _matching(root, names, pattern)


def _matching(root: str, names: list[str], pattern: str) -> list[str]:
    if not pattern.startswith("."):
        names = [name for name in names if not name.startswith(".")]  # as glob: no hidden names for "*"
    return [f"{root}/{name}" for name in fnmatch.filter(names, pattern)]


class Root:
    """A sysfs directory listed at every scrape that most hosts lack (/sys/fs/bcache, btrfs, xfs: their
    modules' own).  While it is absent, a listing costs one access(2) and no exception: with cold caches
    (0.05 s apart, ad hoc) a failed listdir cost ~90 us of CPU and the access ~50, the difference the OSError."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._absent = False

    def entries(self, pattern: str = "*") -> list[str]:
        """``entries(self.path, pattern)``."""
        if self._absent and not os.access(self.path, os.F_OK):
            return []
        try:
            names = os.listdir(self.path)
        except OSError:
            self._absent = True
            return []
        self._absent = False
        return _matching(self.path, names, pattern)
