"""Start-up validation: every bad value fails before any data or training work, with one line
that names the key, the value and what is allowed.
"""

from __future__ import annotations

import inspect
import math
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from slowlearn.data import SPLITS
from slowlearn.errors import ConfigError
from slowlearn.losses import ACTIVATIONS, LOG_LOSSES, LOSSES
from slowlearn.model import HIDDEN_ACTIVATIONS, INITS
from slowlearn.naming import override_key
from slowlearn.optimizers import NOT_SETTINGS, OPTIMIZERS
from slowlearn.prepare import DATASETS, training_set_size

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # hydra.main's config_path
# Keys that configs do not have, each with the key that says what it meant.
RENAMED = {"module.log_every_n_steps": "module.loss_window"}


def folder_is_writable(folder: str) -> bool:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def shown(value: Any) -> Any:
    return list(value) if isinstance(value, ListConfig) else value


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before any data or training work, on a value that cannot work."""

    def require(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(
                f"{key}={shown(OmegaConf.select(cfg, key))!r} is not allowed: {allowed}"
            )

    def number(key: str) -> Any:
        value = OmegaConf.select(cfg, key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    def positive(key: str, integer: bool = False) -> None:
        value = number(key)
        ok = value is not None and value > 0 and (isinstance(value, int) or not integer)
        require(ok, key, "a positive integer" if integer else "a positive number")

    def one_of(key: str, choices: Iterable[str]) -> None:
        require(OmegaConf.select(cfg, key) in choices, key, f"one of {', '.join(choices)}")

    for old, new in RENAMED.items():
        if OmegaConf.select(cfg, old) is not None:
            raise ConfigError(f"{old} is not a key: use {new}")
    one_of("activation.name", ACTIVATIONS)
    one_of("loss.name", LOSSES)
    if ACTIVATIONS[cfg.activation.name].log_outputs is None:
        require(
            cfg.loss.name not in LOG_LOSSES,
            "loss.name",
            f"mse with activation={cfg.activation.name} (its outputs are no probabilities "
            "to take the log of)",
        )
    base = OmegaConf.select(cfg, "loss.log_base")
    if cfg.loss.name not in LOG_LOSSES:
        require(base is None, "loss.log_base", f"{cfg.loss.name} takes no logarithm")
    require(  # none given: natural
        base in (None, "e") or (number("loss.log_base") is not None and base > 0 and base != 1),
        "loss.log_base",
        "e, or a positive number other than 1 (2 gives bits)",
    )
    check_optimizer(cfg, require, positive, number)
    if cfg.get("threads") is not None:
        positive("threads", integer=True)
    for key in ("module.loss_window", "module.diagnostics_window"):
        positive(key, integer=True)
    every = number("module.diagnostics_every_n_steps")
    require(
        isinstance(every, int) and every >= 0,
        "module.diagnostics_every_n_steps",
        "0 (off) or a positive integer",
    )
    graphs = OmegaConf.select(cfg, "module.cuda_graphs")
    if graphs is not None:
        require(
            graphs == "auto" or isinstance(graphs, bool),
            "module.cuda_graphs",
            "one of auto, true, false",
        )
    positive("trainer.max_epochs", integer=True)
    model, data = cfg.model, cfg.data
    if "hidden_sizes" in model:
        sizes = model.hidden_sizes
        require(
            isinstance(sizes, ListConfig)
            and len(sizes) > 0
            and all(isinstance(size, int) and size > 0 for size in sizes),
            "model.hidden_sizes",
            "a non-empty list of positive integers, e.g. [100, 100]",
        )
    if "hidden_activation" in model:
        one_of("model.hidden_activation", HIDDEN_ACTIVATIONS)
    if "init" in model:
        one_of("model.init", INITS)
    if model.get("output_init_scale") is not None:
        if model.get("_target_") == "slowlearn.model.Neuron":
            require(False, "model.output_init_scale", "null for the neuron (start sets it)")
        scale = number("model.output_init_scale")
        require(
            scale is not None and 0 < scale < math.inf,
            "model.output_init_scale",
            "null (the output layer keeps model.init) or a positive number",
        )
    if "dataset" in data:
        one_of("data.dataset", DATASETS)
    for key in ("batch_size", "steps_per_chunk", "eval_batch_size", "steps"):
        if key in data:
            positive(f"data.{key}", integer=True)
    if "split" in data:
        one_of("data.split", SPLITS)
    if "val_size" in data:
        value, size = number("data.val_size"), training_set_size(data.get("dataset", "mnist"))
        require(
            isinstance(value, int) and 0 < value < size,
            "data.val_size",
            f"1 to {size - 1} (the training set has {size} samples)",
        )
    if "dir" in data:
        require(
            folder_is_writable(data.dir), "data.dir", "a folder that can be created and written"
        )


def check_optimizer(cfg: DictConfig, require: Any, positive: Any, number: Any) -> None:
    """The update rule is one that the per-member optimizer reproduces, with its own keys."""
    target = OmegaConf.select(cfg, "optimizer._target_")
    require(target in OPTIMIZERS, "optimizer._target_", f"one of {', '.join(OPTIMIZERS)}")
    positive("optimizer.lr")
    accepted = set(inspect.signature(OPTIMIZERS[target]).parameters) - {
        "params",
        "lr",
        "selected",
        "freeze",
    }
    for key in cfg.optimizer:
        if key not in NOT_SETTINGS:
            require(key in accepted, f"optimizer.{key}", f"not a key of {target}")
    if OmegaConf.select(cfg, "optimizer.momentum") is not None:
        momentum = number("optimizer.momentum")
        require(momentum is not None and momentum >= 0, "optimizer.momentum", "0 or more")


def in_current_keys(saved: DictConfig) -> DictConfig:
    """A run's saved config (``.hydra/config.yaml``, as loaded) in the keys of today's configs,
    so that runs saved with earlier keys still resume and evaluate: a renamed key under its
    name, the optimizer by the rule built (``torch.optim.SGD`` names the rule reproducing it),
    and no log base for a loss that takes no log."""
    for old, new in RENAMED.items():
        value = OmegaConf.select(saved, old)
        if value is not None:
            OmegaConf.update(saved, new, value, force_add=True)
            parent, leaf = old.rsplit(".", 1)
            saved[parent].pop(leaf)
    target = OmegaConf.select(saved, "optimizer._target_")
    for rule_target, rule in OPTIMIZERS.items():
        if target == f"torch.optim.{rule.rule.__name__}":
            saved.optimizer._target_ = rule_target
    if saved.loss.name not in LOG_LOSSES:
        saved.loss.pop("log_base", None)
    return saved


def renamed_key(overrides: list[str]) -> str | None:
    """The first command-line key that is not a key any more, as one line naming the key to
    use; Hydra's own message spans a screen."""
    for override in overrides:
        if (key := override_key(override)) in RENAMED:
            return f"{key} is not a key: use {RENAMED[key]}"
    return None


def unknown_group_option(overrides: list[str]) -> str | None:
    """The first command-line choice of a config group option that does not exist, as one
    line naming it and the choices; Hydra's own message spans a screen."""
    for override in overrides:
        key, value = override_key(override), override.partition("=")[2]
        group = CONF_DIR / key
        if key.startswith("hydra") or not group.is_dir():
            continue  # a key, or Hydra's own groups (launchers come from plugins)
        if not value.replace(",", "").isidentifier():
            continue  # not a plain choice: a sweep function, an interpolation...
        choices = sorted(path.stem for path in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in choices and choice != "null":
                return f"{key}={choice} is not allowed: one of {', '.join(choices)}"
    return None
