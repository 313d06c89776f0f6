"""weights/fetch.py with fake sources: verification, atomic placement, fallback, clear failure."""
import hashlib

import pytest

from weights import fetch as wf

GOOD = b"pretend these are the weights"


@pytest.fixture
def small_model(monkeypatch):
    monkeypatch.setattr(wf, "MODEL_BYTES", len(GOOD))
    monkeypatch.setattr(wf, "MODEL_SHA256", hashlib.sha256(GOOD).hexdigest())


def writes(model_bytes):
    def source(scratch):
        (scratch / "model.safetensors").write_bytes(model_bytes)
        (scratch / "tokenizer.json").write_text("{}")
        (scratch / "config.json").write_text("{}")
        for name in wf.ST_FILES:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_text(name)
    return source


def fails(scratch):
    (scratch / "model.safetensors").write_bytes(GOOD[:5])  # a partial download
    raise wf.FetchError("network unreachable")


def test_falls_back_to_the_second_source(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(wf, "SOURCES", [("first", fails), ("second", writes(GOOD))])
    target = wf.fetch(tmp_path / "w")
    assert (target / "model.safetensors").read_bytes() == GOOD
    assert wf.is_complete(target) and wf.is_complete(target, sentence_transformers=True)
    assert (target / "1_Pooling" / "config.json").read_text() == "1_Pooling/config.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # scratch folder cleaned up


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
