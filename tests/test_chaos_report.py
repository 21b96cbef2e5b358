"""``make chaos`` writes its tables into docs/chaos-results.md between two markers and keeps the
rest of the page: its findings and the history of earlier runs are written by hand."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.__main__ import BEGIN, END, write_report


def test_the_tables_replace_the_latest_run_and_nothing_else(tmp_path: Path) -> None:
    page = tmp_path / "chaos-results.md"
    page.write_text(f"# Chaos results\n\nintro\n\n{BEGIN}\nold tables\n{END}\n\n## Findings\n\nF5: kept\n")
    write_report(page, "| new | tables |\n", "python -m tests.chaos --minutes 30")
    text = page.read_text()
    assert "old tables" not in text and "| new | tables |" in text
    assert text.startswith("# Chaos results\n\nintro\n\n") and text.endswith("## Findings\n\nF5: kept\n")
    assert text.count(BEGIN) == text.count(END) == 1 and "`python -m tests.chaos --minutes 30`" in text
    write_report(page, "| newer |\n", "again")
    assert "| new | tables |" not in page.read_text() and "| newer |" in page.read_text()


def test_a_page_without_markers_keeps_all_of_it_and_gets_them_at_its_end(tmp_path: Path) -> None:
    page = tmp_path / "chaos-results.md"
    page.write_text("# Chaos results\n\nhistory written by hand\n")
    write_report(page, "| t |", "cmd")
    text = page.read_text()
    assert text.startswith("# Chaos results\n\nhistory written by hand\n\n" + BEGIN) and text.rstrip().endswith(END)
    missing = tmp_path / "new" / "page.md"
    write_report(missing, "| t |", "cmd")
    assert missing.read_text().startswith(BEGIN) and "| t |" in missing.read_text()


def test_the_project_page_has_its_markers() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "chaos-results.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.index(BEGIN) < text.index(END)
