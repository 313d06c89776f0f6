"""Hand-written metrics against scipy; the STS-B reader on an awkward snippet; the encoder on STS-B."""
import numpy as np
import pytest
from scipy import stats

from data import read_stsb
from eval import pearson, rankdata, spearman, stsb_spearman


def test_rankdata_averages_ties_like_scipy():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0])
    np.testing.assert_allclose(rankdata(x), stats.rankdata(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    b_tied = np.round(b)  # many ties, as in STS-B gold scores
    assert pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert spearman(a, b_tied) == pytest.approx(stats.spearmanr(a, b_tied)[0], abs=1e-12)


def test_stsb_reader_keeps_bare_quotes(tmp_path):
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "sts-dev.tsv").write_text(
        "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
        'main-news\theadlines\t2015\t0001\t4.200\tHe said "no" twice.\tA "quoted word.\n'
        "main-forums\tdeft\t2014\t0002\t0.000\tx\ty\n", encoding="utf-8")
    # a lone quote must not swallow the tab or the next row
    assert read_stsb("dev", tmp_path) == [('He said "no" twice.', 'A "quoted word.', 4.2), ("x", "y", 0.0)]


def test_stsb_reader_refuses_a_row_with_an_extra_field(tmp_path):
    # a tab inside a sentence would otherwise cut it silently; the original files' 2 trailing
    # attribution columns (see SOURCE.md) would do the same
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "sts-dev.tsv").write_text(
        "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
        "main-news\theadlines\t2015\t0001\t4.200\tx\tA quoted\tword.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sts-dev.tsv:2: 8 fields where the header has 7"):
        read_stsb("dev", tmp_path)


def test_stsb_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_stsb("dev", tmp_path / "nowhere")
    (tmp_path / "stsb").mkdir()
    with pytest.raises(FileNotFoundError, match="sts-valid.tsv not found"):
        read_stsb("valid", tmp_path)
    (tmp_path / "stsb" / "sts-dev.tsv").write_text(
        "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\nmain\tf\t1\t2\thigh\ta\tb\n")
    with pytest.raises(ValueError, match=r"sts-dev.tsv:2: score .high. is not a number"):
        read_stsb("dev", tmp_path)


def test_encoder_reaches_published_stsb_score(encoder):
    """83.42 is MTEB's published STS-B test score for all-mpnet-base-v2 (sentence-transformers gives it too)."""
    import os

    from data import data_dir

    try:
        data_dir()
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise  # CI has ../shared/data: this check must run there
        pytest.skip("no benchmark data folder here")
    assert stsb_spearman(encoder, "test") == pytest.approx(83.42, abs=0.005)


def test_classification_report_matches_sklearn():
    from sklearn.metrics import confusion_matrix as sk_confusion
    from sklearn.metrics import precision_recall_fscore_support

    from eval import classification_report

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 5, 300))
    y_pred[y_pred == 4] = 3  # class 4 is never predicted: precision 0, not NaN
    ours = classification_report(y_true, y_pred, 5)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)
    np.testing.assert_array_equal(ours["support"], s)
    np.testing.assert_array_equal(ours["confusion"], sk_confusion(y_true, y_pred, labels=range(5)))
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(5), average=avg, zero_division=0)
        assert (ours[avg]["precision"], ours[avg]["recall"], ours[avg]["f1"]) == pytest.approx((p, r, f))
    assert ours["accuracy"] == pytest.approx(np.mean(y_true == y_pred))


def test_confident_mistakes_lists_the_surest_errors_first():
    from eval import confident_mistakes

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    text = confident_mistakes(["a", "b", "c", "d"], np.array([0, 0, 1, 0]), probs, ["neg", "pos"], k=2)
    lines = text.splitlines()
    assert "3 wrong" in lines[0] and "'d'" in lines[1] and "'b'" in lines[2] and len(lines) == 3
