"""A machine on the in-memory provider, recorded in the ledger as `up` records it (for in-process tests)."""

from __future__ import annotations

from typing import Any

from cloudsd.core import lifecycle
from cloudsd.ledger import Ledger
from cloudsd.machine import CreateRequest, OfferSpec, SSHEndpoint
from cloudsd.providers.memory import MemoryProvider, World


def running_machine(world: World, ledger: Ledger, name: str = "box", **offer: Any) -> str:
    """Offer, reserve, price, create, run: the machine's provider id. `offer` goes to `World.add_offer`."""
    world.add_offer("a", **offer)
    provider = MemoryProvider()
    chosen = provider.offers(OfferSpec())[0]
    ledger.reserve(name, "memory", "img")
    lifecycle.priced(ledger, name, chosen, "/nonexistent/key")
    provider_id = provider.create(chosen, CreateRequest(name=name, image="img", public_key="ssh-ed25519 AAAA"))
    lifecycle.created(ledger, name, provider_id, chosen, None)
    provider.get(provider_id)
    lifecycle.running(ledger, name, SSHEndpoint("127.0.0.1", 9))
    return provider_id
