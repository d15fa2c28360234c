"""The README's command examples, run one after another as a reader does, do not collide on their outputs."""

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_render_examples_write_distinct_files():
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), flags=re.S)
    outputs = []
    for line in "\n".join(blocks).splitlines():
        words = shlex.split(line, comments=True)
        if "supergen" in " ".join(words[:6]) and "render" in words:
            flags = {"--output", "-o"} & set(words)
            outputs += [words[words.index(flag) + 1] for flag in flags]
    assert len(outputs) >= 3  # the examples are still found
    # An existing output stops a render ("exists; pass --overwrite"): the second example must not reuse the first's.
    assert len(outputs) == len(set(outputs)), outputs
