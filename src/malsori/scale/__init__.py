"""Scale-out: what runs when a broker (Redis) is configured, and nothing when it is not.

One process with no configuration stays the default; these modules are used only when
``settings.queue.broker_url`` is set (docs/scaling.md).
"""
