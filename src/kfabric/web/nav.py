"""The portal's navigation: each page module adds its entries (a catalog key, a path and the roles that see it)."""

from __future__ import annotations

from dataclasses import dataclass

from kfabric.service.actors import Actor, Role

TENANTS = frozenset({Role.ORG_ADMIN, Role.MEMBER})
EVERYONE = frozenset(Role)


@dataclass(frozen=True, slots=True)
class NavItem:
    key: str  # message catalog key of its label (web/i18n.py)
    path: str
    roles: frozenset[Role]
    order: int = 100


NAV: list[NavItem] = []


def add(key: str, path: str, roles: frozenset[Role], order: int = 100) -> None:
    """Add an entry (once per key: a module imported twice adds nothing)."""
    if all(n.key != key for n in NAV):
        NAV.append(NavItem(key, path, roles, order))
        NAV.sort(key=lambda n: (n.order, n.key))


def for_actor(actor: Actor) -> list[NavItem]:
    return [n for n in NAV if actor.role in n.roles]
