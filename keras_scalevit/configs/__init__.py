"""Training configs for ``python -m keras_scalevit.train --config=<file>[:arg]``.

Each module has ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``
in big_vision's layout: ``digits`` (the embedded default, trains on CPU in
minutes), ``train_vit_g`` (the paper's ViT-g/14 and ViT-G/14 JFT-3B pre-training)
and ``vit_i1k`` (ImageNet-1k S/16 and B/16 from scratch).
"""
