"""Where new work goes: the original design's proxy, as one pure function over the live workers.

=====  ======================  =====================  =========================================
mode   a GPU worker is alive   a CPU worker is alive  work goes to
=====  ======================  =====================  =========================================
auto   yes                     either                 the GPU queue
auto   no                      yes                    the CPU queue
auto   no                      no                     nowhere: NoWorkerError (503, retry later)
gpu    yes                     either                 the GPU queue
gpu    no                      either                 nowhere: NoWorkerError naming the mode
cpu    either                  yes                    the CPU queue
cpu    either                  no                     nowhere: NoWorkerError
=====  ======================  =====================  =========================================

A GPU worker is a live worker that serves the GPU queue on a device other than the CPU; a CPU worker
is a live worker that serves the CPU queue. A task that fails on a GPU worker is sent to the CPU queue
by that worker (``worker.py``), not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..server.services import NotReadyError
from .registry import WorkerInfo

__all__ = ["NoWorkerError", "Queues", "choose_queue", "gpu_workers", "cpu_workers", "MODES"]

MODES = ("auto", "cpu", "gpu")


class NoWorkerError(NotReadyError):
    """No live worker can take this work now (HTTP 503 with Retry-After, close code 1013)."""

    code = "no_worker"


@dataclass(frozen=True)
class Queues:
    cpu: str = "stt.cpu"
    gpu: str = "stt.gpu"


def gpu_workers(workers: Iterable[WorkerInfo], queues: Queues) -> list[WorkerInfo]:
    return [w for w in workers if queues.gpu in w.queues and w.is_gpu]


def cpu_workers(workers: Iterable[WorkerInfo], queues: Queues) -> list[WorkerInfo]:
    return [w for w in workers if queues.cpu in w.queues]


def choose_queue(mode: str, workers: Iterable[WorkerInfo], queues: Queues) -> str:
    """The queue for new work under ``mode`` (see the table above)."""
    workers = list(workers)
    has_gpu = bool(gpu_workers(workers, queues))
    has_cpu = bool(cpu_workers(workers, queues))
    if mode == "gpu":
        if has_gpu:
            return queues.gpu
        raise NoWorkerError("the routing mode is gpu and no GPU worker is alive; set the mode to auto or cpu", retry_after=5.0)
    if mode == "auto" and has_gpu:
        return queues.gpu
    if has_cpu:
        return queues.cpu
    raise NoWorkerError(f"no worker is alive on {queues.cpu}" + ("" if mode == "cpu" else f" or {queues.gpu}"), retry_after=5.0)
