"""Every private Lightning, TensorBoard-writer and Hydra API the suite uses, each behind one
named function: a new release that moves one breaks here, and ``tests/test_internals.py`` names
it. pyproject.toml pins the versions these were read from.

Lightning is imported only where a function needs it: the batched launcher imports this
module while Hydra starts, before any training.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import _flush_loggers, _save_config


def dump_checkpoint(trainer: Any) -> dict[str, Any]:
    """The checkpoint Lightning would save now, in memory, optimizer states included."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def count_optimizer_steps(trainer: Any) -> Callable[[int], None]:
    """Adds n optimizer steps to Lightning's count (global_step) of a manually optimised fit:
    a CUDA graph's replay steps without Lightning's optimizer wrapper, which counts them."""
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by


def preemption_signal() -> int:
    """submitit's checkpoint-and-requeue signal (SIGUSR2 unless its environment says)."""
    from submitit import JobEnvironment

    return JobEnvironment._usr_sig()


def chunks_completed(trainer: Any) -> int:
    """The training batches (chunks) of the current epoch whose steps are done."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def tensorboard_writer(logger: Any) -> Any:
    """A TensorBoardLogger's event writer, which takes whole events and summaries."""
    return logger.experiment._get_file_writer()


def set_bar_count(bar: Any, count: int) -> None:
    """A Lightning tqdm bar at ``count``, refreshed as Lightning refreshes it."""
    from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n

    _update_n(bar, count)


def save_hydra_config(config: Any, filename: str, folder: Path) -> None:
    """A job's config file in its .hydra folder, as Hydra's own launchers write it."""
    _save_config(config, filename, folder)


def flush_hydra_loggers() -> None:
    """Flush the logging handlers, as Hydra does at a job's end."""
    _flush_loggers()


class ParsedOnce:
    """Hydra's config repository, each config file parsed once for every composition of the
    process; each load gets a copy of its own, as a fresh parse gives (Hydra merges the
    loaded configs without copying them, then changes the result)."""

    def __init__(self, repository: Any, parsed: dict[tuple, Any] | None = None) -> None:
        self.repository = repository
        self.parsed: dict[tuple, Any] = {} if parsed is None else parsed

    def __deepcopy__(self, memo: dict[int, Any]) -> ParsedOnce:
        # Hydra copies the repository for each composition, as ``hydra.searchpath`` may
        # change its sources; the parsed files stay shared.
        return ParsedOnce(copy.deepcopy(self.repository, memo), self.parsed)

    def load_config(self, config_path: str) -> Any:
        # By the sources too: the same path may name another file under another search path.
        sources = tuple((s.provider, s.path) for s in self.repository.get_sources())
        key = (sources, config_path)
        if key not in self.parsed:
            self.parsed[key] = self.repository.load_config(config_path=config_path)
        found = self.parsed[key]
        return None if found is None else copy.deepcopy(found)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repository, name)


def parse_config_files_once(loader: Any) -> ParsedOnce:
    """Hydra's config loader, parsing each config file once per process: for every job it
    builds a repository (``_parse_overrides_and_create_caching_repo``) that parses each file
    of the defaults list again, about 40% of composing a job. The composed configs are the
    same; the parsed files are shared through ``loader.repository`` while a repository is
    built. Returns the shared files."""
    build = loader._parse_overrides_and_create_caching_repo
    shared = ParsedOnce(loader.repository)

    def build_from_shared(config_name: str | None, overrides: list[str]) -> Any:
        own, loader.repository = loader.repository, shared
        try:
            return build(config_name, overrides)
        finally:
            loader.repository = own

    loader._parse_overrides_and_create_caching_repo = build_from_shared
    return shared


class ComposedByChoices:
    """Hydra's config loader, composing the defaults of each set of config-group choices
    once: jobs that differ only in values (seeds, learning rates) share their defaults list
    (``create_defaults_list``) and the config merged from it
    (``_compose_config_from_defaults_list``), about 80% of composing a job. Each job gets a
    copy, to which Hydra's own code applies its value overrides and writes its Hydra node.

    A defaults list depends on the config-group overrides alone: Hydra's defaults lists may
    interpolate only config-group choices, never values; the config sources (which
    ``hydra.searchpath`` changes) are part of the key.
    """

    def __init__(self, loader: Any) -> None:
        self.lists: dict[tuple, Any] = {}  # key -> Hydra's DefaultsList
        self.composed: dict[int, tuple[Any, Any]] = {}  # id(defaults) -> (defaults, config)
        compose = loader._compose_config_from_defaults_list

        def compose_once(defaults: Any, repo: Any) -> Any:
            found = self.composed.get(id(defaults))
            if found is None or found[0] is not defaults:
                return compose(defaults=defaults, repo=repo)  # not a list of ours
            if found[1] is None:
                self.composed[id(defaults)] = (defaults, compose(defaults=defaults, repo=repo))
            return copy.deepcopy(self.composed[id(defaults)][1])

        loader._compose_config_from_defaults_list = compose_once

    def create_defaults_list(
        self,
        repo: Any,
        config_name: str | None,
        overrides_list: list[Any],
        prepend_hydra: bool,
        skip_missing: bool,
    ) -> Any:
        from hydra._internal.defaults_list import DefaultsList, Overrides, create_defaults_list

        split = Overrides(repo=repo, overrides_list=overrides_list)
        values = {id(override) for override in split.config_overrides}
        groups = tuple(o.input_line for o in overrides_list if id(o) not in values)
        sources = tuple((source.provider, source.path) for source in repo.get_sources())
        key = (config_name, prepend_hydra, skip_missing, sources, groups)
        if key not in self.lists:
            found = create_defaults_list(
                repo, config_name, overrides_list, prepend_hydra, skip_missing
            )
            self.lists[key] = found
            self.composed[id(found.defaults)] = (found.defaults, None)
        found = self.lists[key]
        return DefaultsList(
            defaults=found.defaults,
            config_overrides=split.config_overrides,  # this job's values, in its order
            defaults_tree=found.defaults_tree,
            overrides=found.overrides,
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        """While composing: Hydra's loader module takes its defaults lists from here."""
        from hydra._internal import config_loader_impl

        hydras = config_loader_impl.create_defaults_list
        config_loader_impl.create_defaults_list = self.create_defaults_list
        try:
            yield
        finally:
            config_loader_impl.create_defaults_list = hydras


def probes(trainer: Any, logger: Any) -> dict[str, bool]:
    """Whether each internal above is still there, by name, on a fresh Trainer and a
    TensorBoardLogger."""
    from hydra._internal import config_loader_impl, defaults_list
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from pytorch_lightning.callbacks.progress import tqdm_progress

    build = getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    manual = getattr(loop, "manual_optimization", None)
    progress = getattr(getattr(loop, "batch_progress", None), "current", None)
    return {
        "Trainer._checkpoint_connector.dump_checkpoint": callable(
            getattr(getattr(trainer, "_checkpoint_connector", None), "dump_checkpoint", None)
        ),
        "Trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by": (
            callable(getattr(getattr(manual, "optim_step_progress", None), "increment_by", None))
        ),
        "Trainer.fit_loop.epoch_loop.batch_progress.current.completed": isinstance(
            getattr(progress, "completed", None), int
        ),
        "TensorBoardLogger.experiment._get_file_writer": callable(
            getattr(logger.experiment, "_get_file_writer", None)
        ),
        "pytorch_lightning.callbacks.progress.tqdm_progress._update_n": callable(
            getattr(tqdm_progress, "_update_n", None)
        ),
        "submitit.JobEnvironment._usr_sig": callable(preemption_signal)
        and isinstance(preemption_signal(), int),
        "hydra.core.utils._save_config": callable(_save_config),
        "hydra.core.utils._flush_loggers": callable(_flush_loggers),
        # parse_config_files_once: each composition's repository wraps loader.repository.
        "ConfigLoaderImpl._parse_overrides_and_create_caching_repo": build is not None
        and "CachingConfigRepository(self.repository)" in inspect.getsource(build),
        # ComposedByChoices: the loader module's defaults lists, and its composing from them.
        "hydra._internal.config_loader_impl.create_defaults_list": callable(
            getattr(config_loader_impl, "create_defaults_list", None)
        ),
        "ConfigLoaderImpl._compose_config_from_defaults_list": callable(
            getattr(ConfigLoaderImpl, "_compose_config_from_defaults_list", None)
        ),
        "hydra._internal.defaults_list.DefaultsList, Overrides": hasattr(
            defaults_list, "DefaultsList"
        )
        and hasattr(defaults_list, "Overrides"),
    }
