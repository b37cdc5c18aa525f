"""`prepare` never deletes what it did not write, refuses an output path that is a file, and cleans up what a
killed run left behind."""

import os
import subprocess
import sys

import pytest
from training_helpers import write_corpus

from hymba.cli import main
from hymba.training.data import DataError, prepare_dataset


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(str(tmp_path), n_docs=8)


def prepare(corpus, out, **kw):
    return prepare_dataset([corpus], str(out), 300, log=lambda s: None, **kw)


def test_overwrite_replaces_only_a_prepared_dataset(corpus, tmp_path):
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="refusing to overwrite .*notes: it is not a dataset"):
        prepare(corpus, unrelated, overwrite=True)
    assert (unrelated / "thesis.tex").read_text() == "years of work"
    with pytest.raises(DataError, match="already exists and is not empty"):
        prepare(corpus, unrelated)
    data = tmp_path / "data"
    prepare(corpus, data)
    prepare(corpus, data, overwrite=True)  # ours: replaced
    assert (data / "manifest.json").exists()


def test_an_output_path_that_is_a_file(corpus, tmp_path, capsys):
    target = tmp_path / "out.bin"
    target.write_text("x")
    with pytest.raises(DataError, match="out.bin is a file"):
        prepare(corpus, target)
    assert main(["prepare", "--input", corpus, "--tokenizer", "train:300", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "out.bin is a file" in err and "Traceback" not in err


def test_temporaries_of_a_killed_run_are_removed_by_the_next(corpus, tmp_path):
    out = tmp_path / "data"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".data.{int(dead.stdout)}.x1y2.tmp"  # a writer that is gone
    live = tmp_path / f".data.{os.getpid()}.z3w4.tmp"  # one still running (this process)
    for d in (stale, live):
        d.mkdir()
        (d / "train-00000.bin").write_bytes(b"partial")
    prepare(corpus, out)
    assert not stale.exists() and live.exists()
