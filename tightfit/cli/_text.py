"""What the commands print: the front as a table, the A/A check and the recipe as lines."""

from __future__ import annotations

from typing import Any

from tightfit.keys import StudyAttr
from tightfit.objectives import OBJECTIVES, quality_of


def _console() -> Any:
    from rich.console import Console

    return Console()


def _front_table(front: Any, title: str, objectives: list[str]) -> Any:
    """The feasible Pareto front as a rich table (``tightfit search`` and ``tightfit pareto``)."""
    from rich.table import Table

    table = Table(title=f"{title}: Pareto front ({len(front)} points, feasible only)")
    for col in ["trial", *objectives, "speedup", "knobs"]:
        table.add_column(col, justify="left" if col in ("trial", "knobs") else "right")
    for _, row in front.iterrows():
        cells = [str(int(row["trial"]))]
        for o in objectives:
            quality = o in OBJECTIVES and OBJECTIVES[o].kind == "quality"
            cells.append(f"{row[o]:.4f}" if quality else f"{row[o]:.3f}")
        cells.append(f"{row['speedup']:.2f}x" if row["speedup"] is not None else "")
        cells.append(str(row["knobs"]))
        table.add_row(*cells)
    return table


def _aa_text(aa: dict[str, Any]) -> str:
    """The search's A/A check as one line; a warning when it exceeded the tolerance."""
    low, high = aa["ratio_ci"]
    text = (
        f"A/A check (the baseline against itself): ratio {aa['ratio']:.3f} [{low:.3f}, "
        f"{high:.3f}], error {aa['error']:.1%} (tolerance {aa['tolerance']:.1%})"
    )
    if aa["exceeded"]:
        return (
            f"[bold red]{text}: this machine measured noisily, so speedups within "
            f"{aa['error']:.0%} of each other are not told apart[/]"
        )
    return text


def _recipe_text(study: Any) -> str:
    """The standard recipe beside the front (measured in the same rounds), as one line."""
    from tightfit.search import recipe_metrics as metrics
    from tightfit.search._recipe import PLAIN

    recipe = study.user_attrs[StudyAttr.RECIPE]
    quality = quality_of(study.metric_names).name
    parts = [
        f"{'the plain export (unfused)' if v == PLAIN else v} {r['speedup']:.2f}x "
        f"({quality} {r[quality]:.4f}{'' if r['feasible'] else ', infeasible'})"
        for v, r in recipe.items()
    ]
    m = metrics(study)
    text = "standard recipe, measured in the same rounds as the front: " + ", ".join(parts)
    if "speedup_over_recipe" in m:
        text += (
            f"; tightfit's best feasible {m['best_feasible_speedup_joint']:.2f}x is "
            f"[bold]{m['speedup_over_recipe']:.2f}x[/] the recipe's best feasible "
            f"{m['recipe_best_speedup']:.2f}x"
        )
    elif "recipe_best_speedup" not in m:
        text += "; no variant meets the accuracy constraint"
    if "speedup_over_export" in m:
        text += f"; {m['speedup_over_export']:.2f}x the plain export"
    return text


def _ratio_text(ratio: tuple[float, float, float] | None) -> str:
    return "n/a" if ratio is None else f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]"
