"""walkthrough.py runs top to bottom (its hand computations assert equality with the modules),
with and without matplotlib."""
import os
import subprocess
import sys
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent


def run(code: str) -> subprocess.CompletedProcess:
    env = os.environ | {"MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True, env=env,
                          timeout=300)


def test_walkthrough_runs_and_its_asserts_hold():
    done = run("import runpy; runpy.run_path('walkthrough.py', run_name='__main__')")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "layer 0 by hand equals the module" in done.stdout
    assert "a 1000-word sentence keeps 384 tokens" in done.stdout
    lines = done.stdout.splitlines()  # on a projector: a short first line, each section under its heading
    assert len(lines[0]) <= 130 and not lines[0].startswith("MPNetConfig(")
    for n in range(1, 7):
        assert any(line.startswith(f"======== {n}. ") for line in lines), n


def test_walkthrough_runs_without_matplotlib():
    done = run("import sys, runpy; sys.modules['matplotlib'] = None; runpy.run_path('walkthrough.py')")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "matplotlib is not installed: no pictures" in done.stdout
