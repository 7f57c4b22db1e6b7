"""Supervised training of a timm image classifier: the reference the diffusion models'
features are compared with (``probe train classifier``).

Cross-entropy on the labels of a dataset spec, the network built by
``timm.create_model(arch, pretrained=False, **config)``, and inputs normalised with
mean = std = 0.5 on images in [0, 1], which is the [-1, 1] range the diffusion models
see.  The loop (:mod:`.loop`) brings the run folder, checkpoints, exact resume and the
log; ``model.pt`` is timm's plain state dict, so it loads with ``timm.create_model(arch,
**config).load_state_dict(...)`` as well as through probe's timm family.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ProbeError, suggest
from ..options import OutputOptions, RunOptions, gather, refuse_unknown

MEAN = STD = 0.5
# The shipped DiT's size (probe/extractors/registry.py, dit-fmnist) as a timm ViT.
DEFAULT_ARCH = "vit_tiny_patch16_224"
VIT_DEFAULTS = dict(patch_size=7, embed_dim=128, depth=4, num_heads=2)


def is_vit(arch: str) -> bool:
    """Whether ``arch`` is built by timm's VisionTransformer (which takes img_size,
    patch_size, embed_dim, depth and num_heads)."""
    import timm

    return timm.models.model_entrypoint(arch).__module__ == "timm.models.vision_transformer"


def check_arch(arch: str) -> str:
    import timm

    if not timm.is_model(arch):
        raise ProbeError(f"unknown timm architecture {arch!r}{suggest(arch, timm.list_models())}"
                         "; see timm.list_models()")
    return arch


def model_config(arch: str, image_size: int, channels: int, num_classes: int,
                 vit: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``timm.create_model``: channels and classes from the data,
    for ViTs the image size and ``vit`` (patch_size, embed_dim, depth, num_heads; unset
    ones from VIT_DEFAULTS), then ``extra`` (``--config``) over all of them."""
    check_arch(arch)
    cfg = dict(in_chans=channels, num_classes=num_classes)
    given = {k: v for k, v in (vit or {}).items() if v is not None}
    if is_vit(arch):
        cfg.update(img_size=image_size, **dict(VIT_DEFAULTS, **given))
    elif given:
        raise ProbeError(f"{', '.join('--' + k.replace('_', '-') for k in given)} set a ViT's "
                         f"size; {arch} is not a ViT: give its arguments with --config KEY=VALUE")
    return {**cfg, **(extra or {})}


def create(arch: str, config: dict[str, Any]) -> torch.nn.Module:
    """A fresh timm network (initialised from torch's global RNG: seed it first)."""
    import timm

    try:
        return timm.create_model(arch, pretrained=False, **config)
    except (TypeError, ValueError, AssertionError) as e:
        raise ProbeError(f"timm cannot build {arch} with {config}: {e}") from e


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def pretrained_cfg(image_size: int, channels: int) -> dict[str, Any]:
    """The input pipeline in timm's words (what timm's resolve_data_config reads)."""
    return dict(input_size=(channels, image_size, image_size), mean=(MEAN,) * channels,
                std=(STD,) * channels, interpolation="bicubic", crop_pct=1.0)


class ClassifierObjective:
    """Cross-entropy of a timm classifier; deterministic (no dropout, no augmentation:
    the generator is unused)."""

    family = "timm"

    def __init__(self, arch: str, config: dict[str, Any], image_size: int) -> None:
        self.arch, self.config = arch, dict(config)
        self.model = create(arch, self.config)
        # timm.create_model(arch, **config.json) rebuilds the network with its input
        # pipeline (timm's pretrained_cfg argument); `probe extract --model timm:ARCH
        # --config config.json` reads the same
        self.kwargs = dict(self.config, pretrained_cfg=pretrained_cfg(
            image_size, self.config["in_chans"]))

    def loss(self, images: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(self.model(normalise(images)), labels)

    def extra_files(self) -> dict[str, Any]:
        return {"config.json": self.kwargs}

    def export(self, meta: Any = None) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


@torch.no_grad()
def predict(model: torch.nn.Module, images: Any, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (a timm classifier, eval mode) on an :class:`Images`."""
    model.eval()
    device = next(model.parameters()).device
    order = list(range(len(images)))
    out = [model(normalise(x.to(device))).float().cpu()
           for x, _ in images.batches(order, batch_size)]
    return torch.cat(out)


def evaluate(model: torch.nn.Module, images: Any, class_names: list[str],
             batch_size: int = 256) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and the confusion matrix of a classifier on
    ``images`` (probe's own metrics, as ``probe fit`` reports them)."""
    from ..heads.metrics import classification_metrics

    scores = predict(model, images, batch_size).numpy()
    metrics = classification_metrics(images.labels.numpy(), scores, class_names)
    metrics.pop("predictions")
    return dict(metrics, num_images=len(images))


def train_classifier(data: str = "demo", out: str | os.PathLike | None = None, *,
                     arch: str = DEFAULT_ARCH, split: str = "train", image_size: int = 28,
                     channels: int | None = None, limit: int | None = None,
                     vit: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                     epochs: int | None = None, steps: int | None = None,
                     batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
                     warmup: int = 0, seed: int = 0, resume: bool = False,
                     save_every: int = 0, log_every: int = 10, eval_split: str | None = None,
                     run: RunOptions | None = None, output: OutputOptions | None = None,
                     command: Any = None, **options: Any) -> dict[str, Any]:
    """Train a timm classifier on ``data`` (a dataset spec) into the run folder ``out``
    (default runs/classifier).

    ``vit``: patch_size, embed_dim, depth, num_heads of a ViT (VIT_DEFAULTS: the shipped
    DiT's size); ``config``: any other ``timm.create_model`` arguments.  ``eval_split``:
    after training, measure the classifier on that split of ``data`` and record it in the
    log as ``eval``.  ``batch_size`` is the optimizer's (it changes the result).
    ``run`` (:class:`~probe.options.RunOptions`, or its fields as keywords): ``device``
    (default auto), ``threads``, ``num_workers``, ``progress``; ``output``
    (:class:`~probe.options.OutputOptions`): ``overwrite``.  Returns the log
    (``out/log.json``).
    """
    from ..data import data_channels, load_dataset
    from ..files import atomic_json
    from . import loop

    given = dict(options, **({"out": out} if out is not None else {}))
    if "batch_size" in given or (run is not None and run.batch_size is not None):
        raise ProbeError("train_classifier: batch_size is the optimizer's, give it as "
                         "batch_size=, not in RunOptions")
    run = gather(RunOptions, run, given)
    output = gather(OutputOptions, output, given)
    refuse_unknown(given, RunOptions, OutputOptions)
    output.refuse_dtype("probe train classifier")
    out = os.fspath(output.out or os.path.join("runs", "classifier"))
    run.use_threads()
    if epochs is None and steps is None:
        epochs = 1
    loop.check_options(epochs, steps, batch_size, lr, warmup, save_every, log_every)
    device = loop.resolve_device(run.device)
    if limit is not None and limit < 1:
        raise ProbeError(f"--limit must be at least 1, not {limit}")
    probe_set = load_dataset(data, split, image_size)
    channels = channels or data_channels(probe_set)
    cfg = model_config(arch, image_size, channels, len(probe_set.class_names), vit, config)
    dataset = load_dataset(data, split, image_size, channels)
    test = load_dataset(data, eval_split, image_size, channels) if eval_split else None
    loop.seed_everything(seed)
    objective = ClassifierObjective(arch, cfg, image_size)  # bad --config: before any work
    state = loop.prepare_out(out, resume, output.overwrite)
    from ..pipeline.gpu import resolve_num_workers

    workers = resolve_num_workers(run.num_workers, device)
    images = loop.Images(dataset, limit=limit, num_workers=workers, progress=run.progress)
    run_config = dict(family="classifier", arch=arch, model=cfg, data=data, split=split,
                      image_size=image_size, channels=channels, limit=limit,
                      normalise=dict(mean=MEAN, std=STD))
    log = loop.train(objective, images, out, epochs=epochs, steps=steps, batch_size=batch_size,
                     lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed, device=device,
                     state=state, save_every=save_every, log_every=log_every,
                     run_config=run_config, command=command, progress=run.progress)
    if test is not None:
        test_images = loop.Images(test, num_workers=workers, progress=run.progress)
        log["eval"] = dict(evaluate(objective.model, test_images, test.class_names),
                           data=data, split=eval_split, step=log["step"])
        atomic_json(log, os.path.join(out, loop.LOG_FILE))
    return log


__all__ = ["ClassifierObjective", "DEFAULT_ARCH", "VIT_DEFAULTS", "create", "evaluate",
           "model_config", "predict", "train_classifier"]
