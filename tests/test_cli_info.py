"""`hymba info` and the command dispatcher."""

import math
import os
import subprocess
import sys

import pytest
import torch

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.cli import COMMANDS, main


def test_info_on_a_preset(capsys):
    assert main(["info", "--preset", "tiny", "--seq-len", "1024"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 422,096" in out
    assert "cache at 1024 tokens" in out
    loss = float(out.split("loss ")[1].split()[0])
    assert abs(loss - math.log(512)) < 0.5  # a freshly initialised model is near uniform


def test_info_on_a_checkpoint_scores_a_file(tmp_path, capsys):
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "t.txt").write_text("abc" * 20)
    assert main(["info", "--model", str(tmp_path / "ckpt"), "--text", str(tmp_path / "t.txt")]) == 0
    out = capsys.readouterr().out
    ids = torch.tensor([list(b"abc" * 20)])
    with torch.no_grad():
        expected = model.eval()(ids, labels=ids).loss.item()
    assert f"loss {expected:.4f}" in out and "60 tokens" in out


def test_every_listed_command_exists_and_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert f"usage: hymba {name}" in capsys.readouterr().out


def test_the_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "hymba")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and all(name in r.stdout for name in COMMANDS), r.stderr[-500:]
