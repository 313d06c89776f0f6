"""Find-the-bug drills: a copy of mpnet.py with one realistic bug, loaded in memory; you find where.

    python -m exercises drill 3                  # where its outputs first differ from the real model's
    python -m exercises drill 3 --walkthrough    # walkthrough.py against it: the first failing check
    python -m exercises drill 3 --answer mpnet.py:SomeClass.method

The copy never touches disk, so there is nothing to diff: the per-layer table and the walkthrough are
the tools, as they would be for a reimplementation of your own. The bugs: exercises/drill_bugs.py
(spoilers); how far each moves STS-B: experiments/drills.md.
"""
from __future__ import annotations

import runpy
import sys
import traceback
import types
from pathlib import Path

import torch

import mpnet
from exercises.drill_bugs import BUGS, Bug
from tools.layer_parity import SENTENCES, TOLERANCE, compare, our_hidden_states

ROOT = Path(__file__).resolve().parent.parent
# The per-layer sentences, plus one of about 200 tokens: a truncation bug shows only on a long one.
DRILL_SENTENCES = SENTENCES + [" ".join(["The quick brown fox jumps over the lazy dog."] * 18)]


def bugged_source(bug: Bug) -> str:
    source = (ROOT / "mpnet.py").read_text(encoding="utf-8")
    if source.count(bug.old) != 1:
        raise RuntimeError(f"a drill's bug no longer applies to mpnet.py (its text is found {source.count(bug.old)} "
                           f"times, not once): update exercises/drill_bugs.py")
    return source.replace(bug.old, bug.new)


def bugged_module(bug: Bug, name: str = "mpnet_drill") -> types.ModuleType:
    """The drill's copy of mpnet.py as a module (registered under `name`; dataclasses need that)."""
    module = types.ModuleType(name)
    module.__file__ = str(ROOT / "mpnet.py")
    sys.modules[name] = module
    exec(compile(bugged_source(bug), "mpnet.py (drill copy)", "exec"), module.__dict__)
    return module


def places(bug: Bug) -> list[tuple[str, float]]:
    """[(place, max |drill - real|)] in the order data flows: token ids, embeddings, each layer, the mean-
    pooled vectors (what the heads read), the sentence embeddings (after the L2 norm). Layers run on the real
    token ids, so a tokenizer bug shows in its own row."""
    real = mpnet.SentenceEncoder.from_pretrained()
    drill = bugged_module(bug).SentenceEncoder.from_pretrained()
    ours, theirs = drill.tokenizer.encode(DRILL_SENTENCES), real.tokenizer.encode(DRILL_SENTENCES)
    ids_diff = float(sum(a != b for a, b in zip(ours, theirs)))  # sentences whose ids differ
    batch = real.tokenize(DRILL_SENTENCES)
    rows = [("token ids", ids_diff)] + compare(our_hidden_states(drill, batch), our_hidden_states(real, batch))
    for name, normalize in (("mean-pooled", False), ("sentence embedding", True)):
        ours, theirs = (e.encode(DRILL_SENTENCES, normalize=normalize) for e in (drill, real))
        rows.append((name, float((ours - theirs).abs().max())))
    return rows


def first_place(rows: list[tuple[str, float]]) -> str | None:
    return next((name for name, diff in rows if diff > TOLERANCE), None)


def show(number: int, bug: Bug) -> int:
    print(f"Drill {number}: this copy of mpnet.py has one bug. Find the file and the function it is in.\n")
    rows = places(bug)
    first = first_place(rows)
    print(f"Where it differs from the real model (which matches sentence-transformers to 2e-7), on "
          f"{len(DRILL_SENTENCES)} sentences:")
    print(f"  {'after':20} {'max |diff|':>12}")
    for name, diff in rows:
        value = f"{int(diff)} sentence(s)" if name == "token ids" else f"{diff:.2e}"
        print(f"  {name:20} {value:>12}{'  <- first difference' if name == first else ''}")
    print(f"\nOnly the first row over {TOLERANCE:g} tells you anything: the rows after it inherit the difference, "
          f"unless a step removes it (the L2 norm cancels a change of scale).")
    print(f"Next: python -m exercises drill {number} --walkthrough   (each hand computation checked against this model)")
    print(f"Then: python -m exercises drill {number} --answer mpnet.py:FUNCTION   (e.g. mpnet.py:Layer.forward)")
    return 0


def walkthrough(number: int, bug: Bug) -> int:
    """Run walkthrough.py with the drill's copy as `mpnet`; report its first failing check and section."""
    sys.modules["mpnet"] = bugged_module(bug, "mpnet")
    path = ROOT / "walkthrough.py"
    try:
        runpy.run_path(str(path), run_name="__main__")
    except AssertionError:
        frame = [f for f in traceback.extract_tb(sys.exc_info()[2]) if f.filename == str(path)][-1]
        lines = path.read_text(encoding="utf-8").splitlines()
        section = next((line.lstrip("# ") for line in reversed(lines[:frame.lineno]) if line.startswith("# ## ")), "?")
        print(f"\nDrill {number}: the walkthrough's check at line {frame.lineno} fails: {frame.line}\n"
              f"  section: {section}\nRead that section beside mpnet.py: the module and the hand computation disagree.")
        return 1
    print(f"\nDrill {number}: every check in the walkthrough passes on this model. Its hand computations cover "
          f"one short sentence pair; the per-layer table (python -m exercises drill {number}) covers more.")
    return 0


def is_right(bug: Bug, answer: str) -> bool:
    """FILE:FUNCTION names the bug's place; for a method, its class alone counts too."""
    file, _, function = answer.partition(":")
    return Path(file).name == "mpnet.py" and function in (bug.function, bug.function.split(".")[0])


def answer(number: int, bug: Bug, text: str) -> int:
    if ":" not in text:
        print(f"give the answer as FILE:FUNCTION, e.g. mpnet.py:Layer.forward, not {text!r}")
        return 2
    if not is_right(bug, text):
        print(f"Drill {number}: not {text}. Look at the first row that differs (python -m exercises drill {number}) and "
              f"at the walkthrough's first failing check; the bug sits in the code that computes that step.")
        return 1
    print(f"Drill {number}: right, mpnet.py:{bug.function}. The bug: {bug.what}.\n"
          f"How far it moves STS-B, and where it first shows: experiments/drills.md")
    return 0


def main(args) -> int:
    if args.command == "drills":
        print(f"{len(BUGS)} drills: python -m exercises drill N (N = 1..{len(BUGS)}). Each loads a copy of mpnet.py with "
              f"one bug; find the function it is in.")
        return 0
    if not 1 <= args.number <= len(BUGS):
        print(f"there are drills 1 to {len(BUGS)}, not {args.number}")
        return 2
    bug = BUGS[args.number - 1]
    torch.manual_seed(0)
    if args.answer:
        return answer(args.number, bug, args.answer)
    if args.walkthrough:
        return walkthrough(args.number, bug)
    return show(args.number, bug)
