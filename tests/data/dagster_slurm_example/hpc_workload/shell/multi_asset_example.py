"""Payload: one script, two assets (orders and users)."""

import os

from dagster_pipes import PipesContext, open_dagster_pipes


def main() -> None:
    context = PipesContext.get()
    context.log.info(f"Hello from pipes, extras {context.extras}")
    orders = [{"order_id": 1, "item_id": 432}, {"order_id": 2, "item_id": 878}]
    items = len({o["item_id"] for o in orders})
    context.report_asset_materialization(
        asset_key="myprefix/orders",
        metadata={"total_orders": len(orders), "env": os.environ["MY_ENV_VAR_IN_SUBPROCESS"]},
    )
    context.report_asset_materialization(asset_key="users", metadata={"total_users": items})


if __name__ == "__main__":
    with open_dagster_pipes():
        main()
