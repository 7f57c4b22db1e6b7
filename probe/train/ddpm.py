"""DDPM training of any Extractor's network: epsilon prediction, uniform t, the model's
own schedule and input pipeline, unconditional (class-conditional nets get their null
class).  Used for the DiT and ADM families; the checkpoint is the network's plain state
dict, the family's own format.
"""
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ProbeError


class DDPMObjective:
    def __init__(self, model, config=None):
        self.model = model
        self.config = config  # the family arguments load_model needs: saved as config.json
        self.family = model.family
        c = model.config
        if c.get("learn_sigma"):
            raise ProbeError("probe train fits the noise prediction only (no variance term): "
                             "set learn_sigma=False")
        if c.get("predict_xstart") or c.get("use_kl") or c.get("timestep_respacing"):
            raise ProbeError("probe train uses epsilon prediction with the full schedule: drop "
                             "predict_xstart, use_kl and timestep_respacing")

    def loss(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
             ) -> torch.Tensor:
        """Mean squared error of the predicted noise; randomness from ``generator`` (CPU)."""
        model = self.model
        x0 = model.prepare(images)
        t = torch.randint(0, model.num_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        t = t.to(x0.device)
        x_t = model.q_sample(x0, t, noise)
        out = model(x_t, t)
        return F.mse_loss(out[:, : x0.shape[1]], noise)

    def extra_files(self) -> dict[str, Any]:
        return {"config.json": self.config} if self.config is not None else {}

    def export(self, meta: Any = None) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.net.state_dict().items()}


__all__ = ["DDPMObjective"]
