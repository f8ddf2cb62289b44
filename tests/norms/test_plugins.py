"""A normalizer registered through the registry alone is picked up everywhere: the
generated test tables, ``norm_summary``, the report figures, ``create_model``, the config
loader and a training run."""

from __future__ import annotations

import pytest
import torch
import yaml

import normlab
from normlab.norms import (
    FigureSpec,
    InstanceNorm,
    NormConfigError,
    canonical_norm,
    norm_summary,
    registered_norm,
    unregister_norm,
    validate_norm_kwargs,
)
from normlab.norms.base import Coefficients, Params
from normlab.report import draw_norm_figure, learned_figures
from normlab.train import load_config, train
from tests.norms.tables import (
    batch_pooling_norms,
    instance_statistics_norms,
    norm_variants,
    torch_twins,
)
from tests.train.tiny import tiny_builders

C = 4


class ScaledInstanceNorm(InstanceNorm):
    """IN with its normalized output scaled by a fixed ``scale`` (a toy normalizer)."""

    def __init__(self, num_features: int, *, scale: float = 0.5, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.scale = float(scale)

    def normalizer(self, mean, var, params: Params, count: int) -> Coefficients:
        s, t = InstanceNorm.normalizer(self, mean, var, params, count)
        return self.scale * s, self.scale * t


class ScaledInstanceNorm1d(ScaledInstanceNorm):
    dim = 1


class ScaledInstanceNorm2d(ScaledInstanceNorm):
    dim = 2


class ScaledInstanceNorm3d(ScaledInstanceNorm):
    dim = 3


def _summary(layer: ScaledInstanceNorm) -> dict:
    return {"scale": layer.scale, "scale_values": [layer.scale] * layer.num_features}


FIGURE = FigureSpec(
    kind="boxes",
    file="toy_scales.png",
    caption="the toy's scales",
    keys=("scale_values",),
    labels=("scale",),
    xlabel="toy layer",
)


@pytest.fixture
def toy():
    """The toy registered as ``toy`` (alias ``scaled-in``) for one test."""
    with registered_norm(
        "toy", ScaledInstanceNorm, aliases=("scaled_in",), summary=_summary, figure=FIGURE,
        test_variants={"": {}, "quarter": {"scale": 0.25}},
    ):
        yield "toy"
    assert "toy" not in normlab.list_norms()


def test_registration_and_removal(toy):
    assert normlab.list_norms()[-1] == "toy"
    assert canonical_norm("Scaled-IN") == "toy"
    assert type(normlab.create_norm("toy", C, dim=3)) is ScaledInstanceNorm3d
    with pytest.raises(NormConfigError, match="already registered"):
        normlab.norms.register_norm("other", aliases=("toy",), twin=None)(ScaledInstanceNorm)
    validate_norm_kwargs("toy", {"scale": 2.0, "eps": 1e-3})
    with pytest.raises(NormConfigError, match="did you mean 'scale'"):
        validate_norm_kwargs("toy", {"scal": 2.0})
    for eps in (0.0, -1.0):
        with pytest.raises(NormConfigError, match="eps must be > 0"):
            validate_norm_kwargs("toy", {"eps": eps})
    unregister_norm("toy")
    with pytest.raises(ValueError, match="unknown norm 'toy'"):
        normlab.create_norm("toy", C)


def test_generated_tables_pick_it_up(toy):
    variants = norm_variants()
    assert variants["toy"] == ("toy", {}) and variants["toy-quarter"] == ("toy", {"scale": 0.25})
    assert "toy" not in torch_twins()  # it declared twin=None: no torch-contract rows
    assert "toy" not in batch_pooling_norms() and "toy" not in instance_statistics_norms()
    x = torch.randn(3, C, 4, 4, dtype=torch.float64)
    layer = normlab.create_norm("toy", C, scale=0.25).double()
    torch.testing.assert_close(layer(x), 0.25 * normlab.create_norm("in", C).double()(x))


def test_model_summary_and_report_figures(toy, tmp_path):
    model = normlab.create_model("resnet20", num_classes=3, norm="toy")
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    records = norm_summary(model)
    assert records and all(r["type"] == "ScaledInstanceNorm2d" for r in records)
    assert records[0]["scale"] == 0.5 and records[0]["scale_values"] == [0.5] * 16
    assert learned_figures({"scaled_in": records, "bn": []}, tmp_path) == ["toy_scales.png"]
    assert (tmp_path / "toy_scales.png").stat().st_size > 0
    assert draw_norm_figure(FIGURE, [{"name": "no values"}], tmp_path / "none.png") is None


def test_config_and_a_training_run(toy, tmp_path):
    raw = {
        "model": {"name": "resnet20", "norm": "bn"},  # built by tiny_builders
        "data": {"batch_size": 16},
        "optim": {"lr": 0.1},
        "train": {"epochs": 1, "device": "cpu", "seed": 3},
        "run": {"out_dir": str(tmp_path / "runs"), "name": "toy", "progress": False},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, ["model.norm=toy"])
    assert config.model.norm == "toy"
    summary = train(config, builders=tiny_builders(), log=None)
    assert summary["status"] == "completed" and summary["epochs_done"] == 1
