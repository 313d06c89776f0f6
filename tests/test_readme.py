"""The README shows train.py's step as code; that code is train_step's source, line for line, so the
two cannot drift. And the step is the plain PyTorch step plus at most three calls into a seam."""
import ast
import inspect
import re
from pathlib import Path

import train

README = Path(__file__).resolve().parent.parent / "README.md"
SEAMS = ("run_folder", "world", "speed", "unfreezer")  # the names a seam call goes through


def readme_block(starting: str) -> str:
    """The README's python code block whose first line starts with `starting`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if b.startswith(starting)]
    assert len(found) == 1, f"the README has {len(found)} python blocks starting {starting!r}"
    return found[0]


def test_the_readmes_step_is_train_step():
    assert readme_block("def train_step(") == inspect.getsource(train.train_step)


def seam_calls(source: str) -> list[str]:
    """The calls in the source that go through a seam's name (run_folder.x(), run.world.x(), ...)."""
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    return [ast.unparse(c.func) for c in calls if any(seam in ast.unparse(c.func).split(".") for seam in SEAMS)]


def test_the_step_has_at_most_three_seam_calls():
    calls = seam_calls(inspect.getsource(train.train_step))
    assert 1 <= len(calls) <= 3, calls  # the NaN guard is one
    for step in ("loss.backward", "run.optimizer.step", "run.scheduler.step", "run.optimizer.zero_grad"):
        assert step in inspect.getsource(train.train_step)


def test_a_drifted_block_or_a_seam_is_seen():
    assert seam_calls("def f(run):\n    run.world.sum([1.0])\n    run_folder.skip(run)\n    loss.backward()\n") == [
        "run.world.sum", "run_folder.skip"]
    assert readme_block("def train_step(") != inspect.getsource(train.train_step).replace("zero_grad", "zero")
