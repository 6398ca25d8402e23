"""Re-identification models: backbones, heads, the assembled model and weight loading."""

from reidkit.models.backbones import Backbone, build_backbone, register_backbone
from reidkit.models.heads import BNNeck, IdHead, build_id_head, register_id_head
from reidkit.models.pretrained import LoadReport, load_imagenet, load_pretrained, load_state
from reidkit.models.reid_model import ReidModel, ReidOutput, build_model

__all__ = [
    "BNNeck",
    "Backbone",
    "IdHead",
    "LoadReport",
    "ReidModel",
    "ReidOutput",
    "build_backbone",
    "build_id_head",
    "build_model",
    "load_imagenet",
    "load_pretrained",
    "load_state",
    "register_backbone",
    "register_id_head",
]
