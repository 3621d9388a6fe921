"""Layout maps, `make_distribution`'s errors and ViT-G/14's per-device memory.

Runs in-process: nothing here needs more than one real device (the G/14 figures
come from the layout map and abstract variables, never allocated).
"""

import re

import keras
import numpy as np
import pytest

from tests.conftest import BACKEND

jax_only = pytest.mark.skipif(
    BACKEND != "jax",
    reason="keras.distribution is implemented for the JAX backend only; this run "
    f"uses KERAS_BACKEND={BACKEND}.",
)

FAKE_DEVICES = [f"cpu:{i}" for i in range(8)]  # layouts only; never placed on


def test_layout_maps_are_keras_layout_maps():
    from keras_scalevit.models import ViTBackbone, ViTClassifier

    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), FAKE_DEVICES)
    backbone = ViTBackbone.get_layout_map(mesh)
    classifier = ViTClassifier.get_layout_map(mesh, fsdp=False)
    assert isinstance(backbone, keras.distribution.LayoutMap)
    path = "Transformer/encoderblock_47/MultiHeadDotProductAttention_0/query/kernel"
    assert backbone[path].axes == ("batch", "model", None)
    assert classifier[path].axes == (None, "model", None)
    assert backbone["head/kernel"] is None  # the backbone has no head
    assert classifier["head/kernel"].axes == (None, "model")
    assert classifier["Transformer/encoderblock_0/LayerNorm_0/scale"] is None
    # Custom axis names; a 1-D mesh has no model axis: those dims stay whole.
    mesh1 = keras.distribution.DeviceMesh((8,), ("data",), FAKE_DEVICES)
    layout = ViTClassifier.get_layout_map(mesh1, data_parallel_dim_name="data")
    assert layout["MAPHead_0/MlpBlock_0/Dense_0/kernel"].axes == ("data", None)


def test_every_variable_matches_at_most_one_pattern():
    from keras_scalevit.distribution import abstract_model
    from keras_scalevit.models import ViTClassifier

    model = abstract_model(
        lambda: ViTClassifier.from_variant(
            "mu/8", num_classes=10, image_size=16, pool_type="tok", rep_size=True
        )
    )
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), FAKE_DEVICES)
    layout_map = ViTClassifier.get_layout_map(mesh)
    sharded = set()
    for v in model.weights:
        layout = layout_map[v.path]  # raises if two patterns match
        if layout is not None:
            assert len(layout.axes) == len(v.shape), v.path
            sharded.add(v.path)
    # Every weight of rank >= 2 is laid out; vectors other than the sharded
    # biases (heads, MLP hidden, classes) are replicated.
    for v in model.weights:
        if len(v.shape) >= 2:
            assert v.path in sharded, v.path
    assert "cls/cls" in sharded and "pre_logits/kernel" in sharded


def test_make_distribution_rejects_bad_arguments():
    from keras_scalevit.distribution import make_distribution

    with pytest.raises(ValueError, match="`strategy` must be one of"):
        make_distribution("zero3")
    if BACKEND != "jax":
        with pytest.raises(RuntimeError, match="needs the JAX backend") as info:
            make_distribution("fsdp")
        assert f"current backend is {BACKEND!r}" in str(info.value)
        return
    with pytest.raises(ValueError, match=r"holds 6 devices, but there are 8"):
        make_distribution("tensor", mesh_shape=(2, 3), devices=FAKE_DEVICES)
    with pytest.raises(ValueError, match=r"use 'fsdp\+tensor'"):
        make_distribution("fsdp", mesh_shape=(4, 2), devices=FAKE_DEVICES)
    with pytest.raises(TypeError, match="`mesh_shape` must be"):
        make_distribution("tensor", mesh_shape="4x2", devices=FAKE_DEVICES)


@jax_only
def test_strategies_give_keras_distributions():
    from keras_scalevit.distribution import make_distribution

    data = make_distribution("data", devices=FAKE_DEVICES)
    assert isinstance(data, keras.distribution.DataParallel)
    assert data.device_mesh.shape == (8,)
    for strategy, shape, fsdp_axis in (
        ("fsdp", None, "batch"),
        ("tensor", (2, 4), None),
        ("fsdp+tensor", (4, 2), "batch"),
    ):
        dist = make_distribution(strategy, mesh_shape=shape, devices=FAKE_DEVICES)
        assert isinstance(dist, keras.distribution.ModelParallel)
        assert dist.device_mesh.shape == (shape or (8, 1))
        assert dist.device_mesh.axis_names == ["batch", "model"] or tuple(
            dist.device_mesh.axis_names
        ) == ("batch", "model")
        path = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
        assert dist._layout_map[path].axes == (fsdp_axis, "model")


@jax_only
def test_indivisible_dimension_names_variable_axis_and_fitting_meshes():
    from keras_scalevit.distribution import abstract_model, make_distribution
    from keras_scalevit.models import ViTClassifier

    # ViT-G/14 with ImageNet's 1000 classes on 64 devices, 4 on the model axis:
    # fine; 32 on the model axis: 16 heads do not divide. Built once, abstractly.
    devices = [f"cpu:{i}" for i in range(64)]
    g14 = abstract_model(
        lambda: ViTClassifier.from_variant("G/14", num_classes=1000, pool_type="map")
    )

    make_distribution("fsdp+tensor", mesh_shape=(16, 4), devices=devices, model=g14)
    with pytest.raises(ValueError) as info:
        make_distribution("tensor", mesh_shape=(2, 32), devices=devices, model=g14)
    message = str(info.value)
    assert re.search(
        r"`Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel` "
        r"\(1664, 16, 104\): dimension 1 of size 16 does not divide over mesh axis "
        r"'model' of size 32",
        message,
    ), message
    # 1000 classes = 2^3 * 5^3 and 16 heads: model axes 1, 2, 4 and 8 fit.
    assert "fit: [(64, 1), (32, 2), (16, 4), (8, 8)]" in message, message
    # FSDP over 64 devices: the width 1664 = 2^7 * 13 divides; 3 * 64 would not.
    make_distribution("fsdp", devices=devices, model=g14)
    with pytest.raises(ValueError, match=r"'batch' of size 192") as info:
        make_distribution("fsdp", devices=[f"cpu:{i}" for i in range(192)], model=g14)
    assert "'batch' must divide" in str(info.value)


@jax_only
def test_g14_fits_fsdp_on_8_devices_without_allocating():
    from keras_scalevit.distribution import (
        abstract_model,
        abstract_optimizer_state,
        make_distribution,
        per_device_bytes,
    )
    from keras_scalevit.models import ViTClassifier
    from keras_scalevit.optimizers import Adafactor, adafactor_state_bytes

    dist = make_distribution("fsdp", devices=FAKE_DEVICES)

    # The paper's JFT model: MAP head, 29,593 classes.
    def g14():
        return ViTClassifier.from_variant("G/14", num_classes=29593, pool_type="map")

    model = abstract_model(g14, dist)
    state = abstract_optimizer_state(Adafactor(8e-4), model, dist)
    slots = [v for v in state if len(v.shape) > 0]  # not the step counter
    params_dev, params_total = per_device_bytes(model.weights, dist)
    state_dev, state_total = per_device_bytes(slots, dist)
    # Independent totals: float32 parameters, and Adafactor's state from shapes.
    n_params = sum(int(np.prod(v.shape)) for v in model.weights)
    assert params_total == 4 * n_params
    assert state_total == adafactor_state_bytes([tuple(v.shape) for v in model.weights])
    total = params_total + state_total
    assert params_dev + state_dev <= 1.02 * total / 8, (params_dev + state_dev) / total
    # Every slot carries the layout the optimizer derived from its variable.
    assert all(v._layout is not None for v in slots)


def test_abstract_models_stay_unallocated_when_other_models_build():
    # Keras initialises every variable left in a non-initialising stateless scope
    # when the next stateless scope closes (shape inference opens one); an
    # abstract model must never be allocated that way, here on fake devices.
    from keras.src.backend.common import global_state

    from keras_scalevit.distribution import abstract_model
    from keras_scalevit.models import ViTClassifier

    g14 = abstract_model(
        lambda: ViTClassifier.from_variant("G/14", num_classes=10, pool_type="map")
    )
    assert not global_state.get_global_attribute("uninitialized_variables")
    small = ViTClassifier.from_variant("mu/8", num_classes=3, image_size=16)
    assert small(np.zeros((1, 16, 16, 3), "float32")).shape == (1, 3)
    assert all(v._value is None for v in g14.weights[:3])
