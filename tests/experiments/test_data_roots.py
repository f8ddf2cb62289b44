"""``normlab experiment run NAME --data cifar10=PATH cifar100=PATH``: one root per data set."""

import pytest
import yaml

from normlab.cli import main
from normlab.errors import ConfigError
from normlab.experiments import Cell, Experiment, plan_runs
from normlab.experiments.sweep import check_data_roots

RECIPE = {
    "model": {"name": "resnet20", "norm": "bn"},
    "data": {"name": "cifar10", "root": "data/cifar-10-batches-py", "batch_size": 16},
    "train": {"epochs": 1, "device": "cpu"},
}


@pytest.fixture
def experiment(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    mix = ("data.name=cifar100", "data.mix.dataset=mnist")
    return Experiment(
        name="roots_table",
        source="A paper, Table 1",
        title="one root per data set",
        rows=("BN",),
        columns=("CIFAR-10", "CIFAR-100", "CIFAR-100 + MNIST"),
        cells={
            ("BN", "CIFAR-10"): Cell(str(recipe)),
            ("BN", "CIFAR-100"): Cell(str(recipe), ("data.name=cifar100",)),
            ("BN", "CIFAR-100 + MNIST"): Cell(str(recipe), mix),
        },
    )


def _roots(run):
    data = run.config.data
    return data.name, data.root, data.mix.root if data.mix else None


def test_each_cell_takes_the_root_of_its_data_sets(experiment, tmp_path):
    roots = {"cifar10": str(tmp_path / "c10"), "cifar100": str(tmp_path / "c100"),
             "mnist": str(tmp_path / "mnist")}
    planned = plan_runs(experiment, scale="full", seeds=(0,), out=tmp_path, data_roots=roots)
    assert [_roots(run) for run in planned] == [
        ("cifar10", roots["cifar10"], None),
        ("cifar100", roots["cifar100"], None),
        ("cifar100", roots["cifar100"], roots["mnist"]),
    ]
    with pytest.raises(ConfigError, match="CIFAR-10 reads data set 'cifar10' with root"):
        check_data_roots(planned)
    for path in roots.values():
        (tmp_path / path).mkdir()
    check_data_roots(planned)


def test_a_data_set_without_a_given_root_keeps_the_configs(experiment, tmp_path):
    planned = plan_runs(experiment, scale="full", seeds=(0,), out=tmp_path,
                        data_roots={"mnist": str(tmp_path)})
    assert [_roots(run)[1] for run in planned] == ["data/cifar-10-batches-py"] * 3
    assert planned[2].config.data.mix.root == str(tmp_path)


@pytest.mark.parametrize(("item", "message"), [
    ("cifar1O={tmp}", "--data cifar1O: unknown data set 'cifar1O'. Did you mean 'cifar10'"),
    ("fashion_mnist={tmp}", "no cell of roots_table at scale full reads 'fashion_mnist'; "
                            "its cells read cifar10, cifar100, mnist"),
    ("cifar10={tmp}/missing", "root '{tmp}/missing', which does not exist; give its folder "
                              "with --data cifar10=PATH"),
    ("cifar10", "--data 'cifar10' must look like NAME=PATH"),
])
def test_bad_roots_end_in_one_line_and_status_2(experiment, tmp_path, capsys, monkeypatch,
                                                item, message):
    monkeypatch.setattr("normlab.cli.get_experiment", lambda name: experiment)
    argv = ["experiment", "run", "roots_table", "--scale", "full", "--out", str(tmp_path),
            "--data", item.format(tmp=tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "roots_table").exists()
