"""tools/explain.py: its numbers against the model and an independent reference, its server's
refusals, its static export, and the page itself driven in headless Chromium (Debian's package,
through the Python playwright package; .ci/run installs both and sets MPNET_BROWSER_TESTS=1, which
turns a missing browser into a failure instead of a skip)."""
import base64
import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from tools import explain

PAIR = ["The cat sat on the warm mat.", "A kitten is resting on a rug by the fire."]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def decoded(encoded: str, rows: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded), "<u2").reshape(rows, -1) / 65535


@pytest.fixture(scope="module")
def reference_attentions():
    """transformers' MPNetModel (eager attention) on the same padded batch: its attention weights."""
    transformers = pytest.importorskip("transformers")
    from weights.fetch import weights_dir

    model = transformers.MPNetModel.from_pretrained(str(weights_dir()), attn_implementation="eager",
                                                  use_safetensors=True)
    def attentions(encoder, sentences):
        batch = encoder.tokenizer.pad(encoder.tokenizer.encode(sentences))
        with torch.inference_mode():
            out = model.eval()(**batch, output_attentions=True)
        return [a.numpy() for a in out.attentions]          # per layer (B, H, L, L)
    return attentions


@pytest.fixture(scope="module")
def server(encoder):
    srv = explain.serve(explain.Explainer(encoder), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()


def test_numbers_are_the_models(encoder, reference_attentions):
    view, trace = explain.explain(encoder, PAIR)
    ids = encoder.tokenizer.encode(PAIR)
    assert view["ids"][0][:len(ids[0])] == ids[0] and view["ids"][1][:len(ids[1])] == ids[1]
    assert view["tokens"][0][0] == "<s>" and view["tokens"][0][len(ids[0]) - 1] == "</s>"
    assert view["positions"][0][:3] == [2, 3, 4]
    short = int(np.argmin(view["lengths"]))
    assert view["positions"][short][-1] == 1 and view["tokens"][short][-1] == "<pad>"
    emb = encoder.encode(PAIR)
    assert view["cosine"] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-6)
    assert view["cosine_padded"] == pytest.approx(view["cosine"], abs=1e-5)
    assert view["unit"][0] == pytest.approx(emb[0, :8].tolist(), abs=1e-4)
    # Attention of every layer and head, and their means, against transformers' weights.
    ref = reference_attentions(encoder, PAIR)
    for s in (0, 1):
        n = view["lengths"][s]
        for layer in (0, 5, 11):
            for head in (0, 7):
                got = decoded(explain.attention_map(encoder.model, trace, s, layer, head), n)
                np.testing.assert_allclose(got, ref[layer][s, head, :n], atol=2e-5)
        mean = decoded(explain.attention_map(encoder.model, trace, s, "mean", "mean"), n)
        np.testing.assert_allclose(mean, np.mean([r[s, :, :n] for r in ref], axis=(0, 1)), atol=2e-5)
    # Leaving out the padding term lets the padded sentence read its pads; the real one gives them 0.
    n = view["lengths"][short]
    assert decoded(explain.attention_map(encoder.model, trace, short, 3, 2), n)[:, n:].max() == 0
    assert decoded(explain.attention_map(encoder.model, trace, short, 3, 2, padding=False), n)[:, n:].max() > 1e-3
    without_bias = decoded(explain.attention_map(encoder.model, trace, 0, 3, 2, bias=False), view["lengths"][0])
    assert np.abs(without_bias - ref[3][0, 2, :view["lengths"][0]]).max() > 1e-3


def test_bad_input_is_one_line(encoder):
    for sentences, words in (([], "one sentence or a pair"), (["  "], "empty"),
                             (["a", "b", "c"], "one sentence or a pair"),
                             (["x" * (explain.MAX_CHARS + 1)], "characters")):
        with pytest.raises(ValueError, match=words):
            explain.explain(encoder, sentences)
    # An emoji and a paragraph past the token limit are input like any other.
    view, _ = explain.explain(encoder, ["🎸 rocks", "word " * 600])
    assert view["lengths"][1] == view["max_tokens"] == 384
    assert view["padded_to"] == 384  # the paragraph, not the filler, sets the padded batch's length


def post(url, body):
    request = urllib.request.Request(url + "explain", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_answers_only_its_page(server):
    assert post(server, {"sentences": [""]}) == (400, {"error": "sentence A is empty: type something to embed"})
    status, answer = post(server, {"nope": 1})
    assert status == 400 and "pair" in answer["error"] and "Traceback" not in answer["error"]
    for path in ("tools/explain.py", "../README.md", "attention?layer=99"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server + path)
        assert e.value.code in (400, 404)
        assert "Traceback" not in e.value.read().decode()
    assert server.startswith("http://127.0.0.1:")


def test_static_export(encoder, tmp_path, capsys):
    out = tmp_path / "pair.html"
    explain.main(["--html", str(out), *PAIR])
    html = out.read_text(encoding="utf-8")
    assert len(html.encode()) <= 5e6 and "/*DATA*/null" not in html
    data = json.loads(html.split("const DATA = ", 1)[1].split("; ", 1)[0].replace("<\\/", "</"))
    assert data["view"]["sentences"] == PAIR and "1/11/11/10" in data["maps"]
    with pytest.raises(SystemExit):  # never over a file that is there
        explain.main(["--html", str(out), *PAIR])
    assert out.read_text(encoding="utf-8") == html


def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or CHROMIUM is None:
        if os.environ.get("MPNET_BROWSER_TESTS") == "1":
            pytest.fail("MPNET_BROWSER_TESTS=1 but playwright or chromium is missing")
        pytest.skip("needs playwright (pip) and chromium (apt-get install chromium)")
    return sync_playwright


def test_page_in_chromium(encoder, server, reference_attentions, tmp_path):
    sync_playwright = browser()
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        page = chrome.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        page.wait_for_selector("#cos")
        page.fill("#a", "")
        page.locator("#a").press_sequentially(PAIR[0])
        page.fill("#b", "")
        page.locator("#b").press_sequentially(PAIR[1])
        page.click("#run")
        page.wait_for_function("s => view && view.sentences[0] === s", arg=PAIR[0])

        shown = page.locator("#tokens .chips").first.locator(".chip b").all_text_contents()
        ids = encoder.tokenizer.encode(PAIR)[0]
        assert shown[:len(ids)] == [encoder.tokenizer.tok.id_to_token(i) for i in ids]
        emb = encoder.encode(PAIR)
        assert page.text_content("#cos") == f"{float(emb[0] @ emb[1]):.4f}"

        ref = reference_attentions(encoder, PAIR)
        for s, layer, head in ((0, 6, 3), (1, 11, 0), (1, 2, 9)):
            page.select_option("#which", index=s)
            page.select_option("#layer", index=layer + 1)  # after "mean"
            page.select_option("#head", index=head + 1)
            key = f"{s}/{layer}/{head}/11"
            try:
                page.wait_for_function(f"document.getElementById('attention').dataset.key === '{key}'",
                                       timeout=10_000)
            except Exception:
                shown = page.get_attribute("#attention", "data-key")
                pytest.fail(f"the heat map shows {shown}, not {key}: {page.text_content('#error')!r}")
            heat = page.evaluate("drawn.attention")
            n = len(heat["rows"])
            got = np.array(heat["values"]).reshape(len(heat["rows"]), -1)
            assert heat["rows"] == page.evaluate("s => view.tokens[s].slice(0, view.lengths[s])", s)
            np.testing.assert_allclose(got, ref[layer][s, head, :n], atol=2e-5)

        page.fill("#a", "   ")
        page.click("#run")
        page.wait_for_function("document.getElementById('error').textContent.includes('empty')")

        # The static export opens from a file with the network off, and shows the same numbers.
        exported = tmp_path / "pair.html"
        explain.main(["--html", str(exported), *PAIR])
        offline = chrome.new_context(offline=True).new_page()
        offline.on("pageerror", lambda e: errors.append(str(e)))
        offline.goto(exported.as_uri())
        assert offline.text_content("#cos") == f"{float(emb[0] @ emb[1]):.4f}"
        offline.select_option("#layer", index=12)
        offline.select_option("#head", index=1)
        heat = offline.evaluate("drawn.attention")
        np.testing.assert_allclose(np.array(heat["values"]).reshape(len(heat["rows"]), -1),
                                   ref[11][0, 0, :len(heat["rows"])], atol=2e-5)
        assert errors == []
        chrome.close()
