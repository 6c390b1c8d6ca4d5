"""The report page in a real browser (headless Chromium over the DevTools Protocol): the signals table
and every plot render, the table sorts, and nothing is logged as an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.report.build import build_report
from serving.report.inputs import from_files
from serving.report.render import render
from tests.serving.report.browser import Browser
from tests.serving.report.helpers import scam_run, write_jsonl


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with Browser(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def _page(tmp_path: Path) -> Path:
    signals, labels = scam_run(tmp_path / "run")
    return render(build_report(from_files(signals, write_jsonl(tmp_path / "labels.jsonl", labels)), 0.9),
                  tmp_path / "out")


def test_table_and_every_plot_render_without_errors(browser: Browser, tmp_path: Path) -> None:
    page = _page(tmp_path)
    browser.open(page.as_uri())
    rows = browser.evaluate("document.querySelectorAll('#signals tbody tr').length")
    # 2 live listing signals, 1 shadow, each also rolled up to the sellers, and 1 seller roll-up
    assert rows == 7
    images = browser.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0"
        " && i.naturalHeight > 0])")
    assert len(images) == 2 * 7 + 2 and all(ok for _, ok in images), images
    assert browser.problems == []


def test_the_signals_table_sorts_on_a_click(browser: Browser, tmp_path: Path) -> None:
    browser.open(_page(tmp_path).as_uri())
    col = "Array.from(document.querySelectorAll('#signals tbody tr')).map(r => r.cells[0].dataset.sort)"
    click = "document.querySelectorAll('#signals th')[0].click()"
    browser.evaluate(click)
    up = browser.evaluate(col)
    assert up == sorted(up)
    browser.evaluate(click)
    assert browser.evaluate(col) == sorted(up, reverse=True)
    assert browser.problems == []


def test_the_check_sees_console_errors_and_broken_images(browser: Browser, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><img src='data:image/png;base64,AAAA'><img src='missing.png'>"
                   "<script>console.error('boom')</script>")
    browser.open(bad.as_uri())
    problems = browser.problems
    assert any("boom" in p for p in problems), problems
    assert any(p.startswith(("load failed", "log:")) for p in problems), problems
    assert browser.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 0).length") == 0
