"""The training entry point: runs, exact resume after SIGKILL, checkpoint errors, configs.

Runs once per backend (``KERAS_BACKEND``); the subprocesses inherit it. Nothing
touches the network: digits are built offline, ImageNet goes through
``tfds.testing.mock_data``.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_scalevit import train
from keras_scalevit.configs import digits, train_vit_g, vit_i1k
from keras_scalevit.data import make_dataset, make_eval_dataset
from keras_scalevit.models import count_params
from keras_scalevit.optimizers import Adafactor
from tests.conftest import (
    BACKEND,
    sigkill_at_random_step,
    train_command,
    write_tiny_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a new run writes: an Orbax folder on JAX, checkpoint.npz elsewhere. The
# tests read checkpoints through `make_checkpointer(workdir).read()` either way.
CKPT = "checkpoint" if BACKEND == "jax" else "checkpoint.npz"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, total_steps=12):
    c = digits.get_config()
    c.input.data.data_dir = data_dir
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    c.input.batch_size = 32
    c.total_steps = total_steps
    c.ckpt_steps = 5
    c.log_training_steps = 2
    c.verbose = 0
    c.evals.val.log_steps = 6
    c.evals.fewshot.shots = (1, 5)
    c.evals.fewshot.num_seeds = 1
    return c


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_ckpt(workdir):
    """``(meta, {"model/<i>": array, ...})`` of the workdir's checkpoint."""
    ckpt = train.make_checkpointer(str(workdir))
    try:
        return ckpt.read()
    finally:
        ckpt.close()


def _snapshot(path):
    """``{relative path: (bytes, mtime_ns)}`` of a file, or of every file in a folder."""
    path = str(path)
    files = [path]
    if os.path.isdir(path):
        files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    out = {}
    for f in sorted(files):
        with open(f, "rb") as fh:
            out[os.path.relpath(f, path)] = (fh.read(), os.stat(f).st_mtime_ns)
    return out


def _copy_ckpt(src_workdir, dst_workdir):
    """Copies the checkpoint (file or folder) of one workdir into another."""
    src, dst = os.path.join(src_workdir, CKPT), os.path.join(dst_workdir, CKPT)
    os.makedirs(dst_workdir, exist_ok=True)
    if os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def _orbax_step_dir(path):
    (step,) = [n for n in os.listdir(path) if n.isdigit()]
    return os.path.join(path, step)


def _truncate_arrays(path):
    """Truncates the checkpoint's array data to half, as a full disk would."""
    if os.path.isdir(path):  # Orbax: every data file of the committed step's arrays
        state = os.path.join(_orbax_step_dir(path), "state")
        files = [
            os.path.join(d, f)
            for d, _, names in os.walk(state)
            for f in names
            if os.path.basename(d) == "d"  # OCDBT's data files
        ]
    else:
        files = [path]
    assert files, f"no array data found in {path}"
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _edit_fingerprint(path, **changes):
    """Rewrites fields of the checkpoint's fingerprint in place (arrays untouched)."""
    if os.path.isdir(path):  # Orbax: the JSON item beside the arrays
        meta_file = os.path.join(_orbax_step_dir(path), "meta", "metadata")
        with open(meta_file) as f:
            meta = json.load(f)
        meta["fingerprint"].update(changes)
        with open(meta_file, "w") as f:
            json.dump(meta, f)
        return
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["fingerprint"].update(changes)
    arrays["__meta__"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)


# ---------------------------------------------------------------- main, in process


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    start = time.time()
    final = train.main(tiny_config(data_dir), workdir)
    print(f"[{BACKEND}] main(12 steps) took {time.time() - start:.1f}s")
    return workdir, final


def test_main_writes_outputs(finished_run):
    workdir, final = finished_run
    for name in ("metrics.jsonl", "training_curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    # JAX writes Orbax (one committed step kept), TensorFlow and torch one .npz.
    other = "checkpoint.npz" if BACKEND == "jax" else "checkpoint"
    assert not os.path.exists(os.path.join(workdir, other))
    if BACKEND == "jax":
        steps = [n for n in os.listdir(os.path.join(workdir, CKPT)) if n[0].isdigit()]
        assert steps == ["12"], steps
    else:
        assert os.path.getsize(os.path.join(workdir, CKPT)) > 0
    records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_steps = [r["step"] for r in records if "loss" in r and "lr" in r]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 for r in records if "lr" in r)
    assert any("val_prec@1" in r and not r.get("final") for r in records)
    assert records[-1]["final"] and records[-1]["step"] == 12
    assert 0.0 <= final["val_prec@1"] <= 1.0
    assert {"fewshot/digits_1shot", "fewshot/digits_5shot"} <= set(final)
    meta, arrays = _read_ckpt(workdir)
    assert meta["step"] == 12
    assert len(arrays) == len(meta["model"]) + len(meta["optimizer"])
    for group in ("model", "optimizer"):
        for i, (_, shape, dtype) in enumerate(meta[group]):
            assert list(arrays[f"{group}/{i}"].shape) == shape
            if dtype in ("float32", "bfloat16"):  # bfloat16: ml_dtypes, both writers
                assert arrays[f"{group}/{i}"].dtype.name == dtype
    assert any(d == "bfloat16" for _, _, d in meta["optimizer"])  # the momentum
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert model.output_shape == (None, 10)


def test_rerun_of_finished_run_does_not_train(finished_run, data_dir):
    workdir, final = finished_run
    before = _read_ckpt(workdir)[1]
    again = train.main(tiny_config(data_dir), workdir)
    after = _read_ckpt(workdir)[1]
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert again["val_prec@1"] == pytest.approx(final["val_prec@1"], abs=1e-6)


def test_corrupt_checkpoint_raises_naming_the_file(finished_run, data_dir, tmp_path):
    path = _copy_ckpt(finished_run[0], tmp_path)
    _truncate_arrays(path)  # as by a full disk
    with pytest.raises(train.CheckpointError, match="corrupt") as info:
        train.main(tiny_config(data_dir), str(tmp_path))
    assert path in str(info.value)


def test_mismatched_checkpoint_raises_naming_the_file(finished_run, data_dir, tmp_path):
    path = _copy_ckpt(finished_run[0], tmp_path)
    config = tiny_config(data_dir)
    config.model.width = 64  # a different model
    with pytest.raises(train.CheckpointError, match="does not match") as info:
        train.main(config, str(tmp_path))
    assert path in str(info.value) and "model" in str(info.value)


# ---------------------------------------------------------------- exact resume


def _assert_same_state(full, resumed):
    """Model and optimizer arrays equal: bitwise on JAX, to round-off elsewhere."""
    assert full.keys() == resumed.keys()
    assert any(k.startswith("optimizer/") for k in full)
    for k in full:
        if BACKEND == "jax":
            np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
        else:  # XLA/TF and torch CPU kernels may reorder float sums
            np.testing.assert_allclose(
                resumed[k].astype(np.float64), full[k].astype(np.float64),
                rtol=1e-5, atol=1e-6, err_msg=k,
            )  # fmt: skip


def _env():
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_sigkill_and_restart_gives_the_same_weights(data_dir, tmp_path):
    total = 60
    config_path = write_tiny_config(tmp_path / "tiny_config.py", data_dir)
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"

    subprocess.run(
        train_command(config_path, full_dir, total), env=_env(), check=True,
        timeout=600, capture_output=True,
    )  # fmt: skip

    # A random step, reproducible: rerun with SCALEVIT_KILL_SEED=<printed seed>.
    # On JAX the kill lands while an (asynchronous) Orbax save is in flight: the
    # first one after that step. From step 21 on, the step-10 save is committed
    # (the step-20 save waited for it), so there is always a step to resume from.
    command = train_command(config_path, killed_dir, total)
    killed = sigkill_at_random_step(
        command, _env(), killed_dir, kill_between=(21, 48),
        during_save=BACKEND == "jax",
    )  # fmt: skip
    ckpt_step = _read_ckpt(killed_dir)[0]["step"]
    assert 10 <= ckpt_step <= killed["killed_at"] < total, (ckpt_step, killed)
    if BACKEND == "jax":
        # The step being written stays uncommitted; the previous one is restored.
        in_flight = [int(n.split(".")[0]) for n in killed["uncommitted"]]
        print(f"[{BACKEND}] in flight at the kill: {in_flight}")
        assert in_flight and all(s > ckpt_step for s in in_flight), killed
    print(f"[{BACKEND}] killed at step {killed['killed_at']}; checkpoint {ckpt_step}")

    rerun = subprocess.run(
        command, env=_env(), check=True, timeout=600, capture_output=True,
        text=True,
    )  # fmt: skip
    assert f"at step {ckpt_step}/{total}" in rerun.stdout, rerun.stdout[-2000:]
    for name in killed["uncommitted"]:
        assert name in rerun.stdout  # "Removed ..., left by a write ..."
        assert not os.path.exists(killed_dir / "checkpoint" / name)

    # Model and optimizer state (momentum, factored statistics, step counter).
    meta_a, full = _read_ckpt(full_dir)
    meta_b, resumed = _read_ckpt(killed_dir)
    assert meta_a["step"] == meta_b["step"] == total
    _assert_same_state(full, resumed)
    # The resumed metrics continue the log without repeating steps.
    metrics = killed_dir / "metrics.jsonl"
    steps = [r["step"] for r in _read_jsonl(metrics) if "lr" in r]
    assert steps == list(range(1, total + 1))

    # ... and validates at the same steps as the uninterrupted run.
    def val_steps(path):
        return [r["step"] for r in _read_jsonl(path) if "val_loss" in r]

    assert val_steps(metrics) == val_steps(full_dir / "metrics.jsonl")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "module, arg, variant",
    [
        (digits, None, "mu/2"),
        (train_vit_g, None, "g/14"),
        (train_vit_g, "g", "g/14"),
        (train_vit_g, "G", "G/14"),
        (train_vit_g, "G,batch=32768", "G/14"),
        (vit_i1k, None, "S/16"),
        (vit_i1k, "variant=B/16", "B/16"),
    ],
)
def test_configs_parse_and_build(module, arg, variant):
    config = module.get_config(arg)
    train.validate_config(config)  # every field known, every value allowed
    assert config.model.variant == variant
    assert train.image_size_from_config(config) == config.image_size
    for key in ("seed", "num_classes", "loss", "optax_name", "lr", "schedule"):
        assert key in config, key
    total = train.total_steps_from_config(config, num_train_examples=1_268_000)
    optimizer = train.build_optimizer(config, total_steps=total, data_size=1_268_000)
    assert isinstance(optimizer, Adafactor)
    # Build at a small size (and, for g/G, one block) to check the wiring only.
    config.image_size = 28 if variant.endswith("/14") else 32
    if variant[0] in "gG":
        config.model.depth = 1
    model = train.build_model(config)
    assert model.output_shape == (None, config.num_classes)
    assert model.pool_type == config.model.pool_type


@pytest.mark.parametrize(
    "arg", ["dataset=digits", "dataset=imagenet2012,init=/tmp/x.npz,res=384"]
)
def test_transfer_configs_validate(arg):
    from keras_scalevit.configs import transfer

    train.validate_config(transfer.get_config(arg))


def test_vit_g_config_values():
    g, big = train_vit_g.get_config("g"), train_vit_g.get_config("G")
    assert (g.input.batch_size, g.init_head_bias, g.loss) == (
        16_384,
        -10.0,
        "sigmoid_xent",
    )
    assert train_vit_g.get_config("G,batch=32768").input.batch_size == 32_768
    assert g.model.pool_type == "map" and g.optax.beta2_cap == 0.999
    assert g.optax.dtype_momentum == "bfloat16"
    assert g.schedule.to_dict() == dict(
        decay_type="rsqrt", timescale=10_000, warmup_steps=10_000, cooldown_steps=50_000
    )
    opt = train.build_optimizer(g, total_steps=g.total_steps)
    assert opt.weight_decay == pytest.approx(0.03)
    assert big.model.variant == "G/14"
    assert count_params("G/14") > count_params("g/14") > 1e9
    with pytest.raises(ValueError, match="'g' or 'G'"):
        train_vit_g.get_config("H")


def test_config_files_load_with_config_flags():
    """``--config=path:arg`` and ``--config.x=...`` overrides, as the CLI parses them."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv)
    path = os.path.join(ROOT, "keras_scalevit", "configs", "vit_i1k.py")
    fv(["prog", f"--config={path}:variant=B/16,aug=none"])
    assert fv.config.model.variant == "B/16" and fv.config.mixup.p is None
    # `--config.total_steps=...` overrides are exercised by the resume test's CLI.
    spec = importlib.util.find_spec("keras_scalevit.configs.digits")
    assert spec is not None


# ---------------------------------------------------------------- ImageNet pp (mock)


def test_imagenet_config_pp_strings_on_mock_data():
    config = vit_i1k.get_config("variant=B/16,aug=light2")
    with tfds.testing.mock_data(num_examples=8):
        kw = dict(seed=1, mixup_p=config.mixup.p, shuffle_buffer=8)
        ds = make_dataset(
            "imagenet2012", config.input.data.split, config.input.pp, 4, **kw
        )
        a = [(x.numpy(), y.numpy()) for x, y in ds.take(3)]
        ds = make_dataset(
            "imagenet2012", config.input.data.split, config.input.pp, 4, **kw
        )
        b = [(x.numpy(), y.numpy()) for x, y in ds.take(3)]
        ev = make_eval_dataset("imagenet2012", "validation", config.evals.val.pp_fn, 4)
        ex, ey = next(iter(ev))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert xa.shape == (4, 224, 224, 3) and ya.shape == (4, 1000)
        assert xa.min() >= -1.0 and xa.max() <= 1.0
        np.testing.assert_allclose(ya.sum(-1), 1.0, rtol=1e-5)  # mixed one-hots
    assert tuple(ex.shape) == (4, 224, 224, 3) and tuple(ey.shape) == (4, 1000)
    assert float(np.min(ex)) >= -1.0 and float(np.max(ex)) <= 1.0


def test_fine_tune_from_keras_file_with_polyak_averaging(
    finished_run, data_dir, tmp_path
):
    """config.model_init -> transfer.build_transfer_model; config.ema_momentum."""
    config = tiny_config(data_dir, total_steps=6)
    config.model_init = os.path.join(finished_run[0], "model.keras")
    config.ema_momentum = 0.9
    config.evals.fewshot = {}
    first = train.main(config, str(tmp_path))
    # As if killed after the last checkpoint: the rerun restores the raw weights
    # and the averages, and evaluates the averages again without training.
    os.remove(tmp_path / "model.keras")
    records = _read_jsonl(tmp_path / "metrics.jsonl")
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records if not r.get("final"))
    again = train.main(config, str(tmp_path))
    assert again["val_prec@1"] == pytest.approx(first["val_prec@1"], abs=1e-6)
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.output_shape == (None, 10)


# ---------------------------------------------------------------- the workdir


def _copy_run(src, dst, names=(CKPT, "metrics.jsonl", "model.keras")):
    os.makedirs(dst, exist_ok=True)
    for name in names:
        if name == CKPT:
            _copy_ckpt(src, dst)
        else:
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    return str(dst)


# (field, new value): every one changes what the run computes, so resuming the
# tiny run under it must be refused, naming the field. (The tiny run has loss
# softmax_xent, batch 32, seed 0, mixup p 0.2, lr 3e-3, rsqrt schedule, ...)
REFUSED_CHANGES = [
    ("loss", "sigmoid_xent"),
    ("seed", 1),
    ("input.batch_size", 16),
    ("input.pp", digits.PP_EVAL + "|" + digits.LABELS),
    ("input.shuffle_buffer_size", 100),
    ("input.data.split", "test"),
    ("mixup.p", 0.5),
    ("lr", 1e-3),
    ("wd", 0.0),
    ("wd_mults", [(".*head/kernel", 1.0)]),
    ("grad_clip_norm", 2.0),
    ("schedule.timescale", 100),
    ("schedule.decay_type", "cosine"),
    ("optax.beta2_cap", 0.99),
    ("optax.dtype_momentum", "float32"),
    ("total_steps", 24),
    ("model.width", 64),
    ("model.depth", 2),
    ("model.pool_type", "gap"),
    ("model.dropout", 0.1),
    ("model.dtype", "mixed_bfloat16"),
    ("model_init", "/nonexistent/init.npz"),
    ("init_head_bias", -10.0),
    ("num_classes", 12),
    ("image_size", 10),
    ("ema_momentum", 0.9),
    ("jit_compile", BACKEND == "torch"),  # the other choice than the default
]


class _Interrupted(Exception):
    pass


def _interrupt_after_save_at(monkeypatch, step):
    """Makes `TrainLoop.save` raise after the save of ``step`` (as if killed)."""
    save = train.TrainLoop.save

    def save_then_stop(self):
        save(self)
        if self.step == step:
            raise _Interrupted

    monkeypatch.setattr(train.TrainLoop, "save", save_then_stop)


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    with config.unlocked() if hasattr(config, "unlocked") else nullcontext():
        node[leaf] = value


@pytest.mark.parametrize(
    "field, value", REFUSED_CHANGES, ids=[f for f, _ in REFUSED_CHANGES]
)
def test_resume_under_a_changed_result_field_is_refused(
    finished_run, data_dir, tmp_path, field, value
):
    workdir = _copy_run(finished_run[0], tmp_path / "w")
    path = os.path.join(workdir, CKPT)
    before = _snapshot(path)
    config = tiny_config(data_dir)
    old = config.get(field.split(".")[0])
    for part in field.split(".")[1:]:
        old = old[part] if old is not None else None
    _set(config, field, value)
    with pytest.raises(train.CheckpointError) as info:
        train.main(config, workdir)
    message = str(info.value)
    assert path in message
    differing = [line.strip() for line in message.splitlines()[1:] if "→" in line]
    # The field itself (the config field, or what it resolves to) and only fields
    # it determines; never the unchanged ones.
    assert any(line.startswith(f"{field}:") for line in differing), message
    assert not any(line.startswith(("seed:", "loss:")) for line in differing) or (
        field in ("seed", "loss")
    ), message
    if old is not None and not isinstance(old, (list, tuple, dict)):
        assert f"{field}: {old!r} → {value!r}" in message, message
    # Refused before anything was written.
    assert _snapshot(path) == before
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_resume_from_a_checkpoint_of_another_backend_is_refused(
    finished_run, data_dir, tmp_path
):
    workdir = _copy_run(finished_run[0], tmp_path / "w")
    other = "torch" if BACKEND != "torch" else "jax"
    _edit_fingerprint(os.path.join(workdir, CKPT), backend=other)
    with pytest.raises(train.CheckpointError) as info:
        train.main(tiny_config(data_dir), workdir)
    differing = [
        line.strip() for line in str(info.value).splitlines()[1:] if "→" in line
    ]
    assert differing == [f"backend: {other!r} → {BACKEND!r}"]


def test_cadence_fields_may_change_on_resume_and_give_the_same_weights(
    finished_run, data_dir, tmp_path, monkeypatch
):
    """Log, checkpoint, eval cadence and verbosity are not in the fingerprint."""

    workdir = str(tmp_path / "w")
    _interrupt_after_save_at(monkeypatch, 5)  # as if killed after the first save
    with pytest.raises(_Interrupted):
        train.main(tiny_config(data_dir), workdir)
    monkeypatch.undo()
    assert _read_ckpt(workdir)[0]["step"] == 5

    config = tiny_config(data_dir)
    config.log_training_steps = 3
    config.ckpt_steps = 4
    config.verbose = 2
    config.evals.val.log_steps = 4
    config.evals.fewshot.shots = (1,)
    config.input.cache = False
    final = train.main(config, workdir)
    assert final["step"] == 12
    _assert_same_state(_read_ckpt(finished_run[0])[1], _read_ckpt(workdir)[1])
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["ckpt_steps"] == 4  # the accepted run's config


@pytest.mark.skipif(
    BACKEND != "jax", reason="checkpoint.npz is what every run writes off JAX"
)
def test_jax_workdir_with_a_checkpoint_npz_resumes_from_it(
    finished_run, data_dir, tmp_path, monkeypatch
):
    """A JAX run begun before JAX wrote Orbax (checkpoint.npz) still resumes."""
    main_module = importlib.import_module("keras_scalevit.training.main")
    workdir = str(tmp_path / "w")
    npz = os.path.join(workdir, "checkpoint.npz")
    monkeypatch.setattr(
        main_module, "make_checkpointer", lambda w: train.Checkpointer(npz)
    )
    _interrupt_after_save_at(monkeypatch, 5)
    with pytest.raises(_Interrupted):
        train.main(tiny_config(data_dir), workdir)
    monkeypatch.undo()
    assert os.listdir(workdir) and not os.path.exists(os.path.join(workdir, CKPT))
    ckpt = train.make_checkpointer(workdir)
    assert isinstance(ckpt, train.Checkpointer) and ckpt.metadata()["step"] == 5

    final = train.main(tiny_config(data_dir), workdir)
    assert final["step"] == 12
    assert not os.path.exists(os.path.join(workdir, CKPT))  # still the .npz
    meta, resumed = train.read_checkpoint(npz)
    assert meta["step"] == 12
    _assert_same_state(_read_ckpt(finished_run[0])[1], resumed)


@pytest.mark.skipif(
    BACKEND == "jax", reason="JAX reads Orbax checkpoints; the refusal is off JAX"
)
def test_orbax_checkpoint_is_refused_off_jax(data_dir, tmp_path):
    workdir = tmp_path / "w"
    (workdir / "checkpoint" / "12" / "state").mkdir(parents=True)
    with pytest.raises(train.CheckpointError, match="KERAS_BACKEND=jax") as info:
        train.main(tiny_config(data_dir), str(workdir))
    assert str(workdir / "checkpoint") in str(info.value)
    assert BACKEND in str(info.value)
    assert sorted(os.listdir(workdir)) == ["checkpoint"]  # nothing written


@pytest.mark.skipif(
    BACKEND != "jax", reason="Orbax writes the JAX backend's checkpoints"
)
def test_orbax_info_logs_are_quiet(tmp_path):
    """A save logs nothing below WARNING from Orbax (it logs each save, wait and
    delete at INFO: ~100 lines per digits run), even with absl at INFO."""
    import logging

    from absl import logging as absl_logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    handler, verbosity = Keep(), absl_logging.get_verbosity()
    logging.getLogger("absl").addHandler(handler)
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        ckpt = train.OrbaxCheckpointer(tmp_path / "checkpoint")
        ckpt.save(model, step=1, fingerprint={})
        ckpt.save(model, step=2, fingerprint={})
        ckpt.close()
    finally:
        absl_logging.set_verbosity(verbosity)
        logging.getLogger("absl").removeHandler(handler)
    orbax = [r for r in records if "orbax" in r.pathname]
    assert not [r for r in orbax if r.levelno < logging.WARNING], orbax[:3]


@pytest.mark.skipif(
    BACKEND != "jax", reason="Orbax, the asynchronous writer, is the JAX backend's"
)
def test_asynchronous_save_holds_the_values_of_its_step(tmp_path):
    """Training goes on (its compiled steps donate the variables' buffers) while
    a save is written; the committed checkpoint holds the values saved."""
    model = keras.Sequential(
        [keras.Input((512,)), keras.layers.Dense(1024, name="dense")], name="net"
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 512)).astype("float32")
    y = rng.normal(size=(64, 1024)).astype("float32")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # built, optimizer too

    def values():
        variables = model.variables + model.optimizer.variables
        return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]

    expected = values()
    path = tmp_path / "checkpoint"
    ckpt = train.OrbaxCheckpointer(path)
    try:
        ckpt.save(model, step=1, fingerprint={})
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 8 more steps
        ckpt.wait()
        assert (path / "1").is_dir()
        meta, arrays = ckpt.read()
    finally:
        ckpt.close()
    saved = [arrays[f"model/{i}"] for i in range(len(meta["model"]))]
    saved += [arrays[f"optimizer/{i}"] for i in range(len(meta["optimizer"]))]
    assert len(saved) == len(expected)
    for got, want in zip(saved, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(values()[0], expected[0])  # training did go on


def test_stale_checkpoint_temp_files_are_removed_at_start(
    finished_run, data_dir, tmp_path
):
    workdir = _copy_run(finished_run[0], tmp_path / "w")
    ckpt = os.path.join(workdir, CKPT)
    committed = sorted(os.listdir(ckpt)) if BACKEND == "jax" else None
    if BACKEND == "jax":  # Orbax's step folders of saves killed before their commit
        # (this Orbax names them `<step>.orbax-checkpoint-tmp`, others add `-<n>`)
        stale = [
            os.path.join(ckpt, "13.orbax-checkpoint-tmp"),
            os.path.join(ckpt, "24.orbax-checkpoint-tmp-4567"),
        ]
    else:
        stale = [f"{ckpt}.tmp-{pid}" for pid in (123, 4567)]
    for path in stale:
        if BACKEND == "jax":
            os.makedirs(os.path.join(path, "state"))
            path = os.path.join(path, "state", "half")
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
    train.main(tiny_config(data_dir), workdir)
    assert not any(os.path.exists(p) for p in stale)
    assert sorted(os.listdir(workdir)) == [CKPT, "metrics.jsonl", "model.keras"]
    if BACKEND == "jax":
        assert sorted(os.listdir(ckpt)) == committed


def test_refused_resume_leaves_config_json_untouched(finished_run, data_dir, tmp_path):
    workdir = _copy_run(finished_run[0], tmp_path / "w")
    config_json = os.path.join(workdir, "config.json")
    with open(config_json, "w") as f:
        f.write('{"the": "original"}')
    config = tiny_config(data_dir)
    config.loss = "sigmoid_xent"
    with pytest.raises(train.CheckpointError, match="loss"):
        train.main(config, workdir)
    with open(config_json) as f:
        assert f.read() == '{"the": "original"}'


def test_rerun_of_finished_run_rewrites_nothing(finished_run, data_dir, tmp_path):
    workdir = _copy_run(finished_run[0], tmp_path / "w")
    before = _snapshot(workdir)  # contents and mtimes, the checkpoint's files too
    assert any(k.startswith(CKPT) for k in before)
    again = train.main(tiny_config(data_dir), workdir)
    assert again == _read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]
    assert again["final"] and again["step"] == 12 and "train_wall_s" in again
    after = _snapshot(workdir)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], name


def test_run_killed_after_its_last_checkpoint_is_completed(
    finished_run, data_dir, tmp_path
):
    """Final checkpoint written, but no final record / model.keras yet."""
    workdir = _copy_run(finished_run[0], tmp_path / "w", names=(CKPT,))
    records = _read_jsonl(os.path.join(finished_run[0], "metrics.jsonl"))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for r in records[:-1]:
            f.write(json.dumps(r) + "\n")
    ckpt = _snapshot(os.path.join(workdir, CKPT))
    final = train.main(tiny_config(data_dir), workdir)
    assert _snapshot(os.path.join(workdir, CKPT)) == ckpt
    assert final["step"] == 12 and "train_wall_s" not in final  # nothing trained
    assert final["val_prec@1"] == pytest.approx(records[-1]["val_prec@1"], abs=1e-6)
    assert os.path.exists(os.path.join(workdir, "model.keras"))


# ---------------------------------------------------------------- command line


def test_help_answers_before_keras_and_tensorflow_load():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_scalevit.train", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "--workdir" in result.stdout, result.stdout + result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    # The default config file (configs/digits.py) was loaded, Keras was not.
    assert "keras_scalevit.configs._common" in imported
    assert not {"keras", "tensorflow", "jax", "torch"} & imported


def test_configs_spell_the_digits_name_of_the_data_package():
    from keras_scalevit.configs import _common
    from keras_scalevit.data import DIGITS_NAME

    assert _common.DIGITS_NAME == DIGITS_NAME
