"""The Celery app, built from settings (never at import time), and the names of its tasks.

Tasks are sent by name (``send_task``), so a gateway needs none of the worker's code; the worker
registers their bodies (``worker.py``). Why these settings:

- ``task_acks_late`` with prefetch 1: a task is acknowledged when it has finished, so a worker that
  dies mid-task leaves it to be delivered again (the Redis transport redelivers an unacknowledged task
  after ``visibility_timeout``; the gateways' sweep gives a dead worker's job to another worker as soon
  as its heartbeat expires). Every task is idempotent: the job row's state decides whether it runs.
- ``broker_connection_max_retries=None``: a worker outlives a Redis restart, reconnecting forever.
- JSON only: arguments are ids and small dicts (audio travels by reference, ``codec.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

    from ..config import QueueSettings

__all__ = ["make_celery", "JOB_TASK", "WINDOWS_TASK", "ANALYZE_TASK"]

JOB_TASK = "malsori.job"
"""Run a file job: argument ``job_id`` (the audio is the job's upload in shared storage)."""
WINDOWS_TASK = "malsori.windows"
"""Decode windows of a synchronous request: audio references, options, and the Redis list to reply on."""
ANALYZE_TASK = "malsori.analyze"
"""Sentiment of texts (``texts``, ``language``) on the ``analyze`` queue; returns ``[{"label", "score"}, ...]``
through the result backend."""


def make_celery(queue: QueueSettings, *, name: str = "malsori") -> Celery:
    from celery import Celery

    app = Celery(name, broker=queue.broker(), backend=queue.backend())
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue.cpu_queue,
        task_track_started=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={"visibility_timeout": queue.visibility_timeout_s},
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
