"""plots.py: the numbers behind the pictures, and that each command writes a PNG."""
import json

import pytest
import torch

from tools import plots
from test_train import config, tasks, tiny_model, tokenizer  # noqa: F401  (the real tokenizer fixture)
import train as train_mod

PNG = b"\x89PNG\r\n\x1a\n"


def test_bucket_labels_name_the_offsets_of_each_bucket():
    labels = plots.bucket_labels()
    assert labels[:9] == ["0", "-1", "-2", "-3", "-4", "-5", "-6", "-7", "-11..-8"]
    assert labels[15] == "<=-91" and labels[16] == "(unused)" and labels[17] == "+1" and labels[31] == ">=+91"


def test_attention_maps_are_distributions_over_the_real_tokens(encoder):
    tokens, maps = plots.attention_maps(encoder, "The quick brown fox.")
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and maps.shape == (12, 12, len(tokens), len(tokens))
    assert torch.allclose(maps.sum(-1), torch.ones(12, 12, len(tokens)), atol=1e-5)


def test_each_figure_is_written(tmp_path, encoder, tokenizer):  # noqa: F811
    plots.plot_buckets(tmp_path / "b.png")
    plots.plot_bias(encoder.model, tmp_path / "bias.png")
    plots.plot_attention(encoder, "A short sentence.", tmp_path / "a.png")
    plots.plot_lr_groups(tmp_path / "lr.png")
    cfg = config(tmp_path, epochs=2, log_every=1)
    train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    losses = [json.loads(line) for line in open(tmp_path / "run" / "losses.jsonl")]
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and all("loss_a" in r and "loss_b" in r for r in losses)
    plots.plot_curves(tmp_path / "run", tmp_path / "curves.png")
    for name in ("b", "bias", "a", "a_head", "lr", "curves"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG, name


def test_curves_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="losses.jsonl not found"):
        plots.plot_curves(tmp_path, tmp_path / "x.png")


def test_scatter_needs_a_run_and_says_so_before_loading_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plots.main(["scatter", str(tmp_path)])
    assert "scatter needs a train.py output folder" in capsys.readouterr().err
