"""Training Hymba models: data preparation, the trainer (pretraining, SFT, DPO; one process, DDP or FSDP2),
checkpoints, LoRA, and the built-in demo.

    from hymba.training import TrainConfig, Trainer, prepare_dataset

    prepare_dataset(["corpus.txt"], "out/data", tokenizer=4096, val_fraction=0.05)   # train a 4096-id BPE
    cfg = TrainConfig.from_yaml("configs/tinyshakespeare.yaml").apply_overrides(["data.path=out/data"])
    result = Trainer(cfg).fit()        # result.final_checkpoint, result.val_loss, ...
"""

from .config import TrainConfig, TrainConfigError
from .data import BatchSchedule, DataError, PackedDataset, PackedLoader, prepare_dataset
from .trainer import Trainer, TrainingError, TrainResult

__all__ = ["BatchSchedule", "DataError", "PackedDataset", "PackedLoader", "TrainConfig", "TrainConfigError",
           "TrainResult", "Trainer", "TrainingError", "prepare_dataset"]
