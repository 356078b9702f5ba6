"""Your own recipes in the grid: the public registration API and the loading of plugin modules.

A plugin is a module that calls these functions when imported. It is loaded

- from the entry-point group ``diagnostics.plugins`` of any installed distribution (each entry
  names a module to import: ``[project.entry-points."diagnostics.plugins"] mine = "mypkg.recipes"``),
  in every process, on import of the CLI or the pytest plugin;
- from ``--plugins MODULE[,MODULE]`` on every command: a module name, or a ``.py`` file (a file
  path travels to the other processes and release environments as it is).

What is registered trains, is judged, calibrated, compared, released and plotted like the
built-in recipes (it is an entry of the same registries: ``recipes.OPTIMIZERS``,
``recipes.SCHEDULERS``, ``models.MODELS``), and ``--help`` lists it once loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from diagnostics.errors import DiagnosticsError

ENTRY_POINT_GROUP = "diagnostics.plugins"
NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a name fits in a run id between dashes


class PluginError(DiagnosticsError, ValueError):
    """A plugin that cannot be loaded or registers something invalid; one line."""


def _check_name(kind: str, name: str, registry: dict, factory) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise PluginError(f"{kind} name {name!r}: lower-case letters, digits and _ only, starting with a letter "
                          "(it becomes part of run ids)")
    if name in registry and getattr(registry[name], "make", getattr(registry[name], "build", None)) is not factory:
        raise PluginError(f"{kind} {name!r} is already registered (built-in or by another plugin)")


def register_optimizer(name: str, factory: Callable, *, impls: tuple[str, ...] | None = None, **defaults) -> None:
    """Add optimizer ``name``: ``factory`` is a ``torch.optim.Optimizer`` class or a callable
    taking the param groups and the keyword arguments. ``defaults`` are its keyword arguments and
    must include ``lr`` (scaled by a run's ``--lr-scales``); ``weight_decay`` (default 0) goes to
    the weights' group, never to biases and normalisation parameters. ``impls``: the
    implementations it has (``spec.IMPLS``); default: all of torch's for an Optimizer subclass
    (one a release lacks is a stated skip), else ``default`` and ``forloop``."""
    from diagnostics.grid.recipes import IMPL_KWARGS, OPTIMIZERS, OptimizerRecipe

    _check_name("optimizer", name, OPTIMIZERS, factory)
    lr = defaults.get("lr")
    if not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise PluginError(f"optimizer {name!r}: defaults need a positive finite lr (got {lr!r})")
    torch_class = inspect.isclass(factory) and _is_torch_optimizer(factory)
    impls = tuple(impls) if impls is not None else tuple(IMPL_KWARGS) if torch_class else ("default", "forloop")
    bad = [i for i in impls if i not in IMPL_KWARGS]
    if bad or "default" not in impls:
        raise PluginError(f"optimizer {name!r}: impls must include 'default' and be among {', '.join(IMPL_KWARGS)}")
    OPTIMIZERS[name] = OptimizerRecipe(name, factory, dict(defaults, weight_decay=defaults.get("weight_decay", 0.0)),
                                       impls)


def _is_torch_optimizer(cls) -> bool:
    import torch

    return issubclass(cls, torch.optim.Optimizer) and cls.__module__.startswith("torch.")


def register_scheduler(name: str, factory: Callable, *, resolve: Callable[[int, float], dict] | None = None,
                       **kwargs) -> None:
    """Add LR schedule ``name``: ``factory`` is a ``torch.optim.lr_scheduler`` class (or a
    callable taking the optimizer and keyword arguments, returning a scheduler), stepped once
    per optimizer step after linear warmup (``recipes``' calling contract). Its arguments are
    ``kwargs``, or ``resolve(main_steps, lr) -> kwargs`` for numbers that follow the run's
    length (the steps after warmup) or its peak LR."""
    from diagnostics.grid.recipes import SCHEDULERS, SchedulerRecipe

    _check_name("scheduler", name, SCHEDULERS, factory)
    if resolve is not None and kwargs:
        raise PluginError(f"scheduler {name!r}: give fixed kwargs or resolve, not both")
    fixed = dict(kwargs)
    SCHEDULERS[name] = SchedulerRecipe(name, factory, resolve or (lambda main_steps, lr: dict(fixed)))


def register_model(name: str, build: Callable, *, task: str, batch_size: int | dict = 32,
                   needs_torchvision: bool = False, has_attention: bool = False) -> None:
    """Add model ``name``: ``build(size, data)`` returns an ``nn.Module`` for size preset
    ``size`` (``models.SIZES``) and the data's facts ``data`` (``models.DataInfo``: vocab_size
    and block_size for ``task="lm"``, num_classes, channels and image_size for ``task="image"``).
    An image model maps images (N, C, H, W) to class logits (N, classes); an LM maps tokens
    (N, T) to next-token logits (N, T, vocab). The loss is the task's (``models.task_loss``): the
    module needs no method of this project. ``batch_size``: one for every size, or per size."""
    from diagnostics.grid.models import GPT_PRESETS, MODELS, SIZES, TASKS, ModelEntry

    _check_name("model", name, MODELS, build)
    if task not in TASKS:
        raise PluginError(f"model {name!r}: task must be one of {', '.join(TASKS)} (got {task!r})")
    sizes = batch_size if isinstance(batch_size, dict) else {size: batch_size for size in SIZES}
    if set(sizes) != set(SIZES) or not all(isinstance(b, int) and b > 0 for b in sizes.values()):
        raise PluginError(f"model {name!r}: batch_size must be a positive int or one per size ({', '.join(SIZES)})")
    context = {size: preset.block_size for size, preset in GPT_PRESETS.items()} if task == "lm" else {}
    MODELS[name] = ModelEntry(name, task, build, sizes, needs_torchvision, context=context,
                              has_attention=has_attention)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

_loaded: dict[str, str] = {}  # what was loaded (a module name or file path) -> the module's name


def load_entry_points() -> list[str]:
    """Import every module of the ``diagnostics.plugins`` entry-point group (once)."""
    names = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in _loaded:
            try:
                ep.load()
            except Exception as e:
                raise PluginError(f"plugin entry point {ep.name} = {ep.value}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
            _loaded[ep.value] = ep.value
        names.append(ep.value)
    return names


def parse(value: str | None) -> tuple[str, ...]:
    """``--plugins``' comma list; a ``.py`` path made absolute (it is passed on to other processes)."""
    if not value:
        return ()
    return tuple(str(Path(v).resolve()) if v.endswith(".py") else v for v in (p.strip() for p in value.split(","))
                 if v)


def load(value: str | None) -> tuple[str, ...]:
    """Load the entry points, then each ``--plugins`` module (once each); returns the latter."""
    load_entry_points()
    wanted = parse(value)
    for item in wanted:
        if item in _loaded:
            continue
        try:
            if item.endswith(".py"):
                if not Path(item).is_file():
                    raise PluginError(f"--plugins {item}: no such file")
                module_name = f"diagnostics_plugin_{Path(item).stem}"
                spec = importlib.util.spec_from_file_location(module_name, item)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(f"--plugins {item}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
                from None
        _loaded[item] = item
    return wanted
