"""The papers' experiments: shipped YAML recipes (``configs/``) and, later, one module per table.

Configs are found by name with :func:`normlab.train.find_config` and listed with
:func:`normlab.train.list_configs` (``normlab list configs``).
"""
