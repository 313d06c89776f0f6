"""Multi-task learning: one shared MPNet backbone, one classification head per task.

    model = MultiTaskModel(backbone, num_labels={"a": 5, "b": 2})
    logits = model(input_ids, attention_mask)            # {"a": (B, 5), "b": (B, 2)}
    loss, per_task = multitask_loss(logits, labels)      # labels {"a": (B,), "b": (B,)}, -100: none

Each head reads the mean-pooled sentence embedding, the same vector sentence-transformers
returns before its Normalize step. Whether it is L2-normalised first is a switch
(`normalize`); docs/training.md compares both on real data (default: unnormalised).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpnet import MPNet, length_sorted_batches, mean_pool

IGNORE = -100  # the label of an example with none for a task (cross_entropy's ignore_index)


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: MPNet, num_labels: dict[str, int], dropout: float = 0.1,
                 normalize: bool = False):
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
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
        """Heads only: (B, hidden) -> logits per task. Lets a frozen backbone's output be cached."""
        return {task: head(embeddings) for task, head in self.heads.items()}

    @torch.no_grad()
    def predict_proba(self, tokenizer, texts: list[str], batch_size: int = 64,
                      autocast: bool = False) -> dict[str, torch.Tensor]:
        """{task: (N, classes) probabilities}, rows in input order. Each text goes through the
        backbone once, in length-sorted batches (little padding), and every head reads it."""
        self.eval()
        device = next(self.parameters()).device
        ids = tokenizer.encode(texts)
        probs = {task: torch.empty(len(ids), head[-1].out_features)
                 for task, head in self.heads.items()}
        for rows in length_sorted_batches(ids, batch_size):
            batch = tokenizer.pad([ids[i] for i in rows])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = self(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            for task, task_logits in logits.items():
                probs[task][rows] = task_logits.float().softmax(-1).cpu()
        return probs


def multitask_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                   task_weights: dict[str, float] | None = None,
                   class_weights: dict[str, torch.Tensor] | None = None,
                   normalizers: dict[str, float] | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of per-task cross-entropies, each over the examples with that task's label.

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
