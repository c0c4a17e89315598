"""GPU names as people type them, matched to each provider's own naming.

RunPod's ids read "NVIDIA GeForce RTX 4090" and "NVIDIA A100-SXM4-80GB"; Vast.ai says "RTX 4090" and
"A100 SXM4" (with the memory in a separate field). People type "RTX 4090", "rtx4090", "4090" or "A100 80GB".
Matching is case- and space-insensitive and tolerant of the vendor prefixes and form factors.
"""

from __future__ import annotations

import re

_VENDOR_WORDS = ("nvidia", "geforce", "amd", "radeon", "tesla", "quadro")
_FORM_FACTORS = ("pcie", "sxm", "sxm4", "sxm5", "nvl", "hbm3", "hbm2e", "hbm3e")


def _tokens(name: str) -> list[str]:
    words = name.lower().replace("-", " ").replace("_", " ").split()
    tokens: list[str] = []
    for word in words:
        # "rtx4090" -> "rtx", "4090"; model names such as "a100", "l40s" and "sxm4" stay whole
        series = re.fullmatch(r"(rtx|gtx)(\d+\w*)", word)
        if series:
            tokens.extend(series.groups())
        elif word == "gb" and tokens and tokens[-1].isdigit():
            tokens[-1] += "gb"  # "80 GB" -> "80gb"
        else:
            tokens.append(word)
    return [t for t in tokens if t not in _VENDOR_WORDS]


def canonical_gpu_name(provider_gpu_name: str) -> str:
    """A provider's name without the vendor words: "NVIDIA GeForce RTX 4090" -> "RTX 4090"."""
    words = [w for w in provider_gpu_name.replace("_", " ").split() if w.lower() not in _VENDOR_WORDS]
    return " ".join(words) or provider_gpu_name


def _memory_gb(tokens: list[str]) -> float | None:
    for token in tokens:
        if token.endswith("gb") and token[:-2].isdigit():
            return float(token[:-2])
    return None


def gpu_matches(query: str, provider_gpu_name: str, vram_gb: float | None = None) -> bool:
    """Whether the GPU a user typed (`query`) names this provider GPU.

    Every model word of the query must appear in the provider's name ("4090" matches "RTX 4090"); extra
    words on the provider side are allowed unless they name another model number ("RTX 4090" never
    matches "RTX 4000 Ada"). A memory size in the query ("A100 80GB") must equal the
    provider's, read from its name or from `vram_gb` (within 5%, since providers round differently).
    Form-factor words (PCIe, SXM4) in the query must match; absent from the query, any form factor does.
    """
    want = _tokens(query)
    have = _tokens(provider_gpu_name)
    if not want:
        return False
    want_mem = _memory_gb(want)
    have_mem = _memory_gb(have)
    if have_mem is None and vram_gb:
        have_mem = float(vram_gb)
    want_words = [t for t in want if not (t.endswith("gb") and t[:-2].isdigit())]
    have_words = [t for t in have if not (t.endswith("gb") and t[:-2].isdigit())]
    for word in want_words:
        if word in _FORM_FACTORS:
            if not any(h.startswith(word) or word.startswith(h) for h in have_words if h in _FORM_FACTORS):
                return False
        elif word not in have_words:
            return False
    # a model number on the provider side that the query did not ask for means another GPU
    # ("RTX 4090" must not match "RTX 4000 Ada" and "A100" must not match "A1000").
    numbers_want = {w for w in want_words if any(c.isdigit() for c in w)}
    numbers_have = {w for w in have_words if any(c.isdigit() for c in w) and w not in _FORM_FACTORS}
    if numbers_want and not numbers_have <= numbers_want:
        return False
    if want_mem is not None:
        if have_mem is None or abs(have_mem - want_mem) > 0.05 * want_mem:
            return False
    return True
