"""Shell assets run through dagster-slurm's ComputeResource (Bash launcher)."""

import dagster as dg
from dagster_slurm import ComputeResource, SlurmRunConfig

WORKLOAD = "../../../hpc_workload/shell"


@dg.asset
def process_data(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    config: SlurmRunConfig,
):
    """The same code in every deployment (local, Slurm, a Slurm session)."""
    completed = compute.run(
        context=context,
        payload_path=dg.file_relative_path(__file__, f"{WORKLOAD}/process.py"),
        config=config,
        extra_env={"INPUT_DATA": "/data/in", "OUTPUT_DATA": "/data/out"},
        extras={"foo": "bar", "config": {"batch_size": 100}},
    )
    yield from completed.get_results()
    yield dg.AssetObservation(
        asset_key=context.asset_key,
        metadata={
            "deployment_mode": str(compute.mode),
            "custom_messages_count": len(completed.get_custom_messages()),
        },
    )


@dg.asset(deps=[process_data])
def aggregate_results(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    config: SlurmRunConfig,
):
    return compute.run(
        context=context,
        payload_path=dg.file_relative_path(__file__, f"{WORKLOAD}/aggregate.py"),
        config=config,
        extra_env={"PROCESSED_DATA": "/data/processed"},
    ).get_results()


@dg.multi_asset(specs=[dg.AssetSpec(key=["myprefix", "orders"]), dg.AssetSpec("users")])
def subprocess_asset(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    config: SlurmRunConfig,
):
    """One payload materializes two assets."""
    return compute.run(
        context=context,
        payload_path=dg.file_relative_path(__file__, f"{WORKLOAD}/multi_asset_example.py"),
        config=config,
        extras={"foo": "bar"},
        extra_env={"MY_ENV_VAR_IN_SUBPROCESS": "my_value"},
    ).get_results()


@dg.asset_check(asset=dg.AssetKey(["myprefix", "orders"]), blocking=True)
def no_empty_order_check(
    context: dg.AssetCheckExecutionContext,
    compute: ComputeResource,
) -> dg.AssetCheckResult:
    return compute.run(
        context=context,
        payload_path=dg.file_relative_path(__file__, f"{WORKLOAD}/multi_asset_example_checking.py"),
        extras={"foo": "bar"},
        extra_env={"MY_ENV_VAR_IN_SUBPROCESS": "my_value"},
    ).get_asset_check_result()
