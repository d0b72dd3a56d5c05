"""The C-voice release as published: a test workbook with one sheet per value, a few incomplete rows on
several sheets, and rows of a value's sheet that pit two other values against each other.

The workbook is built here in the release's shape (test-zh-200.xlsx: 12 sheets named by the values,
columns Type / Context / Action1 / Action2, 9 incomplete rows over 7 sheets; "社会冷漠" rows on the 友善 sheet).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.data import load_corpus
from vneuron.errors import VneuronError

VALUES = ("富强", "民主", "文明", "和谐", "自由", "平等", "公正", "法治", "爱国", "敬业", "诚信", "友善")
OTHERS = ("个人财富积累", "效率", "报复文化", "面子")
# (sheet, row number in the sheet, the column left empty): 9 rows over 7 sheets
INCOMPLETE = [("富强", 5, "Action1"), ("富强", 9, "Context"), ("民主", 3, "Action2"), ("和谐", 7, "Action1"),
              ("和谐", 8, "Type"), ("平等", 4, "Action2"), ("法治", 6, "Context"), ("敬业", 10, "Action1"), ("友善", 2, "Action2")]
OFF_SHEET = 3  # 友善 rows whose conflict is 社会冷漠 vs 个人财富积累
ROWS = 10  # per sheet, before the off-sheet rows


def build_release(path: Path) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    empty = {(sheet, row): column for sheet, row, column in INCOMPLETE}
    for v, value in enumerate(VALUES):
        sheet = book.create_sheet(value)
        sheet.append(["Type", "Context", "Action1", "Action2"])
        for r in range(2, ROWS + 2):
            other = OTHERS[(v + r) % len(OTHERS)]
            row = {"Type": f"{value} vs {other}", "Context": f"情境{value}{r}：你要在{value}和{other}之间选择。",
                   "Action1": f"选择{value}的做法{r}", "Action2": f"选择{other}的做法{r}"}
            if (value, r) in empty:
                row[empty[value, r]] = None
            sheet.append([row[c] for c in ("Type", "Context", "Action1", "Action2")])
        if value == "友善":
            for r in range(OFF_SHEET):
                sheet.append(["社会冷漠 vs 个人财富积累", f"路人{r}需要帮助，而你赶时间。", f"不理会路人{r}", f"停下来帮忙{r}"])
    book.save(path)
    return path


@pytest.fixture
def release(tmp_path):
    return build_release(tmp_path / "test-zh-200.xlsx")


def test_the_release_loads_with_a_note_naming_every_incomplete_row_per_sheet(release):
    corpus = load_corpus(release)
    assert len(corpus.items) == len(VALUES) * ROWS + OFF_SHEET - len(INCOMPLETE)
    assert len(corpus.skipped) == len(INCOMPLETE)
    skipped_note = next(n for n in corpus.notes if "incomplete" in n)
    assert skipped_note.startswith("test-zh-200.xlsx: left out 9 incomplete rows over 7 sheets")
    for sheet, row, column in INCOMPLETE:  # each named by its sheet, its row and the file's own column name
        part = re.search(rf"sheet {sheet}: rows? ([^;]*)", skipped_note).group(1)
        assert f"{row} ({column})" in part, (sheet, part)
    assert "choice_a" not in skipped_note and "dilemma" not in skipped_note


def test_rows_relabelled_away_from_their_sheet_are_reported(release):
    corpus = load_corpus(release)
    (note,) = [n for n in corpus.notes if "without 友善" in n]
    assert f"sheet 友善: {OFF_SHEET} of {ROWS - 1 + OFF_SHEET} rows name a conflict without 友善" in note
    assert "'社会冷漠 vs 个人财富积累'" in note
    assert sum(i.dimension == "社会冷漠|个人财富积累" for i in corpus.items) == OFF_SHEET


def test_strict_reading_refuses_them_with_the_files_column_names(release):
    with pytest.raises(VneuronError) as info:
        load_corpus(release, strict=True)
    message = str(info.value)
    assert re.search(r"test-zh-200.xlsx \(sheet 富强\), row 5: empty 'Action1', and 8 more incomplete rows", message), message
    assert "`strict`" in message


def test_the_per_value_file_loads_as_it_is():
    fixture = Path(__file__).parent / "fixtures" / "cvoice" / "友善-final.xlsx"
    corpus = load_corpus(fixture)
    assert corpus.items and not corpus.skipped and not corpus.notes


def test_locate_on_the_release_prints_the_note_and_records_it(release, tmp_path, tiny_dir):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(release), "--language", "zh",
                                 "--split", "all", "--dimension", "友善|个人财富积累", "-k", "3", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "left out 9 incomplete rows over 7 sheets" in " ".join(result.output.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("incomplete" in n for n in manifest["dataset"]["notes"]) and manifest["dataset"]["strict"] is False
    strict = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(release), "--language", "zh",
                                 "--strict", "-q", "--out", str(tmp_path / "never")])
    assert strict.exit_code == 2 and "empty 'Action1'" in strict.stderr and "--strict" in strict.stderr
