"""Atomic writes: whole or not at all, and with the permissions a plain write would give."""

import os
import stat

import pytest

from hymba.utils import atomic_dir, atomic_path, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_file_is_replaced_whole_with_the_umask_mode(tmp_path, umask_022):
    target = tmp_path / "results.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _mode(target) == 0o644  # what open(..., "w") gives under umask 022 (mkstemp alone: 0600)
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary left beside it


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_directory_is_replaced_whole_with_the_umask_mode(tmp_path, umask_022):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "stale.bin").write_text("x")
    with atomic_dir(target) as tmp:
        with open(os.path.join(tmp, "model.safetensors"), "w") as f:
            f.write("weights")
    assert os.listdir(target) == ["model.safetensors"]
    assert _mode(target) == 0o755  # what os.mkdir gives under umask 022 (mkdtemp alone: 0700)
    assert os.listdir(tmp_path) == ["checkpoint"]
