"""python -m tools.fetch_data against a local HTTP server on 127.0.0.1 that serves the files as their
public sources hold them, rebuilt from ../shared/data: no test needs the internet."""
import hashlib
import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

import data
from tools import fetch_data

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_mirror(root: Path) -> None:
    """The files as the sources publish them (before the conversions of fetch_data.py)."""
    def put(url_path: str, content: bytes) -> None:
        (root / url_path).parent.mkdir(parents=True, exist_ok=True)
        (root / url_path).write_bytes(content)

    for name in ("train.csv", "test.csv", "categories.json"):
        put(f"{fetch_data.POLYAI}/{name}", (SHARED / "banking77" / name).read_bytes())
    train = (SHARED / "sst2" / "train.tsv").read_bytes()
    put(fetch_data.SOURCES["sst2"][0].url_path, b"text\tlabel\n" + train.split(b"\n", 1)[1])  # the renamed header
    put(fetch_data.SOURCES["sst2"][1].url_path, (SHARED / "sst2" / "dev.tsv").read_bytes())
    for split in ("train", "dev", "test"):
        put(f"{fetch_data.STSB}/sts-{split}.csv", (SHARED / "stsb" / "original" / f"sts-{split}.csv").read_bytes())
    put(f"{fetch_data.TREC}/train", (SHARED / "trec" / "original" / "train_5500.label").read_bytes()[:-1])  # no final newline
    put(f"{fetch_data.TREC}/test", (SHARED / "trec" / "original" / "TREC_10.label").read_bytes())


class Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Quiet.requests.append(self.path)
        super().do_GET()


class CutsTheConnection(Quiet):
    """Announces the whole file, sends half of it, hangs up: an interrupted transfer."""

    def do_GET(self):
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        self.close_connection = True


@pytest.fixture
def server(tmp_path, monkeypatch):
    """serve(handler) -> starts a server for the mirror on 127.0.0.1 and points fetch_data at it."""
    mirror = tmp_path / "mirror"
    build_mirror(mirror)
    servers = []

    def serve(handler=Quiet):
        for running in servers:
            running.shutdown()
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(mirror)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        monkeypatch.setenv("MPNET_DATA_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
        Quiet.requests = []
        return mirror

    yield serve
    for running in servers:
        running.shutdown()
        running.server_close()


def test_fetch_rebuilds_the_shared_files_byte_for_byte(tmp_path, server):
    server()
    folder = tmp_path / "data"
    fetch_data.main(["--dir", str(folder)])
    for name, sources in fetch_data.SOURCES.items():
        for source in sources:
            assert sha(folder / source.target) == sha(SHARED / source.target) == source.sha256, source.target
    assert len(data.load("trec", "test", folder)) == 500 and len(data.read_stsb("dev", folder)) == 1500
    Quiet.requests.clear()
    fetch_data.main(["--dir", str(folder), "banking77"])  # a rerun downloads nothing that is in place
    assert Quiet.requests == []


def test_a_corrupt_download_is_refused_and_never_placed(tmp_path, server, capsys):
    mirror = server()
    damaged = mirror / f"{fetch_data.POLYAI}/test.csv"
    damaged.write_bytes(damaged.read_bytes().replace(b"card", b"cart", 1))
    folder = tmp_path / "data"
    with pytest.raises(SystemExit, match=r"test.csv: sha256 .* is not the expected d12d6e3bc4c31039.*; the file was "
                                         r"not placed"):
        fetch_data.main(["--dir", str(folder), "banking77"])
    assert (folder / "banking77" / "train.csv").is_file()  # fetched before the damaged one
    assert not (folder / "banking77" / "test.csv").exists()
    assert not list(folder.rglob("*.tmp"))


def test_a_rerun_after_an_interruption_completes(tmp_path, server):
    server(CutsTheConnection)
    folder = tmp_path / "data"
    with pytest.raises(SystemExit, match="could not download .*train.csv.*IncompleteRead"):
        fetch_data.main(["--dir", str(folder), "banking77"])
    assert not (folder / "banking77" / "train.csv").exists()
    (folder / "banking77").mkdir(parents=True)
    (folder / "banking77" / "test.csv.tmp").write_bytes(b"left by a killed fetch")
    server()
    fetch_data.main(["--dir", str(folder), "banking77"])
    assert sha(folder / "banking77" / "test.csv") == fetch_data.SOURCES["banking77"][1].sha256


def test_missing_data_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.delenv("MPNET_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"download the benchmarks with `python -m tools.fetch_data`"):
        data.data_dir(tmp_path / "nowhere")


def test_unknown_dataset_name_is_refused(capsys):
    with pytest.raises(SystemExit):
        fetch_data.main(["imdb"])
    assert "unknown dataset 'imdb'; choose from banking77, sst2, stsb, trec" in capsys.readouterr().err
