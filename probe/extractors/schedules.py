"""Noise schedules: the forward process q(x_t | x_0) each family was trained with.

DDPM schedules take their betas from diffusers' ``DDPMScheduler`` (the same
tables as guided-diffusion and DiT); the cumulative product is kept in float64,
as guided-diffusion does, and cast at use.
"""
import torch

from ..errors import ProbeError


class DDPMSchedule:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t a DDPM index (larger is noisier)."""

    def __init__(self, kind="linear", num_timesteps=1000):
        from diffusers import DDPMScheduler

        beta = {"linear": "linear", "cosine": "squaredcos_cap_v2"}.get(kind)
        if beta is None:
            raise ProbeError(f"unknown DDPM schedule {kind!r}: use 'linear' or 'cosine'")
        kwargs = dict(num_train_timesteps=num_timesteps, beta_schedule=beta)
        if kind == "linear":
            # guided-diffusion scales the linear endpoints by 1000/T; DiT uses T=1000.
            scale = 1000 / num_timesteps
            kwargs.update(beta_start=scale * 1e-4, beta_end=scale * 0.02)
        betas = DDPMScheduler(**kwargs).betas.double()
        self.kind = kind
        self.num_timesteps = num_timesteps
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def describe(self):
        return {"type": "ddpm", "kind": self.kind, "num_timesteps": self.num_timesteps}

    def check_t(self, t):
        check_timesteps(t, self.num_timesteps)

    def q_sample(self, x0, t, noise):
        t = _as_index(t, x0)
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        abar = abar.view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def check_timesteps(t, num_timesteps):
    ts = torch.as_tensor(t).flatten().tolist()
    bad = [v for v in ts if not (0 <= v < num_timesteps) or int(v) != v]
    if bad:
        raise ProbeError(
            f"timestep {bad[0]} is outside the schedule: use integers 0..{num_timesteps - 1}"
        )


def _as_index(t, x):
    t = torch.as_tensor(t, device=x.device).long()
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    return t
