"""``fit()``: the training loop, for any model family.

It trains any ``nn.Module`` that maps a batch ``x`` to logits, with the loss function handed to it,
on batches from a *batch source*: an object with

- ``train_batch(step, index, size) -> (x, y)``: ``x`` is the model's input (a tensor, or a tuple /
  dict of tensors such as ids and a padding mask); slice ``index`` (of ``size`` samples) of the global
  batch of optimizer step ``step``. The global batch is a pure function of (seed, step), so any
  process can draw its share without coordination and a resumed run sees exactly the same data;
- ``eval_batches() -> Iterable[(x, y)]``: the fixed validation batches;
- ``tokens_per_sample``: for the tokens/s figure.

Exact resume: everything that decides the next step (weights, optimizer state, step count,
per-rank RNG state) is written in one atomic file every ``save_interval`` steps; the LR is a
function of the step and the data a function of (seed, step). A run killed at any point and
resumed from its last checkpoint therefore replays the same arithmetic: on CPU with one thread the
final weights equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch

from lmforge.config import TrainConfig
from lmforge.devices import autocast_context, call, resolve_device, to_device
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.training import distributed
from lmforge.training.ema import EMA
from lmforge.training.evaluation import LossFn, evaluate_loss
from lmforge.training.optim import build_optimizer, lr_at, set_lr
from lmforge.training.stopping import StopRequest


class BatchSource(Protocol):
    tokens_per_sample: int

    def train_batch(self, step: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


class TrainingDiverged(UserError):
    """The loss became NaN / inf: training stops, the last good checkpoint stays as it was."""


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
        file=sys.stderr,
    )


def fit(
    model: torch.nn.Module,
    batches: BatchSource,
    cfg: TrainConfig,
    run_dir: str | Path,
    loss_fn: LossFn,
    info: distributed.DistInfo | None = None,
    progress: bool = True,
    lr_scale: Callable[[str], float] | None = None,
    after_step: Callable[[int], None] | None = None,
    val_accuracy: bool = False,
    evaluator: Callable[..., tuple[float, dict[str, float]]] | None = None,
    resumable: bool = True,
    on_restored: Callable[[], None] | None = None,
) -> dict:
    """Train ``model`` in place; resume from ``run_dir`` if it holds a training state.

    With ``cfg.ema_decay`` the weights' moving average is what is evaluated, saved as model.safetensors
    and left in ``model`` at the end (the live weights stay in the training state for resume).
    ``after_step(step)`` runs after each optimizer step, before any evaluation or checkpoint (pruning
    re-applies its masks there, so saved weights keep their zeros). ``val_accuracy``: classifiers
    also log the validation accuracy at each evaluation (metrics.jsonl ``accuracy``, summary ``val_accuracy``).
    ``evaluator(model, eval_batches, device, dtype, info) -> (val loss, {name: value})`` replaces the plain
    validation loss for models with more to report (ELECTRA: its two losses and the discriminator's
    accuracy); each name is logged beside the loss and lands in the summary as ``val_<name>``.
    ``resumable``: a SIGINT / SIGTERM stops after the step with a checkpoint there (:class:`StopRequest`)
    and says how to resume; False for callers whose run dir does not outlive an interruption (compress
    builds its output in a temporary folder): the signal then acts at once, without that message.
    ``on_restored()`` runs once the training state (if any) is loaded and checked, before fit() writes
    anything: a resume records its new config there, so a resume that fails leaves the run dir untouched.
    Returns a summary: steps, tokens, seconds, final train loss, val loss and perplexity.

    The steps are the methods of :class:`_Run`, in the order they run.
    """
    from lmforge.devices import tune_host_allocator

    tune_host_allocator()  # steps allocate and free the same blocks: keep them in the heap (devices.py)
    run = _Run(model, batches, cfg, Path(run_dir), loss_fn, info or distributed.DistInfo(), lr_scale,
               after_step, val_accuracy, evaluator)
    run.restore()
    # everything is checked and restored: only from here on does fit() write into the run dir
    if on_restored is not None:
        on_restored()
    run.begin()
    run.train(progress, resumable)
    return run.finish()


class _Run:
    """One call of :func:`fit`, as named steps (the shape of torchtune's recipe classes):

    - ``__init__``: the device, the per-process batch, the optimizer and loss scaler (reads nothing);
    - :meth:`restore`: the training state in the run dir, if any (weights, optimizer, counters, RNG, EMA);
    - :meth:`begin`: the first write (metrics past the restored step go) and the DDP / compile wrappers;
    - :meth:`train`: the loop; each step is :meth:`train_step` (one optimizer step), :meth:`log`,
      :meth:`evaluate` when due, :meth:`save` when due, then a stop if a signal asked for one;
    - :meth:`finish`: the summary, with the averaged weights left in the model.

    Order matters for exact resume: the RNG is seeded or restored in :meth:`restore` and then drawn
    from only by the steps, in the order above (dropout in :meth:`train_step`, whatever an evaluator
    draws in :meth:`evaluate`), and :meth:`save` records it after both.
    """

    def __init__(self, model: torch.nn.Module, batches: BatchSource, cfg: TrainConfig, run_dir: Path,
                 loss_fn: LossFn, info: distributed.DistInfo, lr_scale: Callable[[str], float] | None,
                 after_step: Callable[[int], None] | None, val_accuracy: bool,
                 evaluator: Callable[..., tuple[float, dict[str, float]]] | None) -> None:
        self.model, self.batches, self.cfg, self.run_dir = model, batches, cfg, run_dir
        self.loss_fn, self.info = loss_fn, info
        self.after_step, self.val_accuracy, self.evaluator = after_step, val_accuracy, evaluator
        self.device = resolve_device(cfg.device)
        if info.enabled and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", info.local_rank)
        self.per_step = cfg.batch_size // (info.world_size * cfg.grad_accum)  # samples per micro-batch and process
        if self.per_step * info.world_size * cfg.grad_accum != cfg.batch_size:
            raise UserError(
                f"train.batch_size ({cfg.batch_size}) must be divisible by processes ({info.world_size}) x train.grad_accum ({cfg.grad_accum})"
            )
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        model.to(self.device)
        self.optimizer = build_optimizer(model, cfg, lr_scale)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.dtype == "float16")
        self.start, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.ema: EMA | None = None
        self.net: torch.nn.Module = model  # what the steps run: the model, or its DDP / compiled wrapper
        self.last_saved = 0  # the step of the last checkpoint (0: none yet)
        self.best: float | None = None  # train.keep_best: the best validation figure so far

    # -- before the loop -------------------------------------------------------------------------------

    def restore(self) -> None:
        """Load and check the run dir's training state, if there is one; a fresh run seeds the RNG
        instead (per rank). Writes nothing: a state that does not fit raises with the run dir untouched."""
        cfg, info = self.cfg, self.info
        state = ckpt.load_train_state(self.run_dir)
        if state is not None:
            self._load_state(state)
        else:
            torch.manual_seed(cfg.seed + info.rank)
        if cfg.ema_decay:
            self.ema = EMA(self.model, cfg.ema_decay, state["ema"] if state is not None else None)
        self.last_saved = self.start

    def _load_state(self, state: dict) -> None:
        """Weights, optimizer state, step / tokens / elapsed, loss scaler and RNG from a training state."""
        cfg, info, path = self.cfg, self.info, self.run_dir / ckpt.TRAIN_STATE
        ckpt.load_into(self.model, state["model"], str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:  # another optimizer, or groups that changed
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: its optimizer state does not fit train.optimizer="
                            f"{cfg.optimizer} with this model ({reason}); resume with the run's own train.* settings") from None
        meta = state["meta"]
        self.start, self.tokens, self.elapsed_before = meta["step"], meta["tokens"], meta.get("elapsed", 0.0)
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        if len(state["rng"]) == info.world_size:
            torch.set_rng_state(state["rng"][info.rank])
        else:  # a different number of processes: the data stream is the same, dropout masks are not
            torch.manual_seed(cfg.seed + 1000 * self.start + info.rank)
        if state["rng_cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"])

    def begin(self) -> None:
        """The run dir's metrics past the restored step go (a resume rewrites them), and the model is
        wrapped for DDP and ``torch.compile`` as configured."""
        if self.info.is_main:
            ckpt.truncate_metrics(self.run_dir, self.start)
        if self.cfg.keep_best:  # the best figure so far, from the evaluations the checkpoint kept
            key = "loss" if self.cfg.keep_best == "loss" else self.cfg.keep_best
            seen = [r[key] for r in ckpt.read_metrics(self.run_dir) if r.get("split") == "val" and key in r
                    and r["step"] <= self.start]
            self.best = (min(seen) if key == "loss" else max(seen)) if seen else None
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            self.net = torch.compile(self.net)

    # -- the loop --------------------------------------------------------------------------------------

    def train(self, progress: bool, resumable: bool) -> None:
        """Steps from the restored one to ``max_steps``. A signal (``resumable`` only) stops the loop
        after the step it arrived in, with a checkpoint there: :class:`Stopped` on every rank."""
        cfg = self.cfg
        self.tokens_per_step = cfg.batch_size * self.batches.tokens_per_sample
        self.summary = {"steps": self.start, "tokens": self.tokens, "train_loss": None, "val_loss": None, "val_ppl": None}
        self.bar = _progress(cfg.max_steps, self.start, progress and self.info.is_main)
        self.t0 = time.perf_counter()
        self.window_t, self.window_tokens = self.t0, 0  # the tokens/s figure is over the steps since the last log
        self.net.train()
        stop = StopRequest(announce=self.info.is_main)
        try:
            if resumable:
                stop.install()
            for step in range(self.start, cfg.max_steps):
                loss, lr, stopping = self.train_step(step, stop)
                done = step + 1
                self.log(done, loss, lr)
                if (cfg.eval_interval and done % cfg.eval_interval == 0) or done == cfg.max_steps:
                    self.evaluate(done, loss)
                if done % cfg.save_interval == 0 or done == cfg.max_steps or stopping:
                    self.save(done)
                if stopping and done < cfg.max_steps:
                    raise stop.stopped()  # every rank, signalled or not, stops after this same step
        except KeyboardInterrupt as e:
            self.bar.close()
            if self.info.is_main and resumable:
                self._say_how_to_resume(e)
            raise
        finally:
            stop.restore()
            self.bar.close()

    def train_step(self, step: int, stop: StopRequest) -> tuple[float, float, bool]:
        """One optimizer step: the LR of ``step``, forward and backward over the micro-batches, the mean
        loss over ranks (with whether any rank was asked to stop), then clip, step, ``after_step`` and
        EMA. Returns (loss, lr, stopping); raises :class:`TrainingDiverged` on a NaN / inf loss, before
        the weights move."""
        cfg = self.cfg
        set_lr(self.optimizer, lr := lr_at(step, cfg))
        loss_sum = self._forward_backward(step)
        # the loss and any rank's Ctrl-C in one all-reduce: every rank stops after the same step
        both = torch.stack([loss_sum.float().cpu(), torch.tensor(float(stop.signum))])
        reduced = distributed.all_reduce_sum(both, self.info)
        loss, stopping = reduced[0].item() / self.info.world_size, reduced[1].item() > 0
        if not math.isfinite(loss):
            where = (f"the last good checkpoint (step {self.last_saved}) is kept in {self.run_dir}" if self.last_saved
                     else "no checkpoint was written yet")
            raise TrainingDiverged(
                f"loss is {loss} at step {step + 1}: training stopped; {where}. "
                "Try a lower --train.lr, --train.grad_clip=1.0, or check the data"
            )
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step(step)
        if self.ema is not None:
            self.ema.update(step)
        return loss, lr, stopping

    def _forward_backward(self, step: int) -> torch.Tensor:
        """Gradients of this rank's share of ``step``'s global batch, ``grad_accum`` micro-batches of it;
        DDP syncs only on the last. Returns this rank's loss (the micro-batches' mean), on the device."""
        cfg, info, device = self.cfg, self.info, self.device
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = self.batches.train_batch(step, micro * info.world_size + info.rank, self.per_step)
            x, y = to_device(x, device), y.to(device, non_blocking=True)
            sync = contextlib.nullcontext()
            if info.enabled and micro < cfg.grad_accum - 1:
                sync = self.net.no_sync() if hasattr(self.net, "no_sync") else sync
            with sync:
                with autocast_context(device, cfg.dtype):
                    loss = self.loss_fn(call(self.net, x), y) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        return loss_sum

    def log(self, done: int, loss: float, lr: float) -> None:
        """Count the step's tokens into the summary and the progress bar; every ``log_interval`` steps
        (and on the first and last) a train record in metrics.jsonl."""
        cfg = self.cfg
        self.tokens += self.tokens_per_step
        self.window_tokens += self.tokens_per_step
        self.summary.update(steps=done, tokens=self.tokens, train_loss=loss)
        now = time.perf_counter()
        tok_s = self.window_tokens / max(now - self.window_t, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
        if self.info.is_main and (done % cfg.log_interval == 0 or done == cfg.max_steps or done == self.start + 1):
            ckpt.append_metrics(self.run_dir, {"step": done, "split": "train", "loss": loss, "lr": lr,
                                               "tokens": self.tokens, "tok_per_s": round(tok_s, 1),
                                               "elapsed": round(self.elapsed_before + now - self.t0, 3)})
            self.window_t, self.window_tokens = now, 0

    def evaluate(self, done: int, train_loss: float) -> None:
        """Validate the (averaged) model: the summary's val figures, a val record in metrics.jsonl and
        a line on stderr."""
        record: dict[str, float] = {}
        cfg, batches, device, info = self.cfg, self.batches, self.device, self.info
        with self._averaged():
            if self.evaluator is not None:
                val, record = self.evaluator(self.model, batches.eval_batches(), device, cfg.dtype, info)
            elif self.val_accuracy:
                val, record["accuracy"] = evaluate_loss(self.model, batches.eval_batches(), self.loss_fn, device,
                                                        cfg.dtype, info, with_accuracy=True)
            else:
                val = evaluate_loss(self.model, batches.eval_batches(), self.loss_fn, device, cfg.dtype, info)
            best = self._keep_best(done, val, record)
        summary = self.summary
        summary.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)), **{f"val_{k}": v for k, v in record.items()})
        if info.is_main:
            ckpt.append_metrics(self.run_dir, {"step": done, "split": "val", "loss": val, "ppl": summary["val_ppl"], **record})
            extra = "".join(f", val {k.replace('_', ' ')} {v:.4f}" for k, v in record.items()) \
                if record else f", val ppl {summary['val_ppl']:.2f}"
            self.bar.write(f"step {done}: train loss {train_loss:.4f}, val loss {val:.4f}{extra}{' (best)' if best else ''}",
                           file=sys.stderr)

    def _keep_best(self, done: int, val: float, record: dict) -> bool:
        """With ``train.keep_best``: write best.safetensors when this evaluation's figure beats every earlier
        one of the run (lowest loss; highest accuracy / bleu / chrf). Returns whether it did."""
        name = self.cfg.keep_best
        if not name:
            return False
        value = val if name == "loss" else record.get(name)
        if value is None:
            raise UserError(f"train.keep_best: {name!r} is not a validation figure of this task (it reports loss"
                            f"{''.join(', ' + k for k in record)})")
        better = self.best is None or (value < self.best if name == "loss" else value > self.best)
        if better and math.isfinite(value):
            self.best = value
            if self.info.is_main:
                ckpt.save_weights(self.run_dir / ckpt.BEST_WEIGHTS, self.model, {"step": str(done), name: str(value)})
            return True
        return False

    def save(self, step: int) -> None:
        """The checkpoint after ``step``: the training state (live weights, optimizer, counters, every
        rank's RNG, EMA) and model.safetensors (the average, when there is one); all ranks wait for it."""
        elapsed = self.elapsed_before + time.perf_counter() - self.t0
        rngs = distributed.gather_objects(torch.get_rng_state(), self.info)
        if self.info.is_main:
            scaler = self.scaler
            meta = {"step": step, "tokens": self.tokens, "elapsed": elapsed, "world_size": self.info.world_size,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            ckpt.save_train_state(self.run_dir, self.model, self.optimizer, meta, rngs,
                                  self.ema.avg if self.ema is not None else None)
            with self._averaged():  # the model a user loads is the average, when there is one
                ckpt.save_weights(self.run_dir / ckpt.WEIGHTS, self.model, {"step": str(step)})
        distributed.barrier(self.info)
        self.last_saved = step

    def _averaged(self):
        """The EMA's weights in the model for the ``with`` block, when there is an EMA."""
        return self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()

    def _say_how_to_resume(self, e: KeyboardInterrupt) -> None:
        kept = (f"the last checkpoint (step {self.last_saved}) is in {self.run_dir}" if self.last_saved
                else "no checkpoint was written yet")
        print(f"lmforge: interrupted; {kept}: continue with --resume {self.run_dir}", file=sys.stderr)
        e.reported = True  # the CLI then adds no second "interrupted" line

    # -- after the loop --------------------------------------------------------------------------------

    def finish(self) -> dict:
        """The summary, with the averaged weights left in the model as they were saved; a resumed run
        that was already finished reports its last evaluation from metrics.jsonl."""
        if self.ema is not None:
            self.ema.copy_to(self.model)
        summary = self.summary
        summary["seconds"] = round(self.elapsed_before + time.perf_counter() - self.t0, 3)
        if summary["val_loss"] is None and self.start >= self.cfg.max_steps:
            vals = [r for r in ckpt.read_metrics(self.run_dir) if r.get("split") == "val"]
            if vals:
                summary.update(val_loss=vals[-1]["loss"], val_ppl=vals[-1]["ppl"])
                if "accuracy" in vals[-1]:
                    summary["val_accuracy"] = vals[-1]["accuracy"]
        return summary
