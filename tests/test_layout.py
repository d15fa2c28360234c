"""The package's shape: no import cycles, imports only go down the layers, and the light modules stay light."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "supergen"
MODULES = sorted(
    "supergen." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
    if p.name != "__main__.py"
)

DOCS = PACKAGE.parent / "docs" / "architecture.md"


def _documented_layers() -> list[set[str]]:
    """The layers of ``docs/architecture.md``'s "Layers" block, from the bottom: one set of top-level
    names (``cost``, ``adapters``, ...) per layer, a line ending in ``·`` continuing on the next."""
    block = DOCS.read_text().split("## Layers", 1)[1].split("```", 2)[1]
    layers, names = [], ""
    for line in block.strip().splitlines():
        names += re.split(r"\s{2,}", line.strip())[0]
        if not names.rstrip().endswith("·"):
            layers.append({n.strip().removeprefix("supergen.").rstrip("/") for n in names.split("·")})
            names = ""
        else:
            names += " "
    return layers[::-1]


#: Layers from the bottom, as the architecture document states them; a module may import only from
#: its own layer or lower ones. The package's lazy exports (``supergen/__init__.py``) sit on top.
LAYERS = [*_documented_layers(), {"__init__"}]


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    found = [i for i, names in enumerate(LAYERS) if top in names]
    assert len(found) == 1, f"{module}: in {len(found)} layers of docs/architecture.md (## Layers); put it in exactly one"
    return found[0]


def test_every_module_is_in_one_documented_layer():
    tops = {m.split(".")[1] for m in MODULES if m.count(".")}
    missing = sorted(tops - set().union(*LAYERS))
    assert not missing, f"in no layer of docs/architecture.md (## Layers): {missing}"
    for top in tops:
        _layer(f"supergen.{top}")


def _imports(path: Path, module: str) -> set[str]:
    """supergen modules ``path`` imports (relative imports resolved), at any depth of the file, type-only
    ones (``if TYPE_CHECKING:``) included: a protocol and its users belong on the same side of a layer
    line. ``from package import name`` counts as importing the submodule ``package.name`` when there is one."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "supergen" or target.startswith("supergen."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("supergen.")}
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = "supergen." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        if not module.endswith("__main__"):
            graph[module] = {t for t in _imports(path, module) if t in MODULES and t != module}
    return graph


def test_the_import_graph_has_no_cycle_type_only_imports_included():
    graph, state, cycles = _graph(), {}, []

    def visit(module: str, stack: list[str]) -> None:  # depth-first; a grey module met again closes a cycle
        state[module] = "grey"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "grey":
                cycles.append(" -> ".join(stack[stack.index(target):] + [module, target]) if target in stack else f"{module} -> {target}")
            elif target not in state:
                visit(target, stack + [module])
        state[module] = "black"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_imports_only_go_down_the_layers():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = "supergen." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        if module.endswith("__main__") or module == "supergen":
            continue
        for target in _imports(path, module):
            if target != "supergen" and _layer(target) > _layer(module):
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


#: Imports every module given on the command line, each first, in a forked child of an interpreter that
#: has loaded the heavy third-party packages once but nothing of supergen (so each child is fresh for
#: supergen, where a cycle would show, and cheap: torch and diffusers are not imported 40 times).
FIRST_IMPORT = """
import importlib, os, sys, traceback
import torch, diffusers, transformers  # noqa: F401  third-party, cycle-free for our purposes
assert not any(m == "supergen" or m.startswith("supergen.") for m in sys.modules)
failed = 0
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            print(module, traceback.format_exc().strip().splitlines()[-1], flush=True)
            os._exit(1)
        os._exit(0)
    failed += os.waitpid(pid, 0)[1] != 0
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """An import cycle shows only when a module of the cycle is imported first: try each one first."""
    run = subprocess.run([sys.executable, "-c", FIRST_IMPORT, *MODULES], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


# supergen.families and supergen.cost: the planner reads every family's facts without diffusers or an adapter.
@pytest.mark.parametrize("module", ["supergen", "supergen.eval.metrics", "supergen.eval.toyworld", "supergen.cli", "supergen.config",
                                    "supergen.families", "supergen.cost"])
def test_light_modules_do_not_import_diffusers(module):
    code = f"import sys, {module}; assert 'diffusers' not in sys.modules, sorted(m for m in sys.modules if 'diffusers' in m)[:3]"
    subprocess.run([sys.executable, "-c", code], check=True)
