"""TensorFlow's oneDNN kernels: our training graphs stay clear of a known TF 2.21 bug.

keras_scalevit leaves TensorFlow's kernel choice alone (oneDNN on x86 Linux: our fastest
CPU backend, README "Speed"). TensorFlow 2.21's oneDNN batch matmul corrupts the heap
when it broadcasts one operand over an output with two or more batch dimensions, e.g.
``[13, 1, 3, 4] @ [4, 16]`` (tensorflow/tensorflow#117700, #123109; fixed upstream by
tensorflow/tensorflow#120199). Measured on TF 2.21 here: that shape aborts or returns
wrong values in every run, while the shapes our models use (rank-3 inputs times a
kernel, attention with equal batch dimensions) were exact in every run.

These tests trace the step that ``model.fit`` runs and fail if any batch matmul in it
could take that path, so a change to the model that would expose users to the bug is
caught here rather than as an intermittent segfault.
"""

import os
import subprocess
import sys

import keras
import pytest
from conftest import BACKEND

from keras_scalevit.models import ViTClassifier
from keras_scalevit.optimizers import Adafactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MATMULS = ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def _risky(op):
    """True when oneDNN's batch matmul could broadcast over >= 2 batch dimensions."""
    if op.type == "Einsum":
        # tf.einsum runs the same kernel after reshaping; any rank mismatch can broadcast.
        ranks = {i.shape.rank for i in op.inputs}
        return len(ranks) > 1 and op.outputs[0].shape.rank >= 4
    if op.type not in _MATMULS:
        return False
    x, y = (i.shape for i in op.inputs)
    if x.rank is None or y.rank is None:
        return True
    bx, by = x[:-2].as_list(), y[:-2].as_list()
    return max(len(bx), len(by)) >= 2 and bx != by


def _graph_ops(graph):
    """Every op of a graph and of the functions it calls (gradients, loops)."""
    ops = list(graph.get_operations())
    for function in graph._functions.values():
        ops += _graph_ops(function.graph)
    return ops


def _train_step_ops(model, image_size, classes):
    import tensorflow as tf

    model.compile(
        optimizer=Adafactor(1e-3, weight_decay=1e-4, global_clipnorm=1.0),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.optimizer.build(model.trainable_variables)
    spec = (
        tf.TensorSpec((None, image_size, image_size, 3), "float32"),
        tf.TensorSpec((None, classes), "float32"),
    )
    graph = tf.function(model.train_step).get_concrete_function(spec).graph
    return _graph_ops(graph)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graphs only")
def test_risky_pattern_is_recognised():
    """The check flags the bug's own shape and passes the shapes our layers use."""
    import tensorflow as tf

    def ops_of(fn, *specs):
        return _graph_ops(tf.function(fn).get_concrete_function(*specs).graph)

    bug = ops_of(tf.matmul, tf.TensorSpec((13, 1, 3, 4)), tf.TensorSpec((4, 16)))
    assert any(_risky(op) for op in bug)
    ours = ops_of(tf.matmul, tf.TensorSpec((None, 1, 4)), tf.TensorSpec((4, 16)))
    attention = ops_of(
        tf.matmul, tf.TensorSpec((None, 2, 1, 4)), tf.TensorSpec((None, 2, 4, 5))
    )
    assert not any(_risky(op) for op in ours + attention)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graphs only")
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pool_type="gap"),
        dict(pool_type="map"),
        dict(pool_type="tok", class_token=True, posemb="sincos2d"),
        dict(pool_type="map", rep_size=32, remat=True),
    ],
    ids=["gap", "map", "tok", "map-repr-remat"],
)
def test_train_step_has_no_broadcast_batch_matmul(kwargs):
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False, **kwargs
    )
    ops = _train_step_ops(model, 16, 5)
    matmuls = [op for op in ops if op.type in _MATMULS + ("Einsum", "MatMul")]
    assert len(matmuls) > 20  # forward and backward were traced
    risky = [(op.type, [str(i.shape) for i in op.inputs]) for op in ops if _risky(op)]
    assert not risky, risky


def test_import_leaves_tensorflow_kernel_choice_alone():
    """Importing keras_scalevit sets no TF_ENABLE_ONEDNN_OPTS: TensorFlow decides."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = (
        "import os, keras_scalevit, keras_scalevit.train, keras_scalevit.data; "
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "None"
