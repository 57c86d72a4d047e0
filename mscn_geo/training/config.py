"""Every training option in one place: names, types, defaults, help, checks.

:class:`TrainConfig` is the single source of truth: the ``train`` command
derives its options from these fields (``metadata["help"]``, ``metadata["flag"]``
where the flag is not the field name), YAML/TOML config files use the field
names, and :func:`make_config` coerces values to the field types and checks
them before any data is read.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mscn_geo.errors import OptionError
from mscn_geo.fields import option

__all__ = [
    "FINE_TUNE_DEFAULTS",
    "RUNTIME_FIELDS",
    "TrainConfig",
    "config_for_resume",
    "make_config",
    "read_config_file",
]


@dataclass
class TrainConfig:
    """Every training knob. Defaults: the authors' recipe, scaled for scratch training."""

    arch: str = option("mscn_resnet18", help="Architecture: mscn_resnet18/34/50 or resnet18/34/50.")
    input_size: int | None = option(
        None,
        help="Training chip size in px = the model's tile size. "
        "Default: the chips' tile size from chips.json, else 256.",
    )
    epochs: int = option(300, help="Epochs (at least 1).")
    batch_size: int = option(64, help="Batch size.")
    lr: float = option(2e-3, help="Peak AdamW learning rate (of the head when fine-tuning).")
    min_lr: float = option(1e-5, help="Learning rate at the end of the cosine schedule.")
    weight_decay: float = option(0.05, help="AdamW weight decay.")
    warmup_epochs: int = option(5, help="Linear warm-up epochs.")
    label_smoothing: float = option(0.1, help="Label smoothing.")
    mixup_alpha: float = option(0.8, help="MixUp alpha, 0 = off.")
    cutmix_alpha: float = option(1.0, help="CutMix alpha, 0 = off.")
    mix_prob: float = option(1.0, help="Share of batches that get MixUp or CutMix.")
    randaugment_magnitude: int = option(9, help="RandAugment magnitude 0..30, 0 = off.")
    crop_scale_min: float = option(
        0.35, help="Smallest random crop, as a share of the chip's area."
    )
    random_erasing: float = option(0.25, help="Random erasing probability.")
    drop_rate: float = option(0.0, help="Dropout before the classifier.")
    ema_decay: float = option(0.0, help="EMA of weights, 0 = off.")
    val_fraction: float = option(
        0.2,
        help="Share of each class kept for validation (without chips.json or a validation folder).",
    )
    seed: int = option(0, help="Random seed.")
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N.")
    amp: bool | None = option(None, help="Mixed precision. Default: on with CUDA, off on CPU.")
    channels_last: bool = option(True, help="channels_last memory format on CUDA.")
    time_budget_min: float | None = option(
        None,
        help="Stop training within this many minutes (from the start, data loading included): "
        "the schedule is fitted to the time left after each epoch, and an epoch still running "
        "at the end stops early, leaving time for its validation (final writes come on top).",
    )
    pixel_size_m: float | None = option(
        None,
        help="Pixel size of the training chips in m. Default: from chips.json or georeferenced "
        "chips, else 0.3 (UC Merced).",
    )
    init: str | None = option(
        None,
        help="Fine-tune from 'bundled' or a checkpoint (.pt): new head for the classes found, "
        "backbone at a lower learning rate, CPU-sized default schedule.",
    )
    init_backbone: str | None = option(
        None, help="Local ResNet weights (torchvision/timm/torchgeo/ours) for the backbone."
    )
    backbone_lr_scale: float = option(1.0, help="Backbone learning rate as a share of lr.")
    freeze_epochs: int = option(0, help="Epochs with the backbone frozen at the start.")
    last_every_min: float = option(
        10.0,
        help="Write the resumable <out>_last.pt at most every this many minutes (and at the end).",
    )
    arch_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})


#: Defaults that change when ``init`` is given: a fine-tune sized for a CPU
#: (a 500-chip, 256 px fine-tune of mscn_resnet18 in under 10 minutes on 2 cores).
FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 6,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_epochs": 1,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "randaugment_magnitude": 5,
    "backbone_lr_scale": 0.1,
    "freeze_epochs": 2,
    "time_budget_min": 9.0,
}

#: Fields a resumed run takes from the caller; every other one must stay as stored.
RUNTIME_FIELDS = frozenset(
    {"epochs", "time_budget_min", "device", "amp", "channels_last", "last_every_min"}
)

_HINTS = typing.get_type_hints(TrainConfig)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """``value`` as the type of field ``name`` (YAML reads ``1e-3`` as a string)."""
    hint = _HINTS[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise OptionError(f"training option {name} needs a value")
    kinds = [a for a in args if a is not type(None)]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    bad = OptionError(f"training option {name} must be {_KIND_WORDS[kind]}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if kind in (int, float):
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise bad
        if kind is int:
            if number != int(number):
                raise bad
            return int(number)
        return number
    if kind is str:
        if isinstance(value, str | Path):
            return str(value)
        raise bad
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad
    return value


_KIND_WORDS = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a text",
    dict: "a mapping",
}

# (field, lowest, highest, lowest allowed itself, highest allowed itself); None = no bound.
_RANGES = [
    ("input_size", 32, None, True, True),
    ("epochs", 1, None, True, True),
    ("batch_size", 1, None, True, True),
    ("lr", 0, None, False, True),
    ("min_lr", 0, None, True, True),
    ("weight_decay", 0, None, True, True),
    ("warmup_epochs", 0, None, True, True),
    ("label_smoothing", 0, 1, True, False),
    ("mixup_alpha", 0, None, True, True),
    ("cutmix_alpha", 0, None, True, True),
    ("mix_prob", 0, 1, True, True),
    ("randaugment_magnitude", 0, 30, True, True),
    ("crop_scale_min", 0, 1, False, True),
    ("random_erasing", 0, 1, True, True),
    ("drop_rate", 0, 1, True, False),
    ("ema_decay", 0, 1, True, False),
    ("val_fraction", 0, 1, False, False),
    ("time_budget_min", 0, None, False, True),
    ("pixel_size_m", 0, None, False, True),
    ("backbone_lr_scale", 0, None, True, True),
    ("freeze_epochs", 0, None, True, True),
    ("last_every_min", 0, None, True, True),
]


def _check(cfg: TrainConfig, resuming: bool = False) -> None:
    from mscn_geo.models import list_models

    if cfg.arch not in list_models():
        raise OptionError(
            f"unknown architecture arch={cfg.arch!r}; known: {', '.join(list_models())}"
        )
    for name, low, high, low_ok, high_ok in _RANGES:
        value = getattr(cfg, name)
        if value is None:
            continue
        too_low = low is not None and (value < low or (value == low and not low_ok))
        too_high = high is not None and (value > high or (value == high and not high_ok))
        if too_low or too_high:
            lo = None if low is None else ("at least" if low_ok else "above") + f" {low}"
            hi = None if high is None else ("at most" if high_ok else "below") + f" {high}"
            bounds = " and ".join(b for b in (lo, hi) if b)
            raise OptionError(f"training option {name} must be {bounds}, got {value}")
    if cfg.init is not None and cfg.init_backbone is not None:
        raise OptionError("init and init_backbone exclude each other (init brings a whole model)")
    for name in () if resuming else ("init", "init_backbone"):  # used only at the start
        value = getattr(cfg, name)
        if value is not None and value != "bundled" and not Path(value).is_file():
            raise OptionError(f"training option {name}: file not found: {value}")
    if cfg.init_backbone == "bundled":
        raise OptionError(
            "init_backbone takes a weights file; to start from the bundled model use init"
        )
    from mscn_geo.device import resolve_device

    resolve_device(cfg.device)


def make_config(values: dict[str, Any] | None = None, file: Path | None = None) -> TrainConfig:
    """A checked :class:`TrainConfig` from a config file and explicit ``values`` (which win).

    With ``init`` set, fields given by neither take :data:`FINE_TUNE_DEFAULTS`.

    Raises:
        OptionError: unknown field, a value of the wrong type or out of range,
            an unknown architecture, a missing weights file, an unusable device.
    """
    raw = {**(read_config_file(file) if file is not None else {}), **(values or {})}
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        where = f" in {file}" if file is not None else ""
        raise OptionError(f"unknown training options{where}: {', '.join(unknown)}")
    if raw.get("init") is not None:
        raw = {**FINE_TUNE_DEFAULTS, **raw}
    cfg = TrainConfig(**{name: _coerce(name, value) for name, value in raw.items()})
    _check(cfg)
    return cfg


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping of a YAML or TOML file of training options."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise OptionError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as exc:  # yaml/tomllib errors have no common base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OptionError(f"config file {path} is not valid: {first}") from exc
    if not isinstance(raw, dict):
        raise OptionError(f"config file {path} must hold a mapping of option: value")
    return raw


def config_for_resume(stored: dict[str, Any], given: dict[str, Any] | None = None) -> TrainConfig:
    """The config a resumed run uses: the stored run's, with the caller's run-time fields.

    ``given`` holds the values the caller set (a whole ``dataclasses.asdict(cfg)``
    or only the options given). Fields in :data:`RUNTIME_FIELDS` (epochs, time
    budget, device...) are taken from it; any other field that differs from the
    stored run would make the resumed run another run (other data order,
    schedule or model) and is refused.

    Raises:
        OptionError: a field outside :data:`RUNTIME_FIELDS` differs (named), or
            a run-time value is invalid.
    """
    base = {k: _coerce(k, v) for k, v in stored.items() if k in _FIELDS}
    given = {k: _coerce(k, v) for k, v in (given or {}).items() if k in _FIELDS}
    changed = [
        f"{name} ({base.get(name)!r} -> {value!r})"
        for name, value in given.items()
        if name not in RUNTIME_FIELDS and value != base.get(name, _FIELDS[name].default)
    ]
    if changed:
        raise OptionError(
            "cannot resume with other training options than the interrupted run: "
            f"{', '.join(changed)}; only {', '.join(sorted(RUNTIME_FIELDS))} may change"
        )
    cfg = TrainConfig(**{**base, **{k: v for k, v in given.items() if k in RUNTIME_FIELDS}})
    _check(cfg, resuming=True)
    return cfg
