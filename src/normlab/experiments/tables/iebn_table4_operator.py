"""IEBN paper, Table 4 (left): how IEBN processes the squeezed feature (Linear, Identity, FC)."""

from normlab.experiments.registry import register
from normlab.experiments.tables._common import iebn_ablation

register(iebn_ablation(
    name="iebn_table4_operator",
    source="IEBN paper, Table 4 left (Table 4 in the second version)",
    title="ResNet164 with IEBN on CIFAR-100: linear, identity or fully connected gate operator",
    option="operator",
    rows={  # row: (IEBN operator, the paper's test accuracy %)
        "Linear (IEBN)": ("linear", "77.09 ± 0.15"),
        "Identity": ("identity", "67.53 ± 2.49"),
        "FC": ("fc", "76.11 ± 0.28"),
    },
    notes=(
        "The ablations ran on 2 GPUs: the full scale takes BN statistics over 64 of every "
        "128 samples (model.virtual_batch_size=64). FC uses reduction 16 (not stated)."
    ),
))
