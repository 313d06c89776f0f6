"""One lock for every command that writes an output: train.py's run folder, the corpus command's
.npy, predict.py's --output.

    with holding(Path(".emb.npy.lock"), Path("emb.npy"), owner="scale.corpus job", flag="--output"):
        ...

An exclusive fcntl.flock on a small file beside the output, held while the command runs and released
by the operating system if the process dies (no stale lock to clean up after a kill -9). The file
holds the holder's PID, for the message the next process prints. As Git does with its lock files,
the lock is never a link to somewhere else: a symbolic link there is refused rather than followed
(O_NOFOLLOW), and so is a file with other hard links, so that writing the PID can never truncate a
file the project did not make.
"""
from __future__ import annotations

import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class InUse(Exception):
    """Another process holds the lock, or the lock's path is not one the project may write."""


@contextmanager
def holding(path: Path, output: Path, owner: str, flag: str) -> Iterator[None]:
    """Hold the exclusive lock at `path` (created if absent) while the block runs, or raise InUse.
    output, owner, flag: what the lock guards, the command, and its flag, for the message."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise InUse(f"{path} is a symbolic link; the lock must be a plain file the project "
                        f"makes itself: remove the link") from None
        raise InUse(f"cannot open the lock {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise InUse(f"{path} is not a plain file of its own (it has other links); remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise InUse(f"{output} is in use by another {owner} (PID {holder}); wait for it to "
                        f"end, or pick another {flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
