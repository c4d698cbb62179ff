"""Which page each role may open. Pure data: the app, its tests and the docs read it."""

from __future__ import annotations

from dataclasses import dataclass

from dashboard.accounts import Role

C, M, N, A = Role.COORDINATOR, Role.MANAGER, Role.INTEGRATOR, Role.ADMIN


@dataclass(frozen=True)
class PageSpec:
    """A dashboard page: its address, its script in `views/`, its title (French) and its roles."""

    url_path: str
    script: str
    title: str
    icon: str
    section: str
    roles: frozenset[Role]


PAGES: tuple[PageSpec, ...] = (
    PageSpec(
        "lits", "bed_board.py", "Tableau des lits", ":material/bed:", "Hôpital", frozenset({M, A})
    ),
    PageSpec(
        "previsions",
        "forecasts.py",
        "Prévisions",
        ":material/trending_up:",
        "Hôpital",
        frozenset({M, A}),
    ),
    PageSpec(
        "indicateurs",
        "indicators.py",
        "Indicateurs du parcours",
        ":material/monitoring:",
        "Hôpital",
        frozenset({M, A}),
    ),
    PageSpec(
        "listes",
        "worklists.py",
        "Listes de travail",
        ":material/checklist:",
        "Coordination",
        frozenset({C, A}),
    ),
    PageSpec(
        "alertes",
        "alerts.py",
        "Alertes",
        ":material/notifications:",
        "Coordination",
        frozenset({C, A}),
    ),
    PageSpec(
        "patient",
        "pathways.py",
        "Parcours patient",
        ":material/route:",
        "Coordination",
        frozenset({C, A}),
    ),
    PageSpec(
        "flux",
        "feed_health.py",
        "État des flux",
        ":material/sensors:",
        "Intégration",
        frozenset({N, A}),
    ),
    PageSpec(
        "utilisateurs",
        "users.py",
        "Utilisateurs",
        ":material/group:",
        "Administration",
        frozenset({A}),
    ),
    PageSpec(
        "journal",
        "audit.py",
        "Journal des accès",
        ":material/manage_search:",
        "Administration",
        frozenset({A}),
    ),
)


def allowed(role: Role) -> list[PageSpec]:
    """The pages `role` may open, in menu order."""
    return [p for p in PAGES if role in p.roles]


def page(url_path: str) -> PageSpec:
    """The page served at `url_path`."""
    return next(p for p in PAGES if p.url_path == url_path)
