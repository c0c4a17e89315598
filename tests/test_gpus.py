from __future__ import annotations

import pytest

from cloudsd.gpus import canonical_gpu_name, gpu_matches


@pytest.mark.parametrize(
    ("query", "name", "vram", "expected"),
    [
        ("RTX 4090", "NVIDIA GeForce RTX 4090", None, True),
        ("rtx4090", "RTX 4090", None, True),
        ("4090", "RTX 4090", None, True),
        ("RTX 4090", "RTX 3090", None, False),
        ("RTX 4090", "NVIDIA RTX 4000 Ada Generation", None, False),
        ("A100 80GB", "NVIDIA A100 80GB PCIe", None, True),
        ("A100 80GB", "NVIDIA A100-SXM4-80GB", None, True),
        ("A100 80GB", "A100 SXM4", 80.0, True),
        ("A100 80GB", "A100 PCIE", 40.0, False),
        ("A100 SXM4", "NVIDIA A100 80GB PCIe", None, False),
        ("A100", "A1000", None, False),
        ("a6000", "NVIDIA RTX A6000", None, True),
        ("H100", "NVIDIA H100 80GB HBM3", None, True),
        ("L40S", "NVIDIA L40S", None, True),
        ("L40S", "NVIDIA L40", None, False),
        ("", "RTX 4090", None, False),
    ],
)
def test_gpu_matches(query: str, name: str, vram: float | None, expected: bool) -> None:
    assert gpu_matches(query, name, vram) is expected


def test_canonical_names() -> None:
    assert canonical_gpu_name("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert canonical_gpu_name("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert canonical_gpu_name("RTX 4090") == "RTX 4090"
