"""Re-identification models: backbones, heads, the assembled model, its card and weights."""

from reidkit.models.backbones import BACKBONES, Backbone, build_backbone
from reidkit.models.card import ModelCard
from reidkit.models.heads import ID_HEADS, BNNeck, IdHead, build_id_head
from reidkit.models.pretrained import LoadReport, load_imagenet, load_pretrained, load_state
from reidkit.models.reid_model import ReidModel, ReidOutput
from reidkit.models.restore import restore_model

__all__ = [
    "BACKBONES",
    "ID_HEADS",
    "BNNeck",
    "Backbone",
    "IdHead",
    "LoadReport",
    "ModelCard",
    "ReidModel",
    "ReidOutput",
    "build_backbone",
    "build_id_head",
    "load_imagenet",
    "load_pretrained",
    "load_state",
    "restore_model",
]
