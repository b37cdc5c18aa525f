"""The prepare/train/sft/dpo commands and the training configuration files."""

import glob
import os

import pytest
from training_helpers import write_corpus

from hymba.cli import main
from hymba.training.config import TrainConfig, TrainConfigError
from hymba.training.metrics import read_metrics

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
QUIET = ["train.threads=1", "train.progress=false", "train.tensorboard=false", "train.plot=false",
         "train.eval_batches=1", "train.log_interval=1", "data.seq_len=32", "train.batch_size=4"]


def test_prepare_then_train_from_the_command_line(tmp_path, capsys):
    corpus = write_corpus(str(tmp_path), n_docs=30)
    data = str(tmp_path / "data")
    assert main(["prepare", "--input", corpus, "--tokenizer", "train:300", "--out", data, "--val-fraction", "0.1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["prepare", "--input", corpus, "--tokenizer", "train:300", "--out", data]) == 2
    assert "already exists" in capsys.readouterr().err
    # options may come after the overrides
    run = str(tmp_path / "run")
    assert main(["train", "--preset", "tiny", "schedule.warmup_steps=1", "--data", data, "--out", run,
                 "--max-steps", "2"] + QUIET) == 0
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2]
    assert main(["train", "--preset", "tiny", "--data", data, "--out", run, "--max-steps", "3", "--resume"] + QUIET) == 0
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2, 3]


def test_prepare_with_a_checkpoint_tokenizer(tmp_path, shared_dir):
    from hymba.tokenizer import load_tokenizer
    from hymba.training.data import load_manifest, open_shards

    corpus = write_corpus(str(tmp_path), n_docs=3)
    out = str(tmp_path / "data")
    assert main(["prepare", "--input", corpus, "--tokenizer", os.path.join(shared_dir, "hymba-1.5b"),
                 "--out", out]) == 0
    manifest = load_manifest(out)
    assert manifest["vocab_size"] == 32001 and manifest["dtype"] == "uint16"
    tok = load_tokenizer(os.path.join(shared_dir, "hymba-1.5b"))
    ids = open_shards(out, "train")[0].tolist()
    with open(corpus) as f:
        first = f.read().split("<|endoftext|>\n")[0]
    expected = tok.encode(first) + [2]  # Llama's BOS (1) comes from add_bos_token, then the text, then </s>
    assert ids[:len(expected)] == expected and expected[0] == 1


def test_command_line_errors_are_clear(tmp_path, capsys):
    assert main(["prepare", "--input", str(tmp_path / "nope.txt"), "--tokenizer", "train:300",
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err
    assert main(["prepare", "--input", str(tmp_path), "--tokenizer", "train:many", "--out", str(tmp_path / "o")]) == 2
    assert "train:VOCAB_SIZE" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "optim.lr=fast"]) == 2
    assert "optim.lr = 'fast': expected a float" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "train.batchsize=4"]) == 2
    assert "unknown key train.batchsize" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny"]) == 2
    assert "needs data.path" in capsys.readouterr().err
    assert main(["sft", "--config", os.path.join(REPO, "configs", "dpo-pairs.yaml")]) == 2
    assert "run it with `hymba dpo`" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_shipped_config_is_valid(path):
    cfg = TrainConfig.from_yaml(path)
    assert cfg.train.out_dir.startswith("runs/")
    if cfg.model.preset:
        from hymba import HymbaConfig

        HymbaConfig.from_preset(cfg.model.preset, **cfg.model.config)  # the architecture is consistent


def test_overrides_are_typed_and_nested():
    cfg = TrainConfig().apply_overrides(["optim.lr=3e-4", "train.max_steps=10", "optim.betas=[0.9, 0.99]",
                                         "model.config.hidden_size=96", "train.tensorboard=false", "task=sft"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 10 and cfg.optim.betas == [0.9, 0.99]
    assert cfg.model.config == {"hidden_size": 96} and cfg.train.tensorboard is False and cfg.task == "sft"
    with pytest.raises(TrainConfigError, match="expected a int"):
        TrainConfig().apply_overrides(["train.max_steps=2.5"])
    with pytest.raises(TrainConfigError, match="unknown section"):
        TrainConfig().apply_overrides(["trian.max_steps=2"])
    with pytest.raises(TrainConfigError, match="exclusive"):
        TrainConfig().apply_overrides(["model.preset=tiny", "model.init_from=x"])
