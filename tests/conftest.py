import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# A choice speed.tune saved on this machine would change what dtype="auto" means: the tests (and the
# commands they start) get an empty cache folder of their own, which a test may fill.
os.environ["MPNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="mpnet-test-cache-")


@pytest.fixture(autouse=True)
def no_saved_choice_carried_over():
    """hardware.saved() reads speed.tune's file once per process: each test starts from the folder as it is."""
    if "speed.hardware" in sys.modules:
        sys.modules["speed.hardware"].saved.cache_clear()
    yield
    if "speed.hardware" in sys.modules:
        sys.modules["speed.hardware"].saved.cache_clear()


@pytest.fixture(scope="session")
def encoder():
    """The real all-mpnet-base-v2, fetched on first use (.ci/run fetches it up front)."""
    from mpnet import SentenceEncoder

    return SentenceEncoder.from_pretrained()


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given flags (hardware.py's view of it)."""
    from speed import hardware

    def pretend(*flags, machine="x86_64"):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
        monkeypatch.setattr(hardware, "_warned", False)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    return pretend


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: tiny-config training numerics and int8 exactness; .ci/run reruns these under "
                                       "AVX2-only and baseline kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, "
                                       "MKL_ENABLE_INSTRUCTIONS) to catch tolerances that hold on one CPU only")
