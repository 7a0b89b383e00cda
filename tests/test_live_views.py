"""The live views (``shm-read``, ``shm-read top``) at 80x24 and 200x50.

The render functions are fed snapshots of made-up small and big hosts (2 and
128 CPUs, many interfaces, disks, filesystems) published into a real segment
and read back (tests/synthetic.py); the whole programs run on a
real pty against a real publisher, and a terminal emulator (pyte) reads the
screen back: what a user would see, after resizes and keys.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import termios
import time

import pyte
import pytest
from conftest import READER, PtyProcess
from synthetic import snapshots

from shm_metrics.readers import live, top

SIZES = [(80, 24), (200, 50)]
HOSTS = {"small": dict(cpus=2, nets=1, disks=1, filesystems=2),
         "big": dict(cpus=128, nets=40, disks=30, filesystems=25)}


def frame(name: str, width: int, height: int, **host) -> list[str]:
    before, now = snapshots(name, **host)
    lines = live.render(now, before, None, width, height)
    assert len(lines) <= height
    assert all(line.cell_len <= width for line in lines), [line.plain for line in lines if line.cell_len > width]
    return [line.plain for line in lines]


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("host", HOSTS)
def test_every_panel_fits_the_screen(name, width, height, host):
    screen = "\n".join(frame(name, width, height, **HOSTS[host]))
    for heading in ("q quit", "cpu[", "mem[", "swp[", "load 1.25", "NETWORK", "DISK", "FILESYSTEM"):
        assert heading in screen, (heading, screen)
    # df's figure: used 22 GiB, avail 78 GiB -> 22 %, and the heading says how it is computed
    assert re.search(r"^/ .* 22%$", screen, re.M) and "used/(used+avail)" in screen


def test_two_cpus_are_two_wide_meters_on_one_row(name):
    lines = frame(name, 80, 24, **HOSTS["small"])
    row = next(line for line in lines if line.startswith("0["))
    assert re.fullmatch(r"0\[ *0\.0%\] 1\[\|+ *37\.0%\]", row), row
    assert len(row) == 80


def test_128_cpus_on_a_big_terminal_are_meters_with_every_cpu(name):
    text = "\n".join(frame(name, 200, 50, **HOSTS["big"]))
    labels = {int(m) for m in re.findall(r"(\d+)\[", text)}
    assert labels == set(range(128))
    assert "100.0%]" in text and "30[" in text  # CPU 30 of the synthetic host is 100 % busy


def test_128_cpus_on_80x24_are_level_cells_naming_the_busiest(name):
    lines = frame(name, 80, 24, **HOSTS["big"])
    cells = [line for line in lines if re.fullmatch(r" *\d+ [▁▂▃▄▅▆▇█]+", line)]
    assert sum(len(line.split()[1]) for line in cells) == 128  # one cell per CPU
    legend = next(line for line in lines if "busiest:" in line)
    assert "cpu30 100%" in legend


def test_panels_too_long_for_the_screen_show_their_busiest_rows_and_a_summary(name):
    lines = frame(name, 80, 24, **HOSTS["big"])
    text = "\n".join(lines)
    assert re.search(r"^\+\d+ more interfaces: rx .*/s, tx .*/s$", text, re.M)
    assert re.search(r"^\+\d+ more disks: read", text, re.M)
    assert re.search(r"^\+\d+ more filesystems, the fullest", text, re.M)
    shown = [int(m) for m in re.findall(r"^eth(\d+) ", text, re.M)]
    assert shown and min(shown) > 30  # the synthetic eth39 is the busiest: the top ones are shown


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("sort", ["P", "M"])
def test_top_shows_the_chosen_table_whole_and_fits(name, width, height, sort):
    lines = top.render(snapshots(name)[1], sort, width, height)
    assert len(lines) <= height and all(line.cell_len <= width for line in lines)
    text = [line.plain for line in lines]
    headings = [i for i, line in enumerate(text) if line.lstrip().startswith("PID USER")]
    assert len(headings) == 2
    first = text[headings[0]]
    assert ("▼CPU%" if sort == "P" else "▼RSS") in first
    assert first.split() [:7] == ["PID", "USER", "S", "▼CPU%" if sort == "P" else "CPU%", "RSS" if sort == "P"
                                   else "▼RSS", "THR", "COMMAND"]
    rows = text[headings[0] + 1:headings[1]]
    assert len(rows) == 10  # the whole table chosen by the key
    assert all(row.split()[-1].startswith("busy" if sort == "P" else "big") for row in rows)
    assert "P cpu  M mem  q quit" in text[0]


# ------------------------------------------------------------------ on a real terminal

class Terminal:
    """A PtyProcess whose output feeds a pyte screen of the pty's size."""

    def __init__(self, argv: list[str], columns: int, rows: int):
        self.pty = PtyProcess(argv, columns=columns, rows=rows)
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_screen(self, predicate, what: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.text()):
                return self.text()
            ready, _, _ = select.select([self.pty.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.pty.master, 65536)
                except OSError:
                    break
                self.stream.feed(chunk)
        raise AssertionError(f"screen never showed {what}:\n{self.text()}")

    def resize(self, columns: int, rows: int) -> None:
        fcntl.ioctl(self.pty.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.screen.resize(rows, columns)
        # The view is not the pty's session leader, so the kernel signals nobody: do what it would.
        os.kill(self.pty.proc.pid, signal.SIGWINCH)

    def press(self, keys: bytes) -> None:
        os.write(self.pty.master, keys)

    def local_flags(self) -> int:
        return termios.tcgetattr(self.pty.master)[3]


@pytest.fixture
def terminals():
    started: list[Terminal] = []

    def start(argv: list[str], columns: int = 80, rows: int = 24) -> Terminal:
        term = Terminal(argv, columns, rows)
        started.append(term)
        return term

    yield start
    for term in started:
        if term.pty.proc.poll() is None:
            term.pty.stop(signal.SIGKILL)
        else:
            try:
                os.close(term.pty.master)
            except OSError:
                pass


def test_live_view_fits_80x24_redraws_on_resize_and_quits_on_q(name, start_publisher, terminals):
    start_publisher(name, "--interval", "0.2")
    term = terminals([*READER, "--name", name], 80, 24)
    before = term.local_flags()
    screen = term.wait_screen(lambda s: "FILESYSTEM" in s and re.search(r"^/ ", s, re.M), "a full frame")
    lines = screen.splitlines()
    assert lines[0].endswith("q quit") and "cpu[" in lines[1] and "mem[" in lines[1]
    for heading in ("NETWORK", "DISK", "FILESYSTEM"):
        assert any(line.startswith(heading) for line in lines), screen
    assert re.search(r"^0\[.*%\]", screen, re.M), screen  # CPU 0's meter
    # cbreak while the view runs: no line editing, no echo
    assert not term.local_flags() & (termios.ICANON | termios.ECHO)

    term.resize(200, 50)
    wide = term.wait_screen(lambda s: s.splitlines()[0].endswith("q quit") and len(s.splitlines()) == 50,
                            "a 200-column frame")
    assert wide.splitlines()[0].rstrip().endswith("q quit") and len(wide.splitlines()[0]) == 200

    term.press(b"q")
    assert term.pty.proc.wait(10) == 0
    assert term.local_flags() == before  # the terminal as it was: canonical mode, echo


def test_top_switches_sort_on_m_and_p_and_quits_on_q(name, start_publisher, terminals):
    start_publisher(name, "--interval", "0.2")
    term = terminals([*READER, "top", "--name", name], 80, 24)

    def first_heading(screen: str) -> str:
        return next((line for line in screen.splitlines() if line.lstrip().startswith("PID USER")), "")

    screen = term.wait_screen(lambda s: "▼CPU%" in first_heading(s), "the table by CPU first")
    assert len(screen.splitlines()) == 24 and "q quit" in screen.splitlines()[0]
    term.press(b"M")
    term.wait_screen(lambda s: "▼RSS" in first_heading(s), "the table by memory first")
    term.press(b"P")
    term.wait_screen(lambda s: "▼CPU%" in first_heading(s), "the table by CPU first again")
    term.press(b"q")
    assert term.pty.proc.wait(10) == 0


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_and_sigterm_restore_the_terminal_too(name, start_publisher, terminals, sig, code):
    start_publisher(name, "--interval", "0.2")
    term = terminals([*READER, "--name", name], 80, 24)
    before = term.local_flags()
    term.wait_screen(lambda s: "FILESYSTEM" in s, "a frame")
    assert term.local_flags() != before
    term.pty.proc.send_signal(sig)
    assert term.pty.proc.wait(10) == code
    assert term.local_flags() == before


@pytest.mark.parametrize("width,height", [(20, 5), (40, 10), (60, 15), (119, 30), (120, 30), (300, 100)])
@pytest.mark.parametrize("host", HOSTS)
def test_any_terminal_size_gets_a_screen_that_fits(name, width, height, host):
    lines = frame(name, width, height, **HOSTS[host])
    assert lines[0].endswith("q quit") or width < 30
    assert len(lines) == height or "FILESYSTEM" in "\n".join(lines)  # fills the screen, or shows everything
    top_lines = top.render(snapshots(name)[1], "M", width, height)
    assert len(top_lines) <= height and all(line.cell_len <= width for line in top_lines)


def test_the_view_says_when_the_publisher_goes_and_comes_back(name, start_publisher, terminals):
    term = terminals([*READER, "--name", name], 80, 24)
    term.wait_screen(lambda s: s.startswith(f"shm-read: waiting for shm-publisher to create {name}"),
                     "the wait for a publisher")
    first = start_publisher(name, "--interval", "0.2")
    term.wait_screen(lambda s: "FILESYSTEM" in s and not s.startswith("shm-read:"), "a frame")
    assert first.stop() == 0
    gone = term.wait_screen(lambda s: s.startswith("shm-read:"), "the publisher's absence on the first line")
    assert "FILESYSTEM" in gone  # the last frame stays under the message
    start_publisher(name, "--interval", "0.2")
    term.wait_screen(lambda s: not s.startswith("shm-read:") and "FILESYSTEM" in s, "frames again")
    term.press(b"q")
    assert term.pty.proc.wait(10) == 0
