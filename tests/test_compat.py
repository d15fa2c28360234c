"""supergen.compat is the one way to private names of torch, diffusers and transformers; a missing one
gives an error naming the feature and the release that has it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supergen import compat
from supergen.compat import INTERNAL_MODULES, MissingPrivateName, Private

ROOT = Path(__file__).resolve().parents[1]
#: Where supergen's code lives: the package, the kernels' package and the scripts (tests and the
#: kernel bench, a stand-alone script that tunes dynamo, may poke at internals).
SOURCES = [ROOT / "supergen", ROOT / "kernels" / "supergen_kernels", ROOT / "scripts"]
LIBRARIES = {"torch", "diffusers", "transformers", "accelerate", "triton"}
ATTRIBUTE_CALLS = {"getattr", "hasattr", "setattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _files() -> list[Path]:
    return sorted(p for root in SOURCES for p in root.rglob("*.py") if p != ROOT / "supergen" / "compat.py")


def _own_private_names(trees: list[ast.Module]) -> set[str]:
    """``_names`` supergen defines itself: functions, classes, module globals, ``self._x``/``cls._x``.

    Class-body assignments are left out: there supergen sets attributes diffusers reads (the
    protocol attributes compat's docstring lists), so a class-body ``_x`` proves nothing about ``obj._x``.
    """
    names = set()
    for tree in trees:
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
    return {n for n in names if _private(n)}


def _forbidden_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] in LIBRARIES and (any(_private(p) for p in parts) or any(module == m or module.startswith(m + ".") for m in INTERNAL_MODULES))


def _chain(node: ast.Attribute) -> tuple[ast.AST, list[str]]:
    """``a.b.c`` → (the ``a`` node, ["b", "c"])."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return node, parts[::-1]


def private_uses(source: str, name: str, own: set[str]) -> list[str]:
    """Every use of a private torch/diffusers/transformers name in ``source``, as ``name:line: what``."""
    tree = ast.parse(source)
    aliases = {}  # local name → the library module or name it stands for
    found = []

    def report(node, what):
        found.append(f"{name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _forbidden_module(a.name):
                    report(node, f"import {a.name}")
                if a.name.split(".")[0] in LIBRARIES:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in LIBRARIES:
            if _forbidden_module(node.module):
                report(node, f"from {node.module} import ...")
            for a in node.names:
                if _private(a.name) or _forbidden_module(f"{node.module}.{a.name}"):
                    report(node, f"from {node.module} import {a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root, parts = _chain(node)
            if isinstance(root, ast.Name) and root.id in aliases:
                # A chain on a library module (``torch._dynamo.config``): judged whole, at its outermost link.
                dotted = ".".join([aliases[root.id], *parts])
                if id(node) not in inner and _forbidden_module(dotted):
                    report(node, dotted)
            elif _private(node.attr) and node.attr not in own and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                report(node, f"{node.attr} on {ast.unparse(node.value)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_CALLS and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and node.args[1].value not in own):
            report(node, f"{node.func.id}(..., {node.args[1].value!r})")
    return found


def test_private_names_are_reached_only_through_compat():
    files = _files()
    own = _own_private_names([ast.parse(p.read_text()) for p in files])
    found = []
    for path in files:
        found += private_uses(path.read_text(), str(path.relative_to(ROOT)), own)
    assert not found, "private names outside supergen/compat.py (add them there):\n" + "\n".join(found)


@pytest.mark.parametrize("source, what", [
    ("from torch._dynamo import config", "from torch._dynamo import ..."),
    ("import torch\nx = torch._dynamo.config", "torch._dynamo.config"),
    ("import torch.utils\nx = torch.utils._pytree.tree_flatten", "torch.utils._pytree.tree_flatten"),
    ("from diffusers.hooks import _common", "from diffusers.hooks import _common"),
    ("from diffusers.models import attention_dispatch", "from diffusers.models import attention_dispatch"),
    ("from diffusers.hooks.hooks import StateManager", "from diffusers.hooks.hooks import ..."),
    ("def f(pipe):\n    return pipe._execution_device", "_execution_device on pipe"),
    ("def f(pipe):\n    return getattr(pipe, '_progress_bar_config', None)", "getattr(..., '_progress_bar_config')"),
])
def test_the_check_sees_each_kind_of_private_use(source, what):
    """The check above could pass by seeing nothing: each kind of use it must catch, caught."""
    found = private_uses(source, "probe.py", set())
    assert any(what in line for line in found), found


@pytest.mark.parametrize("source", [
    "import torch\nx = torch.nn.functional.pad",
    "from diffusers.hooks import HookRegistry",
    "class A:\n    def f(self):\n        return self._x",
    "def f(a):\n    return a._mine",  # supergen's own private name (``own`` below)
    "import torch\nx = torch.__version__",
])
def test_the_check_leaves_public_and_own_names_alone(source):
    assert private_uses(source, "probe.py", {"_mine"}) == []


def test_every_name_resolves_on_the_installed_versions():
    """What docs/compatibility.md's matrix checks in each row: every registered name is there."""
    for name in compat.NAMES:
        assert getattr(compat, name) is not None, name
    # Attributes the classes themselves carry; the ones set per instance are read on real objects in
    # test_the_accessors_work_on_real_objects.
    for attribute in ("_cdata", "_execution_device", "_cp_plan", "_parallel_config", "_get_parameter_from_args_kwargs", "_resolve_dtype"):
        compat.ATTRIBUTES[attribute].load()


def test_a_missing_name_says_the_feature_and_the_release_that_has_it():
    record = Private("diffusers.hooks.hooks:NoSuchThing", "the frobnicating cache (cache.frob)", "diffusers 9.9.0")
    with pytest.raises(MissingPrivateName) as error:
        record.load()
    message = str(error.value)
    import diffusers

    for part in ("the frobnicating cache (cache.frob)", "diffusers.hooks.hooks:NoSuchThing", "diffusers 9.9.0", f"diffusers {diffusers.__version__}"):
        assert part in message, message
    # A SuperGenError: the CLI prints it as one line; an ImportError: code probing for a feature catches it.
    assert isinstance(error.value, ImportError)


def test_a_missing_module_gives_the_same_error():
    with pytest.raises(MissingPrivateName, match="torch 2.99.0"):
        Private("torch._no_such_module:thing", "a feature", "torch 2.99.0").load()


def test_a_missing_attribute_of_a_library_object_gives_the_error():
    class NotAPipeline:
        pass

    with pytest.raises(MissingPrivateName, match="every model adapter"):
        compat.execution_device(NotAPipeline())


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        compat.NoSuchName  # noqa: B018


def test_the_accessors_work_on_real_objects(wan_t2v):
    t = torch.zeros(4)
    assert compat.storage_key(t[:2].untyped_storage()) == compat.storage_key(t.untyped_storage())
    assert compat.execution_device(wan_t2v) == torch.device("cpu")
    with compat.progress_bar_label(wan_t2v, "sketch"):
        assert wan_t2v._progress_bar_config["desc"] == "sketch"
    assert wan_t2v._progress_bar_config == {"disable": True}  # the fixture's settings, restored
    manager = compat.StateManager(compat.BaseState, (), {})
    assert compat.state_manager_args(manager) == (compat.BaseState, (), {})
    assert compat.current_context(manager) is None
    assert compat.context_parallel_plan(wan_t2v.transformer) == type(wan_t2v.transformer)._cp_plan
    assert compat.dtype_keyword() in ("dtype", "torch_dtype")


def test_importing_compat_imports_no_library():
    code = "import sys, supergen.compat; heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True)
