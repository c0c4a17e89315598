"""The fake Vast.ai's offer catalog and its search semantics (filters, order, limit, storage pricing).

Kept apart from the HTTP server so the server module stays readable. Values are shaped like the live API's:
`gpu_ram` in MB, `storage_cost` in $/GB/month, `dph_total` = `dph_base` + storage for `allocated_storage`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

HOURS_PER_MONTH = 720.0  # as Vast's published examples convert storage_cost

# gpu_name, gpu_ram (MB), num_gpus, dph_base, min_bid, storage_cost, reliability, geolocation, cuda_max_good,
# inet_down, direct_port_count, verified, disk_space (GB)
_ROWS: list[tuple[Any, ...]] = [
    ("RTX 3090", 24576, 1, 0.13, 0.07, 0.10, 0.962, "Texas, US", 12.2, 512.0, 20, True, 120.0),
    ("RTX 3090", 24576, 1, 0.16, 0.09, 0.15, 0.991, "Quebec, CA", 12.4, 850.3, 100, True, 400.0),
    ("RTX 3090", 24576, 1, 0.11, 0.05, 0.10, 0.874, "Bulgaria, BG", 11.8, 95.2, 0, True, 90.0),
    ("RTX 3090", 24576, 2, 0.29, 0.15, 0.12, 0.978, "Poland, PL", 12.2, 640.0, 50, True, 300.0),
    ("RTX 4090", 24564, 1, 0.29, 0.17, 0.12, 0.994, "Sweden, SE", 12.8, 1650.4, 200, True, 800.0),
    ("RTX 4090", 24564, 1, 0.34, 0.20, 0.20, 0.998, "California, US", 12.6, 2400.0, 499, True, 1500.0),
    ("RTX 4090", 24564, 1, 0.27, 0.14, 0.15, 0.912, "Vietnam, VN", 12.4, 210.7, 12, False, 200.0),
    ("RTX 4090", 24564, 1, 0.31, 0.18, 0.10, 0.987, "Texas, US", 12.8, 980.0, 64, True, 30.0),
    ("RTX 4090", 24564, 2, 0.62, 0.33, 0.12, 0.982, "Finland, FI", 12.6, 1200.0, 100, True, 900.0),
    ("RTX 4090", 24564, 4, 1.18, 0.66, 0.12, 0.973, "Norway, NO", 12.6, 3100.0, 200, True, 2000.0),
    ("RTX 5090", 32607, 1, 0.52, 0.30, 0.20, 0.985, "Netherlands, NL", 12.8, 2300.5, 300, True, 1000.0),
    ("RTX 5090", 32607, 1, 0.47, 0.25, 0.25, 0.931, "Spain, ES", 12.8, 720.0, 30, True, 250.0),
    ("RTX 5090", 32607, 2, 1.02, 0.56, 0.20, 0.990, "Oregon, US", 12.8, 1800.0, 120, True, 1200.0),
    ("RTX A6000", 49140, 1, 0.42, 0.22, 0.15, 0.996, "Virginia, US", 12.4, 1400.0, 150, True, 700.0),
    ("RTX A6000", 49140, 1, 0.38, 0.19, 0.10, 0.956, "Czechia, CZ", 12.2, 560.0, 40, True, 350.0),
    ("RTX A6000", 49140, 2, 0.80, 0.41, 0.15, 0.989, "Germany, DE", 12.4, 1100.0, 80, True, 800.0),
    ("L40S", 46068, 1, 0.69, 0.39, 0.20, 0.997, "Illinois, US", 12.6, 3000.0, 250, True, 1500.0),
    ("L40S", 46068, 1, 0.64, 0.35, 0.18, 0.968, "France, FR", 12.4, 900.0, 60, True, 600.0),
    ("L40S", 46068, 4, 2.65, 1.40, 0.20, 0.993, "Texas, US", 12.6, 4200.0, 400, True, 3000.0),
    ("A100 PCIE", 81920, 1, 0.95, 0.55, 0.25, 0.983, "Utah, US", 12.2, 1900.0, 100, True, 1000.0),
    ("A100 PCIE", 81920, 1, 0.89, 0.48, 0.20, 0.901, "Taiwan, TW", 12.0, 430.0, 16, True, 500.0),
    ("A100 PCIE", 40960, 1, 0.62, 0.33, 0.20, 0.964, "Japan, JP", 12.2, 800.0, 40, True, 500.0),
    ("A100 SXM4", 81920, 1, 1.12, 0.60, 0.25, 0.995, "Washington, US", 12.4, 5000.0, 300, True, 2000.0),
    ("A100 SXM4", 81920, 8, 8.64, 4.70, 0.25, 0.999, "Iceland, IS", 12.4, 9800.0, 500, True, 8000.0),
    ("H100 SXM", 81559, 1, 1.89, 1.05, 0.30, 0.997, "Oregon, US", 12.8, 8500.0, 400, True, 3000.0),
    ("H100 SXM", 81559, 1, 1.74, 0.95, 0.30, 0.948, "Belgium, BE", 12.6, 2600.0, 100, True, 1500.0),
    ("H100 SXM", 81559, 2, 3.60, 1.95, 0.30, 0.992, "Ontario, CA", 12.8, 7000.0, 300, True, 2500.0),
    ("H100 SXM", 81559, 8, 15.20, 8.20, 0.30, 0.999, "Georgia, US", 12.8, 12000.0, 500, True, 10000.0),
    ("RTX 4090", 24564, 1, 0.24, 0.12, 0.12, 0.850, "Brazil, BR", 12.2, 150.0, 8, True, 150.0),
    ("RTX 3090", 24576, 1, 0.12, 0.06, 0.10, 0.935, "Ukraine, UA", 12.0, 300.0, 10, False, 100.0),
]


def default_catalog() -> list[dict[str, Any]]:
    """About thirty offers across common GPUs, shaped like `POST /api/v0/bundles/` results."""
    offers: list[dict[str, Any]] = []
    for n, row in enumerate(_ROWS):
        (gpu, ram_mb, count, dph, min_bid, storage, rel, geo, cuda, down, ports, verified, disk) = row
        ask_id = 20_000_000 + 7919 * n
        offers.append(
            {
                "id": ask_id,
                "ask_contract_id": ask_id,
                "bundle_id": ask_id,
                "machine_id": 30_000 + 37 * n,
                "host_id": 100_000 + 11 * n,
                "gpu_name": gpu,
                "num_gpus": count,
                "gpu_ram": ram_mb,
                "gpu_total_ram": ram_mb * count,
                "cpu_cores_effective": 8.0 * count,
                "cpu_ram": 64_000 * count,
                "dph_base": dph,
                "dph_total": dph,
                "min_bid": min_bid,
                "storage_cost": storage,
                "reliability": rel,
                "reliability2": rel,
                "inet_down": down,
                "inet_up": round(down * 0.6, 1),
                "inet_down_cost": round(0.002 + 0.001 * (n % 5), 4),  # $/GB, as Vast bills bandwidth
                "inet_up_cost": round(0.001 + 0.001 * (n % 3), 4),
                "cuda_max_good": cuda,
                "driver_version": "570.133.07" if cuda >= 12.8 else "550.54.15",
                "disk_space": disk,
                "geolocation": geo,
                "verified": verified,
                "verification": "verified" if verified else "unverified",
                "rentable": True,
                "rented": False,
                "external": False,
                "hosting_type": 1 if rel >= 0.99 else 0,
                "direct_port_count": ports,
                "score": round(100 * rel / max(dph, 0.01), 2),
                "dlperf": round(ram_mb / 1000 * count, 2),
                "public_ipaddr": "127.0.0.1",
            }
        )
    return offers


def _coerce(value: Any, like: Any) -> Any:
    """Query values often arrive as strings ("1", "0.98", "true"); compare them as the field's type."""
    if isinstance(like, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    if isinstance(like, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    return value


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda field, wanted: field in wanted,
    "notin": lambda field, wanted: field not in wanted,
}

SEARCH_KEYS = frozenset({"order", "limit", "type", "allocated_storage", "select_cols", "q"})


class QueryError(ValueError):
    """An operator the API would reject (`invalid_args`)."""


def matches(row: dict[str, Any], query: dict[str, Any], *, skip: frozenset[str] = SEARCH_KEYS) -> bool:
    """Whether `row` passes every `{field: {op: value}}` of `query`. Unknown fields are ignored (a warning)."""
    for field, condition in query.items():
        if field in skip or field not in row:
            continue
        if not isinstance(condition, dict):
            condition = {"eq": condition}
        have = row[field]
        for op, wanted in condition.items():
            if op not in _OPS:
                raise QueryError(f"unknown operator {op!r} for {field}")
            if op in ("in", "notin"):
                values = wanted if isinstance(wanted, list) else [wanted]
                wanted = [_coerce(v, have) for v in values]
            else:
                wanted = _coerce(wanted, have)
            if have is None:
                return False
            try:
                if not _OPS[op](have, wanted):
                    return False
            except TypeError:
                return False
    return True


def order_rows(rows: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    """Sort by `[[field, "asc"|"desc"], …]` or the SDK's `"score-"` string form (trailing `-` = descending)."""
    if not order:
        order = [["score", "desc"]]
    if isinstance(order, str):
        order = [[part.rstrip("-+"), "desc" if part.endswith("-") else "asc"] for part in order.split(",")]
    result = list(rows)
    for field, direction in reversed([tuple(item) for item in order]):
        result.sort(key=lambda r, f=field: (r.get(f) is None, r.get(f) or 0), reverse=direction == "desc")
    return result


def search(catalog: list[dict[str, Any]], query: dict[str, Any]) -> list[dict[str, Any]]:
    """What `POST /bundles/` answers for `query`: filtered, priced for `allocated_storage`, ordered, limited."""
    storage_gb = float(query.get("allocated_storage") or 5.0)
    priced = []
    for offer in catalog:
        row = copy.deepcopy(offer)
        storage_per_hour = row["storage_cost"] * storage_gb / HOURS_PER_MONTH
        row["dph_total"] = round(row["dph_base"] + storage_per_hour, 6)
        row["storage_total_cost"] = round(storage_per_hour, 6)
        row["allocated_storage"] = storage_gb
        row["is_bid"] = query.get("type") in ("bid", "interruptible")
        priced.append(row)
    if "rented" not in query:
        priced = [row for row in priced if not row["rented"]]
    rows = [row for row in priced if matches(row, query)]
    rows = order_rows(rows, query.get("order"))
    limit = query.get("limit")
    if limit is not None:
        rows = rows[: int(limit)]
    return rows
