"""Encoder pieces on a tiny random config: no weights needed."""
import pytest
import torch
from safetensors.torch import save_file

from mpnet import (MPNet, MPNetConfig, SKIPPED, checkpoint_names, load_checkpoint, mean_pool,
                   position_ids_from, relative_position_bucket)

TINY = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=32, max_position_embeddings=40)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = MPNet(TINY).eval()
    with torch.no_grad():  # larger than the 0.02-scale init, so the bias clearly matters
        model.relative_bias.normal_()
    return model


def test_bucket_matches_hand_computed_values():
    # 32 buckets, max distance 128: keys left of the query use buckets 0..15, keys right 16..31;
    # distances 0..7 are exact, then bucket = 8 + floor(log(d/8) / log(16) * 8), capped at 15.
    offsets = torch.tensor([0, -1, 1, -7, 7, -8, -12, -16, -20, -64, -127, -128, -1000, 16, 1000])
    expected = [0, 1, 17, 7, 23, 8, 9, 10, 10, 14, 15, 15, 15, 26, 31]
    assert relative_position_bucket(offsets).tolist() == expected


def test_position_ids_start_after_padding_idx_and_pad_keeps_it():
    ids = torch.tensor([[0, 9, 9, 2, 1, 1],
                        [0, 9, 9, 9, 9, 2]])
    assert position_ids_from(ids, padding_idx=1).tolist() == [[2, 3, 4, 5, 1, 1],
                                                               [2, 3, 4, 5, 6, 7]]


def test_padding_does_not_change_a_sentence():
    model = tiny_model()
    alone = torch.tensor([[0, 5, 6, 7, 2]])
    batch = torch.tensor([[0, 5, 6, 7, 2, 1, 1, 1],
                          [0, 8, 9, 10, 11, 12, 13, 2]])
    mask = batch.ne(1).long()
    tokens_alone = model(alone, torch.ones_like(alone))
    tokens_batch = model(batch, mask)
    assert torch.allclose(tokens_batch[0, :5], tokens_alone[0], atol=1e-6)
    pooled = mean_pool(tokens_batch, mask)
    assert torch.allclose(pooled[0], tokens_alone[0].mean(dim=0), atol=1e-6)


def test_relative_bias_really_matters():
    # guards the test above: a model whose bias is ignored would also pass it
    model = tiny_model()
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    before = model(ids, torch.ones_like(ids))
    with torch.no_grad():
        model.relative_bias.mul_(3)
    assert not torch.allclose(before, model(ids, torch.ones_like(ids)), atol=1e-3)


def test_mean_pool_ignores_padding():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(tokens, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


# ------------------------------------------------------------------ loading from safetensors
def as_checkpoint(model):
    """The tiny model's weights under the real checkpoint's names, plus the skipped extras."""
    params = dict(model.named_parameters())
    tensors = {src: params[dst].detach().clone() for src, dst in checkpoint_names(TINY).items()}
    tensors["pooler.dense.weight"] = torch.zeros(16, 16)
    tensors["pooler.dense.bias"] = torch.zeros(16)
    tensors["embeddings.position_ids"] = torch.arange(40)[None]
    assert SKIPPED <= set(tensors)
    return tensors


def test_load_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model()
    save_file(as_checkpoint(model), tmp_path / "model.safetensors")
    loaded = load_checkpoint(tmp_path / "model.safetensors", TINY).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1]])
    assert torch.equal(loaded(ids, ids.ne(1).long()), model(ids, ids.ne(1).long()))
    assert not any(p.is_meta for p in loaded.parameters())


def test_truncated_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(as_checkpoint(tiny_model()), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_checkpoint(path, TINY)


def test_non_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(path, TINY)


def test_foreign_checkpoint_is_rejected(tmp_path):
    tensors = as_checkpoint(tiny_model())
    tensors = {k.replace("attention.attn.q", "attention.self.query"): v for k, v in tensors.items()}
    save_file(tensors, tmp_path / "bert.safetensors")
    with pytest.raises(ValueError, match=r"does not look like an all-mpnet-base-v2 checkpoint: missing \['encoder"):
        load_checkpoint(tmp_path / "bert.safetensors", TINY)


def test_wrong_shape_is_rejected(tmp_path):
    tensors = as_checkpoint(tiny_model())
    tensors["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(33, 16)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"encoder.layer.1.intermediate.dense.weight has shape \(33, 16\)"):
        load_checkpoint(tmp_path / "model.safetensors", TINY)


def test_config_from_json_reads_checkpoint_values(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "mpnet", "layer_norm_eps": 1e-05, "max_position_embeddings": 514, '
                    '"hidden_act": "gelu", "num_hidden_layers": 3, "architectures": ["MPNetForMaskedLM"]}')
    cfg = MPNetConfig.from_json(path)
    assert (cfg.layer_norm_eps, cfg.max_position_embeddings, cfg.num_hidden_layers) == (1e-5, 514, 3)
    path.write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        MPNetConfig.from_json(path)
