"""IEBN paper, Fig. 4: the gate's activation function (sigmoid, tanh, ReLU, softmax)."""

from normlab.experiments.registry import register
from normlab.experiments.tables._common import iebn_ablation

register(iebn_ablation(
    name="iebn_fig4_activation",
    source="IEBN paper, Fig. 4",
    title="ResNet164 with IEBN on CIFAR-100: test accuracy per epoch for each gate activation",
    option="activation",
    rows={"sigmoid (IEBN)": ("sigmoid", None), "tanh": ("tanh", None), "ReLU": ("relu", None),
          "softmax": ("softmax", None)},
    curves=True,
    notes=(
        "The paper's figure has no printed numbers; its text says ReLU 'maintains only 1% "
        "accuracy throughout the training' and softmax is 'evidently worse than sigmoid or "
        "tanh'. Softmax is taken over the channels (the paper does not say). The full scale "
        "takes BN statistics over 64 of every 128 samples (2 GPUs)."
    ),
))
