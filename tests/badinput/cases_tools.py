"""Bad-input cases of generate, evaluate, predict, export, compress, report, serve and real processes
(see badinput_cases.py)."""

from __future__ import annotations

import shlex

from badinput.badinput_cases import (
    BOMB,
    DISTILL,
    GEN,
    INT8,
    NEW,
    NONFINITE,
    PRUNE,
    RESUME,
    SERVE,
    C,
    copy_file,
    edit_yaml,
    fields_of,
    labelled,
    mkdir,
    remove,
    truncate,
    write,
)

# ============================================================================= generate
_T, _P, _K = ("--temperature", "temperature"), ("--top-p", "top_p"), ("--top-k", "top_k")
for _id, _arg, _needle in [
    ("temperature-nan", "--temperature=nan", _T), ("temperature-inf", "--temperature=inf", _T),
    ("temperature--inf", "--temperature=-inf", _T), ("temperature-1e309", "--temperature=1e309", _T),
    ("temperature-negative", "--temperature=-1", _T), ("temperature-word", "--temperature=warm", "--temperature"),
    ("top-p-nan", "--top-p=nan", _P), ("top-p-inf", "--top-p=inf", _P), ("top-p-1e309", "--top-p=1e309", _P),
    ("top-p-1e-300", "--top-p=1e-300", _P), ("top-p-0", "--top-p=0", _P), ("top-p-1.5", "--top-p=1.5", _P),
    ("top-p-negative", "--top-p=-0.1", _P),
    ("top-k-negative", "--top-k=-1", _K), ("top-k-float", "--top-k=1.5", "--top-k"),
    ("max-new-tokens-negative", "--max-new-tokens=-1", ("--max-new-tokens", "max_new_tokens")),
    ("max-new-tokens-word", "--max-new-tokens=x", "--max-new-tokens"),
    ("seed-2**64", f"--seed={2**64}", "seed"), ("seed-10**30", f"--seed={10**30}", "seed"),
    ("seed-below-int64", f"--seed={-2**63 - 1}", "seed"), ("seed-word", "--seed=x", "--seed"),
    ("device-tpu", "--device=tpu", "device"), ("device-cuda", "--device=cuda:7", "device"),
]:
    C(f"generate-{_id}", shlex.split(GEN) + [_arg], _needle, form=not isinstance(_needle, str) or _needle == "seed")
C("generate-prompt-invalid-utf8", ["generate", "{lm}", "--prompt", "\udcff\udcfe", "--max-new-tokens", "3"], "--prompt")
C("generate-prompt-lone-surrogate", ["generate", "{lm}", "--prompt", "a\ud800b", "--max-new-tokens", "3"], "--prompt")
C("generate-no-prompt", "generate {lm}", "--prompt")
C("generate-classifier", "generate {clf} --prompt hi", "causal language model")
C("generate-lstm-classifier", "generate {lstm} --prompt hi", "causal language model")
C("generate-not-a-run", "generate {tmp} --prompt hi", "not an lmforge run directory")
C("generate-missing-run", "generate {tmp}/nowhere --prompt hi", "not found")
C("generate-weights-truncated", GEN, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("generate-weights-missing", GEN, "model.safetensors", remove("{lm}/model.safetensors"))
C("generate-weights-foreign", GEN, "model.safetensors", copy_file("{clf}/model.safetensors", "{lm}/model.safetensors"))
C("generate-config-syntax", GEN, "config.yaml", write("{lm}/config.yaml", "model: {\n"))
C("generate-config-empty", GEN, "config.yaml", write("{lm}/config.yaml", ""))
C("generate-config-foreign-json", GEN, "config.yaml", write("{lm}/config.yaml", '{"architectures": ["GPT2LMHeadModel"]}'))
C("generate-config-vocab-too-small", GEN, "vocab_size", edit_yaml("{lm}/config.yaml", lambda d, p: d["model"].update(vocab_size=100)))
C("generate-tokenizer-missing", GEN, "tokenizer.json", remove("{lm}/tokenizer.json"))
C("generate-tokenizer-garbage", GEN, "tokenizer.json", write("{lm}/tokenizer.json", "{not json"))

# ============================================================================= evaluate
EV = "evaluate {lm}"
C("evaluate-max-batches-negative", EV + " --max-batches -1", "--max-batches", form=True)
C("evaluate-max-batches-0", EV + " --max-batches 0", "--max-batches", form=True)
C("evaluate-max-batches-word", EV + " --max-batches few", "--max-batches")
C("evaluate-split-test-lm", EV + " --split test", "--split")
C("evaluate-split-bogus", EV + " --split dev", "invalid choice")
C("evaluate-json-a-folder", EV + " --json {tmp}", "{tmp}")
C("evaluate-json-under-a-file", EV + " --json {corpus}/e.json", "{corpus}")
C("evaluate-json-proc", EV + " --json /proc/lmforge-badinput/e.json", "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("evaluate-json-sys", EV + " --json /sys/lmforge-badinput.json", "/sys/lmforge-badinput.json",
  absent=("/sys/lmforge-badinput.json",))
C("evaluate-json-empty-string", shlex.split(EV) + ["--json", ""], "--json")
C("evaluate-not-a-run", "evaluate {tmp}", "not an lmforge run directory")
C("evaluate-data-missing", EV + " --data {tmp}/nope.txt", "nope.txt")
C("evaluate-data-binary", EV + " --data {tmp}/blob.txt", "UTF-8", write("{tmp}/blob.txt", b"\x00\xff\xfe" * 50))
C("evaluate-data-empty", EV + " --data {tmp}/empty.txt", "empty.txt", write("{tmp}/empty.txt", "\n"))
C("evaluate-data-empty-string", shlex.split(EV) + ["--data", ""], "--data", copy_file("{corpus}", "{tmp}/notes.txt"))
C("evaluate-data-surrogate", shlex.split(EV) + ["--data", "\udcff\udcfe"], ("--data", "data set"))
C("evaluate-weights-truncated", EV, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("evaluate-weights-empty", EV, "model.safetensors", write("{lm}/model.safetensors", b""))
C("evaluate-data-meta-missing", EV, "meta.json", remove("{lm}/data/meta.json"))
C("evaluate-data-val-bin-truncated", EV, "val.bin", truncate("{lm}/data/val.bin", 10))
C("evaluate-config-lr-nan", EV, "train.lr", edit_yaml("{lm}/config.yaml", lambda d, p: d["train"].update(lr=float("nan"))))
C("evaluate-classifier-unseen-label", "evaluate {clf} --data {tmp}/u.tsv", "neutral",
  labelled("u.tsv", "text\tlabel\nhello there\tneutral\n"))
C("evaluate-classifier-label-column-missing", "evaluate {clf} --data {labels} --label-column stars", "stars")
C("evaluate-classifier-bad-json", "evaluate {clf} --data {tmp}/b.jsonl", "b.jsonl:2",
  labelled("b.jsonl", '{"text": "a", "label": "positive"}\n{"text": \n'))
C("evaluate-classifier-json-a-folder", "evaluate {clf} --json {tmp}", "{tmp}")

# ============================================================================= predict
C("predict-text-invalid-utf8", ["predict", "{clf}", "\udcff\udcfe"], ("UTF-8", "text"))
C("predict-text-lone-surrogate", ["predict", "{clf}", "fine", "a\ud800b"], ("UTF-8", "text"))
C("predict-language-model", "predict {lm} hello", "not a fine-tuned classifier")
C("predict-no-text", "predict {clf}", "no text given")
C("predict-not-a-run", "predict {tmp} hello", "not an lmforge run directory")
C("predict-input-missing", "predict {clf} --input {tmp}/nope.jsonl", "nope.jsonl")
C("predict-input-a-folder", "predict {clf} --input {tmp}/d.jsonl", "d.jsonl", mkdir("{tmp}/d.jsonl"))
C("predict-input-bad-json", "predict {clf} --input {tmp}/b.jsonl", "b.jsonl:2", labelled("b.jsonl", '{"text": "fine"}\n{"text": \n'))
C("predict-input-no-key", "predict {clf} --input {tmp}/b.jsonl", "b.jsonl:2", labelled("b.jsonl", '{"text": "fine"}\n{"txt": "oops"}\n'))
C("predict-input-json-list", "predict {clf} --input {tmp}/b.jsonl", "b.jsonl:1", labelled("b.jsonl", '["a list"]\n'))
C("predict-input-empty", "predict {clf} --input {tmp}/e.txt", "e.txt", labelled("e.txt", "\n\n"))
C("predict-input-not-utf8", "predict {clf} --input {tmp}/l.txt", "l.txt", labelled("l.txt", b"caf\xe9\n"))
C("predict-input-xlsx", "predict {clf} --input {tmp}/s.xlsx", ".xlsx", labelled("s.xlsx", "x"))
C("predict-input-text-column-missing", "predict {clf} --input {labels} --text-column body", "body")
C("predict-input-empty-text", "predict {clf} --input {tmp}/d.tsv", "d.tsv:2", labelled("d.tsv", "text\tid\n\t3\n"))
C("predict-lora-base-gone", "predict {lora} hello", "gone",
  edit_yaml("{lora}/config.yaml", lambda d, p: d["finetune"].update(base=str(p["tmp"] / "gone"))))
C("predict-weights-truncated", "predict {clf} hello", "model.safetensors", truncate("{clf}/model.safetensors", 100))

# ============================================================================= export
EX = "export {lm} --format onnx --out {tmp}/new"
C("export-not-a-run", "export {tmp} --format onnx --out {tmp}/new", "not an lmforge run directory")
C("export-format-bogus", "export {lm} --format tflite --out {tmp}/new", "invalid choice")
C("export-out-not-empty", EX.replace("{tmp}/new", "{tmp}/mine"), "mine", write("{tmp}/mine/keep.txt", "mine"))
C("export-out-is-a-file", EX.replace("{tmp}/new", "{tmp}/afile"), "afile", write("{tmp}/afile", "mine"))
C("export-out-is-the-run", EX.replace("{tmp}/new", "{lm}"), "{lm}")
C("export-out-under-a-file", EX.replace("{tmp}/new", "{tmp}/afile/x"), "afile", write("{tmp}/afile", "mine"))
C("export-out-proc", EX.replace("{tmp}/new", "/proc/lmforge-badinput/x"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("export-out-sys", EX.replace("{tmp}/new", "/sys/lmforge-badinput"), "/sys/lmforge-badinput",
  absent=("/sys/lmforge-badinput",))
C("export-out-empty-string", ["export", "{lm}", "--format", "onnx", "--out", ""], "--out")
C("export-hf-lstm", "export {lstm} --format hf --out {tmp}/new", "LSTM")
C("export-hf-mean-pooling", "export {clf} --format hf --out {tmp}/new", "pooling=mean",
  edit_yaml("{clf}/config.yaml", lambda d, p: d["finetune"].update(pooling="mean")))
C("export-int8-run", "export {int8} --format onnx --out {tmp}/new", "int8")
C("export-weights-truncated", EX, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("export-tokenizer-garbage", EX, "tokenizer.json", write("{lm}/tokenizer.json", "[]"))

# ============================================================================= compress: int8, prune
C("compress-not-a-run", "compress {tmp} --method int8 --out {tmp}/new", "not an lmforge run directory")
C("compress-missing-run", "compress {tmp}/nowhere --method int8 --out {tmp}/new", "not found")
C("compress-no-run", "compress --method int8 --out {tmp}/new", "give the run directory")
C("compress-method-bogus", "compress {lm} --method fp4 --out {tmp}/new", "invalid choice")
C("compress-int8-of-int8", "compress {int8} --method int8 --out {tmp}/new", "already int8")
C("compress-int8-with-sparsity", INT8 + " --sparsity 0.5 --out {tmp}/new", "--sparsity")
C("compress-int8-with-overrides", INT8 + " --train.max_steps=3 --out {tmp}/new", "apply to --method distill")
C("compress-int8-repeats-0", INT8.replace("--repeats 1", "--repeats 0") + " --out {tmp}/new", "--repeats", form=True)
C("compress-int8-repeats-negative", INT8.replace("--repeats 1", "--repeats -3") + " --out {tmp}/new", "--repeats", form=True)
C("compress-int8-max-batches-negative", INT8.replace("--max-batches 1", "--max-batches -1") + " --out {tmp}/new", "--max-batches", form=True)
C("compress-int8-max-batches-0", INT8.replace("--max-batches 1", "--max-batches 0") + " --out {tmp}/new", "--max-batches", form=True)
C("compress-int8-data-missing", INT8 + " --data {tmp}/nope.txt --out {tmp}/new", "nope.txt")
C("compress-int8-out-not-empty", INT8 + " --out {tmp}/mine", "mine", write("{tmp}/mine/x", "x"))
C("compress-int8-out-is-a-file", INT8 + " --out {tmp}/afile", "afile", write("{tmp}/afile", "x"))
C("compress-int8-out-is-the-run", INT8 + " --out {lm}", "is the run being compressed")
C("compress-int8-out-proc", INT8 + " --out /proc/lmforge-badinput/x", "/proc/lmforge-badinput", absent=("/proc/lmforge-badinput",))
C("compress-int8-out-sys", INT8 + " --out /sys/lmforge-badinput", "/sys/lmforge-badinput", absent=("/sys/lmforge-badinput",))
C("compress-int8-out-empty-string", shlex.split(INT8) + ["--out", ""], "--out")
C("compress-int8-weights-truncated", INT8 + " --out {tmp}/new", "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("compress-int8-config-empty", INT8 + " --out {tmp}/new", "config.yaml", write("{lm}/config.yaml", ""))
for _k, _v in [*NONFINITE.items(), ("1.0", "1.0"), ("0", "0"), ("1.5", "1.5"), ("negative", "-0.5")]:
    C(f"compress-prune-sparsity-{_k}", PRUNE + f" --sparsity={_v}", "--sparsity", form=True)
C("compress-prune-sparsity-missing", PRUNE, "--sparsity")
C("compress-prune-recover-steps-negative", PRUNE + " --sparsity 0.5 --recover-steps -1", "--recover-steps", form=True)
for _k, _v in [*NONFINITE.items(), ("negative", "-1"), ("0", "0")]:
    C(f"compress-prune-recover-lr-{_k}", PRUNE + f" --sparsity 0.5 --recover-steps 2 --recover-lr={_v}", "--recover-lr", form=True)
C("compress-prune-gradual-without-recovery", PRUNE + " --sparsity 0.5 --gradual", "--gradual")
C("compress-prune-gradual-structured", PRUNE + " --sparsity 0.5 --gradual --recover-steps 9 --structured heads", "--gradual")
C("compress-prune-structured-lstm", "compress {lstm} --method prune --sparsity 0.5 --structured heads --out {tmp}/new", "LSTM")
C("compress-prune-structured-bogus", PRUNE + " --sparsity 0.5 --structured layers", "invalid choice")

# ============================================================================= compress: distill
for _f in fields_of(("distill",), float):
    for _k, _v in NONFINITE.items():
        C(f"distill-{_f}-{_k}", DISTILL + f" --{_f}={_v}", _f, form=True)
for _f, _v in [("distill.temperature", "0"), ("distill.alpha", "1.5"), ("distill.hidden_weight", "-1"), ("train.lr", "nan"),
               ("train.lr", "inf"), ("train.beta1", "1.5"), ("model.dropout", "nan")]:
    C(f"distill-{_f}-{_v}", DISTILL + f" --{_f}={_v}", _f, form=True)
C("distill-train.seed-2**64", DISTILL + f" --train.seed={2**64}", "train.seed", form=True)
_DS = DISTILL.replace("{student}", "{tmp}/s.yaml")
for _id, _text, _needle in [("syntax", "model: {n_layer: 1\n", "s.yaml"), ("list", "- model\n", "s.yaml"),
                            ("unknown-key", "distill: {temprature: 2}\n", "distill.temprature"),
                            ("lr-nan", "model: {n_layer: 1, n_embd: 32, block_size: 32}\ntrain: {lr: .nan, max_steps: 2}\n", "train.lr"),
                            ("alias-bomb", BOMB, "model.name")]:
    C(f"distill-student-{_id}", _DS, _needle, write("{tmp}/s.yaml", _text))
C("distill-student-missing", _DS, "s.yaml")
_DC = DISTILL.replace("--teacher {lm}", "--teacher {clf}").replace("{student}", "{tmp}/s.yaml")
_LSTM = "model: {name: lstm, n_embd: 16, n_layer: 1}\ntrain: {max_steps: 2, batch_size: 8, eval_interval: 0}\n"
for _id, _text, _needle in [("vocab", _LSTM + "data: {vocab_size: 4096}\n", "tokenizer mismatch"),
                            ("model-vocab", _LSTM.replace("n_layer: 1", "n_layer: 1, vocab_size: 999"), "tokenizer mismatch"),
                            ("data-differs", _LSTM + "finetune: {data: chn-reviews}\n", "finetune.data"),
                            ("base", _LSTM + "finetune: {base: /nowhere}\n", "from scratch"),
                            ("alpha", _LSTM + "distill: {alpha: 1.5}\n", "distill.alpha")]:
    C(f"distill-classifier-student-{_id}", _DC, _needle, write("{tmp}/s.yaml", _text))
C("distill-student-lstm-for-lm", _DS, "must be a gpt too", write("{tmp}/s.yaml", _LSTM))
C("distill-student-block-too-long", _DS, "model.block_size",
  write("{tmp}/s.yaml", "model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 128}\ntrain: {max_steps: 2}\n"))
C("distill-teacher-no-weights", DISTILL, "model.safetensors", remove("{lm}/model.safetensors"))
C("distill-gradual", DISTILL + " --gradual", "--gradual")
C("compress-int8-with-teacher", INT8 + " --teacher {lm} --out {tmp}/new", "apply to --method distill")
C("distill-teacher-missing", DISTILL.replace("--teacher {lm}", "--teacher {tmp}/nowhere"), "not found")
C("distill-teacher-not-a-run", DISTILL.replace("--teacher {lm}", "--teacher {tmp}"), "not an lmforge run directory")
C("distill-no-student", "compress --method distill --teacher {lm} --out {tmp}/new", "--student-config")
C("distill-positional-run", "compress {lm} --method distill --student-config {student} --out {tmp}/new", "--teacher")
C("distill-with-sparsity", DISTILL + " --sparsity 0.5", "apply to --method prune")
C("distill-repeats-0", DISTILL.replace("--repeats 1", "--repeats 0"), "--repeats", form=True)
C("distill-out-is-the-teacher", DISTILL.replace("{tmp}/new", "{lm}"), "is the run being compressed")
C("distill-out-not-empty", DISTILL.replace("{tmp}/new", "{tmp}/mine"), "mine", write("{tmp}/mine/x", "x"))
C("distill-out-proc", DISTILL.replace("{tmp}/new", "/proc/lmforge-badinput/x"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))

# ============================================================================= report compress
REP = "report compress {int8} --out {tmp}/p.png"
C("report-no-compression-json", "report compress {lm} --out {tmp}/p.png", "compression.json")
C("report-compression-json-garbage", REP, "compression.json", write("{int8}/compression.json", "{"))
C("report-compression-json-empty-object", REP, "compression.json", write("{int8}/compression.json", "{}"))
C("report-compression-json-list", REP, "compression.json", write("{int8}/compression.json", "[1, 2]"))
C("report-compression-json-not-utf8", REP, "compression.json", write("{int8}/compression.json", b'{"method": "\xff"}'))
C("report-out-a-folder", "report compress {int8} --out {tmp}", "{tmp}")
C("report-out-under-a-file", "report compress {int8} --out {corpus}/p.png", "{corpus}")
C("report-out-proc", "report compress {int8} --out /proc/lmforge-badinput/p.png", "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("report-batch-bogus", REP + " --batch 8", "invalid choice")
C("report-no-runs", "report compress --out {tmp}/p.png", "RUN")

# ============================================================================= serve (argument errors, before listening)
for _flag, _v in [("--port", "70000"), ("--port", "65536"), ("--port", "-1"), ("--port", "http"),
                  ("--batch-window-ms", "nan"), ("--batch-window-ms", "inf"), ("--batch-window-ms", "1e309"),
                  ("--batch-window-ms", "-1"), ("--timeout", "nan"), ("--timeout", "0"), ("--timeout", "-1"),
                  ("--workers", "0"), ("--workers", "-2"), ("--threads", "0"), ("--max-batch", "0"),
                  ("--max-body-bytes", "0"), ("--max-prompt-tokens", "-1"), ("--max-completion-tokens", "0"),
                  ("--max-inputs", "0"), ("--max-concurrent", "0"), ("--log-level", "loud")]:
    C(f"serve{_flag}-{_v}", shlex.split(SERVE) + [f"{_flag}={_v}"], _flag if _flag != "--log-level" else "invalid choice",
      form=_flag not in ("--log-level",) and _v != "http")
C("serve--api-key-empty", shlex.split(SERVE) + ["--api-key", ""], "--api-key", form=True)
C("serve--api-key-spaces", shlex.split(SERVE) + ["--api-key", "   "], "--api-key", form=True)
C("serve--api-key-non-ascii", shlex.split(SERVE) + ["--api-key", "clé-secrète"], "--api-key", form=True)
C("serve--api-key-control-char", shlex.split(SERVE) + ["--api-key", "ab\ncd"], "--api-key", form=True)
C("serve--api-key-surrogate", shlex.split(SERVE) + ["--api-key", "\udcff\udcfe"], "--api-key", form=True)
C("serve-env-api-key-empty", SERVE, "LMFORGE_API_KEY", env={"LMFORGE_API_KEY": ""}, form=True)
C("serve-env-api-key-non-ascii", SERVE, "LMFORGE_API_KEY", env={"LMFORGE_API_KEY": "schlüssel"}, form=True)
C("serve-not-a-run", "serve {tmp} --port 0", "not an lmforge run directory")
C("serve-missing-run", "serve {tmp}/nowhere --port 0", "not found")
C("serve-same-run-twice", "serve {lm} {lm} --port 0", "given twice")
C("serve-pickle-weights", SERVE, "model.safetensors", write("{lm}/model.safetensors", b"\x80\x04\x95" + b"\x00" * 64))
C("serve-weights-truncated", SERVE, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("serve--host-empty", shlex.split(SERVE) + ["--host", ""], "--host")  # "$UNSET": never all interfaces
C("serve-lstm-and-lm-twice", "serve {lstm} {lm} {lm} --port 0", "given twice")
C("serve-host-bogus", "serve {lm} --port 0 --host 999.1.1.1", "--host")

# ============================================================================= real processes
C("proc-generate-prompt-invalid-utf8", [b"generate", b"{lm}", b"--prompt", b"\xff\xfe", b"--max-new-tokens", b"3"], "--prompt",
  proc=True)
C("proc-predict-text-invalid-utf8", [b"predict", b"{clf}", b"\xff\xfe"], ("UTF-8", "text"), proc=True)
C("proc-data-get-invalid-utf8", [b"data", b"get", b"\xff\xfe"], "data set", proc=True)
C("proc-pretrain-lr-nan", NEW + " --train.lr=nan", "train.lr", proc=True)
C("proc-resume-not-a-run", "pretrain --resume {tmp}", "not an lmforge run directory", proc=True)
C("proc-evaluate-json-read-only", "evaluate {lm} --json {tmp}/e.json", "e.json", proc=True, user="nobody")
C("proc-pretrain-out-read-only", NEW, "{tmp}/new", proc=True, user="nobody")
C("proc-export-out-read-only", EX, "{tmp}/new", proc=True, user="nobody")
C("proc-resume-read-only-run", RESUME, "{lm}", proc=True, user="nobody")
C("proc-tokenizer-out-read-only", "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/tok", "{tmp}/tok", proc=True,
  user="nobody")
C("proc-compress-out-read-only", INT8 + " --out {tmp}/new", "{tmp}/new", proc=True, user="nobody")
# a write that fails half-way (files over 40 KB refused): one line naming what the user gave, nothing half-made left
C("proc-export-write-fails", EX, ("{tmp}/new", "--out"), proc=True, file_limit=40_000, code=(1, 2))
C("proc-compress-write-fails", INT8 + " --out {tmp}/new", ("{tmp}/new", "--out"), proc=True, file_limit=40_000, code=(1, 2))
C("proc-resume-write-fails", RESUME, "train_state.safetensors", proc=True, file_limit=100_000, code=(1, 2),
  may_change=("lm/config.yaml", "lm/metrics.jsonl"), progress_ok=True)
