"""Flow-matching training of a SiT: SiT's default transport (``--path-type Linear
--prediction velocity``, uniform t in [0, 1], no loss weighting), unconditional.

Per batch, as SiT's ``Transport.training_losses`` does: t ~ U[0, 1), ε ~ N(0, I),
x_t = α_t·x + σ_t·ε on the model's own interpolant (:mod:`probe.extractors.sit.schedule`),
loss = mean squared error between the network's output and the velocity dα·x + dσ·ε.
The checkpoint is the network's plain state dict (SiT's release format).
"""
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ProbeError


class FlowObjective:
    def __init__(self, model: Any, config: dict | None = None):
        self.model = model
        self.config = config  # the family arguments load_model needs: saved as config.json
        self.family = model.family
        if not getattr(model.schedule, "continuous", False):
            raise ProbeError(f"flow matching needs a continuous-time model (sit), not "
                             f"{model.family}")
        if model.config.get("z_dims"):
            raise ProbeError("probe train sit trains without REPA's projectors (no DINOv2 "
                             "here): drop z_dims")

    def loss(self, images: torch.Tensor, labels: Any,
             generator: torch.Generator) -> torch.Tensor:
        """Mean squared velocity error; randomness from ``generator`` (CPU)."""
        model = self.model
        x0 = model.prepare(images)
        t = torch.rand(x0.shape[0], generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        t = t.to(x0.device, x0.dtype)
        x_t = model.schedule.q_sample(x0, t, noise)
        target = model.schedule.velocity(x0, noise)
        return F.mse_loss(model(x_t, t), target)

    def extra_files(self) -> dict:
        return {"config.json": self.config} if self.config is not None else {}

    def export(self, meta: Any = None) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.model.net.state_dict().items()}


__all__ = ["FlowObjective"]
