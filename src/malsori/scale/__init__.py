"""Scale-out over Celery and Redis: workers that decode, gateways that route to them (docs/scaling.md).

Used only when ``settings.queue.broker_url`` is set; needs the ``queue`` extra
(``pip install 'malsori[queue]'``). The modules, each one job:

- ``celery_app``: the Celery app built from settings (broker, result backend, acks_late, prefetch 1).
- ``registry``: workers announce themselves in Redis (queue, device, model, capacity, heartbeat); the
  routing mode and the counters every gateway shares.
- ``routing``: which queue new work goes to, from the mode and the live workers (a pure function).
- ``codec``: windows, options and results as JSON; window audio kept in Redis by reference.
- ``gateway``: what a gateway runs: job dispatch, the remote decoder of synchronous requests, the
  recovery sweep (one gateway at a time).
- ``worker``: ``malsori worker``: the model loaded once, the tasks, heartbeat and metrics.
- ``analyze``: sentiment on the ``analyze`` queue when a worker serves it, in the gateway otherwise.
- ``live_*``: live sessions scaled out: windows decoded by workers over Redis lists
  (``live_client``, ``live_worker``, ``live_wire``) and the session state any gateway resumes from
  (``live_state``, ``live_gateway``).
"""

from __future__ import annotations

__all__ = ["require_queue_extra"]


def require_queue_extra() -> None:
    """Fail with the install command when the ``queue`` extra is missing."""
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"scale-out needs the queue extra: pip install 'malsori[queue]' ({exc.name} is missing)") from None
