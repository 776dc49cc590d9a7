"""Pre-screening decisions: dominance over the measured front, with the optimism margin."""

from __future__ import annotations

from tightfit.objectives import dominates


def test_dominance_per_objective_direction() -> None:
    front = {"accuracy": 0.99, "latency_ms": 1.0, "size_mb": 2.0}
    assert dominates(front, {"accuracy": 0.98, "latency_ms": 1.0, "size_mb": 2.0})
    assert dominates(front, {"accuracy": 0.99, "latency_ms": 1.2, "size_mb": 2.0})
    assert not dominates(front, dict(front))  # equal: not dominated
    assert not dominates(front, {"accuracy": 0.995, "latency_ms": 5.0, "size_mb": 9.0})
    assert not dominates(front, {"accuracy": 0.98, "latency_ms": 0.9, "size_mb": 2.0})
    # only the objectives both have count (a search without size_mb)
    assert dominates({"accuracy": 0.99, "latency_ms": 1.0}, {**front, "latency_ms": 1.1})


def test_margin_makes_skipping_conservative(tmp_path) -> None:
    import optuna

    from tightfit.config import LatencySpec
    from tightfit.evaluators.predictor import FEATURES
    from tightfit.hardware_profiles import get_profile
    from tightfit.search._reuse import LatencyReuse
    from tightfit.workspace import StageOne

    study = optuna.create_study(directions=["maximize", "minimize"])
    spec = LatencySpec(cache=False, prescreen_margin=0.2, prescreen_after=3)
    reuse = LatencyReuse(spec, get_profile("cpu-ort"), _tiny_onnx(), 1.0, study)
    one = StageOne(accuracy=0.98, size_mb=2.0, onnx=b"", seconds=0.0)
    front = [{"accuracy": 0.99, "latency_ms": 1.0, "size_mb": 2.0}]
    # fewer than prescreen_after measurements: the predictor may predict, but skips nothing
    assert reuse.worth_measuring(one, predicted_ms=10.0, front=front, quality="accuracy")
    for _ in range(3):
        reuse.by_graph.add(dict.fromkeys(FEATURES, 1.0), 1.0)
    assert not reuse.worth_measuring(
        one, predicted_ms=1.5, front=front, quality="accuracy"
    )  # 1.2 > 1.0: skip
    assert reuse.worth_measuring(
        one, predicted_ms=1.2, front=front, quality="accuracy"
    )  # 0.96 < 1.0: measure
    off = LatencyReuse(
        spec.model_copy(update={"prescreen": False}),
        get_profile("cpu-ort"),
        _tiny_onnx(),
        1.0,
        study,
    )
    assert off.worth_measuring(one, predicted_ms=10.0, front=front, quality="accuracy")


def _tiny_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return onnx.helper.make_model(graph).SerializeToString()


def test_layer_table_predicts_only_what_the_target_cpu_timed() -> None:
    import optuna

    from tightfit.config import LatencySpec
    from tightfit.hardware_profiles import get_profile
    from tightfit.search._reuse import LatencyReuse
    from tightfit.workspace import StageOne

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("environment", {"cpu": "CPU A", "cpu_flags": "avx2"})
    reuse = LatencyReuse(LatencySpec(cache=False), get_profile("cpu-ort"), _tiny_onnx(), 1.0, study)
    feats = {"layer_ms": 2.0}

    def one(host: str) -> StageOne:
        return StageOne(accuracy=1, size_mb=1, onnx=b"", seconds=0, features=feats, layer_host=host)

    assert reuse.predictor_for(one("CPU A|avx2"))[0] == "layers"
    assert reuse.predictor_for(one("CPU B|avx2"))[0] == "graph"  # timed on another CPU
    for latency in (1.0, 1.0, 1.0):
        reuse.record("k", one("CPU A|avx2"), _latency(latency), measured=False)
    assert reuse.predict(one("CPU A|avx2")) == 1.0  # 0.5 x the layer sum
    assert reuse.predict(one("CPU B|avx2")) is None  # the graph predictor had no features
    # the baseline's measurement is stored but not learned from
    reuse.record("k", one("CPU A|avx2"), _latency(4.0), measured=False, baseline=True)
    assert len(reuse.by_layers) == 3 and reuse.predict(one("CPU A|avx2")) == 1.0


def test_predictors_learn_from_compressed_candidates_only() -> None:
    """A resumed search refits on its trials, the baseline's left out."""
    import optuna

    from tightfit.config import LatencySpec
    from tightfit.evaluators.predictor import FEATURES
    from tightfit.hardware_profiles import get_profile
    from tightfit.search._reuse import LatencyReuse

    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, baseline in enumerate([True, False, False, False]):
        study.add_trial(
            optuna.trial.create_trial(
                values=[1.0, 1.0 + i],
                user_attrs={
                    "is_baseline": baseline,
                    "features": {f: 1.0 + i for f in FEATURES},
                    "latency": {"latency_ms": 1.0 + i},
                },
            )
        )
    reuse = LatencyReuse(LatencySpec(cache=False), get_profile("cpu-ort"), _tiny_onnx(), 1.0, study)
    assert reuse.by_graph.y == [2.0, 3.0, 4.0]


def _latency(ms: float):
    from tightfit.evaluators.latency import LatencyResult

    return LatencyResult.model_validate(
        {
            "latency_ms": ms,
            "ratio": ms,
            "ratio_ci": (ms, ms),
            "median_ms": ms,
            "baseline_median_ms": 1.0,
            "p90_ms": ms,
            "rounds": 1,
            "iters_per_block": 1,
            "speedup": 1 / ms,
        }
    )
