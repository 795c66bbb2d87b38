"""Progress of long commands: a redrawn bar on a terminal, a line per tenth in a log."""

from __future__ import annotations

import io

from config.terminal import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_progress_writes_one_line_per_tenth_and_the_last():
    out = io.StringIO()
    bar = Progress(out, total=100, label="importing", unit="line")
    for done in range(1, 101):
        bar.update(done)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # the first, then every tenth, the last included
    assert lines[0].startswith("importing: 1/100 lines (1%)")
    assert lines[-1].startswith("importing: 100/100 lines (100%)")
    assert "lines/s" in lines[-1] and "left" in lines[-1]


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_ends_the_line():
    out = Terminal()
    bar = Progress(out, total=3, label="pretraining")
    for done in (1, 2, 3):
        bar.update(done, note="loss 2.5")
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1
    assert "[########################] pretraining: 3/3 steps (100%)" in text
    assert "loss 2.5" in text
