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


class Frame:
    """A fixed 2D frame in output pixels: a curve pair at rest, for points given in that frame's coordinates."""

    def __init__(self, upper: Tensor, lower: Tensor) -> None:
        # upper/lower: (n, 2) output pixels at rest, corner to corner.
        a, b = upper[0], upper[-1]
        self.mid = 0.5 * (a + b)
        self.half = float(0.5 * (b - a).norm().clamp_min(1e-3))
        self.ux = (b - a) / (2.0 * self.half)
        self.nx = torch.stack([-self.ux[1], self.ux[0]])
        self.su, self.tu = self.local(upper)
        self.sl, self.tl = self.local(lower)
        self.su, self.sl = self.su.cummax(0).values, self.sl.cummax(0).values

    def local(self, p: Tensor) -> tuple[Tensor, Tensor]:
        d = p - self.mid
        return d @ self.ux, d @ self.nx

    def curves(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """(upper t, lower t) at abscissae s (B, M)."""
        b = s.shape[0]
        return (
            _interp(self.su[None].expand(b, -1), self.tu[None].expand(b, -1), s),
            _interp(self.sl[None].expand(b, -1), self.tl[None].expand(b, -1), s),
        )


def mouth_interior(
    m: Between,
    iod: float,
    upper_teeth: tuple[Tensor, Tensor],
    teeth_rgb: Tensor,
    lip_rgb: Tensor,
    lower_teeth: Tensor,
    tongue: Tensor,
) -> Tensor:
    """Colour (B, 3, M) of the open mouth, back to front: cavity, tongue, lower teeth, upper teeth, inner lip edges.

    `upper_teeth` is (alpha (B, M), colour (B, 3, M)) of the upper teeth, which sit on the skull: the caller places
    them in the head's frame, so the lips slide over them. `lower_teeth` is the visible height (pixels, (B,)) of
    the lower teeth above the lower lip (they move with the jaw), `tongue` 0..1 how far the tongue comes forward.
    The cavity, tongue and inner lip take their colours from the portrait's lips (`lip_rgb`), so they are lit like
    the face: a warm dark red-brown, darker towards the back, never pitch black.
    """
    sn, sn2 = m.sn, m.sn * m.sn
    dev = sn.device
    depth = m.t - m.t_up  # pixels below the upper lip
    height = m.t_lo - m.t  # pixels above the lower lip
    gap = m.gap.clamp_min(1e-3)
    corner_shade = (1.0 - 0.5 * sn2).clamp(0.3, 1.0)  # the corners of the mouth lie in shadow
    lip = lip_rgb[None, :, None]
    # Depth into the mouth: 0 at the lips, 1 in the middle of a wide opening (the back of the mouth shows there).
    back = (torch.minimum(depth, height) / (0.5 * gap.clamp_max(0.3 * iod))).clamp(0.0, 1.0)
    back = back * back * (3.0 - 2.0 * back)
    warm = torch.tensor([1.0, 0.62, 0.55], device=dev)[None, :, None]
    shade = (0.5 - 0.24 * back) * corner_shade
    col = lip * warm * shade[:, None, :]

    # Tongue: a dome low in the mouth, rising towards the teeth as it comes forward.
    top = m.t_lo - gap * (0.28 + 0.35 * tongue[:, None]) + gap * 0.35 * sn2
    t_alpha = smoothstep(m.t - top, -0.8, 1.5) * (1.0 - smoothstep(sn.abs(), 0.5, 0.8))
    t_lit = (0.42 + 0.3 * smoothstep(m.t - top, 0.0, 0.2 * iod) + 0.25 * tongue[:, None]) * corner_shade
    t_col = lip * torch.tensor([0.95, 0.68, 0.68], device=dev)[None, :, None] * t_lit[:, None, :]
    col = col + (t_col - col) * (t_alpha * smoothstep(gap, 0.04 * iod, 0.1 * iod))[:, None, :]

    lines = torch.zeros_like(sn)
    for k in (0.0, 0.2, -0.2, 0.38, -0.38):
        lines = torch.maximum(lines, torch.exp(-(((sn - k) * m.half[:, None] / 0.5) ** 2)))
    # Lower teeth: behind the lower lip, narrower than the upper arch, in the upper teeth's shadow.
    lo_edge = lower_teeth[:, None] * (1.0 - 0.4 * sn2)
    a = smoothstep(lo_edge - height, -0.8, 0.8) * (1.0 - smoothstep(sn.abs(), 0.45, 0.65))
    lo_shade = (0.72 + 0.16 * smoothstep(height, 0.0, 0.04 * iod)) * (1.0 - 0.4 * sn2) * (1.0 - 0.1 * lines)
    col = col + (teeth_rgb[None, :, None] * lo_shade[:, None, :] - col) * a[:, None, :]

    ua, ucol = upper_teeth
    col = col + (ucol - col) * ua[:, None, :]

    # The lips' wet inner edges: lip coloured, fading into the mouth (no dark outline).
    w = 0.03 * iod + 0.5
    up_edge = 1.0 - smoothstep(depth, 0.0, w)
    lo_edge_a = 1.0 - smoothstep(height, 0.0, 1.3 * w)
    inner_lip = lip * torch.tensor([0.78, 0.58, 0.58], device=dev)[None, :, None]
    col = col + (inner_lip * 0.85 - col) * (0.85 * up_edge)[:, None, :]
    out: Tensor = col + (inner_lip - col) * (0.9 * lo_edge_a)[:, None, :]
    return out


def synthetic_upper_teeth(s_n: Tensor, t: Tensor, edge: Tensor, iod: float, teeth_rgb: Tensor) -> tuple[Tensor, Tensor]:
    """Upper teeth drawn for a portrait that shows none: a band down to `edge` (head frame pixels, (B, M)), arched,
    incisors separated by faint lines. `s_n` is the position across the mouth, -1..1 corner to corner."""
    a = smoothstep(edge - t, -0.7, 0.7) * (1.0 - smoothstep(s_n.abs(), 0.62, 0.8))
    lines = torch.zeros_like(s_n)
    for k in (0.0, 0.13, -0.13, 0.3, -0.3):
        lines = torch.maximum(lines, torch.exp(-(((s_n - k) / 0.012) ** 2)))
    shade = (0.88 + 0.12 * smoothstep(edge - t, 0.0, 0.04 * iod)) * (1.0 - 0.5 * s_n * s_n) * (1.0 - 0.08 * lines)
    return a, teeth_rgb[None, :, None] * shade[:, None, :]


def closed_lid(e: Between, iod: float, lid_rgb: Tensor) -> Tensor:
    """Colour (B, 3, M) of a closed upper eyelid over the remaining eye opening, lashes along its lower edge."""
    lash = torch.exp(-(((e.t_lo - e.t) / (0.025 * iod + 0.3)) ** 2))
    shade = (0.92 - 0.55 * lash) * (1.0 - 0.25 * e.sn * e.sn).clamp(0.5, 1.0)
    out: Tensor = lid_rgb[:, :, None] * shade[:, None, :]
    return out
