import pytest
from training_helpers import write_corpus


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A prepared dataset (trained 320-id BPE) shared by the training tests; read-only."""
    from hymba.training.data import prepare_dataset

    root = tmp_path_factory.mktemp("prepared")
    corpus = write_corpus(str(root), n_docs=60)
    out = str(root / "data")
    prepare_dataset([corpus], out, 320, val_fraction=0.1, seed=0, log=lambda s: None)
    return out
