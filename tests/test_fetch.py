"""weights/fetch.py with fake sources: verification, atomic placement, fallback, clear failure."""
import hashlib
import http.client
import io
import threading
import time

import pytest

from weights import fetch as wf

GOOD = b"pretend these are the weights"
FAKE = {name: f"pretend this is {name}".encode() for name in wf.ST_FILES + wf.FILES} | {"model.safetensors": GOOD}


@pytest.fixture
def small_model(monkeypatch):
    """Pin the fake files' sizes and hashes in place of the real ones."""
    monkeypatch.setattr(wf, "PINNED", {name: (len(b), hashlib.sha256(b).hexdigest()) for name, b in FAKE.items()})


def writes(model_bytes, **other):
    """A source that delivers the fake files, with this model and any other file's bytes replaced."""
    def source(scratch):
        for name, content in (FAKE | {"model.safetensors": model_bytes} | {n.replace("__", "/"): b for n, b in other.items()}).items():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_bytes(content)
    return source


def fails(scratch):
    (scratch / "model.safetensors").write_bytes(GOOD[:5])  # a partial download
    raise wf.FetchError("network unreachable")


def test_falls_back_to_the_second_source(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(wf, "SOURCES", [("first", fails), ("second", writes(GOOD))])
    target = wf.fetch(tmp_path / "w")
    assert (target / "model.safetensors").read_bytes() == GOOD
    assert wf.is_complete(target) and wf.is_complete(target, sentence_transformers=True)
    assert (target / "1_Pooling" / "config.json").read_bytes() == FAKE["1_Pooling/config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.lock", "w"]  # scratch folder cleaned up


def test_corrupt_download_never_reaches_the_target(tmp_path, monkeypatch, small_model):
    bad = b"X" * len(GOOD)  # right size, wrong hash
    monkeypatch.setattr(wf, "SOURCES", [("only", writes(bad))])
    with pytest.raises(wf.FetchError, match="sha256"):
        wf.fetch(tmp_path / "w")
    assert not (tmp_path / "w" / "model.safetensors").exists()


def test_all_sources_failing_says_why_and_what_to_do(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(wf, "SOURCES", [("a", fails), ("b", writes(b"short"))])
    with pytest.raises(wf.FetchError) as info:
        wf.fetch(tmp_path / "w")
    msg = str(info.value)
    assert "network unreachable" in msg and "expected" in msg and wf.ENV_VAR in msg
    assert not (tmp_path / "w" / "model.safetensors").exists()


def test_rerun_after_interruption_completes(tmp_path, monkeypatch, small_model):
    # what a killed run leaves: a half-filled scratch folder and no model in the target
    (tmp_path / ".partial-w").mkdir()
    (tmp_path / ".partial-w" / "model.safetensors").write_bytes(GOOD[:3])
    monkeypatch.setattr(wf, "SOURCES", [("only", writes(GOOD))])
    assert wf.is_complete(wf.fetch(tmp_path / "w"))
    assert not (tmp_path / ".partial-w").exists()


def test_complete_folder_is_not_fetched_again(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(wf, "SOURCES", [("only", writes(GOOD))])
    wf.fetch(tmp_path / "w")
    monkeypatch.setattr(wf, "SOURCES", [("boom", fails)])
    wf.fetch(tmp_path / "w")  # would raise if it tried a source


def test_env_var_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(wf.ENV_VAR, str(tmp_path / "elsewhere"))
    assert wf.weights_dir() == tmp_path / "elsewhere"
    assert wf.weights_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_a_folder_you_name_is_never_fetched_into(tmp_path, monkeypatch):
    """from_pretrained(path) on a folder holding something else (an fp16 export, your own files) is an
    error that changes nothing there, not a silent download of the upstream model over it."""
    import mpnet

    def fetches(*args, **kwargs):
        raise AssertionError("it fetched into the user's folder")

    monkeypatch.setattr(mpnet, "fetch", fetches)
    (tmp_path / "model.safetensors").write_bytes(b"an fp16 export, half the size")
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileNotFoundError, match="does not hold all-mpnet-base-v2.*nothing there was changed"):
        mpnet.SentenceEncoder.from_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------- every file pinned (issue 30, item 5)
def test_a_cut_small_file_makes_the_folder_incomplete(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(wf, "SOURCES", [("only", writes(GOOD))])
    target = wf.fetch(tmp_path / "w")
    tokenizer = target / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:-3])  # what a cut transfer renamed into place used to leave
    assert not wf.is_complete(target)
    wf.fetch(target)  # so the next fetch repairs it
    assert tokenizer.read_bytes() == FAKE["tokenizer.json"]


def test_a_wrong_small_file_never_reaches_the_target(tmp_path, monkeypatch, small_model):
    wrong = b"X" * len(FAKE["tokenizer.json"])  # right size, other content: a third-party part that changed
    monkeypatch.setattr(wf, "SOURCES", [("only", writes(GOOD, **{"tokenizer.json": wrong}))])
    with pytest.raises(wf.FetchError, match="tokenizer.json: sha256"):
        wf.fetch(tmp_path / "w")
    assert not (tmp_path / "w" / "tokenizer.json").exists() and not (tmp_path / "w" / "model.safetensors").exists()


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, length: int | None, cut: bool = False):
        super().__init__(body)
        self.headers = {"Content-Length": str(length)} if length is not None else {}
        self.cut, self.served = cut, 0

    def read(self, n=-1):
        block = super().read(n)
        self.served += len(block)
        if not block and self.cut:
            raise http.client.IncompleteRead(b"", 100)
        return block


def hub_serving(monkeypatch, respond):
    monkeypatch.setattr(wf.urllib.request, "urlopen", lambda url, timeout: respond(url.split(f"/{wf.HUB_REVISION}/")[1]))


def test_a_transfer_cut_short_is_a_fetch_error_and_the_next_source_is_tried(tmp_path, monkeypatch, small_model):
    hub_serving(monkeypatch, lambda name: FakeResponse(FAKE.get(name, b"")[:3], len(FAKE.get(name, b"")), cut=True))
    monkeypatch.setattr(wf, "SOURCES", [("hub", wf.from_hub), ("second", writes(GOOD))])
    assert wf.is_complete(wf.fetch(tmp_path / "w"))
    with pytest.raises(wf.FetchError, match="IncompleteRead"):
        wf.from_hub(tmp_path / "scratch")


def test_a_download_stops_at_its_pinned_size(tmp_path, monkeypatch, small_model):
    endless = FakeResponse(b"y" * 10_000_000, None)  # no Content-Length, far more than pinned
    hub_serving(monkeypatch, lambda name: endless)
    with pytest.raises(wf.FetchError, match="more than its pinned"):
        wf.from_hub(tmp_path)
    assert endless.served <= len(FAKE[wf.ST_FILES[0]]) + 1  # read no further than one byte past the pin


def test_a_wrong_content_length_is_refused_before_reading(tmp_path, monkeypatch, small_model):
    hub_serving(monkeypatch, lambda name: FakeResponse(FAKE[name], len(FAKE[name]) + 5))
    with pytest.raises(wf.FetchError, match="announces"):
        wf.from_hub(tmp_path)


def test_the_hub_path_delivers_files_that_verify(tmp_path, monkeypatch, small_model):
    hub_serving(monkeypatch, lambda name: FakeResponse(FAKE[name], len(FAKE[name])))
    monkeypatch.setattr(wf, "SOURCES", [("hub", wf.from_hub)])
    target = wf.fetch(tmp_path / "w", sentence_transformers=True)
    wf.verify(target, wf.ST_FILES + wf.FILES)


# ----------------------------------------------------------------------------- one fetch at a time, synced (items 4, 7)
def test_two_fetches_into_one_folder_download_once(tmp_path, monkeypatch, small_model):
    """As torchrun's ranks do: every process calls fetch(); one downloads, the others wait and find the files."""
    calls = []

    def slow(scratch):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        writes(GOOD)(scratch)

    monkeypatch.setattr(wf, "SOURCES", [("slow", slow)])
    results, errors = [], []

    def run():
        try:
            results.append(wf.fetch(tmp_path / "w"))
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and len(results) == 3
    assert wf.is_complete(tmp_path / "w")


def test_the_files_and_the_folder_are_synced_before_the_fetch_returns(tmp_path, monkeypatch, small_model):
    synced = []
    monkeypatch.setattr(wf, "sync_folder", lambda path: synced.append(path))
    monkeypatch.setattr(wf, "SOURCES", [("only", writes(GOOD))])
    target = wf.fetch(tmp_path / "w")
    assert target in synced and target / "1_Pooling" in synced
    fsynced = []
    monkeypatch.setattr(wf.os, "fsync", lambda fd: fsynced.append(fd))
    with open(tmp_path / "out", "wb") as out:
        wf.copy_stream(io.BytesIO(b"abc"), out, wf.Progress("x", 3), limit=3)
    assert len(fsynced) == 1 and (tmp_path / "out").read_bytes() == b"abc"


def test_a_full_disk_during_a_fetch_leaves_no_scratch_folder(tmp_path, monkeypatch, small_model):
    def fills_the_disk(scratch):
        (scratch / "model.safetensors").write_bytes(GOOD[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wf, "SOURCES", [("only", fills_the_disk)])
    with pytest.raises(OSError, match="No space left"):
        wf.fetch(tmp_path / "w")
    assert not (tmp_path / ".partial-w").exists() and not (tmp_path / "w" / "model.safetensors").exists()
