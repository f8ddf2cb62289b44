"""Overrides shared by several paper tables."""

CIFAR100 = ("data.name=cifar100", "data.root=data/cifar-100-python")
"""Full-scale items that turn a shipped CIFAR-10 recipe into its CIFAR-100 run."""

SE = ("model.norm=bn", "model.kwargs.se_reduction=16")
"""The IEBN paper's SE baseline: a BN network with an SE module in every residual unit
(reduction 16; the paper does not state it, and 16 reproduces its parameter counts)."""

TWO_GPU_STATISTICS = ("model.virtual_batch_size=64",)
"""The IEBN ablations ran on 2 GPUs with DataParallel: BN statistics over 64 of the 128."""
