"""Download the benchmark datasets from their public sources, check them, and put them in place.

    python -m tools.fetch_data                      # Banking77, SST-2 (train, dev), STS-B, TREC
    python -m tools.fetch_data banking77 trec       # some of them
    python -m tools.fetch_data --dir /data/mpnet    # elsewhere (default: the user data folder below)

For users outside this project's machines, where ../shared/data does not exist. Each file comes
from the repository and commit that the dataset's SOURCE.md names (raw files on GitHub), goes
through the same small conversion that produced the shared copy (a header, a column cut, a
character set), and must then have the shared copy's sha256: anything else is refused and never
placed. Files are written under a temporary name and renamed (reliability/checkpoint.write_atomic), so an
interrupted fetch leaves no half-file, and a rerun starts that file again.

Where the files go: --dir, else $MPNET_DATA_DIR, else the user data folder
($XDG_DATA_HOME or ~/.local/share)/mpnet-data, which data.py reads when ../shared/data is absent.
SST-2's test_labeled.tsv is not fetched: it was derived by matching labels from two other sources
(see its SOURCE.md), not downloaded; the readers use SST-2's dev split for evaluation.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reliability.checkpoint import write_atomic
from data import user_data_dir
from weights.fetch import sha256_of

BASE_URL = "https://raw.githubusercontent.com"  # MPNET_DATA_BASE_URL replaces it (the tests use a local server)


# ----------------------------------------------------------------------------- conversions
def sst2_header(raw: bytes) -> bytes:
    """The train.tsv copy online renamed GLUE's header `sentence\\tlabel` to `text\\tlabel`; restore it."""
    header, rest = raw.split(b"\n", 1)
    return (b"sentence\tlabel" if header == b"text\tlabel" else header) + b"\n" + rest


def stsb_tsv(raw: bytes) -> bytes:
    """The headerless originals -> a header, and only the 7 standard columns (some rows carry 2 more)."""
    rows = ["\t".join(line.split("\t")[:7]) for line in raw.decode("utf-8").split("\n") if line]
    return ("\n".join(["genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2"] + rows) + "\n").encode()


def trec_tsv(raw: bytes) -> bytes:
    """`COARSE:fine question` lines (Latin-1) -> coarse, fine, text columns. The one non-ASCII byte
    (0xF0 in 'sister city') becomes a space, as Hugging Face's trec loader does."""
    rows = ["coarse_label\tfine_label\ttext"]
    for line in raw.decode("latin-1").replace("\xf0", " ").splitlines():
        if line.strip():
            label, question = line.split(" ", 1)
            rows.append(f"{label.split(':')[0]}\t{label}\t{question}")
    return ("\n".join(rows) + "\n").encode()


@dataclass(frozen=True)
class Source:
    target: str                  # path inside the data folder
    url_path: str                # owner/repo/commit/path on raw.githubusercontent.com
    sha256: str                  # of the file as placed (after convert), as in SOURCE.md
    convert: Callable[[bytes], bytes] | None = None


POLYAI = "PolyAI-LDN/task-specific-datasets/57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data"
STSB = "zhangzhenhu/Semantic-Texual-Similarity-Toolkits/c55a72f51bd15a8bd75114247c06984b432050f9/data/stsbenchmark"
TREC = "thtrieu/qclass_dl/a994f8b4ba99397f857cd04fba4d202520b02922/data"
SOURCES = {
    "banking77": [
        Source("banking77/train.csv", f"{POLYAI}/train.csv", "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b"),
        Source("banking77/test.csv", f"{POLYAI}/test.csv", "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d"),
        Source("banking77/categories.json", f"{POLYAI}/categories.json",
               "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63"),
    ],
    "sst2": [
        Source("sst2/train.tsv", "TaoCesc/binary_cls/6a73b09b39af0efe049622662211f3657c75a15e/data/SST-2/train.tsv",
               "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1", sst2_header),
        Source("sst2/dev.tsv", "brunnurs/binary-classification-bert/0243c04ab8def6275a5a5a0e08d3921185cebd0d/data/SST2/dev.tsv",
               "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
    ],
    "stsb": [
        Source(f"stsb/sts-{split}.tsv", f"{STSB}/sts-{split}.csv", sha, stsb_tsv) for split, sha in (
            ("train", "2f9007459220a03114565ae4b2de609fbee9f0c0cce72252383048264b28799d"),
            ("dev", "6b705fd53f971eeac6df3a22d8d4757ab0e4f9380ab318282bcd63edeb1970f2"),
            ("test", "112c778e978f6b56f961cf65b678a03ad566f2333d0691792126dded010ae238"))
    ],
    "trec": [
        Source("trec/train.tsv", f"{TREC}/train", "f037995fa5bdd9337d070af45b9a7a3210131e0053462d479c873309d5d86a41", trec_tsv),
        Source("trec/test.tsv", f"{TREC}/test", "782bebc4e6d6b475590055f7527da82f0efc58c865df1bacae88fe4245d483e4", trec_tsv),
    ],
}


def fetch_file(source: Source, folder: Path, timeout: float = 30) -> str:
    """Download, convert, verify, rename into place. Returns 'present' or 'fetched'; raises on any failure."""
    target = folder / source.target
    if target.is_file() and sha256_of(target) == source.sha256:
        return "present"
    url = f"{os.environ.get('MPNET_DATA_BASE_URL', BASE_URL)}/{source.url_path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw = response.read()
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, a cut transfer
        raise OSError(f"could not download {url}: {e!r}") from None
    data = source.convert(raw) if source.convert else raw
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise ValueError(f"{url}: sha256 {digest[:16]}... is not the expected {source.sha256[:16]}...; "
                         f"the file was not placed (a changed or damaged download)")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(lambda p: p.write_bytes(data), target)
    return "fetched"


def fetch(names: list[str], folder: Path) -> None:
    for name in names:
        for source in SOURCES[name]:
            print(f"{source.target}: {fetch_file(source, folder)}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.fetch_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"datasets to fetch (default: all of {', '.join(SOURCES)})")
    parser.add_argument("--dir", type=Path, default=None, help="the data folder (default: $MPNET_DATA_DIR or "
                                                               f"{user_data_dir()})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SOURCES]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    folder = args.dir or Path(os.environ.get("MPNET_DATA_DIR") or user_data_dir())
    try:
        fetch(args.names or list(SOURCES), folder)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"data in {folder}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
