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
