"""Your own data: reading CSV/TSV/JSONL files, the stratified split, and the round trip
CSV -> train.py -> eval.py and predict.py on the tiny config."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import eval as eval_mod
import train as train_mod
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig, Tokenizer
from predict import Classifier
from weights.fetch import fetch

ROOT_DIR = Path(__file__).resolve().parent.parent
TOPICS = {"billing": ["charged twice for one order", "refund has not arrived", "invoice shows a strange fee",
                      "card payment declined", "discount code ignored at checkout", "billed after cancelling",
                      "update the card on file", "receipt for last month", "double payment taken",
                      "price on the bill is wrong"],
          "delivery": ["parcel stuck at the depot", "courier never came", "box arrived soaking wet",
                       "tracking says delivered but nothing here", "missing item in the package",
                       "sent to my old address", "how long is express shipping", "delivery window missed",
                       "driver left it at the wrong door", "package damaged in transit"],
          "account": ["cannot log in after reset", "delete my account please", "verification email missing",
                      "change the email on my profile", "someone logged in from abroad", "app keeps signing me out",
                      "merge my two accounts", "two factor code expired", "username already taken",
                      "locked out after three tries"]}


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f'"{t}",{label}\n' for t, label in rows), encoding="utf-8")
    return path


def ticket_rows():
    return [(text, label) for label, texts in TOPICS.items() for text in texts]


# ----------------------------------------------------------------------------- reading
def test_csv_tsv_and_jsonl_give_the_same_rows(tmp_path):
    rows = ticket_rows()[:4]
    csv_path = write_csv(tmp_path / "t.csv", rows)
    tsv_path = tmp_path / "t.tsv"
    tsv_path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    jsonl_path = tmp_path / "t.jsonl"
    jsonl_path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    for path in (csv_path, tsv_path, jsonl_path):
        assert [(t, y) for _, t, y in data.read_user_rows(path, "text", "label")] == rows, path


@pytest.mark.parametrize("content, message", [
    ("words,label\nhello,a\n", r"t.csv:1: no column 'text'; the header has 'words', 'label'"),
    ("text,label\nhello,a\n   ,b\n", r"t.csv:3: empty text in column 'text'"),
    ("text,label\nhello,a\nworld,\n", r"t.csv:3: empty label in column 'label'"),
    ('text,label\n"unterminated,a\n', r"t.csv:2: malformed CSV"),
    ("text,label\nhello,a,extra\n", r"t.csv:2: 3 fields where the header has 2"),
    ("text,label\n", r"t.csv: no rows"),
])
def test_bad_user_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "t.csv").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        data.read_user_rows(tmp_path / "t.csv", "text", "label")


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.jsonl:3: not a JSON object"):
        data.read_user_rows(path, "text", "label")
    path.write_text('{"text": "fine", "category": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.jsonl:1: no field 'label'; this record has 'text', 'category'"):
        data.read_user_rows(path, "text", "label")


def test_a_bom_and_crlf_are_fine_and_integer_labels_become_strings(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\r\nhello,1\r\nworld,0\r\n")
    assert data.read_user_rows(path, "text", "label") == [(2, "hello", "1"), (3, "world", "0")]


def test_labels_with_spaces_around_them_are_read_without_them_said_once(tmp_path, capsys):
    path = tmp_path / "spaced.csv"
    path.write_text("text,label\nfine,pos\ngood, pos\nbad,neg \nawful,neg\n")
    labels = [label for _, _, label in data.read_user_rows(path, "text", "label")]
    assert labels == ["pos", "pos", "neg", "neg"]  # two classes, not four
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 labels had spaces around them (first: line 3, ' pos')" in err[0]


def test_resume_refuses_a_data_file_that_changed(tmp_path):
    """An edited CSV under a saved sampler: its row indices would point at other rows, and former
    training rows could land in the test split."""
    from reliability import run_folder

    path = tmp_path / "mine.csv"
    path.write_text("text,label\n" + "".join(f"sentence {i},{'ab'[i % 2]}\n" for i in range(20)))
    cfg = train_mod.TrainConfig(task_a=str(path), task_b="none", out=str(tmp_path / "run"))
    backbone = MPNetConfig()
    info = run_folder.run_info(cfg, backbone, data.load_tasks(cfg)[0])
    run_folder.check_resume_matches(info, run_folder.run_info(cfg, backbone, data.load_tasks(cfg)[0]), tmp_path)
    path.write_text(path.read_text().replace("sentence 3,b", "sentence 3,a").replace("sentence 5,b", "sentence 5,a")
                    .replace("sentence 4,a", "sentence 4,b").replace("sentence 6,a", "sentence 6,b"))
    with pytest.raises(ValueError, match=r"mine.csv is not the file the run started with"):
        run_folder.check_resume_matches(info, run_folder.run_info(cfg, backbone, data.load_tasks(cfg)[0]), tmp_path)


def test_stratified_split_keeps_every_label_on_both_sides_and_depends_on_the_seed_only(tmp_path):
    rows = [(i + 2, t, y) for i, (t, y) in enumerate(ticket_rows())]
    train, test = data.stratified_split("t.csv", rows, 0.2, seed=0)
    assert sorted(train + test) == list(range(30)) and len(test) == 6
    assert {rows[i][2] for i in test} == {rows[i][2] for i in train} == set(TOPICS)
    assert data.stratified_split("t.csv", rows, 0.2, seed=0) == (train, test)
    assert data.stratified_split("t.csv", rows, 0.2, seed=1) != (train, test)


def test_split_errors_name_the_single_label_row_and_the_single_class_file():
    rows = [(2, "a", "x"), (3, "b", "x"), (4, "c", "y")]
    with pytest.raises(ValueError, match=r"t.csv:4: label 'y' is on this row only; a stratified split needs 2"):
        data.stratified_split("t.csv", rows, 0.2, seed=0)
    with pytest.raises(ValueError, match=r"t.csv: every row has the label 'x'; a classifier needs at least 2 labels"):
        data.stratified_split("t.csv", rows[:2], 0.2, seed=0)


def test_labels_file_and_test_file(tmp_path):
    train_path = write_csv(tmp_path / "train.csv", [("a1", "x"), ("a2", "x"), ("b1", "y"), ("b2", "y")])
    test_path = write_csv(tmp_path / "test.csv", [("a3", "x"), ("c1", "z")])
    cfg = train_mod.TrainConfig(task_a=str(train_path), task_b="none", test_a=str(test_path))
    with pytest.raises(ValueError, match=r"test.csv:3: label 'z' is not one of the 2 labels"):
        data.load_tasks(cfg)
    labels = tmp_path / "labels.txt"
    labels.write_text("x\ny\nz\n")
    train, _, final = data.load_tasks(train_mod.TrainConfig(**(vars(cfg) | {"labels_a": str(labels)})))
    assert final["a"].label_names == ["x", "y", "z"] and final["a"].labels == [0, 2] and len(train["a"]) == 4


def test_one_file_with_two_label_columns_gives_examples_with_both_labels(tmp_path, tokenizer):
    rows = [(f"text {i}", "x" if i % 2 else "y", "pos" if i % 3 else "neg") for i in range(30)]
    path = tmp_path / "both.csv"
    path.write_text("text,topic,sentiment\n" + "".join(f"{t},{a},{b}\n" for t, a, b in rows), encoding="utf-8")
    cfg = train_mod.TrainConfig(task_a=str(path), task_b=str(path), label_column_a="topic",
                                label_column_b="sentiment")
    train, val, final = data.load_tasks(cfg)
    assert train["a"].texts == train["b"].texts and final["a"].texts == final["b"].texts
    pools = data.make_pools(train, tokenizer)
    assert len(pools) == 1 and set(pools[0].labels) == {"a", "b"}  # one pool: each example carries both


# ----------------------------------------------------------------------------- the round trip
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(fetch() / "tokenizer.json")


def test_csv_to_train_to_eval_and_predict_round_trip(tmp_path, tokenizer, monkeypatch, capsys):
    csv_path = write_csv(tmp_path / "tickets.csv", ticket_rows())

    def tiny_build(cfg, train_sets):
        torch.manual_seed(0)
        backbone = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
        return MultiTaskModel(backbone, {t: len(ds.label_names) for t, ds in train_sets.items()}), tokenizer

    monkeypatch.setattr(train_mod, "build", tiny_build)
    out = tmp_path / "run"
    train_mod.main(["--task-a", str(csv_path), "--task-b", "none", "--epochs", "30", "--batch-size", "8",
                    "--lr", "1e-3", "--head-lr", "3e-3", "--dtype", "fp32", "--out", str(out)])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = [json.loads(line) for line in open(out / "test-a.jsonl")]
    assert len(saved) == 6 and {r["label"] for r in saved} == set(TOPICS)

    report = eval_mod.evaluate_checkpoint(str(out))
    eval_acc = float(report.split("accuracy ")[1].split("%")[0])
    assert eval_acc == final["acc_a_tickets_test"]  # the file's name, without its path

    predictions = Classifier.from_checkpoint(out).predict([r["text"] for r in saved])
    assert all(p["a"]["label"] in TOPICS and len(p["a"]["next"]) == 2 for p in predictions)
    predict_acc = 100 * sum(p["a"]["label"] == r["label"] for p, r in zip(predictions, saved)) / len(saved)
    assert predict_acc == pytest.approx(eval_acc, abs=0.01)
    assert eval_acc > 100 / 3  # it learnt something: above chance on 3 balanced classes

    # the command line, streaming a CSV column into JSON lines
    new = write_csv(tmp_path / "new.csv", [(r["text"], "?") for r in saved])
    done = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(out), "--input", str(new),
                           "--column", "text", "--output", str(tmp_path / "preds.jsonl")],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in open(tmp_path / "preds.jsonl")]
    assert [line["a"]["label"] for line in lines] == [p["a"]["label"] for p in predictions]
    assert "6/6 sentences" in done.stderr

    from tools import plots  # the confusion heatmap reads the same saved rows

    plots.plot_confusion(out, None, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_refuses_a_folder_that_is_not_a_run(tmp_path):
    done = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(tmp_path), "hello"],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no run.json there; give a train.py output folder" in done.stderr


@pytest.mark.parametrize("extra, message", [
    (["--input", "nowhere.txt", "--output", "p.jsonl"], "--input nowhere.txt: no such file"),
    (["hello", "--input", "README.md", "--output", "p.jsonl"], "give sentences on the command line, or --input"),
    (["--input", "README.md", "--output", "README.md"], "is the --input file; the predictions would replace it"),
    (["--input", "README.md", "--output", "."], "--output . is a folder; name a file in it"),
    (["--input", "README.md", "--output", "nowhere/p.jsonl"], "--output nowhere/p.jsonl: no folder nowhere"),
])
def test_predict_refuses_bad_input_flags_in_one_line_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    import predict

    (tmp_path / "run.json").write_text("{}")  # enough for the folder check; nothing may load it
    monkeypatch.chdir(ROOT_DIR)
    with pytest.raises(SystemExit) as stop:
        predict.main(["--checkpoint", str(tmp_path), *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_val_fraction_zero_trains_on_every_row_and_keeps_the_last_epoch(tmp_path, tokenizer):
    csv_path = write_csv(tmp_path / "tickets.csv", ticket_rows())
    cfg = train_mod.TrainConfig(task_a=str(csv_path), task_b="none", val_fraction=0.0, epochs=2, batch_size=8,
                                dtype="fp32", log_every=100, out=str(tmp_path / "run"))
    train, val, final = data.load_tasks(cfg)
    assert val == {} and len(train["a"]) == 24 and len(final["a"]) == 6
    torch.manual_seed(0)
    backbone = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    best = train_mod.train(cfg, MultiTaskModel(backbone, {"a": 3}), tokenizer, train, val)
    assert best["epoch"] == 2 and not any(k.startswith("val_") for k in best)
