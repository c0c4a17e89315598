"""Choosing offers: every configured provider's live offers, filtered one filter at a time, cheapest first.

Filters apply in a fixed order so that when the list empties, the user is told which filter did it and
what the closest offers were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cloudsd.errors import NoCapacity
from cloudsd.gpus import gpu_matches
from cloudsd.machine import Offer, OfferSpec


def _version(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        return ()


@dataclass(frozen=True)
class Filter:
    """One of the user's conditions on offers, named as the user wrote it."""

    name: str  # as the user would write it: "--gpu RTX 4090"
    keep: Callable[[Offer], bool]


def filters_for(spec: OfferSpec) -> list[Filter]:
    out: list[Filter] = []
    if spec.gpus:
        out.append(Filter(f"--gpu {', '.join(spec.gpus)}",
                          lambda o: any(gpu_matches(g, o.gpu_name, o.vram_gb) for g in spec.gpus)))
    if spec.min_vram_gb is not None:
        out.append(Filter(f"--min-vram {spec.min_vram_gb:g}", lambda o: o.vram_gb >= spec.min_vram_gb - 0.5))  # type: ignore[operator]
    if spec.min_reliability is not None:
        # Offers whose provider publishes no reliability figure are kept: unknown is not unreliable.
        out.append(Filter(f"--min-reliability {spec.min_reliability:g}",
                          lambda o: o.reliability is None or o.reliability >= spec.min_reliability))  # type: ignore[operator]
    if spec.region:
        region = spec.region.lower()
        out.append(Filter(f"--region {spec.region}", lambda o: bool(o.region) and region in o.region.lower()))  # type: ignore[union-attr]
    if spec.cuda:
        wanted = _version(spec.cuda)
        # Offers without a CUDA figure (RunPod) are kept: the provider filters at create instead.
        out.append(Filter(f"--cuda {spec.cuda}",
                          lambda o: o.cuda_version is None or _version(o.cuda_version) >= wanted))
    if spec.max_price_per_hour is not None:
        out.append(Filter(f"--max-price {spec.max_price_per_hour:g}",
                          lambda o: o.price_per_hour <= spec.max_price_per_hour))  # type: ignore[operator]
    return out


def select(offers: Iterable[Offer], spec: OfferSpec) -> list[Offer]:
    """The offers that fit `spec`, cheapest first; NoCapacity naming the filter that emptied the list."""
    remaining = sorted(offers, key=lambda o: (o.price_per_hour, -(o.reliability or 0), o.provider, o.offer_id))
    if not remaining:
        raise NoCapacity("no provider has any offer right now.",
                         hint="Try again in a few minutes, or another --provider.")
    for flt in filters_for(spec):
        kept = [o for o in remaining if flt.keep(o)]
        if not kept:
            closest = ", ".join(f"{o.gpu_name} ${o.price_per_hour:.3f}/h ({o.provider})" for o in remaining[:3])
            raise NoCapacity(
                f"no offer is left after {flt.name} ({len(remaining)} offers before it; cheapest: {closest}).",
                hint=f"Loosen {flt.name.split()[0]}.",
            )
        remaining = kept
    if spec.limit:
        remaining = remaining[: spec.limit]
    return remaining
