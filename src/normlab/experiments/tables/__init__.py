"""One module per paper table; importing this package registers them all."""

from normlab.experiments.tables import (  # noqa: F401  (each module registers its table)
    bin_cifar100_architectures,
    bin_table1_cifar,
    iebn_fig4_activation,
    iebn_table1_cifar,
    iebn_table1_imagenet,
    iebn_table2_constant_noise,
    iebn_table3_mix_datasets,
    iebn_table4_operator,
    iebn_table4_position,
    iebn_table5_init_grid,
    sn_table2_batch_sizes,
    sn_table4_coco_fasterrcnn_c4,
    sn_table5_coco_fasterrcnn_fpn,
    sn_table6_coco_maskrcnn_fpn,
)
