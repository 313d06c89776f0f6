"""Feature cache: compute the frozen bottom of the network once per dataset, train only the top.

A frozen layer maps the same input to the same output every epoch (frozen parts run in eval
mode, without dropout), so its output can be stored after one pass and reused:

  * whole backbone frozen: store each sentence's embedding, the heads' input; an epoch then
    costs what the heads cost (a (B, 768) x (768, classes) product per batch);
  * bottom 12 - k layers frozen ("top-k"): store each sentence's token states entering layer
    12 - k, and run only the top k layers per batch: about k/12 of a full forward and backward.

The trade: memory. Pooled embeddings take 768 floats per sentence (3 KB in fp32: 27 MB for
9,000 Banking77 sentences). Token states take 768 floats per token: with ~14 tokens per
sentence, ~43 KB per sentence, ~390 MB for Banking77's training set, 10x more for the 67k
SST-2 phrases. Both are computed under the same autocast as training would use, so cached
training computes the same numbers as uncached training, up to batching noise.
"""
from __future__ import annotations

import time

import torch

from freeze import backbone_groups
from heads import MultiTaskModel
from mpnet import length_sorted_batches
from speed.packing import pack


def frozen_prefix(model: MultiTaskModel) -> int:
    """How many layers at the bottom of the backbone are frozen, embeddings included (0 if the
    embeddings train, else 1 + the number of frozen layers above them, up to 1 + num_layers)."""
    count = 0
    for _, params in backbone_groups(model):
        if any(p.requires_grad for p in params):
            break
        count += 1
    return count


class FeatureCache:
    """Outputs of the frozen bottom for a list of texts, keyed by each text's token ids.

    install() makes it the model's embed(): a batch whose every row was cached reads its features
    here and runs only what trains; any other batch (new text: the test set, say) takes the model's
    own path. Both give the same numbers, since the bottom is frozen. It packs the backbone
    (speed/packing.py), whose layer ranges it runs.
    """

    def __init__(self, model: MultiTaskModel, tokenizer, texts: list[str], autocast: bool = False,
                 batch_size: int = 64):
        pack(model.backbone)  # the packed model runs a range of layers from given states
        self.frozen = frozen_prefix(model)
        if self.frozen == 0:
            raise ValueError("nothing to cache: the embeddings train, so no part of the backbone is frozen")
        self.start = self.frozen - 1      # first layer that still trains
        self.pooled = self.start == len(model.backbone.layers)
        self.model_embed = model.embed    # the uncached path, kept before install() replaces it
        self.backbone, self.pool = model.backbone, model.pool  # a packed backbone (speed/packing.py)
        started = time.time()
        ids = tokenizer.encode(list(dict.fromkeys(texts)))  # each distinct text once
        self.features: dict[tuple[int, ...], torch.Tensor] = {}
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for rows in length_sorted_batches(ids, batch_size):
                batch = tokenizer.pad([ids[i] for i in rows])
                input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                if self.pooled:
                    out = model.embed(input_ids, mask)
                    for r, i in enumerate(rows):
                        self.features[tuple(ids[i])] = out[r].cpu()
                else:
                    out = model.backbone(input_ids, mask, stop=self.start)
                    for r, i in enumerate(rows):
                        self.features[tuple(ids[i])] = out[r, :len(ids[i])].cpu()
        model.train(was_training)
        self.seconds = time.time() - started

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.features.values())

    def install(self, model: MultiTaskModel) -> None:
        """From now on model.embed() (hence forward() and predict_proba()) reads this cache."""
        model.embed = self.embed

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """MultiTaskModel.embed, reading the frozen bottom's outputs from the cache where it has them."""
        lengths = attention_mask.sum(dim=1).tolist()
        keys = [tuple(row[:n]) for row, n in zip(input_ids.tolist(), lengths)]
        if not all(key in self.features for key in keys):
            return self.model_embed(input_ids, attention_mask)
        device = attention_mask.device
        if self.pooled:
            return torch.stack([self.features[key] for key in keys]).to(device)
        packed = torch.cat([self.features[key] for key in keys]).to(device)  # (T, hidden): the packed layout
        tokens = self.backbone(None, attention_mask, start=self.start, packed=packed)
        return self.pool(tokens, attention_mask)
