"""Payload that fails: the asset must fail with this traceback (explode_here, ZeroDivisionError)."""

from dagster_pipes import open_dagster_pipes


def explode_here(x: int) -> float:
    return x / 0


with open_dagster_pipes() as pipes:
    pipes.log.info("about to fail")
    explode_here(7)
