"""``config.mesh`` is in every config, parses from the command line and is checked
early (strategy, shape, backend); no device is needed."""

import subprocess
import sys

import pytest

from keras_scalevit.configs import digits, train_vit_g, transfer, vit_i1k
from keras_scalevit.training import validate_config
from keras_scalevit.training.mesh import mesh_settings
from tests.conftest import BACKEND


@pytest.mark.parametrize("module", [digits, train_vit_g, vit_i1k, transfer])
def test_every_config_has_a_single_device_mesh(module):
    config = module.get_config()
    assert mesh_settings(config) == (None, None, None)


@pytest.mark.parametrize(
    "mesh, error, words",
    [
        ({"strategy": "pipeline"}, ValueError, ["config.mesh.strategy", "pipeline"]),
        ({"strategy": "data", "shape": (8,)}, ValueError, ["config.mesh.shape"]),
        ({"strategy": "fsdp", "shape": "4,2"}, TypeError, ["config.mesh.shape", "4,2"]),
        ({"strategy": "data", "shape": (0, 1)}, ValueError, ["config.mesh.shape"]),
        ({"strategy": None, "shape": (4, 2)}, ValueError, ["config.mesh.strategy"]),
        ({"strategy": "data", "shapes": (4, 2)}, TypeError, ["shapes", "'shape'"]),
        ({"multihost": "yes"}, TypeError, ["config.mesh.multihost"]),
        ({"multihost": True}, ValueError, ["config.mesh.multihost", "strategy"]),
    ],
)
def test_bad_mesh_is_refused_naming_the_field(mesh, error, words):
    config = digits.get_config()
    config.mesh = mesh
    with pytest.raises(error) as e:
        validate_config(config)
    for word in words:
        assert word in str(e.value)


@pytest.mark.skipif(BACKEND == "jax", reason="the error is for the other backends")
def test_mesh_on_another_backend_names_the_backend():
    config = digits.get_config()
    config.mesh.strategy = "fsdp"
    with pytest.raises(ValueError, match=f"JAX backend.*'{BACKEND}'"):
        validate_config(config)


def test_mesh_flags_parse_as_a_tuple(tmp_path):
    """``--config.mesh.shape=4,2`` gives the tuple (4, 2) (ml_collections)."""
    code = (
        "from absl import app, flags\n"
        "from ml_collections import config_flags\n"
        "c = config_flags.DEFINE_config_file('config', "
        f"{digits.__file__!r}, lock_config=True)\n"
        "app.run(lambda argv: print(repr((c.value.mesh.strategy, "
        "c.value.mesh.shape))))\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--config.mesh.strategy=fsdp+tensor",
            "--config.mesh.shape=4,2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip().splitlines()[-1] == "('fsdp+tensor', (4, 2))"
