"""The linear interpolant of SiT and REPA: continuous t in [0, 1], in each repository's
own direction.

* ``sit`` (willisma/SiT, ``transport/path.py`` ``ICPlan``): x_t = t·x + (1 − t)·ε, so
  t = 1 is the clean image and t = 0 pure noise; the velocity is x − ε.
* ``repa`` (sihyun-yu/REPA, ``loss.py`` ``SILoss.interpolant``): x_t = (1 − t)·x + t·ε,
  so t = 0 is clean and t = 1 pure noise; the velocity is ε − x.

Both are x_t = α_t·x + σ_t·ε with α_t + σ_t = 1; :meth:`InterpolantSchedule.coefficients`
gives (α_t, σ_t) and :meth:`~InterpolantSchedule.log_snr` log(α_t² / σ_t²), the axis on
which files of different families line up.  docs/sit.md cites the lines.
"""
from typing import Any

import torch

from ...errors import ProbeError

CONVENTIONS = {
    "sit": "x_t = t*x + (1-t)*eps: t=1 clean, t=0 noise (willisma/SiT)",
    "repa": "x_t = (1-t)*x + t*eps: t=0 clean, t=1 noise (sihyun-yu/REPA)",
}


class InterpolantSchedule:
    """The linear path x_t = α_t x + σ_t ε of SiT (``convention="sit"``) or REPA
    (``"repa"``), t continuous in [0, 1]."""

    continuous = True
    # The Schedule protocol's count of integer steps has no meaning for a continuous t;
    # 1 keeps code that draws integer t from refusing silently wrong values.
    num_timesteps = 1

    def __init__(self, convention: str = "sit"):
        if convention not in CONVENTIONS:
            raise ProbeError(f"unknown SiT time convention {convention!r}: use "
                             f"{' or '.join(CONVENTIONS)}")
        self.convention = convention

    def describe(self) -> dict:
        return {"type": "interpolant", "path": "linear", "convention": self.convention,
                "t": CONVENTIONS[self.convention], "prediction": "velocity"}

    def check_t(self, t: Any) -> None:
        check_continuous_t(t, self.convention)

    def clean_t(self) -> float:
        """The t of the clean image in this convention."""
        return 1.0 if self.convention == "sit" else 0.0

    def coefficients(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) as float64 tensors shaped like t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return (t, 1 - t) if self.convention == "sit" else (1 - t, t)

    def derivatives(self) -> tuple[float, float]:
        """(dα/dt, dσ/dt): constant on the linear path."""
        return (1.0, -1.0) if self.convention == "sit" else (-1.0, 1.0)

    def log_snr(self, t: Any) -> torch.Tensor:
        """log(α_t² / σ_t²) (float64; ±inf at the ends)."""
        alpha, sigma = self.coefficients(t)
        return 2 * (alpha.log() - sigma.log())

    def noise_level(self, t: Any) -> dict:
        """α_t, σ_t and log-SNR of one t, as a file records them per t."""
        alpha, sigma = self.coefficients(float(t))
        return {"alpha": float(alpha), "sigma": float(sigma), "logsnr": float(self.log_snr(float(t)))}

    def t_of_log_snr(self, logsnr: float) -> float:
        """The t with log(α²/σ²) = logsnr: α/σ = exp(logsnr / 2) and α + σ = 1."""
        ratio = float(torch.tensor(logsnr / 2, dtype=torch.float64).exp())
        alpha = ratio / (1 + ratio)
        return alpha if self.convention == "sit" else 1 - alpha

    def q_sample(self, x0: torch.Tensor, t: Any, noise: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (c.to(x0.device, x0.dtype).view(-1, *[1] * (x0.dim() - 1))
                        for c in self.coefficients(_per_sample(t, x0)))
        return alpha * x0 + sigma * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The training target dx_t/dt = dα·x + dσ·ε."""
        d_alpha, d_sigma = self.derivatives()
        return d_alpha * x0 + d_sigma * noise


def check_continuous_t(t: Any, convention: str) -> None:
    """t must lie in [0, 1]; an integer-looking t >= 1 is a DDPM step given by mistake."""
    values = torch.as_tensor(t).flatten().tolist()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ProbeError(f"timestep {v!r} is not a number")
        if v > 1 and float(v).is_integer():
            raise ProbeError(
                f"timestep {v:g} looks like a DDPM step, but this model's t is continuous in "
                f"[0, 1] ({CONVENTIONS[convention]}): give e.g. --t 0.5")
        if not 0 <= v <= 1:
            raise ProbeError(f"timestep {v:g} is outside [0, 1] ({CONVENTIONS[convention]})")


def _per_sample(t, x):
    t = torch.as_tensor(t, dtype=torch.float64, device="cpu") if not torch.is_tensor(t) else t
    return t.expand(x.shape[0]) if t.dim() == 0 else t
