"""`<name>/shadow_validation`: retrieval quality of the space against the one in use today.

Thin: the evaluation is `embedding_assets.lifecycle.shadow`, the chart `shadow_chart`. The
`no_regression` check is evaluated in the same step as the materialization, so it always
describes the latest result; it is WARN (non-blocking): whether a space that retrieves worse
may still be activated is the operator's call, made with these numbers in front of them.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ..config import ProjectConfig, SpaceConfig, load_config
from ..lifecycle.shadow import ShadowReport, run_shadow_validation
from ..lifecycle.shadow_chart import chart_markdown, metric_label, render_chart, write_chart
from .keys import embeddings_key
from .resources import EmbeddingModelsResource, PostgresResource

NO_REGRESSION = "no_regression"


def shadow_validation_key(space: SpaceConfig) -> AssetKey:
    return AssetKey([space.name, "shadow_validation"])


def report_markdown(report: ShadowReport) -> str:
    """Metrics old vs new as a markdown table (ids and numbers only, never text)."""
    lines = [
        f"| metric | old: {report.old_space} | new: {report.new_space} | new - old |",
        "|---|---:|---:|---:|",
    ]
    for name, (old, new) in report.metrics.items():
        lines.append(
            f"| {metric_label(name, report.k)} | {old:.3f} | {new:.3f} | {new - old:+.3f} |"
        )
    lines.append(f"| overlap@{report.k} | {report.overlap_at_k:.3f} | | |")
    return "\n".join(lines)


def report_metadata(report: ShadowReport) -> dict[str, object]:
    numbers: dict[str, object] = {}
    for name, (old, new) in report.metrics.items():
        numbers[f"old_{name}"] = round(old, 4)
        numbers[f"new_{name}"] = round(new, 4)
    return {
        "summary": MetadataValue.md(report_markdown(report)),
        **numbers,
        "overlap_at_k": round(report.overlap_at_k, 4),
        "mode": report.mode,
        "primary_metric": report.primary,
        "queries": report.queries,
        "queries_skipped": report.queries_skipped,
        "relevant_unresolved": report.relevant_unresolved,
        "k": report.k,
        "old_space": report.old_space,
        "new_space": report.new_space,
        "baseline": report.baseline_reason,
        "models": f"old: {report.old_model}; new: {report.new_model}",
        "old_vectors": report.old_vectors,
        "new_vectors": report.new_vectors,
        "seconds": round(report.seconds, 2),
    }


def check_result(report: ShadowReport) -> AssetCheckResult:
    old, new = report.metrics[report.primary]
    return AssetCheckResult(
        check_name=NO_REGRESSION,
        passed=report.passed,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{metric_label(report.primary, report.k)}: {report.new_space} {new:.3f} vs "
            f"{report.old_space} {old:.3f} (allowed drop {report.max_regression})"
        ),
        metadata={
            "primary_metric": report.primary,
            "old_value": round(old, 4),
            "new_value": round(new, 4),
            "regression": round(report.regression, 4),
            "max_regression": report.max_regression,
            # > 0: room left before the check fails; < 0: by how much it failed
            "margin": round(report.max_regression - report.regression, 4),
            "old_space": report.old_space,
            "new_space": report.new_space,
            "queries": report.queries,
        },
    )


def build_shadow_assets(
    space: SpaceConfig, project: ProjectConfig | None = None
) -> list[AssetsDefinition]:
    """`project` supplies the baseline space's model; default: the config file, at run time."""
    key = shadow_validation_key(space)
    settings = space.shadow
    source = (
        f"the labelled queries in {settings.queries_file}"
        if settings.queries_file
        else f"{settings.sample_size} sampled rows (self-retrieval)"
    )

    @asset(
        key=key,
        deps=[embeddings_key(space)],
        group_name=space.name,
        kinds={"postgres", "pgvector"},
        check_specs=[
            AssetCheckSpec(
                NO_REGRESSION,
                asset=key,
                blocking=False,
                description=(
                    f"WARN when {space.name!r} retrieves worse than the space it is compared "
                    f"with by more than {settings.max_regression} (recall@k with labels, else "
                    "hit@k)."
                ),
            )
        ],
        description=(
            f"Shadow validation: top-{settings.k} retrieval of {space.name!r} against "
            f"{settings.compare_to or 'the active space of ' + space.table} on {source}; each "
            "query embedded by each space's own model and searched in its own column."
        ),
    )
    def shadow_validation(
        context: AssetExecutionContext,
        postgres: PostgresResource,
        embedding_models: EmbeddingModelsResource,
    ) -> MaterializeResult:
        config = project or load_config()
        with postgres.connect() as conn:
            report = run_shadow_validation(conn, config, space, embedding_models.provider)
        png = render_chart(report)
        path = write_chart(png, settings.report_path(), space.name)
        old, new = report.metrics[report.primary]
        context.log.info(
            f"{report.queries} queries, {metric_label(report.primary, report.k)}: "
            f"{report.old_space} {old:.3f} -> {report.new_space} {new:.3f}"
        )
        return MaterializeResult(
            metadata={
                **report_metadata(report),
                "chart": MetadataValue.md(chart_markdown(png)),
                "chart_path": MetadataValue.path(str(path)),
            },
            check_results=[check_result(report)],
        )

    return [shadow_validation]
