"""Test-only fault injection for child processes: put this folder on PYTHONPATH (tests/test_interrupted.py).

With MS_DDPM_TEST_HOLD_BEFORE_RENAME=NAME:N, the N-th finished temporary of a file called NAME, in this
process, is not renamed: the process says so on stderr and waits to be killed. Production code has no hook;
this wraps the atomic writer's commit step from outside.
"""
import os
import sys
import time

HOLD_BEFORE_RENAME = "MS_DDPM_TEST_HOLD_BEFORE_RENAME"


def _install(target: str) -> None:
    from ms_ddpm.runtime import files

    name, _, count = target.rpartition(":")
    commit, finished = files._commit, []

    def held_commit(tmp, final):
        if final.name == name:
            finished.append(final)
            if len(finished) == int(count):
                print(f"{HOLD_BEFORE_RENAME}: holding {final}", file=sys.stderr, flush=True)
                time.sleep(3600)
        commit(tmp, final)

    files._commit = held_commit


if os.environ.get(HOLD_BEFORE_RENAME):
    _install(os.environ[HOLD_BEFORE_RENAME])
