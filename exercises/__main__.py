"""python -m exercises [list | check NAME | reset [NAME ...] | drills | drill N [--walkthrough | --answer FILE:FUNCTION]]"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from exercises import BY_NAME, EXERCISES, Exercise, run  # noqa: E402

STUBS, YOURS = HERE / "stubs", HERE / "yours"


def shown(path: Path) -> str:
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path)


def your_file(exercise: Exercise) -> Path:
    """exercises/yours/NAME.py, copied from the stub the first time."""
    path = YOURS / f"{exercise.name}.py"
    if not path.exists():
        YOURS.mkdir(exist_ok=True)
        shutil.copyfile(STUBS / path.name, path)
        print(f"made {shown(path)} from the stub: write {exercise.function} there")
    return path


def load_function(exercise: Exercise, path: Path):
    spec = importlib.util.spec_from_file_location(f"yours_{exercise.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, exercise.function, None)):
        sys.exit(f"{path} has no function {exercise.function}; the stub's signature is the one to keep")
    return getattr(module, exercise.function)


def check(name: str) -> int:
    exercise = BY_NAME[name]
    path = your_file(exercise)
    fn = load_function(exercise, path)
    started = time.perf_counter()
    outcome = run(exercise, fn)
    took = time.perf_counter() - started
    print(f"{'passed' if outcome.passed else 'not yet'}: {exercise.title} ({shown(path)}, {took:.0f} s)")
    remember(exercise, path, outcome.passed)
    print(f"  {outcome.message}")
    if outcome.passed:
        print(f"  The project's own is {exercise.reference}: compare it with yours.")
    return 0 if outcome.passed else 1


def reset(names: list[str]) -> int:
    for exercise in [BY_NAME[n] for n in names] or EXERCISES:
        path, stub = YOURS / f"{exercise.name}.py", STUBS / f"{exercise.name}.py"
        YOURS.mkdir(exist_ok=True)
        if path.exists() and path.read_bytes() != stub.read_bytes():
            backup = path.with_suffix(".py.bak")
            path.replace(backup)
            print(f"kept your {path.name} as {shown(backup)}")
        shutil.copyfile(stub, path)
    print(f"the stubs are back in {shown(YOURS)}: {', '.join(names) or 'all of them'}")
    return 0


PASSED = ".passed"  # in YOURS: one line a passed exercise, NAME and the sha256 of the file that passed


def passed_lines() -> list[str]:
    record = YOURS / PASSED
    return record.read_text().splitlines() if record.is_file() else []


def passed_line(exercise: Exercise, path: Path) -> str:
    """The record of this exercise's file as it is now: its name and the sha256 of its bytes."""
    import hashlib

    return f"{exercise.name} {hashlib.sha256(path.read_bytes()).hexdigest()}"


def remember(exercise: Exercise, path: Path, passed: bool) -> None:
    """Record (or forget) that this version of your file passed its check, for `list`."""
    kept = [line for line in passed_lines() if line.split(" ")[0] != exercise.name]
    lines = kept + ([passed_line(exercise, path)] if passed else [])
    (YOURS / PASSED).write_text("".join(f"{line}\n" for line in lines))


def state_of(exercise: Exercise) -> str:
    """not started, stub, edited, or passed (this very file passed its check; edited since: edited)."""
    mine = YOURS / f"{exercise.name}.py"
    if not mine.exists():
        return "not started"
    if mine.read_bytes() == (STUBS / mine.name).read_bytes():
        return "stub"
    return "passed" if passed_line(exercise, mine) in passed_lines() else "edited"


def listing() -> int:
    print("Exercises, in the design's order (python -m exercises check NAME):")
    for i, e in enumerate(EXERCISES, 1):
        state = state_of(e)
        print(f"  {i:2}. {e.name:13} {e.title:58} {e.reference:40} [{state}]")
    print("\nDrills (python -m exercises drills): a model with one bug each; find the file and the function.")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m exercises", description="Exercises and drills (exercises/README.md).")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="the exercises and where you are")
    p = sub.add_parser("check", help="check your exercises/yours/NAME.py against the real model")
    p.add_argument("name", choices=list(BY_NAME))
    p = sub.add_parser("reset", help="the stubs back (yours kept as .bak)")
    p.add_argument("names", nargs="*", choices=list(BY_NAME), metavar="NAME")
    sub.add_parser("drills", help="the find-the-bug drills")
    p = sub.add_parser("drill", help="load a model with one bug and show where it differs")
    p.add_argument("number", type=int)
    p.add_argument("--walkthrough", action="store_true", help="run walkthrough.py against the drill's model")
    p.add_argument("--answer", metavar="FILE:FUNCTION", help="name the bug's place, e.g. mpnet.py:Layer.forward")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.name)
    if args.command == "reset":
        return reset(args.names)
    if args.command in ("drills", "drill"):
        from exercises import drills

        return drills.main(args)
    return listing()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
