"""Training: the authors' recipe from scratch or from local backbone weights, and fine-tuning.

Recipe (../shared/reference/MSCN.md): AdamW, cosine schedule with linear
warm-up, label smoothing, MixUp/CutMix, RandAugment, random erasing, AMP on
CUDA. Model selection uses the validation split only. The parts:

* :mod:`.config`      every option, its type, default, help and checks;
* :mod:`.data_setup`  the chips and their split (chips.json, folders, torchgeo);
* :mod:`.model_setup` the model (scratch, backbone weights, fine-tune) and optimiser groups;
* :mod:`.schedule`    learning-rate schedule, time budget, EMA, MixUp/CutMix;
* :mod:`.loop`        one epoch;
* :mod:`.outputs`     the run's files (checkpoints, log, config, curves);
* :mod:`.run`         :func:`train`, which strings them together.
"""

from mscn_geo.training.config import (
    FINE_TUNE_DEFAULTS,
    RUNTIME_FIELDS,
    TrainConfig,
    config_for_resume,
    make_config,
)
from mscn_geo.training.loop import EpochLog
from mscn_geo.training.model_setup import load_backbone_weights
from mscn_geo.training.run import SELECTION_NOTE, train

__all__ = [
    "FINE_TUNE_DEFAULTS",
    "RUNTIME_FIELDS",
    "SELECTION_NOTE",
    "EpochLog",
    "TrainConfig",
    "config_for_resume",
    "load_backbone_weights",
    "make_config",
    "train",
]
