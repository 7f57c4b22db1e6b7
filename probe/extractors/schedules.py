"""Noise schedules: the forward process q(x_t | x_0) each family was trained with.

DDPM schedules take their betas from diffusers' ``DDPMScheduler`` (the same
tables as guided-diffusion and DiT); the cumulative product is kept in float64,
as guided-diffusion does, and cast at use.  The l-DAE's schedules add noise in its
PCA latent or in pixels.

Every schedule is x_t = α_t·x_0 + σ_t·ε and gives (α_t, σ_t) by ``coefficients(t)``, with
α_t, σ_t the coefficients themselves (not their squares): for a DDPM α_t = sqrt(ᾱ_t) and
σ_t = sqrt(1 − ᾱ_t).  The log-SNR log(α_t² / σ_t²) is the one noise axis on which files of
different families line up (:func:`noise_table`, :func:`t_for_log_snr`).
"""
import math
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..errors import ProbeError
from ..selection import nearest_log_snr, t_text, t_value


@runtime_checkable
class Schedule(Protocol):
    """What the rest of probe needs from a model's schedule (``Extractor.schedule``);
    :class:`DDPMSchedule`, :class:`PipelineSchedule` and :class:`LDAESchedule` are three."""

    num_timesteps: int  # t runs over 0 .. num_timesteps - 1, larger is noisier

    def check_t(self, t: Any) -> None:
        """Raise a ProbeError unless every t is an integer step of the schedule."""

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0 noised to timesteps t (B,) with the given noise."""

    def describe(self) -> dict:
        """The schedule's parameters, recorded with the features."""

    def coefficients(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) of x_t = α_t x_0 + σ_t ε, float64 tensors shaped like t."""

    def log_snr(self, t: Any) -> torch.Tensor:
        """log(α_t² / σ_t²), float64 (+inf where σ_t = 0)."""

    def noise_level(self, t: Any) -> dict:
        """{"alpha", "sigma", "logsnr"} of one t, as a feature file records it."""


class NoiseLevels:
    """log-SNR and the per-t record from ``coefficients`` (shared by every schedule)."""

    coefficients: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]

    def log_snr(self, t: Any) -> torch.Tensor:
        """log(α_t² / σ_t²) (float64; +inf where σ_t = 0)."""
        alpha, sigma = self.coefficients(t)
        return 2 * (alpha.log() - sigma.log())

    def noise_level(self, t: Any) -> dict:
        """α_t, σ_t and log-SNR of one t, as a file records them per t."""
        alpha, sigma = self.coefficients(t_value(t))
        return {"alpha": float(alpha), "sigma": float(sigma),
                "logsnr": float(self.log_snr(t_value(t)))}


class DDPMSchedule(NoiseLevels):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t a DDPM index (larger is noisier)."""

    def __init__(self, kind: str = "linear", num_timesteps: int = 1000):
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

    def describe(self) -> dict:
        return {"type": "ddpm", "kind": self.kind, "num_timesteps": self.num_timesteps}

    def check_t(self, t: Any) -> None:
        check_timesteps(t, self.num_timesteps)

    def coefficients(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) as float64 tensors shaped like t."""
        abar = self.alphas_cumprod[torch.as_tensor(t).long()]
        return abar.sqrt(), (1 - abar).sqrt()

    def q_sample(self, x0: torch.Tensor, t: Any, noise: torch.Tensor) -> torch.Tensor:
        t = _as_index(t, x0)
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        abar = abar.view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


class PipelineSchedule(NoiseLevels):
    """A diffusers pipeline's own forward process, read from its scheduler config (e.g.
    Stable Diffusion's ``scaled_linear`` betas 0.00085 to 0.012): the same x_t as
    :class:`DDPMSchedule`.  Only the betas matter for noising, so any diffusers scheduler
    class (PNDM, DDIM, ...) in the config gives the same table."""

    def __init__(self, scheduler: Any):
        self.config = dict(scheduler.config)
        self.kind = self.config.get("beta_schedule", "linear")
        self.num_timesteps = int(self.config.get("num_train_timesteps", len(scheduler.betas)))
        self.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)

    def describe(self) -> dict:
        keep = ("beta_start", "beta_end", "prediction_type", "rescale_betas_zero_snr")
        return {"type": "ddpm", "kind": self.kind, "num_timesteps": self.num_timesteps,
                **{k: self.config[k] for k in keep if k in self.config}}

    def check_t(self, t: Any) -> None:
        check_timesteps(t, self.num_timesteps)

    q_sample = DDPMSchedule.q_sample
    coefficients = DDPMSchedule.coefficients


class LDAESchedule(NoiseLevels):
    """The l-DAE's.  sigma-linear: gamma = 1 and sigma_t = sigma_max * t / (T - 1) (t = 0
    is clean).  gamma2-linear: gamma_t^2 = 1 - t / (T - 1) and sigma_t = sqrt(1 - gamma_t^2).
    The noise is in pixels, or (``noise_space="latent"``) in the tokenizer's latent."""

    def __init__(self, config: dict, tokenizer: Any = None):
        self.kind = config["schedule"]
        self.noise_space = config["noise_space"]
        self.num_timesteps = config["num_timesteps"]
        self.sigma_max = config["sigma_max"]
        self.latent_dim = config["latent_dim"]
        self.tokenizer = tokenizer  # a submodule of the network: follows it across devices

    def describe(self) -> dict:
        return {"type": "ldae", "kind": self.kind, "num_timesteps": self.num_timesteps,
                "sigma_max": self.sigma_max if self.kind == "sigma-linear" else 1.0,
                "noise_space": self.noise_space, "latent_dim": self.latent_dim}

    def check_t(self, t: Any) -> None:
        check_timesteps(t, self.num_timesteps)

    def coefficients(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma_t, sigma_t) as float64 tensors shaped like t: α and σ in the space the
        noise is added in (the PCA latent for ``noise_space="latent"``)."""
        frac = torch.as_tensor(t, dtype=torch.float64) / (self.num_timesteps - 1)
        if self.kind == "sigma-linear":
            return torch.ones_like(frac), self.sigma_max * frac
        return (1 - frac).sqrt(), frac.sqrt()

    def q_sample(self, x0: torch.Tensor, t: Any, noise: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x0.device)
        t = t.expand(x0.shape[0]) if t.dim() == 0 else t
        gamma, sigma = (c.to(x0.device, x0.dtype).view(-1, *[1] * (x0.dim() - 1))
                        for c in self.coefficients(t))
        if self.noise_space == "pixel":
            return gamma * x0 + sigma * noise
        return self.tokenizer.mix(x0, noise, gamma.view(-1, 1, 1), sigma.view(-1, 1, 1))

    def added_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The part of pixel-shaped noise that q_sample actually adds (the noise target)."""
        return noise if self.noise_space == "pixel" else self.tokenizer.project_noise(noise)


def log_snr_range(schedule: Schedule) -> tuple[float, float]:
    """The lowest and highest log-SNR the schedule reaches (±inf at a continuous path's
    ends; +inf for a discrete t with no noise)."""
    if getattr(schedule, "continuous", False):
        return -math.inf, math.inf
    levels = schedule.log_snr(torch.arange(schedule.num_timesteps))
    return float(levels.min()), float(levels.max())


def noise_table(schedule: Schedule, timesteps: Any) -> dict:
    """What a feature file records about its noise: per t (by :func:`t_text`) α_t, σ_t and
    log-SNR, and the schedule's log-SNR range."""
    levels = {t_text(t): schedule.noise_level(t) for t in timesteps}
    return {"noise_levels": levels, "logsnr_range": list(log_snr_range(schedule))}


def t_for_log_snr(schedule: Schedule, logsnr: float, owner: str,
                  log: Callable[[str], Any] = print) -> int | float:
    """The t at log-SNR ``logsnr``: exactly, for a continuous t; the step of nearest log-SNR
    for a discrete one (logged, with the log-SNR reached).  Outside the range: ProbeError."""
    lo, hi = log_snr_range(schedule)
    if getattr(schedule, "continuous", False):
        if not math.isfinite(logsnr):
            raise ProbeError(f"log-SNR {logsnr} is outside {owner}'s range: give a finite "
                             "value (its continuous t reaches every finite log-SNR)")
        t = t_value(schedule.t_of_log_snr(logsnr))  # type: ignore[attr-defined]
        log(f"{owner}: --logsnr {logsnr:g} -> t={t_text(t)} (exact: continuous t)")
        return t
    levels = schedule.log_snr(torch.arange(schedule.num_timesteps)).tolist()
    return nearest_log_snr(dict(enumerate(levels)), logsnr, (lo, hi), owner, log)


def check_timesteps(t: Any, num_timesteps: int) -> None:
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
