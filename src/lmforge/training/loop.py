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
import torch.nn.functional as F

from lmforge.config import TrainConfig
from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.training import distributed
from lmforge.training.optim import build_optimizer, lr_at, set_lr
from lmforge.training.stopping import StopRequest

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BatchSource(Protocol):
    tokens_per_sample: int

    def train_batch(self, step: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


class TrainingDiverged(UserError):
    """The loss became NaN / inf: training stops, the last good checkpoint stays as it was."""


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), targets (B, T). Computed in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def to_device(x, device: torch.device):
    """A batch's inputs on ``device``: a tensor, or a tuple / dict of tensors (e.g. ids + padding mask)."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return type(x)(to_device(v, device) for v in x)


def call(model: torch.nn.Module, x):
    """``model(x)``, ``model(*x)`` for a tuple or ``model(**x)`` for a dict of inputs."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} asked for, but this machine has no CUDA device (use auto or cpu)")
    return dev


def autocast_context(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


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


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable, loss_fn: LossFn, device, dtype: str, info,
                  with_accuracy: bool = False):
    """Mean loss over the evaluation batches (sharded over ranks, summed with all-reduce); with
    ``with_accuracy`` also the share of argmax(logits) == y, from the same forward passes: (loss, acc)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)  # loss * n, n, right
    for i, (x, y) in enumerate(batches):
        if i % info.world_size != info.rank:
            continue
        with autocast_context(device, dtype):
            logits = call(model, to_device(x, device))
        y = y.to(device)
        n = y.numel()
        right = (logits.argmax(-1) == y).sum().item() if with_accuracy else 0
        total += torch.tensor([loss_fn(logits, y).double().item() * n, n, right], dtype=torch.float64)
    distributed.all_reduce_sum(total, info)
    model.train(was_training)
    loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    if with_accuracy:
        return loss, (total[2] / total[1]).item() if total[1] > 0 else float("nan")
    return loss


class EMA:
    """An exponential moving average of the trainable parameters, with the usual warm-up
    (decay_t = min(decay, (1 + t) / (10 + t)), so early steps are not dominated by the initial weights).

    ``swapped(model)`` puts the average into the model for evaluation / saving and the live
    weights back afterwards.
    """

    def __init__(self, model: torch.nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.avg = {n: p.detach().clone() for n, p in self.params.items()}
        for n, v in (state or {}).items():
            if n not in self.avg or self.avg[n].shape != v.shape:
                raise UserError(f"training state: EMA tensor {n} does not match the model (was train.ema_decay changed?)")
            self.avg[n].copy_(v)

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        names = list(self.avg)
        torch._foreach_lerp_([self.avg[n] for n in names], [self.params[n].detach() for n in names], 1.0 - d)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module):
        live = {n: p.detach().clone() for n, p in self.params.items()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for n, p in self.params.items():
            p.copy_(self.avg[n])


def fit(
    model: torch.nn.Module,
    batches: BatchSource,
    cfg: TrainConfig,
    run_dir: str | Path,
    loss_fn: LossFn = lm_loss,
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
    """
    run_dir = Path(run_dir)
    info = info or distributed.DistInfo()
    device = resolve_device(cfg.device)
    if info.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    per_step = cfg.batch_size // (info.world_size * cfg.grad_accum)
    if per_step * info.world_size * cfg.grad_accum != cfg.batch_size:
        raise UserError(
            f"train.batch_size ({cfg.batch_size}) must be divisible by processes ({info.world_size}) x train.grad_accum ({cfg.grad_accum})"
        )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    model.to(device)
    optimizer = build_optimizer(model, cfg, lr_scale)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")

    start, tokens_seen, elapsed_before = 0, 0, 0.0
    state = ckpt.load_train_state(run_dir)
    ema = None
    if state is not None:
        ckpt.load_into(model, state["model"], str(run_dir / ckpt.TRAIN_STATE))
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:  # another optimizer, or groups that changed
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{run_dir / ckpt.TRAIN_STATE}: its optimizer state does not fit train.optimizer="
                            f"{cfg.optimizer} with this model ({reason}); resume with the run's own train.* settings") from None
        meta = state["meta"]
        start, tokens_seen, elapsed_before = meta["step"], meta["tokens"], meta.get("elapsed", 0.0)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        if len(state["rng"]) == info.world_size:
            torch.set_rng_state(state["rng"][info.rank])
        else:  # a different number of processes: the data stream is the same, dropout masks are not
            torch.manual_seed(cfg.seed + 1000 * start + info.rank)
        if state["rng_cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"])
        if cfg.ema_decay:
            ema = EMA(model, cfg.ema_decay, state["ema"])
    else:
        torch.manual_seed(cfg.seed + info.rank)
    if cfg.ema_decay and ema is None:
        ema = EMA(model, cfg.ema_decay)
    # everything is checked and restored: only from here on does fit() write into the run dir
    if on_restored is not None:
        on_restored()
    if info.is_main:
        ckpt.truncate_metrics(run_dir, start)
    averaged = ema.swapped if ema is not None else lambda _m: contextlib.nullcontext()
    net: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    last_saved = start

    def save(step: int, elapsed: float) -> None:
        nonlocal last_saved
        rngs = distributed.gather_objects(torch.get_rng_state(), info)
        if info.is_main:
            meta = {"step": step, "tokens": tokens_seen, "elapsed": elapsed, "world_size": info.world_size,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            ckpt.save_train_state(run_dir, model, optimizer, meta, rngs, ema.avg if ema is not None else None)
            with averaged(model):  # the model a user loads is the average, when there is one
                ckpt.save_weights(run_dir / ckpt.WEIGHTS, model, {"step": str(step)})
        distributed.barrier(info)
        last_saved = step

    tokens_per_step = cfg.batch_size * batches.tokens_per_sample
    summary = {"steps": start, "tokens": tokens_seen, "train_loss": None, "val_loss": None, "val_ppl": None}
    bar = _progress(cfg.max_steps, start, progress and info.is_main)
    t0 = time.perf_counter()
    window_t, window_tokens = t0, 0
    net.train()
    stop = StopRequest(announce=info.is_main)
    try:
        if resumable:
            stop.install()
        for step in range(start, cfg.max_steps):
            set_lr(optimizer, lr := lr_at(step, cfg))
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                x, y = batches.train_batch(step, micro * info.world_size + info.rank, per_step)
                x, y = to_device(x, device), y.to(device, non_blocking=True)
                sync = contextlib.nullcontext()
                if info.enabled and micro < cfg.grad_accum - 1:
                    sync = net.no_sync() if hasattr(net, "no_sync") else sync
                with sync:
                    with autocast_context(device, cfg.dtype):
                        loss = loss_fn(call(net, x), y) / cfg.grad_accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            # the loss and any rank's Ctrl-C in one all-reduce: every rank stops after the same step
            reduced = distributed.all_reduce_sum(torch.stack([loss_sum.float().cpu(), torch.tensor(float(stop.signum))]), info)
            loss_val, stopping = reduced[0].item() / info.world_size, reduced[1].item() > 0
            if not math.isfinite(loss_val):
                where = f"the last good checkpoint (step {last_saved}) is kept in {run_dir}" if last_saved else "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"loss is {loss_val} at step {step + 1}: training stopped; {where}. "
                    "Try a lower --train.lr, --train.grad_clip=1.0, or check the data"
                )
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(step)
            if ema is not None:
                ema.update(step)

            done = step + 1
            tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            summary.update(steps=done, tokens=tokens_seen, train_loss=loss_val)
            now = time.perf_counter()
            tok_s = window_tokens / max(now - window_t, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
            if info.is_main and (done % cfg.log_interval == 0 or done == cfg.max_steps or done == start + 1):
                ckpt.append_metrics(run_dir, {"step": done, "split": "train", "loss": loss_val, "lr": lr,
                                              "tokens": tokens_seen, "tok_per_s": round(tok_s, 1),
                                              "elapsed": round(elapsed_before + now - t0, 3)})
                window_t, window_tokens = now, 0
            if (cfg.eval_interval and done % cfg.eval_interval == 0) or done == cfg.max_steps:
                record: dict[str, float] = {}
                with averaged(model):
                    if evaluator is not None:
                        val, record = evaluator(model, batches.eval_batches(), device, cfg.dtype, info)
                    elif val_accuracy:
                        val, record["accuracy"] = evaluate_loss(model, batches.eval_batches(), loss_fn, device,
                                                                cfg.dtype, info, with_accuracy=True)
                    else:
                        val = evaluate_loss(model, batches.eval_batches(), loss_fn, device, cfg.dtype, info)
                summary.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)), **{f"val_{k}": v for k, v in record.items()})
                if info.is_main:
                    ckpt.append_metrics(run_dir, {"step": done, "split": "val", "loss": val, "ppl": summary["val_ppl"], **record})
                    extra = "".join(f", val {k.replace('_', ' ')} {v:.4f}" for k, v in record.items()) \
                        if record else f", val ppl {summary['val_ppl']:.2f}"
                    bar.write(f"step {done}: train loss {loss_val:.4f}, val loss {val:.4f}{extra}", file=sys.stderr)
            if done % cfg.save_interval == 0 or done == cfg.max_steps or stopping:
                save(done, elapsed_before + time.perf_counter() - t0)
            if stopping and done < cfg.max_steps:
                raise stop.stopped()  # every rank, signalled or not, stops after this same step
    except KeyboardInterrupt as e:
        bar.close()
        if info.is_main and resumable:
            kept = f"the last checkpoint (step {last_saved}) is in {run_dir}" if last_saved else "no checkpoint was written yet"
            print(f"lmforge: interrupted; {kept}: continue with --resume {run_dir}", file=sys.stderr)
            e.reported = True  # the CLI then adds no second "interrupted" line
        raise
    finally:
        stop.restore()
        bar.close()
    if ema is not None:  # the caller gets the averaged model, as it was saved
        ema.copy_to(model)
    summary["seconds"] = round(elapsed_before + time.perf_counter() - t0, 3)
    if summary["val_loss"] is None and start >= cfg.max_steps:  # resumed a finished run: report its last eval
        vals = [r for r in ckpt.read_metrics(run_dir) if r.get("split") == "val"]
        if vals:
            summary.update(val_loss=vals[-1]["loss"], val_ppl=vals[-1]["ppl"])
            if "accuracy" in vals[-1]:
                summary["val_accuracy"] = vals[-1]["accuracy"]
    return summary

