"""Test-only launcher for the signal tests: `python -m tests.resume.stop_hooks MODULE:FUNCTION CALL -- <align.train
arguments>` runs align.train with the CALL-th call of MODULE.FUNCTION held until a stop signal has arrived.

Some phases (loading a tiny model, the final evaluation of 8 prompts) are over in well under a second and print
nothing while they run, so a test cannot aim a signal at them from outside. The hold makes the phase observable (a
`[test] holding` line) and lasts until the process has received the signal; then the real function runs, so the
run itself goes through its unchanged code.
"""

from __future__ import annotations

import importlib
import sys
import time


def hold_call(target: str, call: int) -> None:
    """Replace MODULE:FUNCTION by a wrapper whose `call`-th call waits (at most 5 minutes) for a stop signal."""
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    real, calls = getattr(module, name), []

    def held(*args, **kwargs):
        from align.preemption import STOP

        calls.append(1)
        if len(calls) == call:
            print(f"[test] holding {target}", flush=True)
            deadline = time.monotonic() + 300
            while not STOP.signum and time.monotonic() < deadline:
                time.sleep(0.01)
        return real(*args, **kwargs)

    setattr(module, name, held)


if __name__ == "__main__":
    target, call, separator, *arguments = sys.argv[1:]
    assert separator == "--", __doc__
    hold_call(target, int(call))
    from align.train import main

    sys.argv = ["align-train", *arguments]
    main()
