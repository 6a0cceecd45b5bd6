"""Task time limits: a hard `execution_timeout` per DAG task (parse time, the largest any run may need) and a
soft deadline per stage computed from the run's own profile, variant and epochs (enforced inside the task).

Light module (no heavy imports): the DAG file reads it at parse time.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

log = logging.getLogger(__name__)

# Hard limits (Airflow execution_timeout): the `full` profile on a GPU with room to spare. A scheduled run
# must end before the next one is due (weekly), so the run as a whole gets DAGRUN_TIMEOUT.
HARD = {"prepare_data": timedelta(hours=4), "train": timedelta(hours=48), "evaluate": timedelta(hours=4),
        "gate": timedelta(hours=1), "build_report": timedelta(hours=1), "finalize": timedelta(minutes=30)}
DAGRUN_TIMEOUT = timedelta(days=6)

# Soft limits: minutes per epoch of training by profile and variant family, plus a fixed allowance.
TRAIN_MINUTES_PER_EPOCH = {"smoke": {"cnn": 5, "resnet50": 10}, "quick": {"cnn": 10, "resnet50": 30},
                           "full": {"cnn": 30, "resnet50": 240}}
TRAIN_OVERHEAD = timedelta(minutes=20)       # loading data, building the model, feature caching, saving
EVALUATE_MINUTES = {"smoke": 10, "quick": 30, "full": 120}


class StageTimeout(RuntimeError):
    """A stage ran past its deadline (retryable: a retry resumes from the last checkpoint)."""


def train_deadline(profile: str, family: str, epochs: int) -> timedelta:
    per_epoch = TRAIN_MINUTES_PER_EPOCH.get(profile, TRAIN_MINUTES_PER_EPOCH["full"])
    soft = TRAIN_OVERHEAD + timedelta(minutes=per_epoch.get(family, max(per_epoch.values())) * max(int(epochs), 1))
    return min(soft, HARD["train"])


def evaluate_deadline(profile: str) -> timedelta:
    return min(timedelta(minutes=EVALUATE_MINUTES.get(profile, EVALUATE_MINUTES["full"])), HARD["evaluate"])


@contextmanager
def deadline(limit: timedelta, what: str) -> Iterator[None]:
    """Raise StageTimeout in this thread once `limit` has passed (checked between Python bytecodes, so Keras's
    fit loop stops at the next batch). Does not use SIGALRM, which Airflow may use itself."""
    target = threading.get_ident()
    fired = threading.Event()

    def fire():
        fired.set()
        log.error("%s ran past its deadline of %s; stopping it (the task will be retried)", what, limit)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(StageTimeout))

    timer = threading.Timer(limit.total_seconds(), fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except StageTimeout:
        raise StageTimeout(f"{what} ran past its deadline of {limit}; raise the profile's budget in "
                           f"tl_tasks/stages/timeouts.py if this run legitimately needs longer") from None
    finally:
        timer.cancel()
        if fired.is_set():   # fired between the last bytecode and cancel: clear a pending async exception
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)
