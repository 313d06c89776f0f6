"""Multi-task learning: one shared MPNet backbone, one classification head per task.

    model = MultiTaskModel(backbone, num_labels={"a": 5, "b": 2})
    logits = model(input_ids, attention_mask)            # {"a": (B, 5), "b": (B, 2)}
    loss, per_task = multitask_loss(logits, labels)      # labels {"a": (B,), "b": (B,)}, -100: none

Each head reads the mean-pooled sentence embedding, the same vector sentence-transformers
returns before its Normalize step. Whether it is L2-normalised first is a switch
(`normalize`); docs/training.md compares both on real data (default: unnormalised).

A pair task (pairs={"s": "cosent"}) has no head: its output is the embedding itself, and its loss
trains the embedding so that cosine similarity means something (docs/contrastive.md). Its batch
holds the pairs' first sentences, then their second ones, in the same order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpnet import MPNet, length_sorted_batches, mean_pool

IGNORE = -100  # the label of an example with none for a task (cross_entropy's ignore_index)


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: MPNet, num_labels: dict[str, int], dropout: float = 0.1,
                 normalize: bool = False, pairs: dict[str, str] | None = None):
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
        self.pairs = dict(pairs or {})  # {task: "cosent" | "in-batch"}: pair tasks, their losses
        hidden = backbone.cfg.hidden_size
        # A linear layer on the pooled embedding; softmax lives in the loss (cross-entropy).
        self.heads = nn.ModuleDict({
            task: nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n))
            for task, n in num_labels.items()
        })

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, hidden) sentence embeddings, the input every head sees."""
        return self.pool(self.backbone(input_ids, attention_mask), attention_mask)

    def pool(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden) token embeddings -> (B, hidden): mean pooling, L2-normalised if asked."""
        pooled = mean_pool(tokens, attention_mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, L) token ids -> {task: (B, classes) logits}."""
        return self.classify(self.embed(input_ids, attention_mask))

    def classify(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads only: (B, hidden) -> logits per task, and a pair task's embeddings as they are.
        Lets a frozen backbone's output be cached."""
        logits = {task: head(embeddings) for task, head in self.heads.items()}
        return logits | {task: embeddings for task in self.pairs}

    @torch.no_grad()
    def encode(self, tokenizer, texts: list[str], batch_size: int = 64,
               autocast: bool = False) -> torch.Tensor:
        """(N, hidden) sentence embeddings (pooled, as the heads see them), rows in input order,
        each text once, in length-sorted batches (little padding)."""
        self.eval()
        device = next(self.parameters()).device
        ids = tokenizer.encode(texts)
        out = torch.empty(len(ids), self.backbone.cfg.hidden_size)
        for rows in length_sorted_batches(ids, batch_size):
            batch = tokenizer.pad([ids[i] for i in rows])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                pooled = self.embed(input_ids, mask)
            out[rows] = pooled.float().cpu()
        return out

    @torch.no_grad()
    def predict_proba(self, tokenizer, texts: list[str], batch_size: int = 64,
                      autocast: bool = False) -> dict[str, torch.Tensor]:
        """{task: (N, classes) probabilities} for each classification task, rows in input order:
        every head reads each text's one embedding."""
        device = next(self.parameters()).device
        embeddings = self.encode(tokenizer, texts, batch_size, autocast).to(device)
        return {task: head(embeddings).softmax(-1).cpu() for task, head in self.heads.items()}


def multitask_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                   task_weights: dict[str, float] | None = None,
                   class_weights: dict[str, torch.Tensor] | None = None,
                   normalizers: dict[str, float] | None = None,
                   pairs: dict[str, str] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of per-task losses: cross-entropy over the examples with that task's label, and
    for a pair task (pairs: {task: loss name}) its pair loss on the batch's embeddings.

    An example labelled IGNORE (-100) for a task adds nothing to that task's loss: a missing
    label is never guessed. A task with no labelled example in the batch adds zero.
    normalizers: divide each task's summed loss by this instead of taking the mean here (DDP: the
    whole step's labelled examples, not this process's share; see scale/ddp.py).
    Returns the total (for backward) and each task's mean loss here (for logging; NaN if absent).
    """
    total = next(iter(logits.values())).new_zeros(())
    per_task = {}
    for task, task_logits in logits.items():
        target = labels[task].to(task_logits.device)
        if (target == IGNORE).all():
            per_task[task] = float("nan")
            continue
        if pairs and task in pairs:  # the first sentences' embeddings, then their partners'
            first, second = task_logits.float().chunk(2)
            loss = PAIR_LOSSES[pairs[task]](first, second, target[:len(first)].float())
            per_task[task] = float(loss.detach())
            total = total + (task_weights or {}).get(task, 1.0) * loss
            continue
        weight = class_weights.get(task) if class_weights else None
        weight = None if weight is None else weight.to(task_logits.device)
        if normalizers is None:
            loss = F.cross_entropy(task_logits.float(), target, ignore_index=IGNORE, weight=weight)
            per_task[task] = float(loss.detach())
        else:
            summed = F.cross_entropy(task_logits.float(), target, ignore_index=IGNORE,
                                     weight=weight, reduction="sum")
            labelled = target[target != IGNORE]
            here = float(len(labelled)) if weight is None else float(weight[labelled].sum())
            per_task[task] = float(summed.detach()) / here
            loss = summed / normalizers[task]
        total = total + (task_weights or {}).get(task, 1.0) * loss
    return total, per_task


def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """n / (classes * count): rare classes weigh more, a balanced set gets all ones (as
    scikit-learn's 'balanced')."""
    seen = torch.tensor([y for y in labels if y != IGNORE])
    counts = torch.bincount(seen, minlength=num_classes).float()
    return counts.sum() / (num_classes * counts.clamp(min=1))


# ----------------------------------------------------------------------------- pair tasks
def cosent_loss(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor,
                scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su, 2022), for pairs with a gold score. Only the order of the scores counts: for
    every two pairs i, j of the batch where pair i's gold score is lower than pair j's, pair i's
    cosine should be lower too. With c = cosine * scale,

        loss = log(1 + sum over (i, j) with score_i < score_j of exp(c_i - c_j))

    a softened count of the pairs of pairs in the wrong order. scale: sentence-transformers'
    default, 20 (a temperature of 0.05)."""
    c = scale * F.cosine_similarity(first, second, dim=-1)  # (B,)
    diff = c[:, None] - c[None, :]                          # diff[i, j] = c_i - c_j
    wrong_way = scores[:, None] < scores[None, :]           # the pairs of pairs that count
    diff = diff.masked_fill(~wrong_way, float("-inf"))      # exp(-inf) = 0: left out
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


def in_batch_negatives_loss(anchors: torch.Tensor, positives: torch.Tensor,
                            scores: torch.Tensor | None = None,
                            scale: float = 20.0) -> torch.Tensor:
    """In-batch negatives (MultipleNegativesRankingLoss), for (anchor, positive) pairs with no
    score. Each anchor must pick its own positive out of all the batch's positives; the other
    B - 1 are its negatives, for free. Cross-entropy over scaled cosines:

        loss = mean over i of  -log( exp(s * cos(a_i, p_i)) / sum over j of exp(s * cos(a_i, p_j)) )

    The bigger the batch, the more negatives and the harder the choice (docs/contrastive.md).
    scores: unused (every pair is a positive). scale: sentence-transformers' default, 20."""
    sims = scale * F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T  # (B, B)
    return F.cross_entropy(sims, torch.arange(len(sims), device=sims.device))


PAIR_LOSSES = {"cosent": cosent_loss, "in-batch": in_batch_negatives_loss}
