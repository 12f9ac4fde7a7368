"""The README's Python examples run as written (with a tiny model and data set)."""

from __future__ import annotations

import ast
import builtins
import logging
import re
import symtable
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def code_only(block: str) -> list[str]:
    """The lines of a code block without comments and trailing spaces."""
    return [line.split("#")[0].rstrip() for line in block.splitlines()]


def test_readme_has_the_two_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "CrestBatchSampler" in blocks[0] and "greedy_facility_location" in blocks[1]


def test_training_loop_example_runs() -> None:
    g = torch.Generator().manual_seed(0)
    n, classes = 600, 3
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, classes))
    namespace = {
        "model": model,
        "train_set": TensorDataset(x, y),
        "train_labels": y,
        "epochs": 2,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    before = [p.detach().clone() for p in model.parameters()]
    exec(compile(python_blocks()[0], "README.md", "exec"), namespace)
    sampler = namespace["sampler"]
    assert len(sampler) == 1  # ceil(0.1 · 600 / 128)
    assert sampler.telemetry.num_selections >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_docs_quickstart_is_the_readme_code() -> None:
    # the README's lines, the sampler guide's quickstart and the example build CREST alike
    quickstart = python_blocks(ROOT / "docs" / "sampler.md")[0]
    assert code_only(quickstart) == code_only(python_blocks()[0])
    example = (ROOT / "examples" / "_train.py").read_text(encoding="utf-8")
    example = re.sub(r"\(\s+", "(", " ".join(example.split()))  # one line, no wrapping
    assert "GradientProxyCallback(model, train_set.batch)" in example
    assert "QuadraticLossMonitor(model, proxies.per_sample_loss, seed=seed," in example


def test_kernel_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(python_blocks()[1], "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.indices.shape == (50, 13)  # type: ignore[attr-defined]


def test_every_python_block_of_the_readme_and_docs_parses() -> None:
    # (the blocks that are fragments of a loop still have to be Python: the sampler guide's
    # checkpoint snippet was a SyntaxError)
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [(page, block) for page in pages for block in python_blocks(page)]
    assert len(blocks) >= 10
    for page, block in blocks:
        try:
            ast.parse(textwrap.dedent(block))
        except SyntaxError as err:
            raise AssertionError(f"{page.relative_to(ROOT)}: {err}\n{block}") from err


def free_names(code: str) -> set[str]:
    """Names a block reads but neither defines nor imports (nor are builtins): a block without
    any is self-contained."""
    top = symtable.symtable(code, "<block>", "exec")
    defined = {
        s.get_name() for s in top.get_symbols()
        if s.is_assigned() or s.is_imported() or s.is_namespace()
    }  # fmt: skip
    used: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            if sym.is_referenced() and (table is top or sym.is_global()):
                used.add(sym.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - defined - set(dir(builtins))


def self_contained_blocks() -> list[tuple[str, str]]:
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    return [
        (f"{page.relative_to(ROOT)}:{k}", textwrap.dedent(block))
        for page in pages
        for k, block in enumerate(python_blocks(page))
        if not free_names(textwrap.dedent(block))
    ]


def test_free_names_finds_what_a_block_needs() -> None:
    assert free_names("import torch\nx = torch.ones(2)\nprint(x, y)") == {"y"}
    assert free_names("def f(a):\n    return a + b\nf(1)") == {"b"}
    assert free_names("from m import g\nclass C:\n    z = g\n") == set()


def test_the_self_contained_blocks_are_found() -> None:
    names = [name for name, _ in self_contained_blocks()]
    # the kernel example, the state declaration and the telemetry example at least
    assert {"README.md:1", "docs/architecture.md:0", "docs/sampler.md:2"} <= set(names), names


@pytest.mark.parametrize("name", [name for name, _ in self_contained_blocks()])
def test_every_self_contained_block_runs(name: str) -> None:
    # the blocks that need nothing from around them run as written, in a fresh namespace
    code = dict(self_contained_blocks())[name]
    library = logging.getLogger("coreset_sampler")
    level, root_handlers = library.level, list(logging.getLogger().handlers)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__docs__"})
    finally:  # (a block may configure logging: the other tests get it back as it was)
        library.setLevel(level)
        logging.getLogger().handlers[:] = root_handlers
