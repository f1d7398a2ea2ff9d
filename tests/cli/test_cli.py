"""The CLI end to end on a tiny corpus: help, pretrain -> evaluate -> generate, and every bad input."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, lmforge, make_corpus, tree_digest

from lmforge.__main__ import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """One tiny pretraining run shared by the tests below (about 5 s)."""
    tmp = tmp_path_factory.mktemp("cli")
    run_dir = tmp / "run"
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=60",
                 "--train.eval_interval", "30", "--out", str(run_dir)]) == 0
    return corpus, run_dir


def test_help_lists_verbs_and_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("data", "tokenizer", "pretrain", "generate", "evaluate"):
        assert verb in out
    for argv, needles in [(["pretrain", "--help"], ["--train.lr", "--model.n_layer", "--resume", "--data.path"]),
                          (["generate", "--help"], ["--max-new-tokens", "--top-p", "--seed"]),
                          (["tokenizer", "train", "--help"], ["--vocab-size", "--out"]),
                          (["data", "get", "--help"], ["name"])]:
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert all(n in out for n in needles), (argv, out)


def test_pretrain_run_dir_contents(trained):
    _, run_dir = trained
    for name in ("config.yaml", "model.safetensors", "tokenizer.json", "metrics.jsonl", "train_state.safetensors",
                 "data/train.bin", "data/val.bin", "data/meta.json"):
        assert (run_dir / name).exists(), name
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if r["split"] == "val"]
    assert [r["step"] for r in val] == [30, 60]
    train = [r for r in recs if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 1.0  # it learns


def test_evaluate_and_generate(trained, capsys, tmp_path):
    _, run_dir = trained
    code, out, _ = run(capsys, "evaluate", str(run_dir), "--json", str(tmp_path / "e.json"))
    assert code == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["loss"] < r["unigram_entropy"] and r["perplexity"] > 1
    code, out, _ = run(capsys, "generate", str(run_dir), "--prompt", "the king", "--max-new-tokens", "20", "--seed", "1")
    assert code == 0 and out.startswith("the king") and len(out) > len("the king") + 5
    code, out2, _ = run(capsys, "generate", str(run_dir), "--prompt", "the king", "--max-new-tokens=20", "--seed=1")
    assert out2 == out  # same seed, same text; --key=value works too


def test_resume_of_finished_run_is_a_no_op(trained, capsys):
    _, run_dir = trained
    before = tree_digest(run_dir)
    code, out, _ = run(capsys, "pretrain", "--resume", str(run_dir))
    assert code == 0 and "60 steps" in out
    after = tree_digest(run_dir)
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {k: v for k, v in before.items() if k != "config.yaml"}


def _one_line_error(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2, (argv, out, err)
    lines = err.splitlines()  # one error line, last; only one-line warnings may come before it
    assert lines[-1].startswith("lmforge: error: ") and needle in lines[-1], err
    assert all(line.startswith("lmforge: warning: ") for line in lines[:-1]), err
    return err


def test_bad_inputs_one_line_exit_2(tmp_path, capsys, trained):
    corpus, run_dir = trained
    before = tree_digest(run_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café au lait".encode("latin-1") * 10)
    nodir = tmp_path / "no-text"
    nodir.mkdir()
    (nodir / "a.csv").write_text("x,y\n")
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text("train: {learning_rate: 0.1}\n")
    bad_type = tmp_path / "bad-type.yaml"
    bad_type.write_text("model: {n_layer: two}\n")
    new = str(tmp_path / "new-run")
    cases = [
        (["pretrain", "--config", TINY, "--data.path", str(tmp_path / "missing.txt"), "--out", new], "missing.txt"),
        (["pretrain", "--config", TINY, "--data.path", str(empty), "--out", new], "empty"),
        (["pretrain", "--config", TINY, "--data.path", str(binary), "--out", new], "UTF-8"),
        (["pretrain", "--config", TINY, "--data.path", str(latin), "--out", new], "UTF-8"),
        (["pretrain", "--config", TINY, "--data.path", str(nodir), "--out", new], ".txt"),
        (["pretrain", "--config", str(bad_key), "--data.path", str(corpus), "--out", new], "train.learning_rate"),
        (["pretrain", "--config", str(bad_type), "--data.path", str(corpus), "--out", new], "model.n_layer"),
        (["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.lr=fast", "--out", new], "train.lr"),
        (["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.nope=1", "--out", new], "--train.nope"),
        (["pretrain", "--resume", str(tmp_path)], "not an lmforge run directory"),
        (["pretrain", "--resume", str(tmp_path / "nowhere")], "not found"),
        (["pretrain", "--config", TINY, "--data.path", str(corpus), "--out", str(run_dir)], "already holds a run"),
        (["pretrain", "--resume", str(run_dir), "--train.lr=abc"], "train.lr"),
        (["tokenizer", "train", "--data", str(empty), "--vocab-size", "500", "--out", str(tmp_path / "t")], "empty"),
        (["tokenizer", "train", "--data", str(corpus), "--vocab-size", "ten", "--out", str(tmp_path / "t")], "vocab-size"),
        (["data", "get", "no-such-set"], "no-such-set"),
        (["generate", str(tmp_path), "--prompt", "x"], "not an lmforge run directory"),
        (["evaluate", str(run_dir), "--data", str(binary)], "UTF-8"),
        (["pretrain", "--config", TINY, "--data.path", str(corpus), "--model.block_size=100000", "--out", new],
         "fewer than model.block_size + 1"),
    ]
    for argv, needle in cases:
        _one_line_error(capsys, argv, needle)
    assert tree_digest(run_dir) == before
    assert not (tmp_path / "new-run").exists()  # a run that failed on its data leaves nothing behind


def test_corrupted_weights(tmp_path, capsys, trained):
    import shutil

    _, run_dir = trained
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = tree_digest(broken)
    _one_line_error(capsys, ["generate", str(broken), "--prompt", "the"], "model.safetensors: not a valid safetensors file")
    _one_line_error(capsys, ["evaluate", str(broken)], "not a valid safetensors file")
    state = broken / "train_state.safetensors"
    state.write_bytes(b"garbage")
    before = tree_digest(broken)
    _one_line_error(capsys, ["pretrain", "--resume", str(broken)], "train_state.safetensors: not a valid safetensors file")
    assert tree_digest(broken) == before


def test_real_process_error_has_no_traceback(tmp_path):
    p = lmforge("pretrain", "--resume", str(tmp_path), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_small_text_file_trains(tmp_path, capsys):
    """A validation split shorter than one block is scored with shorter windows."""
    small = make_corpus(tmp_path / "small.txt", lines=30)
    code, out, err = run(capsys, "pretrain", "--config", TINY, "--data.path", str(small), "--train.max_steps=20",
                         "--out", str(tmp_path / "r"))
    assert code == 0 and "val loss" in out, err
