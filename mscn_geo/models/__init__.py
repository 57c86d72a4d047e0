"""Models: MSC, GCE, MSCN and the plain-ResNet baselines, built by name."""

from mscn_geo.models import mscn as _mscn  # noqa: F401  (registers the architectures)
from mscn_geo.models.checkpoint import (
    BUNDLED_MODEL,
    LoadedModel,
    ModelMeta,
    add_checkpoint_metrics,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mscn_geo.models.gce import GCE
from mscn_geo.models.msc import MSC
from mscn_geo.models.mscn import MSCN, PlainResNet
from mscn_geo.models.registry import create_model, list_models, register_model
from mscn_geo.models.sparse_attention import dual_topk_attention

__all__ = [
    "BUNDLED_MODEL",
    "GCE",
    "MSC",
    "MSCN",
    "LoadedModel",
    "ModelMeta",
    "PlainResNet",
    "add_checkpoint_metrics",
    "create_model",
    "dual_topk_attention",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
