"""Models from torchvision and timm, with preprocessing and class names from their weights' metadata.

torchvision's own weight loading unpickles with `weights_only=False`; convscope first reads the same file with
`weights_only=True` (downloading it into the torch hub cache if needed), so a tampered file fails before torchvision
touches it.

`pretrained=False` builds the architecture (random init, seeded) with the named weights' metadata only: torchvision's
`Weights` enum, timm's `pretrained_cfg`. That is how a weight file loaded with `--arch NAME@WEIGHTS` gets its
preprocessing and class names without downloading anything. Without a weights name the preprocessing of the
default weights is assumed, and `source["assumed"]` says so.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from ..errors import ModelLoadError, suggest
from .loading import parse_options, seeded
from .spec import ModelSpec

__all__ = ["torchvision_spec", "timm_spec", "torchvision_names", "timm_names"]


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification model names (`torchvision.models.list_models(module=torchvision.models)`)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> tuple[str, ...] | None:
    """timm's model names, or None when timm is not installed."""
    try:
        import timm
    except ImportError:
        return None
    return tuple(timm.list_models())


def _split_weights(rest: str) -> tuple[str, str | None, dict[str, Any]]:
    head, options = parse_options(rest)
    name, at, weights = head.partition("@")
    return name.strip(), (weights.strip() or None) if at else None, options


def _torchvision_weights(enum: Any, requested: str, name: str) -> Any:
    key = requested.rsplit(".", 1)[-1]  # accept "MobileNet_V2_Weights.IMAGENET1K_V1" too
    valid = [w.name for w in enum]
    if key.upper() == "DEFAULT":
        return enum.DEFAULT
    for weights in enum:
        if weights.name.upper() == key.upper():
            return weights
    raise ModelLoadError(f"torchvision:{name} has no weights {requested!r}; valid: {', '.join(valid)}, DEFAULT."
                         f"{suggest(key, valid)}")


def _preprocessing(weights: Any) -> dict[str, Any]:
    transforms = weights.transforms()
    out: dict[str, Any] = {}
    mode = getattr(getattr(transforms, "interpolation", None), "value", None)
    if mode in ("bilinear", "bicubic"):
        out["interpolation"] = mode
    crop = getattr(transforms, "crop_size", None)
    resize = getattr(transforms, "resize_size", None)
    if crop:
        out["input_size"] = (int(crop[0]), int(crop[-1]))
    if resize:
        out["resize"] = int(resize[0])
    if getattr(transforms, "mean", None) is not None:
        out["mean"] = tuple(float(v) for v in transforms.mean)
        out["std"] = tuple(float(v) for v in transforms.std)
    return out


def _shown(prep: dict[str, Any]) -> str:
    crop = prep.get("input_size")
    parts = [f"resize {prep['resize']}" if prep.get("resize") else "", f"crop {crop[0]}x{crop[1]}" if crop else "",
             "its mean and std" if prep.get("mean") else ""]
    return ", ".join(p for p in parts if p)


def torchvision_spec(rest: str, *, seed: int, text: str, pretrained: bool = True) -> ModelSpec:
    """`NAME[@WEIGHTS][,option=value...]` -> ModelSpec (see `convscope.models.load`). `pretrained=False`: random
    init (seeded) with WEIGHTS' preprocessing and class names, for a weight file that holds those weights."""
    import torchvision
    from torchvision.models import get_model, get_model_weights

    name, requested, options = _split_weights(rest)
    names = torchvision_names()
    if name not in names:
        other = " (it is not a classification model, which is what convscope loads)." if name in \
            torchvision.models.list_models() else "." + suggest(name, names)
        raise ModelLoadError(f"unknown torchvision model {name!r}{other} `convscope models` lists them all.")
    enum = get_model_weights(name)
    weights = _torchvision_weights(enum, requested, name) if requested else None
    if weights is not None and pretrained:
        _verify_weights_file(weights, text)
    if weights is not None and not pretrained and "categories" in weights.meta:
        options.setdefault("num_classes", len(weights.meta["categories"]))  # as get_model does for weights
    try:
        with seeded(seed):
            module = get_model(name, weights=weights if pretrained else None, **options)
    except TypeError as error:
        raise ModelLoadError(f"{text!r}: bad option ({error})") from None
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{text!r} cannot be built: {error}") from None
    described = weights or enum.DEFAULT
    prep = _preprocessing(described)
    class_names = list(weights.meta["categories"]) if weights is not None and "categories" in weights.meta else None
    if class_names and _outputs(module) not in (None, len(class_names)):
        class_names = None
    source: dict[str, Any] = {"model": text, "weights": weights.name if weights and pretrained else None,
                              "preprocessing": f"{type(described).__name__}.{described.name}.transforms()"}
    if weights is None or not pretrained:
        source["seed"] = seed
    else:
        source["weights_url"] = weights.url
    if weights is None and not pretrained:
        valid = [w.name for w in enum]
        source["assumed"] = (f"no weights named in {text!r}: assumed the preprocessing of {described.name} "
                             f"({_shown(prep)}) and no class names; name the weights the file holds to take theirs, "
                             f"e.g. torchvision:{name}@{valid[0]}")
    return ModelSpec(module=module, name=text, channels=3, class_names=class_names, source=source, **prep)


def _outputs(module: Any) -> int | None:
    last = None
    for m in module.modules():
        if hasattr(m, "out_features"):
            last = m.out_features
    return last


def _verify_weights_file(weights: Any, text: str) -> None:
    """Read (downloading if needed) the weights with `weights_only=True` before torchvision loads them."""
    import pickle

    try:
        weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(f"{text!r}: the weights file holds more than tensors; refusing to load it "
                             f"({str(error).splitlines()[0]})") from None
    except Exception as error:  # URLError, HTTPError, OSError, RuntimeError (hash mismatch), ...
        import torch.hub

        raise ModelLoadError(
            f"{text!r}: weights {weights.url.rsplit('/', 1)[-1]!r} are not in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints) and could not be downloaded: {error}"
        ) from None


def timm_preprocessing(module: Any) -> tuple[dict[str, Any], str | None]:
    """A timm model's eval preprocessing from its `pretrained_cfg` (`timm.data.resolve_data_config`) as ModelSpec
    fields, and a note when timm's transform cannot be matched exactly (crop modes other than a centre crop)."""
    from timm.data import resolve_data_config

    config = resolve_data_config(model=module)
    channels, height, width = config["input_size"]
    crop = float(config.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
    mode = config.get("crop_mode") or "center"
    out: dict[str, Any] = {"channels": int(channels), "input_size": (int(height), int(width)),
                           "mean": tuple(float(v) for v in config["mean"]) if config.get("mean") else None,
                           "std": tuple(float(v) for v in config["std"]) if config.get("std") else None}
    if config.get("interpolation") in ("bilinear", "bicubic"):
        out["interpolation"] = config["interpolation"]
    note = None
    if mode == "center" and height == width:  # timm: shorter side to floor(size / crop_pct), then the centre crop
        out["resize"] = int(math.floor(height / crop))
    else:
        out["resize"] = int(math.floor(min(height, width) / crop))
        note = (f"timm's {mode!r} crop ({config.get('crop_pct')}) of a {height}x{width} input is approximated by a "
                "resize of the shorter side and a centre crop")
    return out, note


def timm_spec(rest: str, *, seed: int, text: str, pretrained: bool = True) -> ModelSpec:
    """`NAME[@TAG][,option=value...]`: random init, or timm's pretrained weights for TAG (`@default`: timm's
    default tag). Preprocessing comes from the model's `pretrained_cfg` (the tag's, or the default tag's).
    `pretrained=False`: random init (seeded) with TAG's metadata, for a weight file that holds those weights."""
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"{text!r} needs timm, which is not installed: pip install 'convscope[timm]'") from None
    name, tag, options = _split_weights(rest)
    if not timm.is_model(name.split(".")[0]):
        raise ModelLoadError(f"unknown timm model {name!r}.{suggest(name, timm.list_models())}")
    full = name if tag in (None, "default") else f"{name}.{tag}"
    download = tag is not None and pretrained
    try:
        with seeded(seed):
            module = timm.create_model(full, pretrained=download, **options)
    except TypeError as error:
        raise ModelLoadError(f"{text!r}: bad option ({error})") from None
    except Exception as error:  # download failures, unknown tags
        raise ModelLoadError(f"{text!r} cannot be created: {error}") from None
    prep, note = timm_preprocessing(module)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    class_names = None
    if tag is not None:
        try:
            from timm.data import ImageNetInfo, infer_imagenet_subset

            subset = infer_imagenet_subset(module)
            if subset:
                class_names = list(ImageNetInfo(subset).label_descriptions(as_dict=False))
        except (ImportError, ValueError, AttributeError):
            class_names = None
    if class_names and _outputs(module) not in (None, len(class_names)):
        class_names = None
    source: dict[str, Any] = {"model": text, "weights": tag if download else None,
                              "seed": None if download else seed,
                              "preprocessing": f"timm pretrained_cfg of {name}.{cfg.get('tag') or 'default'}"}
    notes = [note] if note else []
    if tag is None and not pretrained:
        notes.append(f"no weights tag in {text!r}: assumed the preprocessing of timm's default tag "
                     f"{cfg.get('tag')!r} ({_shown(prep)}) and no class names; name the tag the file holds, e.g. "
                     f"timm:{name}@{cfg.get('tag') or 'TAG'}")
    if notes:
        source["assumed"] = "; ".join(notes)
    return ModelSpec(module=module, name=text, class_names=class_names, source=source, **prep)
