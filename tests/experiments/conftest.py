"""Fixtures shared by the experiments' tests."""

import pytest
import torch

from normlab.models import create_model


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory):
    """A folder of ``imagenet_resnet50_<norm>.pth`` files (BN, GN, SN), each holding a
    ResNet-18 classification state dict of that norm: the backbone weights the detection
    recipes' 2-iteration runs fine-tune from. Session-scoped and defined here, not in the
    test module, so its tests are not kept on one pytest-xdist worker."""
    folder = tmp_path_factory.mktemp("pretrained")
    for norm in ("bn", "gn", "sn"):
        weights = create_model("resnet18", norm=norm).state_dict()
        torch.save(weights, folder / f"imagenet_resnet50_{norm}.pth")
    return folder
