"""The full-screen loop shared by the live views (``shm-read`` and ``shm-read top``).

A view is a function that turns the latest data into exactly the lines of the
terminal's current size (rich ``Text``, one per row).  This module owns the
terminal: the alternate screen, cbreak input (keys arrive one by one, without
echo; Ctrl-C still interrupts), a hidden cursor, and a redraw on every new
sample, key and resize.  Whatever ends the view (``q``, Ctrl-C, an error), the
terminal is restored as it was.

Samples come from a thread that follows the segment (it sleeps in the kernel
until the publisher wakes it); the main thread sleeps in ``select`` on the
keyboard and a pipe the follower and SIGWINCH write to, so a key or a resize
is answered at once, not at the next sample.  SIGTERM and SIGHUP end the view
like ``q`` does, but with exit code 128 + the signal's number.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.text import Text

QUIT_KEYS = frozenset("qQ")
_ALT_SCREEN_ON, _ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
_CURSOR_OFF, _CURSOR_ON = "\x1b[?25l", "\x1b[?25h"
_HOME = "\x1b[H"


def terminal_size() -> tuple[int, int]:
    """(columns, rows) of the terminal on stdout, asked of the kernel each time (so resizes count);
    COLUMNS and LINES are not consulted: a shell's exported values go stale when the window changes."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return max(size.columns, 20), max(size.lines, 5)
    except OSError:
        return 80, 24


def fit(line: Text, width: int) -> Text:
    """``line`` cut or padded with spaces to exactly ``width`` cells."""
    line = line.copy()
    line.truncate(width, overflow="ellipsis", pad=True)
    return line


def to_ansi(lines: list[Text], width: int, height: int, console: Console) -> str:
    """One whole frame: every row written edge to edge, so nothing of the previous frame survives
    and no erase sequence is needed (an erase after a full row would eat its last cell)."""
    rows = [fit(line, width) for line in lines[:height]]
    rows += [Text(" " * width)] * (height - len(rows))
    with console.capture() as capture:
        for i, row in enumerate(rows):
            console.print(row, end="" if i == height - 1 else "\n", no_wrap=True, overflow="crop", crop=False,
                          soft_wrap=True)
    return _HOME + capture.get().replace("\n", "\r\n")


@contextmanager
def full_screen(keyboard: int | None) -> Iterator[None]:
    """Alternate screen, hidden cursor and (if ``keyboard`` is a terminal) cbreak mode, all undone on exit."""
    saved = termios.tcgetattr(keyboard) if keyboard is not None else None
    out = sys.stdout
    try:
        if keyboard is not None:
            tty.setcbreak(keyboard, termios.TCSANOW)  # ISIG stays on: Ctrl-C still raises KeyboardInterrupt
        out.write(_ALT_SCREEN_ON + _CURSOR_OFF)
        out.flush()
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(keyboard, termios.TCSAFLUSH, saved)
        out.write(_CURSOR_ON + _ALT_SCREEN_OFF)
        out.flush()


def _follow_in_thread(follow: Callable[[Callable[[str], None]], Iterator[Any]], events: queue.SimpleQueue,
                      wake_fd: int) -> None:
    def post(kind: str, value: Any) -> None:
        events.put((kind, value))
        try:
            os.write(wake_fd, b"x")
        except OSError:  # the view is gone
            pass

    def feed() -> None:
        try:
            for item in follow(lambda text: post("status", text)):
                post("data", item)
        except BaseException as exc:  # handed to the main thread, which reports it
            post("error", exc)

    threading.Thread(target=feed, name="shm-follow", daemon=True).start()


def run_view(follow: Callable[[Callable[[str], None]], Iterator[Any]],
             draw: Callable[[Any, str | None, int, int], list[Text]],
             on_key: Callable[[str], None] | None = None) -> int:
    """Show ``draw(latest item, status message, columns, rows)`` full screen until ``q``.

    ``follow(on_status)`` yields the items to show (it runs in a thread of its
    own); ``on_key`` gets every other key, and the view is redrawn after it.
    Returns 0 when the user quits; an exception of ``follow`` is raised here,
    after the terminal is restored.
    """
    keyboard = sys.stdin.fileno() if sys.stdin.isatty() else None
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)  # a full pipe already means "wake up"
    events: queue.SimpleQueue = queue.SimpleQueue()
    console = Console(file=sys.stdout, force_terminal=True, highlight=False)
    previous_winch = signal.signal(signal.SIGWINCH, lambda *_: os.write(wake_write, b"r"))

    def end(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through full_screen's restore, unlike the default action

    previous_term = signal.signal(signal.SIGTERM, end)
    previous_hup = signal.signal(signal.SIGHUP, end)
    latest, status = None, "waiting for the first sample"
    try:
        with full_screen(keyboard):
            _follow_in_thread(follow, events, wake_write)
            while True:
                width, height = terminal_size()
                console.size = (width, height)
                sys.stdout.write(to_ansi(draw(latest, status, width, height), width, height, console))
                sys.stdout.flush()
                ready, _, _ = select.select([wake_read] + ([keyboard] if keyboard is not None else []), [], [])
                if wake_read in ready:
                    os.read(wake_read, 4096)
                if keyboard is not None and keyboard in ready:
                    keys = os.read(keyboard, 64).decode(errors="replace")
                    if any(k in QUIT_KEYS for k in keys):
                        return 0
                    for key in keys:
                        if on_key:
                            on_key(key)
                while not events.empty():
                    kind, value = events.get()
                    if kind == "error":
                        raise value
                    if kind == "data":
                        latest, status = value, None
                    else:
                        status = value
    finally:
        # The pipe stays open: the follower thread (asleep in the kernel, ended with the process) may
        # still write to it, and a closed descriptor's number could by then belong to another file.
        signal.signal(signal.SIGWINCH, previous_winch)
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGHUP, previous_hup)
