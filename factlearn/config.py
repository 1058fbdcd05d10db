"""Typed configuration, filled from YAML.

Every section is a dataclass with documented defaults. Loading is strict: an unknown key or a
value of the wrong type is a :class:`UserError` that names the key (``train.lr``), so a typo in a
config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import logging

from .errors import UserError
from .io import read_yaml_document

logger = logging.getLogger(__name__)

# Keys that once existed and did nothing: accepted (and dropped, with a warning) so that older
# config files and run directories still load.
RETIRED = {
    "train.num_workers": "images are decoded once into a memory-mapped store (data/store.py); there are no loader workers",
}


@dataclass
class ModelConfig:
    """The two-tower model (see factlearn.model)."""

    backbone: str = "resnet"  # image backbone family from transformers: resnet | vit
    backbone_config: dict = field(
        default_factory=lambda: {"embedding_size": 32, "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1]}
    )  # keyword arguments of the transformers config (ResNetConfig, ViTConfig)
    # A local directory with a pretrained backbone (no download): `factlearn pretrain`'s output, or
    # any transformers save_pretrained folder of the same family (safetensors). Its architecture
    # (config.json) must agree with backbone_config; the run records it there, so the run loads
    # without the folder (docs/faithful-protocol.md).
    pretrained: str | None = None
    image_size: int = 64  # images are resized to image_size x image_size
    slot_dim: int = 64  # dimensions per slot; the embedding has 3 * slot_dim
    po_grid: int = 2  # the P,O branch pools the feature map to po_grid x po_grid (keeps layout)
    word_dim: int = 64  # word vectors of the language tower
    text_hidden: int = 128  # hidden width of the per-slot phrase encoders
    # Freeze (requires_grad=False, batch-norm statistics kept) the backbone's stem and its first
    # freeze_stages stages: ResNet embedder + encoder.stages[:N], ViT embeddings + layers[:N].
    # 0 = everything trains. Frozen parameters are absent from the continual methods' state.
    freeze_stages: int = 0
    # Language tower: phrase (word embeddings learnt from scratch, mean-pooled, per-slot MLP) |
    # bert (a transformers BertModel over each slot's phrase, pooled, per-slot linear head) |
    # vectors (fixed word vectors from the word_vectors file, mean-pooled, per-slot linear map).
    text_encoder: str = "phrase"
    # bert without text_pretrained: BertConfig keyword arguments (vocab_size is set from the run's
    # vocabulary: its ids are the word-level token ids, plus [CLS] and [SEP]).
    text_config: dict = field(
        default_factory=lambda: {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                 "intermediate_size": 128}
    )
    # bert: a local directory saved with save_pretrained (model + tokenizer; safetensors, no
    # download). It is read again when the run is loaded (its tokenizer maps the words).
    text_pretrained: str | None = None
    text_pooling: str = "cls"  # bert: the phrase vector is the [CLS] output (cls) or the token mean (mean)
    # vectors: a word2vec/GloVe TEXT file, one `word v1 v2 ...` per line, optional `count dim`
    # header. Only the vocabulary's rows are kept, as a buffer saved in the checkpoint, so a trained
    # run loads without the file. Words not in the file are left out of the phrase mean (a phrase
    # of unknown words only gives the zero vector). word_dim must equal the file's dimension.
    word_vectors: str | None = None
    # Freeze the whole language tower (the reference setting where only the image tower learns).
    freeze_language: bool = False


# loss.negatives: auto samples negatives from this many facts per stage on (docs/configuration.md).
SAMPLED_ABOVE = 5_000


@dataclass
class LossConfig:
    """Training loss: wildcard-masked slot distance + contrastive term over the task's facts."""

    distance_weight: float = 1.0  # the reference (Sherlock) per-slot squared distance
    # normalized: the distance between slot-normalised vectors (each slot on the unit sphere) |
    # raw: between the raw image-tower output and the fact vector, as Sherlock regresses onto fixed
    # word vectors. raw needs fixed fact vectors (model.freeze_language) or a contrastive term.
    distance: str = "normalized"
    contrastive_weight: float = 1.0  # guards against collapse when the language tower trains
    temperature: float = 0.1
    # The facts each step scores its batch against (and embeds through the language tower).
    # all: every fact of the stage, exact. sampled: the batch's own facts plus num_negatives others
    # drawn each step (seeded by the step's position, so resume is bit-identical). auto (the
    # default): all while the stage has at most SAMPLED_ABOVE facts, sampled above, where embedding
    # every fact each step dominates the step (scripts/bench.py section 7: with K = 1,024 a step is
    # 1.6x faster at 5,000 facts, 2.7x at 10,000, 5x at 20,000; docs/configuration.md).
    negatives: str = "auto"
    num_negatives: int = 1024  # sampled (and auto above SAMPLED_ABOVE): the K facts drawn besides the batch's own

    def negatives_for(self, num_facts: int) -> str:
        """What ``negatives`` means for a stage of ``num_facts`` facts: all or sampled."""
        if self.negatives == "auto":
            return "sampled" if num_facts > SAMPLED_ABOVE else "all"
        return self.negatives


LOGGERS = ("tensorboard", "csv")  # the values of train.log


@dataclass
class TrainConfig:
    """Optimisation of each task: epochs, batch, optimizer, learning rate and its schedule, checkpoints."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | sgd
    lr_schedule: str = "cosine"  # within each task: constant | cosine (decays to 0 at the task's last step)
    momentum: float = 0.9  # sgd only
    # Steps between mid-task checkpoints (RUN_DIR/partial/), so that `train --resume` continues a
    # killed run close to where it stopped; 0 = checkpoints only at the end of each task. A
    # checkpoint is written at every task end and on Ctrl-C whatever this says.
    checkpoint_every: int = 500
    # Train each task to a plateau: hold out this share of each task's TRAINING images (seeded by
    # the run's seed and the task), evaluate top-1 on them (standard protocol) after every epoch,
    # and stop the task once `patience` epochs in a row have not improved on the best; epochs is
    # then the maximum. The held-out images are neither trained on nor used for importance.
    # 0 = off: every task trains for `epochs` epochs on all its training images.
    val_fraction: float = 0.0
    patience: int = 3
    # Several processes (torchrun, --nproc): batch norm normalises with the statistics of the global
    # batch, so N ranks take the steps of one process (true), or of each rank's share (false: two
    # collectives fewer per batch-norm layer and step, faster where a collective is slow, e.g. CPU
    # processes with gloo; the usual DDP default). See factlearn/distributed.py.
    sync_batch_norm: bool = True
    # What training logs into RUN_DIR/logs besides metrics.json, any of: csv (scalars.csv: step,
    # tag, value) | tensorboard (event files; needs the tensorboard package). Per step the task loss,
    # the penalty and the learning rate; after every task the accuracy-matrix row of every metric
    # and protocol, forgetting and BWT; after every importance computation a histogram of Omega per
    # parameter (tensorboard) and its total per tower. [] = none. See factlearn/training/logs.py.
    log: list[str] = field(default_factory=lambda: ["csv"])

    def __post_init__(self) -> None:
        if not isinstance(self.log, list) or not all(isinstance(k, str) and k in LOGGERS for k in self.log):
            raise UserError(f"config train.log: {self.log!r} is not a list of {', '.join(LOGGERS)}")


@dataclass
class SplitConfig:
    """How the facts are cut into a task sequence."""

    kind: str = "random"  # random | semantic
    tasks: int = 2
    seed: int = 0
    test_fraction: float = 0.3  # for manifest rows without a train/test split
    # A task file (`factlearn split`, `factlearn data import sherlock`) naming each task's facts;
    # when set, kind and tasks are not used. See factlearn/data/splits.py for the format.
    tasks_file: str | None = None


@dataclass
class MethodConfig:
    """The continual-learning method and its options: the flat union of every method's options,
    which is the ``method:`` section of a config file.

    A method reads only the fields in its ``options`` (``factlearn.continual.METHODS[name].options``),
    and its class docstring says what each means for it; ``create_method`` checks the section once.
    The comments below give the defaults' sources.
    """

    name: str = "finetune"
    # Penalty strength lambda (lwf: weight of the distillation term). 1.0 is a placeholder, not a
    # recommendation: the right value depends on the method, model and data, so take it from a sweep
    # on a validation split (scripts/sweep_lambda.py, docs/experiments.md "The λ trade-off").
    lam: float = 1.0
    accumulate: str = "sum"  # importance across tasks (mas, lmas, ewc, si): sum (MAS authors) | blend
    alpha: float = 0.5  # blend factor: alpha * old + (1 - alpha) * new
    importance: str = "exact"  # MAS: exact per-sample |grad| | batch (|grad of batch sum|, faster, smaller)
    importance_batch_size: int = 64  # samples per vmap call (MAS, l-MAS, EWC Fisher)
    max_importance_samples: int | None = None  # cap on samples for importance (None = all)
    # mas, lmas: unlabeled images for the IMAGE tower's importance (a data directory / manifest, whose
    # facts are ignored, or a folder of images); the language tower's still comes from the task's
    # facts. None = the task's own training images (MAS paper, Sec. 5: importance on test conditions).
    importance_data: str | None = None
    # online_ewc: Fisher decay, F <- gamma * F + F_task, one anchor (Schwarz et al. 2018, "Progress &
    # Compress", online EWC). The paper gives no universal value; 1.0 makes it equal to ewc here.
    gamma: float = 0.9
    # si: damping xi in Omega += w / (Delta^2 + xi) (Zenke et al. 2017, Eq. 5). 0.1 as in FACIL's SI;
    # the paper used 1e-3 on MNIST/CIFAR, where parameters move further per task.
    xi: float = 0.1
    # Quadratic penalties (mas, lmas, l2, ewc, online_ewc, si): how the pull lambda*Omega*(theta -
    # theta*)^2 acts. loss: a loss term, its gradient 2*lambda*Omega*(theta - theta*) enters the
    # optimizer (MAS Eq. 3; with SGD before momentum, as the reference code) | decoupled: applied
    # after the optimizer's step, outside Adam's preconditioner (as AdamW decouples weight decay).
    penalty: str = "loss"
    # Quadratic penalties: each task's Omega as measured (none, the papers') | divided by its mean
    # over each tower's parameters before accumulating (mean), so one lambda means the same across
    # models and worlds (compare lambda across them, or sweep it once).
    importance_norm: str = "none"
    # mas: the function whose sensitivity is measured. raw: ||F(x)||^2 of the raw embedding (MAS
    # Eq. 4) | normalized: random unit directions v . F_hat(x) of the slot-normalised embedding
    # retrieval ranks by (factlearn's extension), importance_directions of them per sample.
    importance_output: str = "raw"
    importance_directions: int = 4
    # mas, lmas, ewc, online_ewc: the images each task's importance comes from. train: the task's
    # training images (the papers') | held_out: the task file's held-out images of those facts,
    # which training never saw (`factlearn split --adaptation`).
    importance_images: str = "train"
    # ... and their facts. all: the task's own | the name of a subset in the task file (an
    # adaptation subset such as B11, or a monitored group): its facts learned so far, so the
    # importance protects that subset (MAS paper, Sec. 5: Table 4 and the sports facts of Fig. 4).
    importance_facts: str = "all"
    # mas: a control of what Omega carries (issue 17), at the same lambda. none: Omega as computed |
    # shuffled: each parameter tensor's values permuted at random (seeded), so the per-layer
    # distribution stays and the positions go | noise: computed from uniform random pixels of the
    # same shape instead of the images (the language tower's from the same facts as without it).
    importance_control: str = "none"
    # Quadratic penalties but l2: each task's Omega raised to this power before importance_norm (1:
    # as measured). p > 1 keeps Omega's order and concentrates the pull on its largest entries: MAS's
    # Omega (a mean |gradient|) is much flatter than SI's, and power 3 gives it SI's concentration on
    # the faithful world (docs/results/faithful/README.md, section 9). A diagnostic, in no paper.
    importance_power: float = 1.0

    def check(self) -> None:
        """Raise the loader's one-line UserError if a value is out of range or not a choice (for a
        MethodConfig built or changed in code, which never went through :func:`from_dict`)."""
        _check_values(self, "method")


@dataclass
class EvalConfig:
    """Evaluation after every task: the candidate protocol shown by default and the embedding batch."""
    protocol: str = "standard"  # standard: candidates = the task's facts; generalized: all seen
    batch_size: int = 256
    # At most this many test images per task (a sample drawn with split.seed, the same after every
    # task and for every run of the split); None: all. Exact evaluation costs images x candidates,
    # which grows with the square of the facts: at 200,000 facts a sample keeps it linear.
    max_images_per_task: int | None = None


@dataclass
class Config:
    """The whole configuration of a run, one section per concern (config.yaml in the run directory)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain nested dicts, as written to config.yaml. With ``split.tasks_file`` the task file
        gives the tasks: ``split.kind`` and ``split.tasks`` are not used and are left out (reading
        it back fills in their defaults, which are left out again), so a run records what it trained."""
        out = dataclasses.asdict(self)
        if self.split.tasks_file is not None:
            del out["split"]["kind"], out["split"]["tasks"]
        return out


# Allowed values of numeric keys (checked after the types; None passes where it is allowed).
_BOUNDS = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in (0, 10]": lambda v: 0 < v <= 10,  # learning rates: above 10 is a typo (1e3 for 1e-3), and overflows Adam
}
RANGES = {
    "model.image_size": "> 0", "model.slot_dim": "> 0", "model.po_grid": "> 0", "model.word_dim": "> 0",
    "model.text_hidden": "> 0", "model.freeze_stages": ">= 0",
    "loss.distance_weight": ">= 0", "loss.contrastive_weight": ">= 0", "loss.temperature": "> 0", "loss.num_negatives": "> 0",
    "train.epochs": "> 0", "train.batch_size": "> 0", "train.lr": "in (0, 10]", "train.weight_decay": ">= 0",
    "train.momentum": "in [0, 1)", "train.checkpoint_every": ">= 0",
    "train.val_fraction": "in [0, 1)", "train.patience": "> 0",
    "split.tasks": "> 0", "split.seed": ">= 0", "split.test_fraction": "in [0, 1)",
    "method.lam": ">= 0", "method.alpha": "in [0, 1]", "method.importance_batch_size": "> 0",
    "method.max_importance_samples": "> 0", "method.gamma": "in [0, 1]", "method.xi": "> 0",
    "method.importance_directions": "> 0", "method.importance_power": "> 0",
    "eval.batch_size": "> 0",
    "eval.max_images_per_task": "> 0",
}

CHOICES = {
    "model.backbone": ("resnet", "vit"),
    "model.text_encoder": ("phrase", "bert", "vectors"),
    "model.text_pooling": ("cls", "mean"),
    "loss.distance": ("normalized", "raw"),
    "loss.negatives": ("auto", "all", "sampled"),
    "train.optimizer": ("adam", "sgd"),
    "train.lr_schedule": ("constant", "cosine"),
    "split.kind": ("random", "semantic"),
    "method.accumulate": ("sum", "blend"),
    "method.importance": ("exact", "batch"),
    "method.penalty": ("loss", "decoupled"),
    "method.importance_norm": ("none", "mean"),
    "method.importance_output": ("raw", "normalized"),
    "method.importance_images": ("train", "held_out"),
    "method.importance_control": ("none", "shuffled", "noise"),
    "eval.protocol": ("standard", "generalized"),
}


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config {where or 'root'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in [n for n in data if (f"{where}.{n}" if where else n) in RETIRED and n not in names]:
        key = f"{where}.{name}" if where else name
        logger.warning("config: %s is no longer used (%s); ignored", key, RETIRED[key])
        data = {k: v for k, v in data.items() if k != name}
    unknown = sorted(set(data) - names, key=str)  # YAML keys may be numbers, booleans or null too
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"config: unknown key {key!r} (known: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"config: missing key {'.'.join(filter(None, [where, missing[0]]))!r}")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], value, key)
    obj = cls(**values)
    _check_values(obj, where)
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0])
    base = origin or hint
    if base is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:  # YAML reads "1e-3" as a string
            number: float | None = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        except ValueError:
            number = None
        if number is not None:
            if not math.isfinite(number):
                raise UserError(f"config {key}: expected a finite number, got {value!r}")
            return number
    if base is int and isinstance(value, bool):
        raise UserError(f"config {key}: expected int, got {value!r}")
    if isinstance(value, base):
        return value
    raise UserError(f"config {key}: expected {base.__name__}, got {value!r}")


def _check_values(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"config {key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        if key in RANGES and value is not None and not _BOUNDS[RANGES[key]](value):
            raise UserError(f"config {key}: {value!r} is out of range (must be {RANGES[key]})")


def read_yaml(path: str | Path) -> dict:
    """A YAML file holding a mapping (empty: {}); missing, invalid or not a mapping is a one-line
    UserError naming the file (a syntax error as ``file:line:column: not valid YAML: why``)."""
    path = Path(path)
    try:
        data = read_yaml_document(path) or {}
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"config file not found: {path}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None, overrides: dict | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    ``overrides`` maps dotted keys (``"method.lam"``) to values; None values are skipped so CLI
    options left unset do not override the file.
    """
    data: dict = read_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return from_dict(Config, data)
    except UserError as exc:
        raise UserError(f"{exc}" + (f" [in {path}]" if path else "")) from None
