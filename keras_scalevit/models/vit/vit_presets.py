"""The preset registry: public big_vision ViT checkpoints and the shipped digits ViT.

Every URL below is copied from big_vision's ``VANITY_NAMES`` (``big_vision/models/
vit.py``, google-research/big_vision at commit 0127fb6b), which also lists the
SigLIP 2 files of ``configs/proj/image_text/README_siglip2.md``. The architectures
come from the configs that load them: ``configs/load_and_eval.py`` (``vit_i21k``:
``pool_type='tok'``, 21,843 classes, ``sigmoid_xent``, eval
``resize_small(256)|central_crop(224)``; ``vit_i1k``: S/16 ``gap``, ``sincos2d``,
``rep_size=True``), ``configs/vit_i1k.py`` (``sigmoid_xent``),
``configs/proj/flexivit/i1k_deit3_distill.py`` (DeiT III: ``pool_type='tok'``,
patch 16, eval ``resize(res//7*8)|central_crop(res)``, logits read with a softmax)
and the SigLIP demo colabs (image tower ``out_dim=None``: MAP pooling, no head; pp
``resize(res)|value_range(-1, 1)``). No SHA-256 is published for these files, so
none is recorded; a download is still checked to be a readable ``.npz``.

The paper's own JFT-3B ViT-g/14 and ViT-G/14 weights are not public.
"""

import copy

from keras_scalevit.models.vit.vit_variants import count_params, decode_variant

_GS = "gs://"

# An entry: what the arrays hold (`arch`, checked against the converter's inference
# by the tests), where they are (`url`, big_vision's `path.npz:subtree` syntax) and
# how to feed and read the model (`preprocessor`: a ViTImageClassifierPreprocessor
# config).


def _entry(
    description, url, arch, preprocessor, alias=None, sha256=None, resolution=None
):
    return dict(
        description=description,
        resolution=resolution or arch["image_size"],
        url=url,
        sha256=sha256,
        alias=alias,
        arch=arch,
        preprocessor=preprocessor,
    )


def _arch(variant, pool_type, num_classes, image_size, posemb="learn", rep_size=False):
    return dict(
        variant=variant,
        pool_type=pool_type,
        posemb=posemb,
        rep_size=rep_size,
        num_classes=num_classes,
        image_size=image_size,
    )


def _augreg():
    files = {
        "Ti/16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz",
        "S/32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0.npz",
        "S/16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz",
        "B/32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0.npz",
        "B/16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
        "B/8": "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz",
        "L/16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0.npz",
    }
    out = {}
    for variant, file in files.items():
        name = "vit_" + variant.lower().replace("/", "") + "_i21k_augreg"
        out[name] = _entry(
            f"ViT-{variant} pre-trained on ImageNet-21k ('How to train your ViT', "
            "AugReg), class token, 21,843 sigmoid classes, 224 px.",
            f"gs://vit_models/augreg/{file}",
            _arch(variant, "tok", 21843, 224),
            dict(
                image_size=224,
                resize="resize_small",
                resize_size=256,
                class_names="imagenet21k",
                activation="sigmoid",
            ),
            alias=f"howto-i21k-{variant}",
        )
    return out


def _plain_i1k():
    out = {}
    for epochs in (90, 150, 300):
        out[f"vit_s16_i1k_{epochs}ep"] = _entry(
            f"Better plain ViT-S/16 trained on ImageNet-1k for {epochs} epochs: "
            "global average pooling, sincos2d posemb, representation layer, 224 px.",
            f"gs://big_vision/vit_s16_i1k_{epochs}ep.npz",
            _arch("S/16", "gap", 1000, 224, posemb="sincos2d", rep_size=384),
            dict(
                image_size=224,
                resize="resize_small",
                resize_size=256,
                class_names="imagenet1k",
                activation="sigmoid",
            ),
            alias=f"i1k-s16-{epochs}ep",
        )
    return out


def _deit3():
    out = {}
    for letter, size in (("S", "small"), ("B", "base"), ("L", "large")):
        for res in (224, 384):
            for data in ("1k", "21k"):
                name = f"deit3_{letter.lower()}16_{res}_{data}"
                pre = (
                    "ImageNet-21k pre-trained, ImageNet-1k fine-tuned"
                    if (data == "21k")
                    else "ImageNet-1k"
                )
                out[name] = _entry(
                    f"DeiT III ViT-{letter}/16 ({pre}), class token, 1000 classes, "
                    f"{res} px (converted by big_vision to take [-1, 1] inputs).",
                    f"gs://big_vision/zoo/deit3/bv_deit_3_{size}_{res}_{data}.npz",
                    _arch(f"{letter}/16", "tok", 1000, res),
                    dict(
                        image_size=res,
                        resize="resize",
                        resize_size=res // 7 * 8,
                        class_names="imagenet1k",
                        activation="softmax",
                    ),
                    alias=f"deit3_{letter}_{res}_{data}",
                )
    return out


def _siglip_entry(family, name_variant, variant, res, url, alias):
    patch = decode_variant(variant)["patch_size"]
    model_size = res // patch * patch  # big_vision's VALID conv drops the rest
    pp = dict(
        image_size=model_size,
        resize="resize",
        resize_size=res if model_size != res else None,
        crop="top_left",
        class_names=None,
        activation=None,
    )
    return _entry(
        f"{family} ViT-{name_variant} image tower (WebLI), MAP pooling, no head: "
        f"the model returns the image embedding; {res} px.",
        url,
        _arch(variant, "map", 0, model_size),
        pp,
        alias=alias,
        resolution=res,
    )


def _siglip():
    out = {}
    files = (
        ("B/16", 224, "webli_en_b16_224_63724782", ""),
        ("B/16", 256, "webli_en_b16_256_60500360", ""),
        ("B/16", 384, "webli_en_b16_384_68578854", ""),
        ("B/16", 512, "webli_en_b16_512_68580893", ""),
        ("L/16", 256, "webli_en_l16_256_60552751", ""),
        ("L/16", 384, "webli_en_l16_384_63634585", ""),
        ("So400m/14", 224, "webli_en_so400m_224_57633886", ""),
        ("So400m/14", 384, "webli_en_so400m_384_58765454", ""),
        ("B/16", 256, "webli_i18n_b16_256_66117334", "-i18n"),
    )
    for variant, res, file, suffix in files:
        key = variant.lower().replace("/", "")
        name = f"siglip_{key}_{res}" + ("_i18n" if suffix else "")
        out[name] = _siglip_entry(
            "SigLIP" + (" multilingual" if suffix else ""),
            variant,
            variant,
            res,
            f"gs://big_vision/siglip/{file}.npz:img",
            f"SigLIP {variant}{suffix} {res}",
        )
    for variant, res in (
        ("B/16", 224),
        ("B/16", 256),
        ("B/16", 384),
        ("B/16", 512),
        ("B/32", 256),
        ("L/16", 256),
        ("L/16", 384),
        ("L/16", 512),
        ("So400m/14", 224),
        ("So400m/14", 384),
        ("So400m/16", 256),
        ("So400m/16", 384),
        ("So400m/16", 512),
        ("g-opt/16", 256),
        ("g-opt/16", 384),
    ):
        key = variant.lower().replace("/", "")
        out[f"siglip2_{key.replace('-', '')}_{res}"] = _siglip_entry(
            "SigLIP 2",
            variant,
            variant,
            res,
            f"gs://big_vision/siglip2/siglip2_{key}_{res}.npz:img",
            f"SigLIP2 {variant} {res}",
        )
    return out


# The offline preset shipped inside the package (`keras_scalevit/presets/`).
_PACKAGED = {
    "vit_digits": dict(
        description=(
            "The digits ViT trained by the main job's recipe "
            "(configs/digits.py): width 64, 2 blocks, patch 2, MAP head, 8x8 "
            "images, 10 classes; ships inside the package (no download)."
        ),
        resolution=8,
        url=None,
        sha256=None,
        alias=None,
        arch=_arch("mu/2", "map", 10, 8) | dict(width=64, depth=2, num_heads=4),
        preprocessor=None,  # stored in the preset directory
        packaged="vit_digits",
    ),
}

PRESETS = {**_PACKAGED, **_augreg(), **_plain_i1k(), **_deit3(), **_siglip()}
ALIASES = {e["alias"]: name for name, e in PRESETS.items() if e.get("alias")}


def _https(url):
    if url and url.startswith(_GS):
        return "https://storage.googleapis.com/" + url[len(_GS) :]
    return url


def preset_params(entry):
    """Parameter count of a registry entry's model (with its head)."""
    a = entry["arch"]
    c = decode_variant(a["variant"])
    c.update({k: a[k] for k in ("width", "depth", "num_heads") if k in a})
    if "width" in a:
        c["mlp_dim"] = 4 * a["width"]
    d, depth, m, p = c["width"], c["depth"], c["mlp_dim"], c["patch_size"]
    if "width" in a:  # a custom size: count from the shapes directly
        block = 4 * d * d + 4 * d + 2 * d * m + m + d + 4 * d
        n = (a["image_size"] // p) ** 2
        total = depth * block + p * p * 3 * d + d + 2 * d + n * d
        if a["pool_type"] == "map":
            total += d + 4 * d * d + 4 * d + 2 * d * m + m + d + 2 * d
    else:
        total = count_params(a["variant"], a["image_size"], a["pool_type"], a["posemb"])
    rep = a["rep_size"]
    width = d
    if rep:
        rep = width if rep is True else rep
        total += width * rep + rep
        width = rep
    if a["num_classes"]:
        total += width * a["num_classes"] + a["num_classes"]
    return total


def list_presets():
    """The available presets: ``{name: one-line description}``.

    Names are accepted by ``ViTClassifier.from_preset`` / ``ViTBackbone.from_preset``
    (as are big_vision's own vanity names, e.g. ``"howto-i21k-B/16"``).

    Example:
    >>> import keras_scalevit
    >>> presets = keras_scalevit.list_presets()
    >>> "vit_digits" in presets and "siglip2_so400m14_384" in presets
    True
    """
    return {name: e["description"] for name, e in PRESETS.items()}


def get_preset_entry(name):
    """A deep copy of the registry entry for a name or big_vision vanity name."""
    name = ALIASES.get(name, name)
    return copy.deepcopy(PRESETS[name]) if name in PRESETS else None


def presets_table():
    """The README table: name, variant, pool, resolution, classes, params, source.

    Example:
    >>> from keras_scalevit.models.vit.vit_presets import presets_table
    >>> presets_table().splitlines()[0]
    '| preset | variant | pool | resolution | classes | params | source |'
    """
    lines = [
        "| preset | variant | pool | resolution | classes | params | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in PRESETS.items():
        a = e["arch"]
        res = e["resolution"]
        variant = a["variant"] if "width" not in a else "custom (64/2, patch 2)"
        src = _https(e["url"]) if e["url"] else "shipped in the package"
        params = preset_params(e) / 1e6
        lines.append(
            f"| `{name}` | {variant} | {a['pool_type']} | {res} | "
            f"{a['num_classes'] or '— (embedding)'} | {params:.1f}M | {src} |"
        )
    return "\n".join(lines)
