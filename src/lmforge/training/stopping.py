"""Stopping a training run on a signal without losing work: SIGINT (Ctrl-C) or SIGTERM (a scheduler's,
or torchrun's agent's) becomes a request that ``fit()`` answers at the next step boundary, with a
checkpoint there. See docs/design.md for why it is a flag and not an exception."""

from __future__ import annotations

import signal
import sys
import threading
import time


class Stopped(KeyboardInterrupt):
    """``fit()`` stopped on a signal after writing a checkpoint; ``signum`` says which (exit 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM during ``fit()``: the first asks the loop to finish its step, write a
    checkpoint there and stop (``signum`` is then set); one more, over a second later, acts at once as it
    always did. Repeats within that second are the same request arriving twice: a terminal's Ctrl-C
    reaches torchrun's workers directly and again through their agent, and a scheduler's SIGTERM
    (SLURM preemption, Kubernetes) may too. Inactive off the main thread; an ignored signal (a
    background job's SIGINT) stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_WINDOW = 1.0  # seconds

    def __init__(self, announce: bool = True) -> None:
        self.signum = 0
        self.announce = announce
        self.active = threading.current_thread() is threading.main_thread()
        self._previous: dict[int, object] = {}
        self._first = 0.0

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first = signum, now
            if self.announce:
                name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                print(f"\nlmforge: {name}: stopping after this step, with a checkpoint ({name} again: stop now, "
                      "without one)", file=sys.stderr, flush=True)
            return
        if now - self._first < self.REPEAT_WINDOW:
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore()
        if callable(previous):  # Python's own SIGINT handler: KeyboardInterrupt
            previous(signum, frame)
        else:  # the default action (SIGTERM: terminate)
            signal.raise_signal(signum)

    def stopped(self) -> Stopped:
        """The exception ``fit()`` raises once its checkpoint is written; a rank that did not get the
        signal itself (its peers did) reports SIGINT."""
        return Stopped(self.signum or signal.SIGINT)

    def install(self) -> None:
        if not self.active:
            return
        for sig in self.SIGNALS:
            if signal.getsignal(sig) not in (signal.SIG_IGN, None):  # None: a handler set outside Python, kept
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the handlers that were there before :meth:`install` back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
