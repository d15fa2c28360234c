"""Every private name of torch, diffusers and transformers that supergen uses, in one place.

supergen builds on diffusers' hooks, its context parallelism and torch's fake tensors, and some of
what it needs is not public API: a module or name with a leading underscore, a private attribute of a
library object, or a diffusers module that its package does not export (``INTERNAL_MODULES``). Such
names change between releases without notice, so they are reached only through this module
(``tests/test_compat.py`` fails on any other use). Each one says which releases it was checked on
and what happens when it is missing: a :class:`MissingPrivateName` naming the supergen feature that
needs it and the first release that has it, raised when the feature is first used, not deep inside a
render. docs/compatibility.md has the version matrix these claims come from (``scripts/version_matrix.sh``).

Names resolve lazily (``compat.FakeTensorMode`` imports torch's fake tensors on first use), so
importing this module costs nothing: ``import supergen`` and the CLI stay free of diffusers.

Protocol attributes: supergen's own hooks and attention processors also carry class attributes that
diffusers reads by name (``_is_stateful`` on a ``ModelHook``, ``_attention_backend`` and
``_parallel_config`` on a processor). They are set where the class is defined and checked by the
same version matrix; a release that renamed them would show there.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Iterator

from .errors import SuperGenError

if TYPE_CHECKING:  # annotations only: importing torch here would make the module heavy
    import torch

#: Releases every name below was checked on (docs/compatibility.md: the matrix rows that passed).
CHECKED = {
    "diffusers": "0.41.0, 0.42.1",
    "torch": "2.11.0, 2.13.0, 2.14.1",
    "accelerate": "1.0.1, 1.15.0, 1.16.0",
}

#: diffusers modules without a leading underscore that its packages do not export and that change
#: between releases (``hooks.hooks`` gained ``CacheContext`` in 0.41): private all the same.
INTERNAL_MODULES = (
    "diffusers.hooks.hooks",
    "diffusers.hooks.group_offloading",
    "diffusers.hooks.context_parallel",
    "diffusers.models.attention_dispatch",
)


class MissingPrivateName(SuperGenError, ImportError):
    """The installed torch/diffusers lacks a private name a supergen feature needs."""


@dataclass(frozen=True)
class Private:
    """One private name: where it lives, which supergen feature needs it, the first release with it.

    Args:
        path: ``module:attribute.chain`` (``diffusers.hooks._helpers:TransformerBlockRegistry``); an
            empty chain names the module itself.
        feature: what in supergen stops working without it (said in the error).
        since: the first release that has it, e.g. ``"diffusers 0.41.0"``.
    """

    path: str
    feature: str
    since: str

    @property
    def library(self) -> str:
        return self.path.split(".", 1)[0].split(":", 1)[0]

    def missing(self) -> MissingPrivateName:
        """The error for this name being absent from the installed library (raise it ``from`` the cause)."""
        try:
            installed = f"{self.library} {metadata.version(self.library)}"
        except metadata.PackageNotFoundError:
            installed = f"this environment (no {self.library} installed)"
        return MissingPrivateName(
            f"{installed} has no {self.path}, needed by {self.feature}: it is in {self.since} and later, and supergen is "
            f"checked on {self.library} {CHECKED.get(self.library, '?')}; install versions in the range supergen's "
            f"pyproject.toml declares")

    def load(self) -> Any:
        module, _, chain = self.path.partition(":")
        try:
            value = importlib.import_module(module)
            for attribute in filter(None, chain.split(".")):
                value = getattr(value, attribute)
        except (ImportError, AttributeError) as error:
            raise self.missing() from error
        return value


_CP = "tile-parallel context parallelism (parallel.sketch=ulysses)"
_HOOKS = "the region and block caches (cache.*) and the guidance split (parallel.cfg)"
_TRACE = "the memory trace (supergen plan / preflight)"

#: Names read as ``compat.NAME`` (or ``from supergen.compat import NAME``), resolved on first use.
NAMES: dict[str, Private] = {
    # diffusers: context parallelism (CogVideoX / HunyuanVideo plans; undoing enable_parallelism).
    "ContextParallelInput": Private("diffusers.models._modeling_parallel:ContextParallelInput", _CP, "diffusers 0.36.0"),
    "ContextParallelOutput": Private("diffusers.models._modeling_parallel:ContextParallelOutput", _CP, "diffusers 0.36.0"),
    "remove_context_parallel": Private("diffusers.hooks.context_parallel:remove_context_parallel", _CP, "diffusers 0.36.0"),
    "attention_dispatch": Private("diffusers.models.attention_dispatch", _CP, "diffusers 0.36.0"),
    "dispatch_attention_fn": Private("diffusers.models.attention_dispatch:dispatch_attention_fn",
                                     "the CogVideoX and LTX tile attention processors", "diffusers 0.35.0"),
    # diffusers: hooks and their per-context state.
    "BaseState": Private("diffusers.hooks.hooks:BaseState", _HOOKS, "diffusers 0.32.0"),
    "StateManager": Private("diffusers.hooks.hooks:StateManager", _HOOKS, "diffusers 0.32.0"),
    # 0.41 turned the context from a name into this record; supergen keys its states on it.
    "CacheContext": Private("diffusers.hooks.hooks:CacheContext", _HOOKS, "diffusers 0.41.0"),
    "TransformerBlockRegistry": Private("diffusers.hooks._helpers:TransformerBlockRegistry",
                                        "the block cache (cache.block)", "diffusers 0.35.0"),
    "TRANSFORMER_BLOCK_IDENTIFIERS": Private("diffusers.hooks._common:_ALL_TRANSFORMER_BLOCK_IDENTIFIERS",
                                             "the cache report's block counts (cache.report)", "diffusers 0.35.0"),
    "ModuleGroup": Private("diffusers.hooks.group_offloading:ModuleGroup",
                           "the group-offload memory trace (supergen plan --offload group)", "diffusers 0.33.0"),
    # diffusers: the LTX pipelines' latent layout (static methods, shared by text- and image-to-video).
    "ltx_pack_latents": Private("diffusers.pipelines.ltx.pipeline_ltx:LTXPipeline._pack_latents", "the LTX-Video adapter", "diffusers 0.32.0"),
    "ltx_unpack_latents": Private("diffusers.pipelines.ltx.pipeline_ltx:LTXPipeline._unpack_latents", "the LTX-Video adapter", "diffusers 0.32.0"),
    "ltx_normalize_latents": Private("diffusers.pipelines.ltx.pipeline_ltx:LTXPipeline._normalize_latents", "the LTX-Video adapter", "diffusers 0.32.0"),
    "ltx_denormalize_latents": Private("diffusers.pipelines.ltx.pipeline_ltx:LTXPipeline._denormalize_latents", "the LTX-Video adapter", "diffusers 0.32.0"),
    # torch: fake tensors and dispatch modes, for tracing a render's memory without running it.
    "FakeTensor": Private("torch._subclasses.fake_tensor:FakeTensor", _TRACE, "torch 2.1.0"),
    "FakeTensorMode": Private("torch._subclasses.fake_tensor:FakeTensorMode", _TRACE, "torch 2.1.0"),
    "unset_fake_temporarily": Private("torch._subclasses.fake_tensor:unset_fake_temporarily", _TRACE, "torch 2.1.0"),
    "DataDependentOutputException": Private("torch._subclasses.fake_tensor:DataDependentOutputException", _TRACE, "torch 2.1.0"),
    "DynamicOutputShapeException": Private("torch._subclasses.fake_tensor:DynamicOutputShapeException", _TRACE, "torch 2.1.0"),
    "TorchDispatchMode": Private("torch.utils._python_dispatch:TorchDispatchMode", _TRACE, "torch 2.0.0"),
    "tree_flatten": Private("torch.utils._pytree:tree_flatten", _TRACE, "torch 2.0.0"),
    # The op behind Tensor.item(): the trace lets the host read real scalars.
    "LOCAL_SCALAR_DENSE": Private("torch:ops.aten._local_scalar_dense.default", _TRACE, "torch 2.0.0"),
    # torch: dynamo's settings and counters (recompile limits; compile counts in tests and the GPU kit).
    "dynamo_config": Private("torch._dynamo.config", "compiled FlexAttention (attention.mode=flex)", "torch 2.0.0"),
    "dynamo_counters": Private("torch._dynamo.utils:counters", "compiled FlexAttention (attention.mode=flex)", "torch 2.0.0"),
    # A torch.compile backend that counts the graphs dynamo captures and runs them uncompiled.
    "CompileCounter": Private("torch._dynamo.testing:CompileCounter", "the compile-count checks (tests, the GPU kit)", "torch 2.0.0"),
}


def __getattr__(name: str) -> Any:
    """``compat.NAME``: the private name, imported on first use and kept."""
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = NAMES[name].load()
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(NAMES))


# ---- private attributes of library objects ---------------------------------------------------------

#: Private attributes read or written on torch/diffusers objects, with the same records as NAMES
#: (``path`` is the class that has them).
ATTRIBUTES: dict[str, Private] = {
    "_cdata": Private("torch:UntypedStorage._cdata", _TRACE, "torch 2.0.0"),
    "_execution_device": Private("diffusers:DiffusionPipeline._execution_device", "every model adapter (the pipeline's device)", "diffusers 0.16.0"),
    "_progress_bar_config": Private("diffusers:DiffusionPipeline._progress_bar_config", "the sketch's progress bar label", "diffusers 0.5.0"),
    "_cp_plan": Private("diffusers:ModelMixin._cp_plan", _CP, "diffusers 0.36.0"),
    "_parallel_config": Private("diffusers:ModelMixin._parallel_config", _CP, "diffusers 0.36.0"),
    "_context": Private("diffusers.hooks.hooks:StateManager._context", "the guidance split (parallel.cfg)", "diffusers 0.41.0"),
    "_state_cls": Private("diffusers.hooks.hooks:StateManager._state_cls", "region-keyed diffusers caches (cache.policy=fbc|magcache)", "diffusers 0.32.0"),
    "_init_args": Private("diffusers.hooks.hooks:StateManager._init_args", "region-keyed diffusers caches (cache.policy=fbc|magcache)", "diffusers 0.32.0"),
    "_init_kwargs": Private("diffusers.hooks.hooks:StateManager._init_kwargs", "region-keyed diffusers caches (cache.policy=fbc|magcache)", "diffusers 0.32.0"),
    "_diffusers_hook": Private("diffusers.hooks:HookRegistry (as module._diffusers_hook)",
                               "region-keyed diffusers caches (cache.policy=fbc|magcache); encoders.park", "diffusers 0.32.0"),
    "_hf_hook": Private("accelerate.hooks:add_hook_to_module (as module._hf_hook)", "encoders.park", "accelerate 0.15.0"),
    "_get_parameter_from_args_kwargs": Private("diffusers.hooks._helpers:TransformerBlockMetadata._get_parameter_from_args_kwargs",
                                               "the block cache (cache.block)", "diffusers 0.35.0"),
    "_resolve_dtype": Private("diffusers.utils.deprecation_utils:_resolve_dtype", "loading a pipeline with dtype=", "diffusers 0.40.0"),
}


def _attribute(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError as error:
        raise ATTRIBUTES[name].missing() from error


def storage_key(storage: torch.UntypedStorage) -> int:
    """An id of a tensor's storage shared by all its views (fake or real), for counting bytes once."""
    return _attribute(storage, "_cdata")


def returns_alias(op) -> bool:
    """Whether an ATen op's result aliases one of its inputs (a view, or an in-place / ``out=`` result),
    read from the op's schema (``OpOverload._schema``, torch 2.0+). An op without a schema (a
    higher-order op) counts as not aliasing: the trace then counts its result as new memory, the
    larger estimate."""
    schema = getattr(op, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def execution_device(pipe) -> Any:
    """The device a diffusers pipeline runs its models on (accounts for CPU offload hooks)."""
    return _attribute(pipe, "_execution_device")


@contextlib.contextmanager
def progress_bar_label(pipe, desc: str) -> Iterator[None]:
    """Inside the block the pipeline's step bar says ``desc``; its settings are restored after.

    diffusers keeps the settings in ``_progress_bar_config`` and its public setter replaces them all,
    so a label cannot be added and taken back through it. A pipeline without the attribute has never
    been configured: it is created, then removed again.
    """
    settings = getattr(pipe, "_progress_bar_config", None)
    pipe._progress_bar_config = {**(settings or {}), "desc": desc}
    try:
        yield
    finally:
        if settings is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = settings


@contextlib.contextmanager
def methods_replaced(owner: Any, **methods: Any) -> Iterator[None]:
    """Inside the block, the methods ``methods`` of ``owner`` (a diffusers object or class) are the
    callables given; restored as found on exit, also when the block raises.

    For the fake-tensor trace, which models diffusers work it does not run as such (a VAE's row-by-row
    ``blend_v`` / ``blend_h``, group offloading's ``ModuleGroup.onload_`` / ``offload_`` weight moves).
    A name ``owner`` lacks raises: a release that renamed it would otherwise be traced unreplaced, silently.
    """
    missing = [name for name in methods if not callable(getattr(owner, name, None))]
    if missing:
        raise SuperGenError(f"{getattr(owner, '__name__', type(owner).__name__)} has no method {', '.join(missing)} in the "
                            "installed diffusers: the trace cannot model it (docs/compatibility.md lists the tested releases)")
    own = vars(owner)
    saved = {name: own[name] for name in methods if name in own}
    for name, method in methods.items():
        setattr(owner, name, method)
    try:
        yield
    finally:
        for name in methods:
            if name in saved:
                setattr(owner, name, saved[name])
            else:
                delattr(owner, name)


def context_parallel_plan(model) -> Any:
    """The transformer's own context-parallel plan; ``None`` where its family ships none, and (the
    fallback) where the model or the diffusers release has no plans at all."""
    return getattr(model, "_cp_plan", None)


def forget_parallel_config(model) -> None:
    """What ``enable_parallelism`` set on ``model`` and its attention processors, unset (diffusers has
    no public undo; ``remove_context_parallel`` removes only the hooks)."""
    _attribute(model, "_parallel_config")
    for module in model.modules():
        if hasattr(getattr(module, "processor", None), "_parallel_config"):
            module.processor._parallel_config = None
    model._parallel_config = None


def dispatcher_collectives() -> tuple[Any, Any] | None:
    """The collectives modules diffusers' attention dispatcher calls (``funcol``, ``dist``) or None.

    Fallback: None where a release renamed them (they are module globals of an internal module);
    the caller then leaves them alone and its byte counts miss the attention all-to-alls.
    """
    dispatch = __getattr__("attention_dispatch")
    functional, distributed = getattr(dispatch, "funcol", None), getattr(dispatch, "dist", None)
    return None if functional is None or distributed is None else (functional, distributed)


def set_dispatcher_collectives(functional: Any, distributed: Any) -> None:
    """Replace what :func:`dispatcher_collectives` returned (e.g. by counting wrappers, then back)."""
    dispatch = __getattr__("attention_dispatch")
    dispatch.funcol, dispatch.dist = functional, distributed


def current_context(manager) -> Any:
    """A diffusers ``StateManager``'s cache context (``CacheContext``, its ``name`` the guidance
    branch) or None outside one; the public ``manager.context`` raises there instead."""
    return _attribute(manager, "_context")


def state_manager_args(manager) -> tuple[type, tuple, dict]:
    """``(state_cls, init_args, init_kwargs)`` a diffusers ``StateManager`` was made with."""
    return _attribute(manager, "_state_cls"), _attribute(manager, "_init_args"), _attribute(manager, "_init_kwargs")


def hook_registries(model) -> list:
    """The diffusers ``HookRegistry`` of every submodule of ``model`` that has one."""
    return [m._diffusers_hook for m in model.modules() if hasattr(m, "_diffusers_hook")]


def diffusers_hooked(module) -> bool:
    """Whether diffusers hooks (offloading, caches) are installed on ``module`` itself."""
    return bool(getattr(module, "_diffusers_hook", None))


def accelerate_hooked(module) -> bool:
    """Whether an accelerate hook (``enable_model_cpu_offload``, ``device_map``) manages ``module``."""
    return hasattr(module, "_hf_hook")


def block_argument(metadata, name: str, args: tuple, kwargs: dict) -> Any:
    """Argument ``name`` of a transformer block's call, by the block's registered metadata."""
    return _attribute(metadata, "_get_parameter_from_args_kwargs")(name, args, kwargs)


def dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword in the installed diffusers: ``dtype`` where diffusers has
    the helper that resolves the renamed ``torch_dtype`` (which then warns), else ``torch_dtype``.

    Fallback by design: a diffusers without the helper takes the old name.
    """
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
