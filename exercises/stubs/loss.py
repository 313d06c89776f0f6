"""Exercise 8: the multi-task loss with missing labels ignored (heads.py).

    python -m exercises check loss
"""
import torch
import torch.nn.functional as F

from heads import IGNORE  # -100: this example has no label for this task


def multitask_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                   task_weights: dict[str, float] | None = None,
                   class_weights: dict[str, torch.Tensor] | None = None,
                   normalizers: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """{task: (B, classes) logits}, {task: (B,) labels} -> (total loss, {task: its mean loss as a float}).

    Contract:
      - each task's loss is the cross-entropy averaged over the rows that carry its label; a row
        labelled IGNORE for a task adds nothing to that task;
      - a task with no labelled row in the batch adds zero to the total, and its per-task value is NaN
        (the sampler does draw such batches);
      - total = sum over tasks of task_weights[task] (default 1.0) x the task's loss, a tensor that
        backpropagates into the logits.
      - class_weights and normalizers are for --class-weights and DDP in train.py; the check passes
        None, so you may leave them out.

    Hints:
      - F.cross_entropy has an ignore_index; what does it return when every row is ignored?
      - Compute in float32 (logits.float()): under bf16 autocast the logits are bf16.
    """
    raise NotImplementedError
