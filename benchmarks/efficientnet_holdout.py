"""Does EfficientNet-Lite0's recovery carry over to photos it was not fitted on?
`python benchmarks/efficientnet_holdout.py [--ratios 0.125,0.25,0.375]
[--workdir WORKDIR/efficientnet-lite0 --trials 24,15]`.

The example (examples/efficientnet-lite0.yaml) calibrates and validates on different random
crops of the same 14 photos. Here the photos are split in two halves (even and odd positions
in :func:`tightfit.examples.efficientnet.photos`); every MBConv expansion is pruned by the same
ratio (and, with ``--workdir``, each named trial's candidate of a search of the example is
applied) with the example's settings (``model.ignore``, ``space.prune.importance``,
``recovery``), calibrated once on the crops of the half it is validated on and once on the
crops of the other half, and scored by top-1 agreement on the validation half's confident
crops; a third score calibrates on the other half without reconstruction. Torch outputs, no
latency. Writes benchmarks/results/efficientnet_holdout.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._fingerprint import fingerprint  # noqa: E402
from tightfit.config import SearchConfig, SpaceSpec, load_config  # noqa: E402
from tightfit.examples import efficientnet  # noqa: E402
from tightfit.hardware_profiles import get_profile  # noqa: E402
from tightfit.kernels._base import SurgeryContext  # noqa: E402
from tightfit.kernels._pipeline import apply  # noqa: E402
from tightfit.kernels.pruning import StructuredPruning  # noqa: E402
from tightfit.spaces import Candidate  # noqa: E402
from tightfit.studies import load_study  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "examples" / "efficientnet-lite0.yaml"


def agreement(
    config: SearchConfig,
    model: torch.nn.Module,
    calibration: np.ndarray,
    validation: list[efficientnet.PhotoCrops],
    plan: float | Candidate,
    reconstruct: bool = True,
) -> tuple[float, dict[str, float]]:
    """Top-1 agreement on ``validation``, in all and by photo, after ``plan`` (a candidate, or a
    ratio for every expansion) with the example's settings, calibrated on ``calibration``
    (without ``reconstruct``: the calibration only ranks the channels)."""
    spec = config.recovery.reconstruct.model_copy(update={"enabled": reconstruct})
    ctx = SurgeryContext(
        example_inputs=(torch.from_numpy(calibration[:2]),),
        input_names=("image",),
        calibration={"image": calibration},
        profile=get_profile("cpu-ort"),
        classifier="_fc",
        ignore=tuple(config.model.ignore),
        prune_importance=config.space.prune.importance,
        recovery=config.recovery.model_copy(update={"reconstruct": spec}),
    )
    if not isinstance(plan, Candidate):
        units = StructuredPruning().units(model, ctx, SpaceSpec(prune={"ratios": [0.0, plan]}))
        plan = Candidate(base_model="x", prune={u.path: plan for u in units})
    pruned, _ = apply(model, plan, ctx)
    images = torch.from_numpy(np.concatenate([p.validation for p in validation]))
    with torch.no_grad():
        out = torch.cat([pruned(images[i : i + 128]) for i in range(0, len(images), 128)]).numpy()
    match = out.argmax(axis=1) == np.concatenate([p.targets[:, 0] for p in validation])
    ends = np.cumsum([len(p.validation) for p in validation])
    by_photo = {
        p.name: float(np.mean(match[end - len(p.validation) : end]))
        for p, end in zip(validation, ends, strict=True)
        if len(p.validation)
    }
    return float(np.mean(match)), by_photo


def trial_candidates(
    config: SearchConfig, workdir: Path, numbers: list[int]
) -> dict[str, Candidate]:
    """The candidates of the named trials of the example's search in ``workdir``, labelled with
    their knobs and speedup."""
    trials = load_study(config, config.profiles[0], workdir).trials
    out = {}
    for n in numbers:
        attrs = trials[n].user_attrs
        speedup = f", {attrs['speedup']:.2f}x" if "speedup" in attrs else ""
        out[f"trial {n} ({attrs['summary']}{speedup})"] = Candidate.from_json(attrs["candidate"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.125,0.25,0.375")
    parser.add_argument("--workdir", type=Path, help="work directory of a search of the example")
    parser.add_argument("--trials", default="", help="trial numbers of that search")
    parser.add_argument("--cache-dir", type=Path, default=Path(".tightfit/cache"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(CONFIG)
    model = efficientnet.pretrained_lite0()
    photos = efficientnet.crops_by_photo(cache_dir=args.cache_dir)
    halves = {"even": photos[0::2], "odd": photos[1::2]}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    plans: dict[str, float | Candidate] = {
        f"every expansion by {r}": float(r) for r in args.ratios.split(",") if r
    }
    if args.workdir:
        numbers = [int(n) for n in args.trials.split(",") if n]
        plans |= trial_candidates(config, args.workdir, numbers)
    for label, plan in plans.items():
        for name, validation in halves.items():
            other = halves["odd" if name == "even" else "even"]
            row = {
                "pruning": label,
                "validation_photos": [p.name for p in validation if len(p.validation)],
                "validation_crops": int(sum(len(p.validation) for p in validation)),
            }
            for key, source in (("same_photos", validation), ("other_photos", other)):
                calibration = np.concatenate([p.calibration for p in source])
                row[key], row[f"{key}_by_photo"] = agreement(
                    config, model, calibration, validation, plan
                )
                row[f"{key}_calibration_crops"] = len(calibration)
            other_calibration = np.concatenate([p.calibration for p in other])
            row["other_photos_no_reconstruct"], _ = agreement(
                config, model, other_calibration, validation, plan, reconstruct=False
            )
            print(row, flush=True)
            rows.append(row)
    m = fingerprint()
    result = {
        "machine": m,
        "config": str(CONFIG.relative_to(ROOT)),
        "wall_s": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "efficientnet_holdout.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# EfficientNet-Lite0: recovery on held-out photos",
        "",
        f"Command: `python benchmarks/efficientnet_holdout.py {' '.join(sys.argv[1:])}` "
        f"({result['wall_s']:.0f} s). Settings of `{result['config']}`: every MBConv expansion "
        "pruned by the ratio, or a trial's candidate, then reconstruction; top-1 agreement with "
        "the uncompressed model on the validation half's confident crops. Last column: "
        "calibrated on the other photos, reconstruction off (calibration only ranks channels).",
        "",
        "| pruning | validated on | crops | calibrated on the same photos "
        "| on the other photos | other photos, no reconstruction |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['pruning']} | {', '.join(r['validation_photos'])} | {r['validation_crops']} "
            f"| {r['same_photos']:.1%} ({r['same_photos_calibration_crops']} crops) "
            f"| {r['other_photos']:.1%} ({r['other_photos_calibration_crops']} crops) "
            f"| {r['other_photos_no_reconstruct']:.1%} |"
        )
    shown = [p for p in photos if len(p.validation) >= 5]
    header = " | ".join(f"{p.name} ({len(p.validation)})" for p in shown)
    lines += [
        "",
        "Calibrated on the other photos, by validation photo (those with 5 or more confident "
        "crops; their number in brackets):",
        "",
        f"| pruning | {header} |",
        "| --- |" + " ---: |" * len(shown),
    ]
    for label in plans:
        by_photo: dict[str, float] = {}
        for r in rows:
            if r["pruning"] == label:
                by_photo |= r["other_photos_by_photo"]
        lines.append(f"| {label} | " + " | ".join(f"{by_photo[p.name]:.0%}" for p in shown) + " |")
    machine = f"{m['cpu']} ({m['cpu_count']} cores, {m['cpu_flags']}), torch {m['torch']}"
    lines += ["", f"Machine: {machine}.", ""]
    (RESULTS / "efficientnet_holdout.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
