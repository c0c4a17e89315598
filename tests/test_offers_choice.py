from __future__ import annotations

from pathlib import Path

import pytest

from cloudsd.config import resolve
from cloudsd.core.offers import select
from cloudsd.core.up import spec_from
from cloudsd.errors import NoCapacity
from cloudsd.machine import Offer, OfferSpec


def offer(oid: str, gpu: str, price: float, vram: float = 24, **kw: object) -> Offer:
    return Offer(provider=str(kw.pop("provider", "vastai")), offer_id=oid, gpu_name=gpu, gpu_count=1, vram_gb=vram,
                 price_per_hour=price, disk_gb=40, **kw)  # type: ignore[arg-type]


CATALOG = [
    offer("1", "RTX 4090", 0.45, reliability=0.99, region="Texas, US", cuda_version="12.4"),
    offer("2", "RTX 3090", 0.22, reliability=0.95, region="Sweden, SE", cuda_version="12.2"),
    offer("3", "A100 SXM4", 1.10, vram=80, reliability=0.999, region="Oregon, US", cuda_version="12.8"),
    offer("4", "RTX 4090", 0.69, provider="runpod"),
]


def test_cheapest_first() -> None:
    assert [o.offer_id for o in select(CATALOG, OfferSpec())] == ["2", "1", "4", "3"]


def test_filters_combine() -> None:
    spec = OfferSpec(gpus=("rtx4090",), max_price_per_hour=0.6)
    assert [o.offer_id for o in select(CATALOG, spec)] == ["1"]
    assert [o.offer_id for o in select(CATALOG, OfferSpec(min_vram_gb=48))] == ["3"]
    assert [o.offer_id for o in select(CATALOG, OfferSpec(cuda="12.4"))] == ["1", "4", "3"]
    assert [o.offer_id for o in select(CATALOG, OfferSpec(region="us"))] == ["1", "3"]


def test_says_which_filter_emptied_the_list() -> None:
    with pytest.raises(NoCapacity, match=r"after --max-price 0.3 .*cheapest: RTX 4090 \$0.450/h"):
        select(CATALOG, OfferSpec(gpus=("RTX 4090",), max_price_per_hour=0.3))
    with pytest.raises(NoCapacity, match="after --gpu H100"):
        select(CATALOG, OfferSpec(gpus=("H100",)))
    with pytest.raises(NoCapacity, match="no provider has any offer"):
        select([], OfferSpec())


def test_cuda_only_raises_the_image_floor(tmp_path: Path) -> None:
    settings = resolve({}, file=tmp_path / "none.yaml", environ={})
    floor = spec_from(settings).cuda
    assert floor is not None, "cloudsd's default image carries a CUDA version"
    assert spec_from(settings, {"cuda": "11.8"}).cuda == floor, "a lower --cuda cannot list hosts the image needs"
    assert spec_from(settings, {"cuda": "13.0"}).cuda == "13.0"
