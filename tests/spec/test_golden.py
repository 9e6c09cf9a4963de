"""Ten distinct mistakes across three files: all reported in one run, each at its line and column.

`UPDATE_GOLDEN=1 pytest tests/spec/test_golden.py` rewrites the golden file; review the diff before committing.
"""

from pathlib import Path

from golden import check as check_golden

from reconciler.cli import main

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "ten-mistakes.txt"


def test_ten_mistakes_are_all_reported_with_positions(monkeypatch, capsys):
    monkeypatch.chdir(HERE / "fixtures")
    code = main(["validate", "ten-mistakes"])
    output = capsys.readouterr().out
    assert code == 1
    check_golden(GOLDEN, output)
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert len(errors) == 10
    assert {line.split(":")[0] for line in errors} == {"pools.yaml", "classes.yaml", "models.yaml"}
