"""Evaluation refuses windows longer than the model's positions, and long runs report progress even when their
output is not a terminal."""

import pytest

from hymba.cli import main
from hymba.errors import InputError
from hymba.evaluation.perplexity import text_perplexity


def test_a_window_longer_than_the_models_positions_is_refused(small_model, tokenizer):
    with pytest.raises(InputError, match="max_length=513 is more than the model's max_position_embeddings .512."):
        text_perplexity(small_model, tokenizer, "some text " * 50, max_length=513)


def test_perplexity_prints_progress_lines_when_not_on_a_terminal(checkpoint_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    assert main(["perplexity", "--model", checkpoint_dir, "--text", str(text), "--max-length", "64", "--stride",
                 "32", "--device", "cpu"]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    lines = [line for line in err.splitlines() if line.startswith("windows: ")]
    assert lines and lines[-1].startswith("windows: ") and "(100%)" in lines[-1]
    done, total = lines[-1].split()[1].split("/")
    assert int(done) == int(total) > 3
    assert main(["perplexity", "--model", checkpoint_dir, "--text", str(text), "--max-length", "600"]) == 2
    assert "max_length=600 is more than the model's max_position_embeddings (512)" in capsys.readouterr().err
