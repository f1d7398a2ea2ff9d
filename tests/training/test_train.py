"""fit() on a toy model and batch source: it is family-agnostic, so no GPT is needed here."""

import math

import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.tasks.lm import lm_loss
from lmforge.training.loop import TrainingDiverged, fit

V, T = 16, 8


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 32)
        self.drop = torch.nn.Dropout(0.2)  # exercises the saved RNG state
        self.head = torch.nn.Linear(32, V)

    def forward(self, x):
        return self.head(self.drop(self.emb(x)))


class Counting:
    """Next token = (token + 1) mod V; the global batch of a step is a function of (seed, step)."""

    tokens_per_sample = T

    def __init__(self, global_batch, fail_at=None):
        self.global_batch, self.fail_at = global_batch, fail_at

    def _batch(self, step):
        g = torch.Generator().manual_seed(step)
        start = torch.randint(0, V, (self.global_batch, 1), generator=g)
        seq = (start + torch.arange(T + 1)) % V
        return seq[:, :-1], seq[:, 1:]

    def train_batch(self, step, index, size):
        if step == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        x, y = self._batch(step)
        return x[index * size : (index + 1) * size], y[index * size : (index + 1) * size]

    def eval_batches(self):
        return [self._batch(10_000 + i) for i in range(2)]


def cfg(**kw):
    base = dict(max_steps=12, batch_size=8, lr=0.05, warmup_steps=2, eval_interval=6, save_interval=4, log_interval=2)
    base.update(kw)
    return TrainConfig(**base)


def new_model():
    torch.manual_seed(0)
    return Toy()


def test_fit_learns_and_logs(tmp_path):
    s = fit(new_model(), Counting(8), cfg(max_steps=40), tmp_path, loss_fn=lm_loss, progress=False)
    assert s["steps"] == 40 and s["val_loss"] < 0.5 * math.log(V)
    recs = ckpt.read_metrics(tmp_path)
    assert {r["split"] for r in recs} == {"train", "val"}
    assert (tmp_path / ckpt.WEIGHTS).exists() and (tmp_path / ckpt.TRAIN_STATE).exists()


@pytest.mark.parametrize("opt, schedule, accum", [("adamw", "cosine", 1), ("sgd", "step", 2), ("rmsprop", "cosine_restarts", 4)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, opt, schedule, accum):
    c = cfg(optimizer=opt, schedule=schedule, grad_accum=accum, step_size=3, restart_period=5)
    m_ref = new_model()
    fit(m_ref, Counting(8), c, tmp_path / "ref", loss_fn=lm_loss, progress=False)

    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), Counting(8, fail_at=10), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    assert ckpt.load_train_state(tmp_path / "run")["meta"]["step"] == 8
    m = new_model()
    fit(m, Counting(8), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    for a, b in zip(m_ref.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)
    steps = [r["step"] for r in ckpt.read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert steps == sorted(set(steps))  # replayed steps were not logged twice


def test_ema_is_what_is_evaluated_saved_and_resumed(tmp_path):
    c = cfg(ema_decay=0.9)
    m_ref = new_model()
    fit(m_ref, Counting(8), c, tmp_path / "ref", loss_fn=lm_loss, progress=False)
    live = ckpt.load_train_state(tmp_path / "ref")
    saved, _ = ckpt.load_tensors(tmp_path / "ref" / ckpt.WEIGHTS)
    assert torch.equal(saved["head.weight"], m_ref.head.weight.detach())  # the caller's model is the average...
    assert torch.equal(live["ema"]["head.weight"], m_ref.head.weight.detach())
    assert not torch.equal(live["model"]["head.weight"], m_ref.head.weight.detach())  # ...the live weights are kept to resume
    m_plain = new_model()  # the same run without the average ends elsewhere
    fit(m_plain, Counting(8), cfg(), tmp_path / "plain", loss_fn=lm_loss, progress=False)
    assert not torch.equal(m_plain.head.weight, m_ref.head.weight)

    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), Counting(8, fail_at=10), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    m = new_model()
    fit(m, Counting(8), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    for a, b in zip(m_ref.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)  # resume restores the average too


def test_ema_by_hand(tmp_path):
    """One step at a time, the average follows the formula (no dropout, SGD)."""
    c = cfg(ema_decay=0.5, optimizer="sgd", max_steps=3, warmup_steps=0, momentum=0.0, eval_interval=0)
    history = []
    model = new_model().eval()
    model.drop.p = 0.0
    avg = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, Counting(8), c, tmp_path, loss_fn=lm_loss, progress=False, after_step=lambda step: history.append(
        {n: p.detach().clone() for n, p in model.named_parameters()}))
    for t, w in enumerate(history):
        d = min(0.5, (1 + t) / (10 + t))
        avg = {n: torch.lerp(avg[n], w[n], 1 - d) for n in avg}
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), avg[n], atol=1e-6, rtol=0)


def test_grad_accum_matches_full_batch(tmp_path):
    a, b = new_model(), new_model()
    a.drop.p = b.drop.p = 0.0
    fit(a, Counting(8), cfg(grad_accum=1), tmp_path / "a", loss_fn=lm_loss, progress=False)
    fit(b, Counting(8), cfg(grad_accum=4), tmp_path / "b", loss_fn=lm_loss, progress=False)
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def exploding(logits, y, calls=[0]):  # noqa: B006 - a counter across calls
        calls[0] += 1
        loss = lm_loss(logits, y)
        return loss * float("nan") if calls[0] > 6 else loss

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 7.*step 4"):
        fit(new_model(), Counting(8), cfg(), tmp_path, loss_fn=exploding, progress=False)
    state = ckpt.load_train_state(tmp_path)
    assert state["meta"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_bf16_autocast_and_batch_divisibility(tmp_path):
    s = fit(new_model(), Counting(8), cfg(max_steps=4, dtype="bfloat16"), tmp_path / "bf16", loss_fn=lm_loss, progress=False)
    assert math.isfinite(s["train_loss"])
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="divisible"):
        fit(new_model(), Counting(8), cfg(batch_size=6, grad_accum=4), tmp_path / "x", loss_fn=lm_loss, progress=False)


@pytest.mark.slow
def test_compile_option_trains_like_eager(tmp_path):
    """train.compile=true goes through torch.compile (~40 s cold) and follows the eager loss curve."""
    from lmforge.config import ModelConfig
    from lmforge.models import build

    def gpt():
        torch.manual_seed(0)
        return build(ModelConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, block_size=T))

    c = dict(max_steps=3, eval_interval=0, save_interval=3, log_interval=1)
    eager = fit(gpt(), Counting(8), cfg(**c), tmp_path / "eager", loss_fn=lm_loss, progress=False)
    compiled = fit(gpt(), Counting(8), cfg(compile=True, **c), tmp_path / "compiled", loss_fn=lm_loss, progress=False)
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], abs=1e-4)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-4)


def test_tuple_inputs_reach_the_model(tmp_path):
    """x may be a tuple (ids, mask): fit() passes it as positional arguments."""

    class Masked(Toy):
        def forward(self, x, mask):
            return super().forward(x) * mask.unsqueeze(-1)

    class WithMask(Counting):
        def train_batch(self, step, index, size):
            x, y = super().train_batch(step, index, size)
            return (x, torch.ones_like(x)), y

        def eval_batches(self):
            return [((x, torch.ones_like(x)), y) for x, y in super().eval_batches()]

    torch.manual_seed(0)
    s = fit(Masked(), WithMask(8), cfg(max_steps=20), tmp_path, loss_fn=lm_loss, progress=False)
    assert s["val_loss"] < math.log(V)


def test_interrupt_names_the_checkpoint_to_resume_from(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), Counting(8, fail_at=6), cfg(), tmp_path, loss_fn=lm_loss, progress=False)
    assert f"the last checkpoint (step 4) is in {tmp_path}: continue with --resume {tmp_path}" in capsys.readouterr().err


def test_stop_request_repeats_within_a_second_are_one_request_a_later_one_acts_at_once():
    import os
    import signal

    from lmforge.training.stopping import StopRequest

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    stop = StopRequest(announce=False)
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)  # the first: a request, no exception, nothing killed
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # the same request again (terminal + torchrun agent): ignored
        assert stop.signum == signal.SIGTERM
        stop.REPEAT_WINDOW = 0.0  # a later one: Python's own handler, at once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are back
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        stop.restore()


def test_only_resumable_fits_take_over_sigint_and_sigterm(tmp_path):
    import signal

    seen = {}
    for resumable in (True, False):
        def look(step, resumable=resumable):
            seen[resumable] = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        fit(new_model(), Counting(8), cfg(max_steps=2), tmp_path / str(resumable), loss_fn=lm_loss, progress=False, after_step=look,
            resumable=resumable)
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # put back afterwards
    assert seen[False] == before
    assert all(getattr(h, "__qualname__", "") == "StopRequest._handle" for h in seen[True]), seen[True]


def test_on_restored_sees_the_restored_state_before_anything_is_written(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), Counting(8, fail_at=6), cfg(), tmp_path, loss_fn=lm_loss, progress=False)  # checkpoint at 4, metrics to 6
    logged = ckpt.read_metrics(tmp_path)
    saved = ckpt.load_train_state(tmp_path)["model"]
    seen = {}
    m = new_model()

    def look():
        seen["weights"] = all(torch.equal(p.detach(), saved[n]) for n, p in m.named_parameters())
        seen["metrics"] = ckpt.read_metrics(tmp_path)

    fit(m, Counting(8), cfg(), tmp_path, loss_fn=lm_loss, progress=False, on_restored=look)
    assert seen["weights"]  # the state is in the model already...
    assert seen["metrics"] == logged and max(r["step"] for r in logged) == 6  # ...and steps 5-6 are not yet dropped
    assert [r["step"] for r in ckpt.read_metrics(tmp_path) if r["split"] == "train"] == [1, 2, 4, 5, 6, 8, 10, 12]


def test_no_function_in_the_loop_is_over_80_lines():
    import ast
    import inspect

    from lmforge.training import loop

    tree = ast.parse(inspect.getsource(loop))
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80]
    assert not long, long


def test_keep_best_keeps_the_best_evaluation_and_survives_a_resume(tmp_path):
    """train.keep_best=loss: best.safetensors holds the weights of the lowest val loss so far; an evaluator's
    figure (accuracy here) is kept the highest; a resume recomputes "best so far" from metrics.jsonl."""
    from safetensors.torch import load_file

    c = cfg(max_steps=24, eval_interval=4, keep_best="loss")
    fit(new_model(), Counting(8), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    vals = [r for r in ckpt.read_metrics(tmp_path / "run") if r["split"] == "val"]
    best = min(vals, key=lambda r: r["loss"])
    meta = ckpt.load_tensors(tmp_path / "run" / ckpt.BEST_WEIGHTS, "best")[1]
    assert int(meta["step"]) == best["step"] and float(meta["loss"]) == pytest.approx(best["loss"])

    with pytest.raises(KeyboardInterrupt):  # killed after step 16's checkpoint; the resume evaluates 20 and 24 again
        fit(new_model(), Counting(8, fail_at=17), cfg(max_steps=24, eval_interval=4, save_interval=8, keep_best="loss"),
            tmp_path / "resumed", loss_fn=lm_loss, progress=False)
    fit(new_model(), Counting(8), cfg(max_steps=24, eval_interval=4, save_interval=8, keep_best="loss"),
        tmp_path / "resumed", loss_fn=lm_loss, progress=False)
    a, b = load_file(tmp_path / "run" / ckpt.BEST_WEIGHTS), load_file(tmp_path / "resumed" / ckpt.BEST_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def evaluator(model, batches, device, dtype, info):
        step = len(ckpt.read_metrics(tmp_path / "acc"))  # any figure that rises, then falls
        return 1.0, {"accuracy": [0.2, 0.9, 0.5][min(step // 3, 2)]}

    fit(new_model(), Counting(8), cfg(max_steps=12, eval_interval=4, keep_best="accuracy"), tmp_path / "acc",
        loss_fn=lm_loss, progress=False, evaluator=evaluator)
    assert ckpt.load_tensors(tmp_path / "acc" / ckpt.BEST_WEIGHTS, "best")[1]["accuracy"] == "0.9"
    with pytest.raises(UserError, match="train.keep_best: 'bleu' is not a validation figure"):
        fit(new_model(), Counting(8), cfg(max_steps=4, eval_interval=4, keep_best="bleu"), tmp_path / "bleu",
            loss_fn=lm_loss, progress=False)


def test_inverse_sqrt_schedule_is_continuous_after_warmup():
    from lmforge.training.optim import lr_at

    c = TrainConfig(lr=1.0, warmup_steps=4, schedule="inverse_sqrt", max_steps=100)
    lrs = [lr_at(s, c) for s in range(100)]
    assert lrs[3] == 1.0 and lrs[15] == pytest.approx(0.5) and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
