"""experiments/converged.py's sentence-by-sentence test, against scipy's binomial test."""
import importlib.util
import sys
from pathlib import Path

import pytest
from scipy.stats import binomtest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.append(str(EXPERIMENTS))  # where the script finds cells.py when run as a script
spec = importlib.util.spec_from_file_location("converged", EXPERIMENTS / "converged.py")
converged = importlib.util.module_from_spec(spec)
spec.loader.exec_module(converged)


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (0, 1), (1, 0), (3, 3), (23, 30), (16, 14), (0, 12),
                                           (5, 40), (100, 130), (7, 0)])
def test_mcnemar_p_is_the_exact_two_sided_binomial_test(only_a, only_b):
    # Exact McNemar = a two-sided binomial test of one model's share of the discordant sentences
    # against 1/2. Both sides sum the same integer counts over 2**n; the rest is float rounding.
    n = only_a + only_b
    expected = binomtest(only_a, n, 0.5).pvalue if n else 1.0
    assert converged.mcnemar_p(only_a, only_b) == pytest.approx(expected, rel=1e-12, abs=1e-300)
