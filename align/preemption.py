"""Stop signals in every phase of a run: save what can be resumed, say what was kept, exit with a status that tells
the scheduler what to do.

    SIGUSR1  Slurm's `--signal=USR1@<seconds>`, before the time limit: stop, then requeue the job (exit 0); outside
             Slurm exit 75 (EX_TEMPFAIL, "run again with resume=auto").
    SIGTERM  preemption, scancel, a launcher shutting down: stop, exit 75 (a preempting Slurm requeues by itself).
    SIGINT   Ctrl-C: stop, exit 130; a second Ctrl-C stops at once (KeyboardInterrupt, still exit 130, one line).

`STOP`, the process's one `StopRequest`, is installed for the whole run (`align.train.run`). Its handler only records
the signal and the phase it arrived in; the run acts on it where stopping keeps work: the `Preemption` callback at
the end of an optimizer step (a checkpoint, then the training loop ends), and `STOP.check` at the boundaries
between phases (after the warm start, after each reference is scored, after the model is loaded, after training and
the final evaluation). A phase without a boundary inside (loading one model, scoring one reference) finishes first.
Each stop ends with one line: `[align] stopped by SIGTERM during <phase>; kept: <what>; <what next>`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from contextlib import contextmanager

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from transformers import TrainerCallback

log = logging.getLogger("align")

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# Exit status of a run stopped by SIGUSR1 / SIGTERM (outside a Slurm requeue): EX_TEMPFAIL, "try again".
EXIT_PREEMPTED = 75
# Exit status of a run stopped by Ctrl-C: what a shell reports for a process that SIGINT ended (128 + 2).
EXIT_INTERRUPTED = 130


class Stopped(Exception):
    """A stop signal ended the run at a phase boundary, after its work was kept."""

    def __init__(self, signal_name: str, phase: str, kept: str, requeue: bool, interrupted: bool):
        super().__init__(f"stopped by {signal_name} during {phase}; kept: {kept}")
        self.phase, self.kept, self.requeue, self.interrupted = phase, kept, requeue, interrupted


class StopRequest:
    """The record of a stop signal for one run in this process (see the module docstring for what each means)."""

    def __init__(self):
        self.signum = 0  # the first stop signal received, 0 for none
        self.phase = "start-up"  # what the run is doing now, set by the run flow
        self.during = ""  # `phase` when the signal arrived

    @contextmanager
    def installed(self):
        """Record stop signals for the duration (a fresh record each time). Python delivers signals to the main
        thread only: elsewhere the run goes on without handlers, with a warning. On exit, handlers that are still
        this one's are restored (a stop path may have replaced one on purpose, e.g. to ignore Slurm's SIGTERM)."""
        self.signum, self.phase, self.during = 0, "start-up", ""
        if threading.current_thread() is not threading.main_thread():
            log.warning("the run is outside the main thread: SIGUSR1 / SIGTERM / SIGINT will not save and stop it")
            yield self
            return
        # A shell starts background jobs with SIGINT ignored, so that a Ctrl-C in the terminal leaves them alone:
        # keep it that way.
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS
                    if not (s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                if signal.getsignal(s) == self._handle:
                    signal.signal(s, handler)

    def _handle(self, signum, frame):
        # Runs between two bytecodes of whatever the main thread is doing: record, never print through Python's
        # buffered streams (that may be mid-write); a second Ctrl-C is the one way to stop at once.
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt
        if self.signum:
            return
        self.signum, self.during = signum, self.phase
        if signum == signal.SIGINT:
            os.write(2, b"\n[align] Ctrl-C: stopping at the next point where work can be kept "
                        b"(Ctrl-C again to stop at once)\n")

    def agreed(self) -> tuple[bool, bool, bool]:
        """(stop requested, a requeue asked for, interrupted by Ctrl-C), each true if it is on any rank: one
        all-reduce (max) when several processes run, so all of them stop at the same point. Every rank must call
        it at the same points."""
        flags = torch.tensor([float(bool(self.signum)), float(self.signum == signal.SIGUSR1),
                              float(self.signum == signal.SIGINT)])
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            flags = reduce(flags.to(PartialState().device), reduction="max").cpu()
        return tuple(bool(v) for v in flags.tolist())

    def check(self, kept: Callable[[], str]) -> None:
        """A phase boundary: raise `Stopped` if a stop signal reached any rank. `kept()`, called only then, says
        what was kept for a resume to continue from."""
        requested, requeue, interrupted = self.agreed()
        if requested:
            name = signal.Signals(self.signum).name if self.signum else "a signal on another rank"
            raise Stopped(name, self.during or self.phase, kept(), requeue, interrupted)


STOP = StopRequest()


class Preemption(TrainerCallback):
    """Ends training at an optimizer-step boundary once `STOP` holds a signal on any rank: the step is saved as a
    checkpoint, then the loop stops. Register it before callbacks that do expensive work at step ends, which skip
    when `control.should_training_stop` is set.

    Each step ends with an all-reduce of the request (ranks may receive the signal at different steps), so all
    ranks stop at the same step. A trainer whose state is only consistent every `step_multiple` optimizer steps
    (GRPO reusing one generation over several steps) stops at the next such step. A request on the last step still
    saves a checkpoint there. After the last step, the Trainer's `on_train_end` work (align's final held-out
    evaluation) runs as the phase `end_phase`.
    """

    def __init__(self, step_multiple: int = 1, end_phase: str = "the final evaluation", request: StopRequest = STOP):
        self.step_multiple, self.end_phase, self.request = step_multiple, end_phase, request

    def on_step_end(self, args, state, control, **kwargs):
        if not self.request.agreed()[0]:
            return
        if state.global_step % self.step_multiple and state.global_step < state.max_steps:
            return  # inside a generation cycle: its buffered batch is not in a checkpoint
        control.should_save = True
        control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            self.request.phase = self.end_phase


def after_stop(requeue: bool, interrupted: bool) -> tuple[int, str]:
    """(exit status, what happens next) once a stopped run has kept its work. Ctrl-C: 130. A requeue asked for
    (SIGUSR1) under Slurm: `scontrol requeue` this job, which restarts with the same command, and 0. Otherwise 75."""
    again = "run again with resume=auto to continue"
    if interrupted:
        return EXIT_INTERRUPTED, again
    job = os.environ.get("SLURM_JOB_ID")
    if not (requeue and job):
        return EXIT_PREEMPTED, again
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        problem = result.stderr.strip() if result.returncode else None
    except OSError as err:  # no scontrol on this node
        problem = str(err)
    if problem:
        return EXIT_PREEMPTED, f"scontrol requeue {job} failed ({problem}); resubmit the job with resume=auto"
    return 0, f"Slurm job {job} requeued; it continues from there with resume=auto"
