"""Placeholder until its command lands."""


def register(app) -> None:
    return None
