"""IEBN paper, Table 4 (right): where the gate delta acts (gamma, beta or both)."""

from normlab.experiments.registry import register
from normlab.experiments.tables._common import iebn_ablation

register(iebn_ablation(
    name="iebn_table4_position",
    source="IEBN paper, Table 4 right (Table 5 in the second version)",
    title="ResNet164 with IEBN on CIFAR-100: the gate scales gamma, beta or both",
    option="position",
    rows={  # row: (IEBN position, the paper's test accuracy %)
        "γ (IEBN)": ("gamma", "77.09 ± 0.15"),
        "β": ("beta", "75.03 ± 0.54"),
        "γ and β": ("both", "77.02 ± 0.08"),
    },
    notes="The full scale takes BN statistics over 64 of every 128 samples (2 GPUs).",
))
