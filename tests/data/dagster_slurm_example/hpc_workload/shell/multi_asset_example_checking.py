"""Payload of the blocking asset check on myprefix/orders."""

from dagster_pipes import PipesContext, open_dagster_pipes


def main() -> None:
    context = PipesContext.get()
    context.log.info(f"Checking orders with extras {context.extras}")
    orders = [{"order_id": 1, "item_id": 432}, {"order_id": 2, "item_id": 878}]
    context.report_asset_check(
        asset_key="myprefix/orders",
        check_name="no_empty_order_check",
        passed=all(o["item_id"] is not None for o in orders),
        severity="WARN",
    )


if __name__ == "__main__":
    with open_dagster_pipes():
        main()
