"""The optional learned metrics (RadGraph F1, CheXbert F1): errors that name the package and the weights, at spec load."""

from __future__ import annotations

import sys
import types

import pytest

from medrl.rewards import compose, learned, registry


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    # Each test builds its own scorers and registrations; none leaks into another test.
    monkeypatch.setattr(learned, "_SCORERS", {})
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(compose, "_SPEC_CACHE", {})


@pytest.mark.parametrize("name, package, weights", [
    ("radgraph", "radgraph", "StanfordAIMI/RRG_scorers/radgraph-xl.tar.gz"),
    ("chexbert", "f1chexbert", "StanfordAIMI/RRG_scorers/chexbert.pth"),
])
def test_a_missing_package_fails_when_the_spec_loads(name, package, weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # not installed, even where a user has it
    spec = tmp_path / "report.yaml"
    spec.write_text(f"routes:\n  medrl/report: {{{name}: 0.5, findings: 0.5}}\n")
    with pytest.raises(ValueError) as err:  # a spec file's errors are ValueErrors that name the file
        compose.load_spec(str(spec))
    msg = str(err.value)
    assert f"reward spec {spec}" in msg and f"package {package!r}" in msg and weights in msg
    assert "medrl[learned]" in msg


def test_weights_that_cannot_load_name_the_package_and_weights(monkeypatch):
    fake = types.ModuleType("f1chexbert")

    class Offline:
        def __init__(self, **kwargs):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load chexbert.pth")

    fake.F1CheXbert = Offline
    monkeypatch.setitem(sys.modules, "f1chexbert", fake)
    with pytest.raises(learned.LearnedMetricError,
                       match=r"'f1chexbert' is installed but the weights StanfordAIMI/RRG_scorers/chexbert.pth "
                             r"cannot be loaded \(OSError: We couldn't connect"):
        compose.load_spec({"routes": {"medrl/report": {"chexbert": 1.0}}})


def test_loaded_adapters_score_through_the_package_api(monkeypatch):
    # Stand-ins with the packages' call signatures: the adapters' reading of their results.
    chex = types.ModuleType("f1chexbert")

    class Labeller:
        def __init__(self, device):
            self.device = device

        def get_label(self, report, mode="rrg"):  # 14 labels; effusion is index 9, no finding 13
            return [0] * 9 + [int("effusion" in report)] + [0] * 3 + [int("effusion" not in report)]

    chex.F1CheXbert = Labeller
    rg = types.ModuleType("radgraph")

    class F1RadGraph:
        def __init__(self, reward_level, model_type):
            assert (reward_level, model_type) == ("partial", "radgraph-xl")

        def __call__(self, hyps, refs):
            return 0.25, [0.25], [], []

    rg.F1RadGraph = F1RadGraph
    monkeypatch.setitem(sys.modules, "f1chexbert", chex)
    monkeypatch.setitem(sys.modules, "radgraph", rg)
    spec = compose.load_spec({"routes": {"medrl/report": {"chexbert": 0.5, "radgraph": 0.5}}})
    res = compose.compute_score("medrl/report", "<answer>Small effusion.</answer>", "Left effusion.", spec=spec)
    assert (res["chexbert"], res["radgraph"], res["score"]) == (1.0, 0.25, pytest.approx(0.625))
    res = compose.compute_score("medrl/report", "<answer>Normal.</answer>", "Left effusion.", spec=spec)
    assert res["chexbert/chexbert_f1"] == 0.0
    assert compose.compute_score("medrl/report", "", "Left effusion.", spec=spec)["score"] == 0.0


def test_named_only_when_a_spec_names_them():
    compose.load_spec({"routes": {"medrl/report": {"findings": 1.0}}})
    assert not learned._SCORERS and "radgraph" not in sys.modules and "f1chexbert" not in sys.modules
