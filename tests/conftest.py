import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def encoder():
    """The real all-mpnet-base-v2, fetched on first use (.ci/run fetches it up front)."""
    from mpnet import SentenceEncoder

    return SentenceEncoder.from_pretrained()


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: tiny-config training numerics and int8 exactness; .ci/run reruns these under "
                                       "AVX2-only and baseline kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, "
                                       "MKL_ENABLE_INSTRUCTIONS) to catch tolerances that hold on one CPU only")
