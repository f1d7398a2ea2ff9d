"""Bad-input cases of data, tokenizer train, pretrain (new and --resume) and finetune (see badinput_cases.py)."""

from __future__ import annotations

import shlex

from badinput.badinput_cases import (
    BOMB,
    FT,
    FT_RESUME,
    NEW,
    NONFINITE,
    RESUME,
    C,
    bigger_tokenizer,
    copy_file,
    edit_yaml,
    fields_of,
    labelled,
    meta_drop,
    meta_set,
    mkdir,
    payload_drop,
    remove,
    state_payload,
    state_tensors,
    truncate,
    write,
)

# ============================================================================= top level, data
C("cli-unknown-verb", "fit --config x", "invalid choice")
C("cli-unknown-flag", "--bogus", "--bogus")
C("data-get-unknown", "data get no-such-set", "no-such-set")
C("data-get-empty-name", ["data", "get", ""], "data set")
C("data-get-path", "data get ../../etc/passwd", "../../etc/passwd")
C("data-get-surrogate", ["data", "get", "\udcff\udcfe"], "data set")
C("data-get-missing-name", "data get", "name")
C("data-list-extra-argument", "data list extra", "extra")
C("data-unknown-action", "data fetch x", "invalid choice")

# ============================================================================= tokenizer train
TOK = "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/tok"
C("tokenizer-vocab-size-word", TOK.replace("300", "ten"), "--vocab-size")
C("tokenizer-vocab-size-3", TOK.replace("300", "3"), ("--vocab-size", "vocab_size"))
C("tokenizer-vocab-size-0", TOK.replace("300", "0"), ("--vocab-size", "vocab_size"))
C("tokenizer-vocab-size-negative", TOK.replace("300", "-1"), ("--vocab-size", "vocab_size"))
C("tokenizer-vocab-size-1e309", TOK.replace("300", "1e309"), "--vocab-size")
C("tokenizer-vocab-size-huge", TOK.replace("300", "99999999999999999999"), ("--vocab-size", "vocab_size"))
C("tokenizer-data-missing", "tokenizer train --data {tmp}/missing.txt --vocab-size 300 --out {tmp}/tok", "missing.txt")
C("tokenizer-data-empty", "tokenizer train --data {tmp}/empty.txt --vocab-size 300 --out {tmp}/tok", "empty.txt",
  write("{tmp}/empty.txt", "  \n"))
C("tokenizer-data-binary", "tokenizer train --data {tmp}/blob.txt --vocab-size 300 --out {tmp}/tok", "UTF-8",
  write("{tmp}/blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20))
C("tokenizer-data-surrogate", ["tokenizer", "train", "--data", "\udcff\udcfe", "--vocab-size", "300", "--out", "{tmp}/tok"],
  "data")
C("tokenizer-out-is-a-file", "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/afile", "afile",
  write("{tmp}/afile", "mine\n"))
C("tokenizer-out-under-a-file", "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/afile/tok", "afile",
  write("{tmp}/afile", "mine\n"))
C("tokenizer-out-proc", "tokenizer train --data {corpus} --vocab-size 300 --out /proc/lmforge-badinput/tok",
  "/proc/lmforge-badinput", absent=("/proc/lmforge-badinput",))
C("tokenizer-out-sys", "tokenizer train --data {corpus} --vocab-size 300 --out /sys/lmforge-badinput",
  "/sys/lmforge-badinput", absent=("/sys/lmforge-badinput",))
C("tokenizer-data-empty-string", ["tokenizer", "train", "--data", "", "--vocab-size", "300", "--out", "{tmp}/tok"], "--data",
  copy_file("{corpus}", "{tmp}/notes.txt"))  # "" must not mean "the .txt files of the current folder"
C("tokenizer-missing-out", "tokenizer train --data {corpus} --vocab-size 300", "--out")

# ============================================================================= pretrain: a new run
# every float field of model / data / train: not finite (nan, inf, -inf, 1e309 = inf)
for _f in fields_of(("model", "data", "train"), float):
    for _k, _v in NONFINITE.items():
        C(f"pretrain-{_f}-{_k}", NEW + f" --{_f}={_v}", _f, form=True)
# every integer field: not a number, and (counts) negative
for _f in fields_of(("model", "data", "train"), int):
    C(f"pretrain-{_f}-inf", NEW + f" --{_f}=inf", _f, form=True)
    if _f != "train.seed":
        C(f"pretrain-{_f}-negative", NEW + f" --{_f}=-1", _f, form=True)
# out of range
for _f, _v in [("train.beta1", "1.5"), ("train.beta1", "-0.1"), ("train.beta2", "1.0"), ("train.momentum", "-0.5"),
               ("train.gamma", "0"), ("train.gamma", "-1"), ("train.lr", "0"), ("train.min_lr_ratio", "2"),
               ("train.ema_decay", "1"), ("train.muon_momentum", "1.5"), ("model.dropout", "2"), ("model.dropout", "1.0"),
               ("model.norm_eps", "0"), ("model.norm_eps", "-1"), ("model.rope_theta", "0"), ("data.val_fraction", "1.5"),
               ("data.mask_prob", "0"), ("data.vocab_size", "3"), ("train.max_steps", "0"), ("train.batch_size", "0"),
               ("train.grad_accum", "0"), ("train.log_interval", "0"), ("model.n_head", "0"), ("model.generator_layers", "0")]:
    C(f"pretrain-{_f}-{_v}", NEW + f" --{_f}={_v}", _f, form=True)
C("pretrain-train.seed-2**64", NEW + f" --train.seed={2**64}", "train.seed", form=True)
C("pretrain-train.seed-10**30", NEW + f" --train.seed={10**30}", "train.seed", form=True)
C("pretrain-train.max_steps-1.5", NEW + " --train.max_steps=1.5", "train.max_steps")
C("pretrain-train.lr-word", NEW + " --train.lr=fast", "train.lr")
C("pretrain-train.compile-maybe", NEW + " --train.compile=maybe", "train.compile")
C("pretrain-train.optimizer-lion", NEW + " --train.optimizer=lion", "train.optimizer")
C("pretrain-train.schedule-linear", NEW + " --train.schedule=linear", "train.schedule")
C("pretrain-train.dtype-fp8", NEW + " --train.dtype=fp8", "train.dtype")
C("pretrain-train.device-tpu", NEW + " --train.device=tpu", "train.device")
C("pretrain-train.device-cuda", NEW + " --train.device=cuda", "train.device")
C("pretrain-model.name-lstm", NEW + " --model.name=lstm", "model.name")
C("pretrain-model.name-t5", NEW + " --model.name=t5", "model.name")
C("pretrain-model.n_embd-indivisible", NEW + " --model.n_embd=65", "model.n_embd")
C("pretrain-model.layer_n_head-word", NEW + " --model.layer_n_head=x", "model.layer_n_head")
C("pretrain-data.objective-mlm-for-gpt", NEW + " --data.objective=mlm", "data.objective")
C("pretrain-unknown-option", NEW + " --train.nope=1", "--train.nope")
C("pretrain-option-without-key", NEW + " --model=2", "--model")
C("pretrain-resume-and-config", "pretrain --resume {lm} --config {tiny}", "--resume")
C("pretrain-no-out", "pretrain --config {tiny} --data.path {corpus}", "--out")
C("pretrain-no-data", "pretrain --config {tiny} --out {tmp}/new", "data.path")
# checked only after the tokenizer was trained (issue 14, item 9): must be caught before any work
C("pretrain-model.vocab_size-3", NEW + " --model.vocab_size=3", "model.vocab_size")
C("pretrain-grad_accum-indivisible", NEW + " --train.batch_size=4 --train.grad_accum=3", "train.grad_accum")
C("pretrain-grad_accum-above-batch", NEW + " --train.batch_size=2 --train.grad_accum=4", "train.grad_accum")
# (the train split's length is known once it is tokenized: the tokenizer's progress line may come first)
C("pretrain-block_size-above-data", NEW + " --model.block_size=100000", "model.block_size", progress_ok=True)
# recipes (YAML)
R = NEW.replace("--config {tiny}", "--config {tmp}/r.yaml")
for _id, _text, _needle in [
    ("syntax", "model: {n_layer: 2\n", "r.yaml"),
    ("tab-indent", "train:\n\tlr: 0.1\n", "r.yaml"),
    ("top-level-list", "- model\n- train\n", "r.yaml"),
    ("top-level-scalar", "just words\n", "r.yaml"),
    ("section-list", "train: [1, 2]\n", "train"),
    ("unknown-section", "training: {lr: 0.1}\n", "training"),
    ("unknown-key", "train: {learning_rate: 0.1}\n", "train.learning_rate"),
    ("wrong-type", "model: {n_layer: two}\n", "model.n_layer"),
    ("bool-word", "model: {bias: maybe}\n", "model.bias"),
    ("list-for-int", "train: {max_steps: [1, 2]}\n", "train.max_steps"),
    ("mapping-for-float", "train: {lr: {a: 1}}\n", "train.lr"),
    ("lr-nan", "train: {lr: .nan}\n", "train.lr"),
    ("lr-inf", "train: {lr: .inf}\n", "train.lr"),
    ("lr-overflow", "train: {lr: 1.0e+400}\n", "train.lr"),
    ("beta1-1.5", "train: {beta1: 1.5}\n", "train.beta1"),
    ("weight_decay-nan", "train: {weight_decay: .nan}\n", "train.weight_decay"),
    ("dropout-2", "model: {dropout: 2}\n", "model.dropout"),
    ("seed-2**64", f"train: {{seed: {2**64}}}\n", "train.seed"),
    ("max_steps-float", "train: {max_steps: 1.5}\n", "train.max_steps"),
    ("alias-bomb", BOMB, "model.name"),
]:
    C(f"pretrain-recipe-{_id}", R, _needle, write("{tmp}/r.yaml", _text))
C("pretrain-recipe-not-utf8", R, "r.yaml", write("{tmp}/r.yaml", b"model: {name: \xff\xfe}\n"))
C("pretrain-recipe-missing", R, "r.yaml")
C("pretrain-recipe-is-a-folder", R, "r.yaml", mkdir("{tmp}/r.yaml"))
# data
C("pretrain-data-missing", NEW.replace("{corpus}", "{tmp}/missing.txt"), "missing.txt")
C("pretrain-data-empty", NEW.replace("{corpus}", "{tmp}/empty.txt"), "empty.txt", write("{tmp}/empty.txt", "  \n"))
C("pretrain-data-binary", NEW.replace("{corpus}", "{tmp}/blob.txt"), "UTF-8",
  write("{tmp}/blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20))
C("pretrain-data-latin1", NEW.replace("{corpus}", "{tmp}/latin1.txt"), "UTF-8",
  write("{tmp}/latin1.txt", "café au lait ".encode("latin-1") * 10))
C("pretrain-data-folder-without-txt", NEW.replace("{corpus}", "{tmp}/notext"), ".txt", write("{tmp}/notext/a.csv", "x,y\n"))
C("pretrain-data-empty-between-commas", NEW.replace("{corpus}", "{corpus},,{corpus}"), "data.path")
C("pretrain-data-model-set", NEW.replace("{corpus}", "minilm-l6"), "minilm-l6")
C("pretrain-data-unknown-set", NEW.replace("{corpus}", "no-such-set"), "no-such-set")
C("pretrain-data-surrogate", NEW.replace("{corpus}", "\udcff\udcfe"), ("data.path", "data set"))
C("pretrain-data-tokenizer-missing", NEW + " --data.tokenizer={tmp}/nope.json", "nope.json")
C("pretrain-data-tokenizer-garbage", NEW + " --data.tokenizer={tmp}/tok.json", "tok.json", write("{tmp}/tok.json", "{not json"))
C("pretrain-data-tokenizer-foreign", NEW + " --data.tokenizer={tmp}/tok.json", "tok.json",
  write("{tmp}/tok.json", '{"hello": 1}'))
# --out
C("pretrain-out-holds-a-run", NEW.replace("{tmp}/new", "{lm}"), "already holds a run")
C("pretrain-out-not-empty-not-a-run", NEW.replace("{tmp}/new", "{tmp}/mine"), "mine",
  write("{tmp}/mine/model.safetensors", b"my own weights"), write("{tmp}/mine/notes.txt", "keep\n"))
C("pretrain-out-holds-other-files", NEW.replace("{tmp}/new", "{tmp}/mine"), "mine", write("{tmp}/mine/notes.txt", "keep\n"))
C("pretrain-out-is-a-file", NEW.replace("{tmp}/new", "{tmp}/afile"), "afile", write("{tmp}/afile", "mine\n"))
C("pretrain-out-under-a-file", NEW.replace("{tmp}/new", "{tmp}/afile/run"), "afile", write("{tmp}/afile", "mine\n"))
C("pretrain-out-proc", NEW.replace("{tmp}/new", "/proc/lmforge-badinput/run"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("pretrain-out-sys", NEW.replace("{tmp}/new", "/sys/lmforge-badinput"), "/sys/lmforge-badinput",
  absent=("/sys/lmforge-badinput",))
C("pretrain-out-empty-string", shlex.split(NEW.replace("--out {tmp}/new", "")) + ["--out", ""], "--out")

# ============================================================================= pretrain --resume
for _f, _v in [("train.lr", "nan"), ("train.lr", "inf"), ("train.lr", "-inf"), ("train.lr", "1e309"), ("train.beta1", "1.5"),
               ("train.weight_decay", "nan"), ("train.grad_clip", "inf"), ("train.ema_decay", "nan"),
               ("train.min_lr_ratio", "nan"), ("train.seed", str(2**64)), ("train.lr", "abc")]:
    C(f"resume-{_f}-{_v if len(_v) < 8 else '2**64'}", RESUME + f" --{_f}={_v}", _f, form=True)
C("resume-model-override-mismatch", RESUME + " --model.n_layer=3", ("model.n_layer", "train_state.safetensors", "config.yaml"))
C("resume-not-a-run", "pretrain --resume {tmp}", "not an lmforge run directory")
C("resume-missing", "pretrain --resume {tmp}/nowhere", "not found")
C("resume-a-file", "pretrain --resume {corpus}", "corpus.txt")
C("resume-compressed-run", "pretrain --resume {int8}", "cannot be resumed")
C("resume-a-fine-tuned-run", "pretrain --resume {clf}", ("finetune", "classifier"),
  copy_file("{corpus}", "{tmp}/notes.txt"))  # its data.path is empty: never the current folder's text
C("resume-empty-string", ["pretrain", "--resume", ""], "--resume")
# weights but no training state (issue 14, item 1): refuse, never train over model.safetensors
C("resume-train-state-missing", "pretrain --resume {lm}", "train_state.safetensors", remove("{lm}/train_state.safetensors"))
C("resume-train-state-missing-override", RESUME, "train_state.safetensors", remove("{lm}/train_state.safetensors"))
# a bad training state (issue 14, items 3 and 12): one line, and config.yaml is not rewritten first
_S = "{lm}/train_state.safetensors"
C("resume-train-state-garbage", "pretrain --resume {lm}", "train_state.safetensors", write(_S, b"garbage"))
C("resume-train-state-garbage-override", RESUME, "train_state.safetensors", write(_S, b"garbage"))
C("resume-train-state-empty", RESUME, "train_state.safetensors", write(_S, b""))
C("resume-train-state-truncated", RESUME, "train_state.safetensors", truncate(_S, 4000))
C("resume-train-state-no-metadata", RESUME, "train_state.safetensors", state_payload("{lm}", lambda p: None))
C("resume-train-state-metadata-not-json", RESUME, "train_state.safetensors", state_payload("{lm}", lambda p: "{not json"))
C("resume-train-state-metadata-list", RESUME, "train_state.safetensors", state_payload("{lm}", lambda p: [1, 2]))
C("resume-train-state-no-meta", RESUME, "train_state.safetensors", state_payload("{lm}", payload_drop("meta")))
C("resume-train-state-no-optimizer", RESUME, "train_state.safetensors", state_payload("{lm}", payload_drop("optimizer")))
C("resume-train-state-step-negative", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step=-1)))
C("resume-train-state-step-float", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step=2.5)))
C("resume-train-state-step-string", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step="6")))
C("resume-train-state-step-null", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step=None)))
C("resume-train-state-no-tokens", RESUME, ("train_state.safetensors", "tokens"), state_payload("{lm}", meta_drop("tokens")))
C("resume-train-state-optimizer-empty", RESUME, ("train_state.safetensors", "optimizer"),
  state_payload("{lm}", lambda p: {**p, "optimizer": {"param_groups": [], "state": {}}}))
C("resume-train-state-wrong-shape", RESUME, "train_state.safetensors",
  state_tensors("{lm}", lambda t: {**t, "model.transformer.wte.weight": t["model.transformer.wte.weight"][:10]}))
C("resume-train-state-foreign", RESUME, "train_state.safetensors",
  copy_file("{clf}/train_state.safetensors", "{lm}/train_state.safetensors"))
# other files of the run dir
C("resume-config-empty", RESUME, "config.yaml", write("{lm}/config.yaml", ""))
C("resume-config-syntax", RESUME, "config.yaml", write("{lm}/config.yaml", "model: {n_layer: 2\n"))
C("resume-config-list", RESUME, "config.yaml", write("{lm}/config.yaml", "- model\n- train\n"))
C("resume-config-unknown-key", RESUME, "model.n_lyer", edit_yaml("{lm}/config.yaml", lambda d, p: d["model"].update(n_lyer=2)))
C("resume-config-lr-nan", "pretrain --resume {lm}", "train.lr", edit_yaml("{lm}/config.yaml", lambda d, p: d["train"].update(lr=float("nan"))))
C("resume-config-not-utf8", RESUME, "config.yaml", write("{lm}/config.yaml", b"model:\n  name: \xff\xfe\n"))
C("resume-config-foreign-json", RESUME, "config.yaml", write("{lm}/config.yaml", '{"architectures": ["GPT2LMHeadModel"]}'))
C("resume-tokenizer-garbage", RESUME, "tokenizer.json", write("{lm}/tokenizer.json", "{not json"))
C("resume-tokenizer-empty", RESUME, "tokenizer.json", write("{lm}/tokenizer.json", ""))
C("resume-tokenizer-missing", RESUME, "tokenizer.json", remove("{lm}/tokenizer.json"))
C("resume-data-meta-garbage", RESUME, "meta.json", write("{lm}/data/meta.json", "{"))
C("resume-data-meta-foreign", RESUME, "meta.json", write("{lm}/data/meta.json", "[]"))
C("resume-data-train-bin-truncated", RESUME, "train.bin", truncate("{lm}/data/train.bin", 100))

# ============================================================================= finetune
for _f in fields_of(("finetune",), float) + ["train.lr", "train.weight_decay"]:
    for _k, _v in NONFINITE.items():
        C(f"finetune-{_f}-{_k}", FT + f" --{_f}={_v}", _f, form=True)
for _f in fields_of(("lora",), float):
    for _k, _v in NONFINITE.items():
        C(f"finetune-{_f}-{_k}", FT + f" --finetune.mode=lora --{_f}={_v}", _f, form=True)
for _f in fields_of(("finetune", "lora"), int):
    C(f"finetune-{_f}-inf", FT + f" --{_f}=inf", _f, form=True)
    C(f"finetune-{_f}-negative", FT + f" --{_f}=-1", _f, form=True)
for _f, _v in [("finetune.head_dropout", "1"), ("finetune.dropout", "2"), ("finetune.layer_lr_decay", "0"),
               ("finetune.max_length", "0"), ("finetune.mode", "half"), ("finetune.pooling", "median"), ("lora.rank", "0"),
               ("lora.dropout", "1.5"), ("lora.alpha", "0")]:
    C(f"finetune-{_f}-{_v}", FT + f" --finetune.mode=lora --{_f}={_v}" if _f.startswith("lora") else FT + f" --{_f}={_v}", _f)
C("finetune-train.seed-2**64", FT + f" --train.seed={2**64}", "train.seed", form=True)
C("finetune-lora.targets-nothing", FT + " --finetune.mode=lora --lora.targets=nothing_here", "nothing_here")
C("finetune-lora.targets-empty", FT + " --finetune.mode=lora --lora.targets=", "lora.targets")
C("finetune-labels-one-given", FT + " --finetune.labels=positive", ("negative", "finetune.labels"))
C("finetune-text_column-missing", FT + " --finetune.text_column=review", "review")
C("finetune-no-data", "finetune --base {lm} --out {tmp}/new", "finetune.data")
C("finetune-resume-and-config", "finetune --resume {clf} --config {tiny}", "--resume")
# labelled files
def _ftf(name: str) -> str:
    return FT.replace("{labels}", "{tmp}/" + name)



for _name, _text, _needle in [
    ("one-label.tsv", "text\tlabel\n" + "".join(f"text number {i}\tpositive\n" for i in range(40)), "label"),
    ("empty-text.tsv", "text\tlabel\nhello\tpositive\n\tnegative\n", "empty"),
    ("no-label-column.tsv", "text\tstars\nhello\t5\n", "label"),
    ("three-fields.csv", "text,label\nok,pos\none, two,neg\n", "three-fields.csv:3"),
    ("bad-quoting.csv", 'text,label\nok,pos\n"open quote,neg\nmore,pos\n', "bad-quoting.csv:3"),
    ("bad-json.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x", "label": "b"\n', "bad-json.jsonl:2"),
    ("json-list.jsonl", '{"text": "ok", "label": "a"}\n["x", "b"]\n', "json-list.jsonl:2"),
    ("label-float.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x", "label": 1.5}\n', "label-float.jsonl:2"),
    ("label-null.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x", "label": null}\n', "label-null.jsonl:2"),
    ("text-number.jsonl", '{"text": 5, "label": "a"}\n', "text-number.jsonl:1"),
    ("empty.tsv", "", "empty.tsv"),
    ("header-only.tsv", "text\tlabel\n", "header-only.tsv"),
    ("tab-in-csv.csv", "text\tlabel\nok\tpos\n", "tab-in-csv.csv"),
    ("sheet.xlsx", "x", ".xlsx"),
]:
    C(f"finetune-data-{_name.rsplit('.', 1)[0]}", _ftf(_name), _needle, labelled(_name, _text))
C("finetune-data-not-utf8", _ftf("latin.tsv"), "latin.tsv", labelled("latin.tsv", b"text\tlabel\ncaf\xe9\tpos\nok\tneg\n"))
C("finetune-data-utf16", _ftf("u16.tsv"), "u16.tsv", labelled("u16.tsv", "text\tlabel\nok\tpos\n".encode("utf-16")))
C("finetune-data-missing", _ftf("nope.tsv"), "nope.tsv")
C("finetune-data-unknown-set", FT.replace("{labels}", "imdb"), "imdb")
C("finetune-data-text-set", FT.replace("{labels}", "minilm-l6"), "minilm-l6")
C("finetune-data-surrogate", FT.replace("{labels}", "\udcff\udcfe"), ("finetune.data", "data set"))
# starting points
C("finetune-base-missing", FT.replace("--base {lm}", "--base {tmp}/nowhere"), "nowhere")
C("finetune-base-not-a-run", FT.replace("--base {lm}", "--base {tmp}/notrun"), "notrun", write("{tmp}/notrun/x.txt", "x"))
C("finetune-base-is-a-classifier", FT.replace("--base {lm}", "--base {clf}"), ("--base", "finetune.base", "classifier"))
C("finetune-base-weights-truncated", FT, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("finetune-base-config-empty", FT, "config.yaml", write("{lm}/config.yaml", ""))
C("finetune-base-tokenizer-larger", FT, "smaller than the tokenizer", bigger_tokenizer("{lm}"))
C("finetune-base-empty-string", shlex.split(FT.replace("--base {lm}", "")) + ["--base", ""], "--base")
C("finetune-base-hf-empty-string", shlex.split(FT.replace("--base {lm}", "")) + ["--base-hf", ""], "--base-hf")
C("finetune-base-and-base-hf", FT + " --base-hf {tmp}/hf", "finetune.base")
C("finetune-base-hf-missing", FT.replace("--base {lm}", "--base-hf {tmp}/nohf"), "nohf")
C("finetune-base-hf-empty-folder", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "hfdir", mkdir("{tmp}/hfdir"))
C("finetune-base-hf-config-garbage", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "config.json",
  write("{tmp}/hfdir/config.json", "{"))
C("finetune-base-hf-config-list", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "config.json",
  write("{tmp}/hfdir/config.json", "[1]"))
C("finetune-base-hf-unknown-type", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "t5",
  write("{tmp}/hfdir/config.json", '{"model_type": "t5"}'))
C("finetune-base-hf-no-weights", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "hfdir",
  write("{tmp}/hfdir/config.json", '{"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 300, '
        '"n_positions": 32}'))
C("finetune-base-hf-a-file", FT.replace("--base {lm}", "--base-hf {corpus}"), "corpus.txt")
C("finetune-base-recipe-without-base", FT.replace("--base {lm}", "--finetune.base_recipe={tiny}"), "finetune.base_recipe")
C("finetune-base-recipe-missing", FT.replace("--base {lm}", "--base {tmp}/newbase --finetune.base_recipe={tmp}/no.yaml"),
  "finetune.base_recipe")
# --out
C("finetune-out-holds-a-run", FT.replace("{tmp}/new", "{clf}"), "already holds a run")
C("finetune-out-not-empty-not-a-run", FT.replace("{tmp}/new", "{tmp}/mine"), "mine",
  write("{tmp}/mine/model.safetensors", b"my own weights"))
C("finetune-out-is-a-file", FT.replace("{tmp}/new", "{tmp}/afile"), "afile", write("{tmp}/afile", "mine\n"))
C("finetune-out-proc", FT.replace("{tmp}/new", "/proc/lmforge-badinput/run"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("finetune-out-sys", FT.replace("{tmp}/new", "/sys/lmforge-badinput"), "/sys/lmforge-badinput",
  absent=("/sys/lmforge-badinput",))
# --resume
for _f, _v in [("train.lr", "nan"), ("train.lr", "inf"), ("finetune.head_dropout", "nan"), ("train.beta1", "1.5")]:
    C(f"finetune-resume-{_f}-{_v}", FT_RESUME + f" --{_f}={_v}", _f, form=True)
C("finetune-resume-lora-dropout-nan", "finetune --resume {lora} --train.max_steps=6 --lora.dropout=nan", "lora.dropout")
C("finetune-resume-lora-rank-changed", "finetune --resume {lora} --train.max_steps=6 --lora.rank=4",
  ("lora.rank", "train_state.safetensors", "config.yaml"))
C("finetune-resume-a-pretraining-run", "finetune --resume {lm}", ("pretrain", "finetune.data"))
C("finetune-resume-train-state-missing", FT_RESUME, "train_state.safetensors", remove("{clf}/train_state.safetensors"))
C("finetune-resume-train-state-garbage", FT_RESUME, "train_state.safetensors", write("{clf}/train_state.safetensors", b"xx"))
C("finetune-resume-train-state-no-meta", FT_RESUME, "train_state.safetensors", state_payload("{clf}", payload_drop("meta")))
C("finetune-resume-config-empty", FT_RESUME, "config.yaml", write("{clf}/config.yaml", ""))
C("finetune-resume-data-gone", FT_RESUME, "gone.tsv",
  edit_yaml("{clf}/config.yaml", lambda d, p: d["finetune"].update(data=str(p["tmp"] / "gone.tsv"))))
C("finetune-resume-labels-changed", FT_RESUME, ("finetune.labels", "train_state.safetensors", "label"),
  edit_yaml("{clf}/config.yaml", lambda d, p: d["finetune"].update(labels="negative,neutral,positive")))
