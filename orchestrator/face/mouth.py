"""Synthesised mouth interior and closed eyelids, rasterised in torch on small fixed boxes of the output frame.

Both regions are described the same way: an upper and a lower curve (warped landmark points, corner to corner)
in output pixels. Each pixel of the box gets local coordinates along the corner-to-corner axis, and the two
curves are interpolated at that position, so "inside" is simply "between the curves" and its distance to the
nearer curve gives a feathered edge without a polygon rasteriser. Everything is batched over frames.
"""

from __future__ import annotations

import torch
from torch import Tensor


def smoothstep(x: Tensor, lo: float, hi: float) -> Tensor:
    t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _interp(xs: Tensor, ys: Tensor, q: Tensor) -> Tensor:
    """Piecewise-linear y(q) per frame: xs, ys (B, n) with xs ascending, q (B, M); clamped at the ends."""
    n = xs.shape[1]
    i = torch.searchsorted(xs.contiguous(), q.contiguous()).clamp(1, n - 1)
    x0, x1 = xs.gather(1, i - 1), xs.gather(1, i)
    y0, y1 = ys.gather(1, i - 1), ys.gather(1, i)
    w = ((q - x0) / (x1 - x0).clamp_min(1e-4)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


class Between:
    """Pixels of a box between an upper and a lower curve, in the curves' own (s along, t across) frame."""

    def __init__(self, upper: Tensor, lower: Tensor, xs: Tensor, ys: Tensor) -> None:
        # upper/lower: (B, n, 2) output pixels, corner to corner; xs/ys: (bh, bw) pixel centres of the box.
        a, b = upper[:, 0], upper[:, -1]
        mid = 0.5 * (a + b)
        axis = b - a
        self.half = 0.5 * axis.norm(dim=1).clamp_min(1e-3)  # (B,)
        ux = axis / (2.0 * self.half[:, None])
        nx = torch.stack([-ux[:, 1], ux[:, 0]], dim=1)  # image-down when the axis points right

        def local(p: Tensor) -> tuple[Tensor, Tensor]:
            d = p - mid[:, None, :]
            return (d * ux[:, None, :]).sum(-1), (d * nx[:, None, :]).sum(-1)

        su, tu = local(upper)
        sl, tl = local(lower)
        # Keep the abscissae ascending (a strong turn could fold a lip sample back) so interpolation stays valid.
        su, sl = su.cummax(dim=1).values, sl.cummax(dim=1).values
        pix = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2)
        d = pix - mid[:, None, :]
        bh, bw = xs.shape
        self.shape = (upper.shape[0], bh, bw)
        self.s = (d * ux[:, None, :]).sum(-1)  # (B, M)
        self.t = (d * nx[:, None, :]).sum(-1)
        self.t_up = _interp(su, tu, self.s)
        self.t_lo = _interp(sl, tl, self.s)
        self.gap = (self.t_lo - self.t_up).clamp_min(0.0)
        self.sn = (self.s / self.half[:, None]).clamp(-1.5, 1.5)
        # Signed distance (pixels, + inside) to the nearer curve; exact enough for thin vertical gaps.
        # Beyond the corners the clamped curves meet, which would leave a hairline: cut along s as well.
        s_lo = torch.maximum(su[:, :1], sl[:, :1])
        s_hi = torch.minimum(su[:, -1:], sl[:, -1:])
        along = torch.minimum(self.s - s_lo, s_hi - self.s)
        self.inside = torch.minimum(torch.minimum(self.t - self.t_up, self.t_lo - self.t), along)

    def alpha(self, feather: float, inset: float) -> Tensor:
        return ((self.inside - inset) / feather + 0.5).clamp(0.0, 1.0)

    def image(self, x: Tensor) -> Tensor:
        """(B, M) or (B, C, M) -> (B, [C,] bh, bw)."""
        _, bh, bw = self.shape
        return x.reshape(*x.shape[:-1], bh, bw)


def mouth_interior(
    m: Between,
    iod: float,
    teeth_rgb: Tensor,
    upper_teeth: Tensor,
    lower_teeth: Tensor,
    tongue: Tensor,
) -> Tensor:
    """Colour (B, 3, M) of the open mouth: dark cavity, tongue, lower and upper teeth; values 0..255.

    `upper_teeth`/`lower_teeth` are the visible band heights in pixels (B,), `tongue` 0..1 how far the tongue comes
    forward (B,). Teeth take the portrait's own teeth colour so they are lit like the face.
    """
    sn, sn2 = m.sn, m.sn * m.sn
    depth = m.t - m.t_up  # pixels below the upper lip
    gap = m.gap.clamp_min(1e-3)
    corner_shade = (1.0 - 0.55 * sn2).clamp(0.25, 1.0)  # the corners of the mouth lie in shadow
    cavity = torch.tensor([52.0, 18.0, 20.0], device=sn.device)[None, :, None]
    tv = (depth / gap).clamp(0.0, 1.0)
    col = cavity * (corner_shade * (0.55 + 0.45 * tv))[:, None, :]

    # Tongue: a dome low in the mouth, rising towards the teeth as it comes forward.
    top = m.t_lo - gap * (0.30 + 0.35 * tongue[:, None]) + gap * 0.35 * sn2
    t_alpha = smoothstep(m.t - top, -0.8, 1.2) * (1.0 - smoothstep(sn.abs(), 0.55, 0.8))
    t_col = (
        torch.tensor([168.0, 78.0, 82.0], device=sn.device)[None, :, None]
        * (0.55 + 0.45 * smoothstep(m.t - top, 0.0, 0.25 * iod))[:, None, :]
        * corner_shade[:, None, :]
    )
    col = col + (t_col - col) * t_alpha[:, None, :]

    def band(edge_depth: Tensor, from_top: bool, width: float, tone: float) -> tuple[Tensor, Tensor]:
        # Teeth: a band with a slightly arched edge, narrower than the opening, incisors separated by faint lines.
        if from_top:
            dist = edge_depth - depth
            shade_v = 0.82 + 0.18 * smoothstep(depth, 0.0, 0.06 * iod)  # in the upper lip's shadow at the top
        else:
            dist = edge_depth - (m.t_lo - m.t)  # + inside the band above the lower lip
            shade_v = 0.75 + 0.2 * smoothstep(m.t_lo - m.t, 0.0, 0.05 * iod)
        a = smoothstep(dist, -0.7, 0.7) * (1.0 - smoothstep(sn.abs(), width - 0.15, width))
        lines = torch.zeros_like(sn)
        for k in (0.0, 0.27, -0.27, 0.5, -0.5):
            lines = torch.maximum(lines, torch.exp(-(((sn - k) * m.half[:, None] / 0.4) ** 2)))
        shade = tone * shade_v * (1.0 - 0.45 * sn2) * (1.0 - 0.07 * lines)
        return a, teeth_rgb[None, :, None] * shade[:, None, :]

    # Lower teeth sit behind the lower lip; upper teeth hang from the upper lip (arched: shorter at the sides).
    lo_edge = lower_teeth[:, None] * (1.0 - 0.3 * sn2)
    a, c = band(lo_edge, False, 0.72, 0.86)
    col = col + (c - col) * a[:, None, :]
    up_edge = upper_teeth[:, None] * (1.0 - 0.35 * sn2)
    a, c = band(up_edge, True, 0.82, 1.0)
    out: Tensor = col + (c - col) * a[:, None, :]
    return out


def closed_lid(e: Between, iod: float, lid_rgb: Tensor) -> Tensor:
    """Colour (B, 3, M) of a closed upper eyelid over the remaining eye opening, lashes along its lower edge."""
    lash = torch.exp(-(((e.t_lo - e.t) / (0.025 * iod + 0.3)) ** 2))
    shade = (0.92 - 0.55 * lash) * (1.0 - 0.25 * e.sn * e.sn).clamp(0.5, 1.0)
    out: Tensor = lid_rgb[:, :, None] * shade[:, None, :]
    return out
