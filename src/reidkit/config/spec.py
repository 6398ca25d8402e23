"""The experiment spec: TAO's ``re_identification`` key tree, typed, with TAO's defaults.

Only the models live here (reading YAML and applying overrides is :mod:`reidkit.config.loading`);
this module imports neither torch nor any other reidkit floor, so ``reidkit validate`` and
``reidkit schema`` start in a fraction of a second.

A TAO user's YAML must load unchanged, so every key name and default follows
``shared/reference/tao_reid.md``. Keys reidkit adds (``train.precision``, ``export.opset``, ...)
have defaults that keep TAO behaviour. Every model forbids unknown keys so that a typo is an
error with a suggestion, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from reidkit.config.numbers import NumbersNotBooleans
from reidkit.config.times import time_as_text
from reidkit.errors import did_you_mean

#: Largest evaluation batch: torch's batch sampler refuses one over sys.maxsize with a traceback,
#: and 65536 crops of 256x128 are already 24 GiB of input.
MAX_EVAL_BATCH = 65_536

#: Largest seed: numpy (seeded by Lightning and optuna) takes 0..2**32-1.
MAX_SEED = 2**32 - 1

#: A normalisation constant: nan or inf turns every input into nan or 0, and training then stops
#: blaming the learning rate.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

BackboneName = Literal[
    "resnet_18",
    "resnet_34",
    "resnet_50",
    "resnet_101",
    "resnet_152",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
    "mobilenet_v2",
]


class _Section(NumbersNotBooleans):
    """Base of every spec section: unknown keys are refused, assignments are re-validated, and
    a boolean given for a number is refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    """``model``: the backbone, the head and the losses it is trained with."""

    backbone: BackboneName = Field("resnet_50", description="Backbone network.")
    last_stride: Literal[1, 2] = Field(
        1, description="Stride of the last CNN stage; 1 doubles the final feature map size."
    )
    pretrain_choice: Literal["imagenet", "self"] = Field(
        "imagenet", description="'imagenet' starts from ImageNet weights, 'self' from scratch."
    )
    pretrained_model_path: str | None = Field(
        None, description="ImageNet state dict (torchvision/timm) or reidkit checkpoint to load."
    )
    input_channels: Literal[3] = Field(3, description="Image channels (RGB).")
    input_width: int = Field(128, ge=16, le=1024, description="Network input width in pixels.")
    input_height: int = Field(256, ge=16, le=2048, description="Network input height in pixels.")
    neck: Literal["bnneck", "no"] = Field(
        "bnneck", description="BNNeck between feature and ID head."
    )
    feat_dim: int = Field(256, ge=8, le=8192, description="Embedding width.")
    neck_feat: Literal["after", "before"] = Field(
        "after", description="Embedding taken after or before the BNNeck at test time."
    )
    metric_loss_type: Literal["triplet", "center", "triplet_center"] = Field(
        "triplet", description="Metric-learning loss added to the ID loss."
    )
    with_center_loss: bool = Field(False, description="Add center loss (also implied by 'center').")
    with_flip_feature: bool = Field(
        False, description="At test time average the embedding of the horizontally flipped image."
    )
    label_smooth: bool = Field(True, description="Label smoothing (0.1) in the ID loss.")
    id_loss_type: Literal["softmax", "arcface", "cosface", "amsoftmax", "circle"] = Field(
        "softmax", description="Identity classification head."
    )
    reduce_feat_dim: bool = Field(
        False, description="Swin: project the backbone feature to feat_dim (CNNs always do)."
    )
    pooling: Literal["avg", "gem"] = Field(
        "avg",
        description="reidkit: global pooling of CNN backbones; 'gem' = generalized mean with a "
        "learned power (fast-reid's recipes), 'avg' = TAO's average pooling.",
    )
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the classifier.")
    drop_path: float = Field(0.1, ge=0.0, lt=1.0, description="Stochastic depth rate (Swin).")
    stride_size: list[int] = Field(
        default_factory=lambda: [16, 16], min_length=2, max_length=2, description="Patch stride."
    )
    semantic_weight: float = Field(1.0, ge=0.0, le=1.0, description="SOLIDER semantic weight.")

    @property
    def uses_center_loss(self) -> bool:
        """Center loss is on when asked for directly or through the metric loss type."""
        return self.with_center_loss or self.metric_loss_type in ("center", "triplet_center")

    @property
    def uses_triplet_loss(self) -> bool:
        return self.metric_loss_type in ("triplet", "triplet_center")


class DatasetSpec(_Section):
    """``dataset``: where the Market-1501-style splits are and how batches are drawn."""

    train_dataset_dir: str | None = Field(None, description="Train split: folder or archive.")
    test_dataset_dir: str | None = Field(None, description="Gallery split: folder or archive.")
    query_dataset_dir: str | None = Field(None, description="Query split: folder or archive.")
    num_classes: int = Field(751, ge=1, description="Number of train identities.")
    batch_size: int = Field(64, ge=2, description="Train batch size (P x K images).")
    val_batch_size: int = Field(
        128,
        ge=1,
        le=MAX_EVAL_BATCH,
        description="Batch size for validation and testing.",
    )
    num_workers: int = Field(8, ge=0, le=128, description="Data loader worker processes.")
    device_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep the decoded train set on the training device and augment whole "
        "batches there: 'on', 'off', or 'auto' (only on a GPU with room for it).",
    )
    pixel_mean: list[FiniteFloat] = Field(
        default_factory=lambda: [0.485, 0.456, 0.406],
        min_length=3,
        max_length=3,
        description="Per-channel RGB mean (0-1 scale) subtracted before the network.",
    )
    pixel_std: list[FiniteFloat] = Field(
        default_factory=lambda: [0.226, 0.226, 0.226],
        min_length=3,
        max_length=3,
        description="Per-channel RGB std (0-1 scale) dividing the input.",
    )
    padding: int = Field(10, ge=0, le=256, description="Pixels padded before the random crop.")
    prob: float = Field(0.5, ge=0.0, le=1.0, description="Horizontal flip probability.")
    re_prob: float = Field(0.5, ge=0.0, le=1.0, description="Random erasing probability.")
    sampler: Literal["softmax_triplet", "softmax", "triplet"] = Field(
        "softmax_triplet", description="'softmax' draws random batches, others P x K identities."
    )
    num_instances: int = Field(4, ge=1, description="K: images per identity in a batch.")
    extract_dir: str | None = Field(
        None, description="Where archives are extracted (default <results_dir>/datasets)."
    )
    max_extract_bytes: int = Field(
        50 * 2**30,
        ge=1,
        description="Largest total size of the images an archive may unpack to (bytes).",
    )

    @field_validator("device_cache", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        """YAML reads a bare ``on``/``off`` (``dataset.device_cache=off``) as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("pixel_std")
    @classmethod
    def _std_positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("every pixel_std value must be > 0")
        return value

    @model_validator(mode="after")
    def _batch_holds_whole_identities(self) -> DatasetSpec:
        if self.sampler != "softmax" and self.batch_size % self.num_instances:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of num_instances "
                f"{self.num_instances} for the P x K sampler"
            )
        return self


#: torch.optim classes that train a whole network from parameter groups (TAO's ``optim.name``).
#: A fixed list rather than ``getattr(torch.optim, name)``: the spec must load without torch,
#: and abstract or special-purpose classes (``Optimizer``, ``SparseAdam``, ``LBFGS``) cannot
#: drive this training loop.
OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam")


class OptimSpec(_Section):
    """``train.optim``: optimizer, schedule and loss weights (TAO's names)."""

    name: str = Field("Adam", description=f"torch.optim optimizer: one of {', '.join(OPTIMIZERS)}.")
    base_lr: float = Field(3.5e-4, gt=0.0, le=10.0, description="Base learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum (optimizers that take it).")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="Weight decay of weights.")
    weight_decay_bias: float = Field(5e-4, ge=0.0, le=1.0, description="Weight decay of biases.")
    bias_lr_factor: float = Field(1.0, gt=0.0, le=100.0, description="Bias lr = base_lr x this.")
    lr_steps: list[int] = Field(
        default_factory=lambda: [40, 70],
        description="Epochs at which the lr is multiplied by gamma.",
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="lr multiplier at each of lr_steps.")
    warmup_factor: float = Field(0.01, gt=0.0, le=1.0, description="lr factor at epoch 0.")
    warmup_iters: int = Field(10, ge=0, description="Linear/constant warm-up length in epochs.")
    warmup_method: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="'cosine' selects warm-up then cosine decay (Swin recipe)."
    )
    warmup_epochs: int = Field(20, ge=0, description="Warm-up epochs of the cosine schedule.")
    cosine_delay_epochs: float = Field(
        0.0,
        ge=0.0,
        description="reidkit: epochs held at base_lr after the cosine warm-up before the decay "
        "starts (fast-reid's flat-then-cosine); the decay keeps at least the last quarter of "
        "the run. 0 = TAO's cosine.",
    )
    center_loss_weight: float = Field(5e-4, ge=0.0, description="Weight of the center loss.")
    center_lr: float = Field(
        0.5,
        gt=0.0,
        le=10.0,  # beyond float32 (3.4e38) the centers' optimizer fails with a traceback
        description="SGD lr of the center-loss centers.",
    )
    triplet_loss_margin: float = Field(0.3, ge=0.0, le=10.0, description="0 = soft margin.")
    large_fc_lr: bool = Field(False, description="Classifier lr x2 (Swin recipe).")
    cosine_margin: float = Field(0.5, ge=0.0, le=2.0, description="Margin of margin-based heads.")
    cosine_scale: float = Field(30.0, gt=0.0, le=256.0, description="Scale of margin-based heads.")

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(
                f"'{value}' is not a torch.optim optimizer reidkit trains with; allowed: "
                f"{', '.join(OPTIMIZERS)}{did_you_mean(value, OPTIMIZERS)}"
            )
        return value

    @field_validator("lr_steps")
    @classmethod
    def _steps_increasing(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value) or sorted(set(value)) != value:
            raise ValueError("lr_steps must be strictly increasing positive epochs")
        return value


class TrainSpec(_Section):
    """``train``: devices, length, checkpoints and the optimizer."""

    accelerator: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="'auto': the GPUs when CUDA is available, else the CPU."
    )
    num_gpus: int = Field(1, ge=1, le=64, description="GPUs per node; several run DDP.")
    num_processes: int = Field(
        1, ge=1, le=256, description="CPU training processes per node; several run DDP (gloo)."
    )
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU indices to use.")
    num_nodes: int = Field(1, ge=1, le=1024, description="Machines in a multi-node DDP run.")
    seed: int = Field(
        1234, ge=0, le=MAX_SEED, description="Seed of weights init, sampling and augmentation."
    )
    num_epochs: int = Field(10, ge=1, le=10000, description="Training epochs.")
    checkpoint_interval: int = Field(1, ge=1, description="Epochs between periodic checkpoints.")
    validation_interval: int = Field(1, ge=1, description="Epochs between validations.")
    resume_training_checkpoint_path: str | None = Field(
        None, description="Checkpoint to resume from; null = latest in the results folder."
    )
    results_dir: str | None = Field(None, description="Train output folder.")
    grad_clip: float = Field(0.0, ge=0.0, description="Gradient norm clip; 0 disables.")
    divergence_factor: float | None = Field(
        None,
        gt=1.0,
        description="Stop when a step's loss exceeds this many times the median of the last "
        "200; null disables (a non-finite loss always stops training).",
    )
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="'auto': 16-mixed on GPU, 32 on CPU."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Cap on training batches per epoch (smoke runs); null = all."
    )
    id_warmup_epochs: float = Field(
        0.0,
        ge=0.0,
        le=10_000.0,  # as train.num_epochs; inf cannot become a count of batches
        description="reidkit: epochs at the start trained on random batches with the ID loss "
        "only (every identity's classifier learns from the first steps); the P x K sampler and "
        "the metric losses take over after. 0 = TAO's behaviour.",
    )
    freeze_backbone_epochs: float = Field(
        0.0,
        ge=0.0,
        le=10_000.0,  # as train.num_epochs; inf cannot become a count of steps
        description="reidkit: epochs at the start during which the backbone's weights are not "
        "updated (its BatchNorm statistics still adapt), so the new head learns before its "
        "gradients reach the pretrained features (fast-reid's freeze_iters). 0 = TAO's behaviour.",
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="reidkit: keep an exponential moving average of the weights (this decay "
        "per step, e.g. 0.998); validation, checkpoints, evaluate and export use the average, "
        "a resumed run continues both. null = off (TAO's behaviour).",
    )
    optim: OptimSpec = Field(default_factory=OptimSpec)


class _EmbeddingActionSpec(_Section):
    """What evaluate and inference share: a model, the query/gallery splits, a device."""

    checkpoint: str | None = Field(None, description="Checkpoint (.pth) or ONNX model (.onnx).")
    test_dataset: str | None = Field(
        None, description="Gallery folder or archive; null = dataset.test_dataset_dir."
    )
    query_dataset: str | None = Field(
        None, description="Query folder or archive; null = dataset.query_dataset_dir."
    )
    batch_size: int = Field(128, ge=1, le=MAX_EVAL_BATCH, description="Images per forward pass.")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU used (the first).")
    results_dir: str | None = Field(None, description="Output folder of the action.")


class EvaluateSpec(_EmbeddingActionSpec):
    """``evaluate``: the checkpoint (or ONNX file) to score and the query/gallery splits."""

    output_cmc_curve_plot: str | None = Field(
        None, description="CMC curve PNG; null = cmc_curve.png in the results folder."
    )
    output_sampled_matches_plot: str | None = Field(
        None, description="Sampled matches PNG; null = sampled_matches.png in the results folder."
    )
    output_roc_curve_plot: str | None = Field(
        None, description="ROC curve PNG; null = roc_curve.png in the results folder."
    )
    target_false_match_rate: float = Field(
        1e-3,
        gt=0.0,
        le=0.5,
        description="False-match rate the 'same person' distance threshold is calibrated for.",
    )


class InferenceSpec(_EmbeddingActionSpec):
    """``inference``: embeddings and matches for every query and gallery image."""

    output_file: str | None = Field(
        None, description="Embeddings JSON; null = inference.json in the results folder."
    )


class ExportSpec(_Section):
    """``export``: the ONNX file and how it is checked."""

    checkpoint: str | None = Field(None, description="Checkpoint (.pth) to export.")
    onnx_file: str | None = Field(None, description="ONNX file; null = model.onnx in results.")
    gpu_id: int = Field(0, ge=0, description="GPU used for the parity check when present.")
    results_dir: str | None = Field(None, description="Export output folder.")
    opset: int = Field(17, ge=17, le=23, description="ONNX opset version.")
    overwrite: bool = Field(False, description="Replace an existing onnx_file.")
    fp16: bool = Field(False, description="Also write and check an fp16 variant.")


class ReRankingSpec(_Section):
    """``re_ranking``: k-reciprocal re-ranking and the length of CMC / matches plots."""

    re_ranking: bool = Field(False, description="Apply k-reciprocal re-ranking in evaluate.")
    k1: int = Field(20, ge=1, description="k-reciprocal neighbourhood size.")
    k2: int = Field(6, ge=1, description="Neighbours averaged in query expansion.")
    lambda_value: float = Field(
        0.3, ge=0.0, le=1.0, description="Weight of the original distance vs Jaccard distance."
    )
    max_rank: int = Field(10, ge=1, le=1000, description="CMC length; columns of the matches plot.")
    num_query: int = Field(10, ge=1, le=1000, description="Rows (queries) of the matches plot.")


class ServeSpec(_Section):
    """``serve``: the search service and operator page (``reidkit serve``)."""

    model: str | None = Field(
        None, description="ONNX model or an export run's folder; null = gallery.checkpoint."
    )
    gallery_uri: str | None = Field(
        None, description="Gallery folder or Milvus URI to search and fill; null = gallery.uri."
    )
    token_file: str | None = Field(
        None, description="Hashed bearer tokens; null = tokens.json in the serve results folder."
    )
    host: str = Field(
        "127.0.0.1", description="Address to bind; 0.0.0.0 exposes the service to the network."
    )
    port: int = Field(8080, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, le=64, description="Server processes (each loads the model).")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime threads per process; 0 = all.")
    max_request_mb: float = Field(16.0, gt=0.0, le=1024.0, description="Largest request body.")
    max_image_pixels: int = Field(
        4_000_000, ge=1024, le=100_000_000, description="Largest image (width x height) accepted."
    )
    max_images: int = Field(64, ge=1, le=4096, description="Most images in one request.")
    max_k: int = Field(100, ge=1, le=10_000, description="Most hits one search may ask for.")
    max_batch: int = Field(32, ge=1, le=1024, description="Most images in one model run.")
    batch_wait_ms: float = Field(
        5.0, ge=0.0, le=1000.0, description="How long a model run waits for more requests."
    )
    match_threshold: float | None = Field(
        None, ge=0.0, le=4.0, description="Match distance; null = the model card's calibrated one."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed cross-site; empty = CORS off."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server log level."
    )
    association_calibration: str | None = Field(
        None,
        description="calibration.json of an offline 'reidkit associate' run on this site (live "
        "POST /v1/tracks); null = associate.results_dir's, if there is one.",
    )
    results_dir: str | None = Field(None, description="Serve output folder (status, tokens).")


class GallerySpec(_Section):
    """``gallery``: a site's crops indexed for search by camera and time (reidkit only)."""

    uri: str | None = Field(
        None,
        description="Gallery: a folder (embedded), http://host:19530 or a *.db file (Milvus).",
    )
    checkpoint: str | None = Field(
        None,
        description="Model that embeds crops: .pth, .onnx or a train/export results folder "
        "(rebuild: the NEW model).",
    )
    crops: str | None = Field(
        None, description="add: folder of Market-style crops (PPPP_cCsS_FFFFFF_NN.jpg)."
    )
    manifest: str | None = Field(
        None, description="add: CSV with path,camera,timestamp,track_id[,site,zone] (or crops)."
    )
    time_origin: str = Field(
        "1970-01-01T00:00:00Z",
        description="add: ISO-8601 time of frame 0 of Market-style names.",
    )
    fps: float = Field(
        25.0,
        ge=0.001,  # 1 frame per 17 min; 1e-300 put crop times past any clock (traceback)
        le=1000.0,  # inf would stamp every crop with time_origin
        description="add: frame rate of Market-style frame numbers.",
    )
    batch_size: int = Field(64, ge=1, description="Crops per forward pass.")
    thumbnails: bool = Field(True, description="add: store a small JPEG of each crop.")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU used (the first).")
    query: list[str] = Field(
        default_factory=list, description="search: query crop files or folders of crops."
    )
    query_as_track: bool = Field(
        False, description="search: the query crops are one track; return one merged list."
    )
    top_k: int = Field(10, ge=1, le=1000, description="search: hits per query.")
    cameras: list[int] | None = Field(
        None,
        min_length=1,  # [] would search no camera and find nothing, silently; null = all
        description="search: only these cameras; null = all.",
    )
    start: str | None = Field(None, description="search: earliest time (ISO-8601 or unix).")
    end: str | None = Field(None, description="search: latest time (ISO-8601 or unix).")
    re_ranking: bool = Field(
        False,
        description="search: k-reciprocal re-ranking (re_ranking.k1/k2/lambda) of the top hits.",
    )
    rerank_pool: int = Field(
        100, ge=2, le=2000, description="search: hits per query re-ranked (a small result set)."
    )
    match_threshold: float | None = Field(
        None,
        gt=0.0,
        le=4.0,
        description="Distance threshold of 'match'; null = the model card's calibrated one.",
    )
    forget_tracks: list[str] = Field(default_factory=list, description="forget: these tracks.")
    forget_crops: list[str] = Field(default_factory=list, description="forget: these crop paths.")
    forget_identity: list[str] = Field(
        default_factory=list,
        description="forget: every crop of these global ids (reidkit associate), all cameras.",
    )
    group_by_identity: bool = Field(
        False,
        description="search: hits grouped per global id, with each identity's cameras and "
        "time span.",
    )
    retention_days: float | None = Field(
        None,
        gt=0.0,
        le=100_000.0,  # 270 years: before any crop's time (1970..2200), and within timedelta
        description="forget: also every crop older than this many days.",
    )
    rebuild_drop_missing: bool = Field(
        False,
        description="rebuild: leave out crops whose file is gone (uploads have none) instead of "
        "refusing.",
    )
    operator: str | None = Field(
        None, description="Who acts, for the audit log; null = the login name."
    )
    output_file: str | None = Field(
        None, description="search: JSON of the hits; null = search.json in the results folder."
    )
    results_dir: str | None = Field(None, description="Output folder of the gallery actions.")

    @field_validator("time_origin", "start", "end", mode="before")
    @classmethod
    def _times_as_text(cls, value: object) -> object:
        return time_as_text(value)

    @field_validator("forget_identity", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        """Global ids are numbers in global_ids.csv; ``forget_identity=[3]`` means id "3"."""
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value


class AssociateSpec(_Section):
    """``associate``: per-camera tracks in, one global identity per person out (reidkit only)."""

    site: str | None = Field(
        None, description="site.yaml: cameras (fps, frame_base, clock, homography, files), transit."
    )
    tracks: str | None = Field(
        None,
        description="Multi-camera tracks: AI City text, DeepStream/Metropolis JSON lines or a "
        "gallery URI (each camera's MOTChallenge file is named in the site file instead).",
    )
    tracks_format: Literal["auto", "aicity", "deepstream", "gallery"] = Field(
        "auto",
        description="Format of associate.tracks; 'auto' tells them apart by content (a gallery "
        "folder or Milvus URI: its crops with camera, time and track ids).",
    )
    checkpoint: str | None = Field(
        None, description="Model that embeds the crops: .pth, .onnx or a train/export run folder."
    )
    ground_truth: str | None = Field(
        None,
        description="AI City ground truth of the whole site to score against; null = the "
        "cameras' ground_truth files in the site file, if any.",
    )
    crops_per_track: int = Field(
        8, ge=1, le=256, description="Crops embedded per track (the best of equal time slices)."
    )
    max_gap_s: float = Field(
        2.0, gt=0.0, description="A track unseen for longer than this is split into parts."
    )
    open_set: Literal["auto", "site", "stability", "card"] = Field(
        "auto",
        description="How 'a new person' is decided: 'site' learns the threshold from tracks "
        "each camera proves different, 'stability' cuts where identities are most stable, "
        "'card' uses the model's calibrated match_threshold; 'auto' = site when it can, else "
        "stability.",
    )
    match_threshold: float | None = Field(
        None, gt=0.0, le=4.0, description="Explicit model distance threshold (overrides open_set)."
    )
    strangers_per_track: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="Site threshold: strangers expected within it per track (lower is stricter).",
    )
    camera_centring: bool = Field(
        True,
        description="Standardise each camera's embeddings: remove its mean (light, "
        "background) and divide by its own spread per dimension.",
    )
    gallery: str | None = Field(
        None,
        description="Gallery URI whose crops (matched by path, else camera + track id + time) "
        "get each track's global id; null = none.",
    )
    batch_size: int = Field(64, ge=1, description="Crops per forward pass.")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU used (the first).")
    results_dir: str | None = Field(None, description="Output folder of the associate action.")


class AdaptSpec(_Section):
    """``adapt``: fit a trained model to a site from its own unlabelled crops (reidkit only)."""

    checkpoint: str | None = Field(
        None, description="Source model: a .pth checkpoint or a train results folder."
    )
    target: str | None = Field(
        None,
        description="The site's crops: a folder in any dataset layout reidkit reads (labels, "
        "if any, are ignored), a CSV manifest path,camera,timestamp,track_id, or a gallery "
        "(its folder or Milvus URI; read only).",
    )
    num_epochs: int = Field(
        8,
        ge=1,
        le=1000,
        description="Rounds; each clusters the crops with the current model and trains one "
        "pass over the clustered ones. Stops earlier when 3 rounds bring no better quality "
        "(cross-camera share x silhouette).",
    )
    base_lr: float = Field(
        3.5e-4, gt=0.0, le=1.0, description="Learning rate (train.optim's optimizer)."
    )
    k1: int = Field(20, ge=2, le=200, description="k-reciprocal neighbours of the clustering.")
    k2: int = Field(6, ge=1, le=100, description="Neighbours of the query expansion.")
    eps: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="DBSCAN radius on Jaccard distances; null = the best of 0.4-0.7 by "
        "coverage x silhouette, every round.",
    )
    min_cluster_size: int = Field(
        4, ge=2, le=1000, description="Crops a cluster needs (DBSCAN min_samples)."
    )
    per_camera_standardise: bool = Field(
        True,
        description="Standardise the embeddings within each camera (mean and spread per "
        "dimension) before clustering, so a camera's look does not keep one person's crops from "
        "two cameras apart; no effect on a single camera.",
    )
    site_batchnorm: bool = Field(
        True,
        description="Re-estimate the model's BatchNorm statistics on the target crops before "
        "the first clustering (AdaBN): the source model's statistics describe the cameras it "
        "was trained on, not the site's.",
    )
    cross_camera_training: bool = Field(
        True,
        description="With two or more cameras, train each round only on the clusters seen by "
        "two or more cameras (the others stay as negatives): a cluster one camera alone saw may "
        "be that camera's look rather than a person. Adaptation stops when fewer than two "
        "clusters span two cameras. false = every cluster trains.",
    )
    camera_proxies: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Camera-aware proxy losses: 'auto' = on when the crops come from two or "
        "more cameras; 'on' refuses a single-camera target.",
    )
    use_tracks: bool = Field(
        True,
        description="Crops of one track are one person; tracks seen at once by one camera "
        "are two (track ids: MARS names or the manifest's track_id).",
    )
    source_dataset: str | None = Field(
        None,
        description="Labelled set the source model was trained on (folder or archive) to keep "
        "training on beside the target, one batch each per step; null = target crops only.",
    )
    output_file: str | None = Field(
        None, description="Adapted checkpoint; null = adapted_model.pth in the results folder."
    )
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU used (the first).")
    results_dir: str | None = Field(None, description="Output folder of the adapt action.")

    @field_validator("camera_proxies", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        """YAML reads a bare ``on``/``off`` as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


AutomlMetric = Literal["cmc_rank_1", "cmc_rank_5", "cmc_rank_10", "mAP", "mINP"]


class AutomlRangeOverride(_Section):
    """One entry of ``automl.automl_range_override``: a search range that replaces the schema's."""

    parameter: str = Field(..., description="Dotted key of the tuned parameter.")
    valid_min: float | None = Field(None, description="Lower end of a numeric range.")
    valid_max: float | None = Field(None, description="Upper end of a numeric range.")
    valid_options: list[Any] | None = Field(
        None, description="Discrete choices (replaces valid_min / valid_max)."
    )


class AutomlSpec(_Section):
    """``automl``: hyper-parameter search over the train action (TAO's AutoML keys)."""

    automl_enabled: bool = Field(
        False, description="With automl_policy 'auto', train runs go through AutoML."
    )
    automl_algorithm: Literal["bayesian", "hyperband", "asha", "random"] = Field(
        "bayesian", description="Search algorithm: TPE, Hyperband, ASHA or random search."
    )
    automl_max_recommendations: int = Field(
        20, ge=1, le=10000, description="Trials the study runs in total (across resumes)."
    )
    automl_max_epochs: int = Field(
        27, ge=1, le=10000, description="Epoch budget of one trial (Hyperband max resource)."
    )
    automl_reduction_factor: int = Field(
        3, ge=2, le=100, description="Hyperband / ASHA: keep 1 in this many trials per rung."
    )
    automl_hyperparameters: list[str] | None = Field(
        None, description="Dotted keys to tune; null = the train schema's defaults."
    )
    automl_range_override: list[AutomlRangeOverride] = Field(
        default_factory=list, description="Search ranges replacing the schema's."
    )
    metric: AutomlMetric = Field("cmc_rank_1", description="Validation metric to optimise.")
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="Whether the metric is maximised or minimised."
    )
    storage: str | None = Field(
        None, description="Optuna storage URL; null = sqlite automl.db in the results folder."
    )
    study_name: str | None = Field(None, description="Study name; null = '<model_name>_automl'.")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Sampler seed; null = train.seed.",
    )
    heartbeat_interval: int = Field(
        10, ge=1, le=3600, description="Seconds between trial heartbeats; 2 missed = trial lost."
    )
    results_dir: str | None = Field(None, description="AutoML output folder.")


class ExperimentSpec(_Section):
    """The whole experiment: one file drives train, evaluate, inference and export."""

    results_dir: str = Field("results", description="Root of every action's output folder.")
    encryption_key: str | None = Field(None, description="Key that encrypts checkpoints.")
    model_name: str = Field("reid", description="Name recorded in outputs.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    re_ranking: ReRankingSpec = Field(default_factory=ReRankingSpec)
    gallery: GallerySpec = Field(default_factory=GallerySpec)
    automl: AutomlSpec = Field(default_factory=AutomlSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    associate: AssociateSpec = Field(default_factory=AssociateSpec)
    adapt: AdaptSpec = Field(default_factory=AdaptSpec)
    automl_policy: Literal["auto", "off"] = Field(
        "auto", description="'auto' routes train through AutoML when automl.automl_enabled."
    )

    def action_dir(self, action: str) -> Path:
        """``<action>.results_dir`` when set, else ``<results_dir>/<action>`` (TAO layout)."""
        section = getattr(self, action, None)
        explicit = getattr(section, "results_dir", None) if section is not None else None
        return Path(explicit) if explicit else Path(self.results_dir) / action

    def digest(self) -> str:
        """A short hash of the resolved spec, recorded in exported models."""
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
