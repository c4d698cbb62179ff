"""A territory: establishments, wards and beds, community practitioners, and the rates that drive
patient flows. Loaded from a YAML or TOML file; every section left out keeps its default.

The default describes a territory like Dijon's: a university hospital with 1,700 beds over 21 wards
(ED boxes included), a cancer centre and two clinics, 150 GPs and 12 home-nursing services. Names
are those of public institutions; FINESS numbers are illustrative. Nobody in it is a real person.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from simulate import SimulationError

ED_SERVICE = "urgences"
ICU_SERVICES = frozenset({"rea", "usc"})


@dataclass(frozen=True)
class Service:
    """A clinical service and how its stays behave.

    `ed_weight`: relative share of the ED admissions of an establishment that go to this service.
    `scheduled`: it receives elective admissions (community referral → Appointment).
    `transfers`: after the stay in this service, probability of moving on to another service
    (ICU step-down); the rest are discharged.
    """

    code: str
    display: str
    los_median_days: float
    los_sigma: float = 0.6
    ed_weight: float = 0.0
    scheduled: bool = True
    target_occupancy: float = 0.85
    transfers: Mapping[str, float] = field(default_factory=dict)
    death_rate: float | None = None


@dataclass(frozen=True)
class Ward:
    """A ward of an establishment; `beds` active bed Locations (ED: boxes)."""

    id: str
    name: str
    service: str
    beds: int
    establishment: str

    @property
    def is_ed(self) -> bool:
        """True for an emergency department."""
        return self.service == ED_SERVICE

    def bed_ids(self) -> list[str]:
        """The ids of this ward's bed Locations."""
        return [f"{self.id}-b{n:03d}" for n in range(1, self.beds + 1)]


@dataclass(frozen=True)
class Establishment:
    """A hospital, cancer centre or clinic (Organization + site Location)."""

    id: str
    name: str
    finess: str
    kind: str
    city: str
    wards: tuple[Ward, ...]
    ed_daily_arrivals: float = 0.0

    @property
    def ed_wards(self) -> list[Ward]:
        """Its emergency departments (none for most clinics)."""
        return [w for w in self.wards if w.is_ed]


@dataclass(frozen=True)
class EdConfig:
    """Emergency department arrivals and stays."""

    # Share of the day's arrivals per local hour (normalised on load): night trough, late-morning
    # and early-evening peaks, as in French ED activity reports.
    hourly_profile: tuple[float, ...] = (
        2.0, 1.6, 1.3, 1.1, 1.0, 1.0, 1.3, 2.2, 3.6, 5.0, 5.8, 5.8,
        5.4, 5.3, 5.4, 5.3, 5.2, 5.2, 5.3, 5.3, 4.8, 4.1, 3.4, 2.6,
    )  # fmt: skip
    # Monday … Sunday multipliers; Monday is the busiest day, weekends the calmest.
    weekday_factors: tuple[float, ...] = (1.12, 1.02, 0.99, 0.99, 1.01, 0.95, 0.92)
    holiday_factor: float = 0.92
    los_median_hours: float = 3.5
    los_sigma: float = 0.6
    # Share of ED visits that end in an admission, readmissions through the ED included.
    admission_ratio: float = 0.25
    left_without_being_seen: float = 0.03


@dataclass(frozen=True)
class SurgeConfig:
    """A winter surge: more ED arrivals, and wards may go over capacity (extra beds)."""

    enabled: bool = False
    start: str = "12-15"
    end: str = "02-28"
    ed_factor: float = 1.25
    allow_over_capacity: bool = True


@dataclass(frozen=True)
class FlowConfig:
    """Community referrals, scheduled admissions, discharges and what follows them."""

    referral_lag_days: tuple[int, int] = (3, 21)
    scheduled_weekend_factor: float = 0.15
    referral_to_ed_share: float = 0.05
    admission_noshow_rate: float = 0.02
    readmission_rate: float = 0.13
    # Share of readmissions that come back through the ED; the rest are direct admissions.
    readmission_via_ed: float = 0.5
    readmission_window_days: int = 30
    followup_days: tuple[int, int] = (5, 14)
    followup_missing_share: float = 0.2
    home_care_days: tuple[int, int] = (7, 30)
    # Discharge dispositions (probabilities, normalised): home, home with home nursing, rehab,
    # another facility; death is per service (`death_rate`) or `death`.
    dispositions: Mapping[str, float] = field(
        default_factory=lambda: {"home": 0.78, "home_care": 0.11, "rehab": 0.07, "other": 0.04}
    )
    death: float = 0.025


@dataclass(frozen=True)
class Imperfections:
    """Rates of the defects real feeds have (per emitted resource)."""

    duplicate_rate: float = 0.02
    out_of_order_rate: float = 0.03
    out_of_order_minutes: tuple[float, float] = (1.0, 45.0)
    late_rate: float = 0.01
    late_hours: tuple[float, float] = (2.0, 24.0)
    missing_discharge_rate: float = 0.01
    invalid_rate: float = 0.005


@dataclass(frozen=True)
class Community:
    """Community care: GPs (RPPS) and home-nursing services."""

    gps: int = 150
    home_nursing: int = 12
    city: str = "Dijon"
    department: str = "21"


@dataclass(frozen=True)
class Territory:
    """Everything the simulator needs to know about a territory."""

    name: str
    timezone: str
    country: str
    establishments: tuple[Establishment, ...]
    services: Mapping[str, Service]
    community: Community
    ed: EdConfig
    surge: SurgeConfig
    flows: FlowConfig
    imperfections: Imperfections
    warmup_days: int = 28

    @property
    def wards(self) -> list[Ward]:
        """Every ward of every establishment."""
        return [w for e in self.establishments for w in e.wards]

    @cached_property
    def _ward_index(self) -> dict[str, Ward]:
        return {w.id: w for w in self.wards}

    @cached_property
    def _establishment_index(self) -> dict[str, Establishment]:
        return {e.id: e for e in self.establishments}

    def ward(self, ward_id: str) -> Ward:
        """The ward with this id."""
        return self._ward_index[ward_id]

    def establishment(self, est_id: str) -> Establishment:
        """The establishment with this id."""
        return self._establishment_index[est_id]

    @property
    def total_beds(self) -> int:
        """Beds of every ward, ED boxes included."""
        return sum(w.beds for w in self.wards)


def _svc(code: str, display: str, los: float, **kw: Any) -> dict[str, Any]:
    return {"code": code, "display": display, "los_median_days": los, **kw}


DEFAULT_SERVICES: list[dict[str, Any]] = [
    _svc("urgences", "Urgences", 0.15, scheduled=False),
    _svc(
        "rea",
        "Réanimation",
        4.0,
        los_sigma=0.8,
        ed_weight=4,
        scheduled=False,
        target_occupancy=0.8,
        death_rate=0.15,
        transfers={"usc": 0.35, "med_int": 0.2, "cardio": 0.1, "pneumo": 0.1},
    ),
    _svc(
        "usc",
        "Soins continus",
        3.0,
        ed_weight=3,
        scheduled=False,
        death_rate=0.04,
        transfers={"med_int": 0.3, "chir_dig": 0.15, "cardio": 0.15, "neuro": 0.1},
    ),
    _svc("cardio", "Cardiologie", 4.0, ed_weight=10, transfers={"rea": 0.02}),
    _svc("pneumo", "Pneumologie", 6.0, ed_weight=9, transfers={"rea": 0.03}),
    _svc("neuro", "Neurologie", 6.0, ed_weight=7, transfers={"ssr": 0.08}),
    _svc("med_int", "Médecine interne", 7.0, ed_weight=16, transfers={"rea": 0.02}),
    _svc("geriatrie", "Gériatrie aiguë", 9.0, ed_weight=14, death_rate=0.05),
    _svc("gastro", "Hépato-gastro-entérologie", 5.0, ed_weight=6),
    _svc("nephro", "Néphrologie", 6.0, ed_weight=2),
    _svc("infectio", "Maladies infectieuses", 7.0, ed_weight=3),
    _svc("onco_hemato", "Hématologie clinique", 10.0, ed_weight=1, death_rate=0.05),
    _svc("chir_ortho", "Chirurgie orthopédique et traumatologique", 5.0, ed_weight=9),
    _svc("chir_dig", "Chirurgie digestive", 5.0, ed_weight=5, transfers={"usc": 0.04}),
    _svc("chir_cardio", "Chirurgie cardio-vasculaire et thoracique", 7.0, transfers={"rea": 0.3}),
    _svc("neurochir", "Neurochirurgie", 6.0, ed_weight=2, transfers={"rea": 0.1}),
    _svc("uro", "Urologie", 3.0, ed_weight=2),
    _svc("obst", "Gynécologie-obstétrique", 3.5, los_sigma=0.4, ed_weight=4),
    _svc("pediatrie", "Pédiatrie", 3.0, ed_weight=6),
    _svc("psy", "Psychiatrie", 14.0, los_sigma=0.8, ed_weight=2),
    _svc("ssr", "Soins de suite et de réadaptation", 20.0, los_sigma=0.5, ed_weight=0),
    _svc("onco_med", "Oncologie médicale", 5.0, ed_weight=1, death_rate=0.06),
    _svc("chir_onco", "Chirurgie oncologique", 4.0),
    _svc("med", "Médecine polyvalente", 6.0, ed_weight=6),
]


def _wards(spec: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"service": s, "beds": b} for s, b in spec]


DEFAULT_TERRITORY: dict[str, Any] = {
    "name": "Dijon (Côte-d'Or)",
    "timezone": "Europe/Paris",
    "country": "FR",
    "warmup_days": 28,
    "services": DEFAULT_SERVICES,
    "establishments": [
        {
            "id": "chu-dijon",
            "name": "CHU Dijon Bourgogne",
            "finess": "210780581",
            "kind": "chu",
            "city": "Dijon",
            "ed_daily_arrivals": 190,
            "wards": _wards(
                [
                    ("urgences", 80),
                    ("rea", 60),
                    ("usc", 40),
                    ("cardio", 110),
                    ("pneumo", 90),
                    ("neuro", 90),
                    ("med_int", 120),
                    ("geriatrie", 120),
                    ("gastro", 80),
                    ("nephro", 50),
                    ("infectio", 40),
                    ("onco_hemato", 60),
                    ("chir_ortho", 120),
                    ("chir_dig", 90),
                    ("chir_cardio", 60),
                    ("neurochir", 60),
                    ("uro", 50),
                    ("obst", 110),
                    ("pediatrie", 90),
                    ("psy", 80),
                    ("ssr", 100),
                ]
            ),
        },
        {
            "id": "cgfl",
            "name": "Centre Georges-François Leclerc",
            "finess": "210987731",
            "kind": "clcc",
            "city": "Dijon",
            "wards": _wards([("onco_med", 100), ("chir_onco", 45), ("usc", 10)]),
        },
        {
            "id": "clinique-valmy",
            "name": "Clinique de Valmy",
            "finess": "210780110",
            "kind": "clinique",
            "city": "Dijon",
            "ed_daily_arrivals": 45,
            "wards": _wards(
                [
                    ("urgences", 20),
                    ("med", 50),
                    ("cardio", 30),
                    ("chir_ortho", 60),
                    ("chir_dig", 40),
                ]
            ),
        },
        {
            "id": "clinique-drevon",
            "name": "Clinique Drevon",
            "finess": "210780128",
            "kind": "clinique",
            "city": "Dijon",
            "wards": _wards([("chir_ortho", 50), ("uro", 30), ("obst", 40), ("med", 35)]),
        },
    ],
    "community": {"gps": 150, "home_nursing": 12, "city": "Dijon", "department": "21"},
}


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _section(cls: type, data: Mapping[str, Any] | None) -> Any:
    """Build a config dataclass, keeping defaults for what `data` leaves out."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise SimulationError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: _tuple(v) for k, v in data.items()})


def territory_from_dict(data: Mapping[str, Any]) -> Territory:
    """A Territory from plain data (a parsed YAML or TOML file); sections left out keep defaults."""
    merged = {**DEFAULT_TERRITORY, **data}
    services: dict[str, Service] = {}
    for raw in merged["services"]:
        svc = _section(Service, raw)
        services[svc.code] = svc
    establishments = []
    for est in merged["establishments"]:
        wards = []
        seen: dict[str, int] = {}
        for raw in est.get("wards") or []:
            service = raw["service"]
            if service not in services:
                raise SimulationError(f"ward of {est['id']} has unknown service {service!r}")
            seen[service] = seen.get(service, 0) + 1
            suffix = "" if seen[service] == 1 else f"-{seen[service]}"
            ward_id = raw.get("id") or f"{est['id']}-{service.replace('_', '-')}{suffix}"
            name = raw.get("name") or services[service].display + suffix.replace("-", " ")
            wards.append(Ward(ward_id, name, service, int(raw["beds"]), est["id"]))
        establishments.append(
            Establishment(
                id=est["id"],
                name=est["name"],
                finess=str(est["finess"]),
                kind=est.get("kind", "clinique"),
                city=est.get("city", "Dijon"),
                wards=tuple(wards),
                ed_daily_arrivals=float(est.get("ed_daily_arrivals", 0.0)),
            )
        )
    for svc in services.values():
        for target in svc.transfers:
            if target not in services:
                raise SimulationError(f"service {svc.code} transfers to unknown {target!r}")
    territory = Territory(
        name=merged["name"],
        timezone=merged["timezone"],
        country=merged.get("country", "FR"),
        establishments=tuple(establishments),
        services=services,
        community=_section(Community, merged.get("community")),
        ed=_section(EdConfig, merged.get("ed")),
        surge=_section(SurgeConfig, merged.get("surge")),
        flows=_section(FlowConfig, merged.get("flows")),
        imperfections=_section(Imperfections, merged.get("imperfections")),
        warmup_days=int(merged.get("warmup_days", 28)),
    )
    if len(territory.ed.hourly_profile) != 24 or len(territory.ed.weekday_factors) != 7:
        raise SimulationError("ed.hourly_profile needs 24 values and ed.weekday_factors 7")
    for est_ in territory.establishments:
        if est_.ed_daily_arrivals > 0 and not est_.ed_wards:
            raise SimulationError(f"{est_.id} has ED arrivals but no 'urgences' ward")
    return territory


def compact_territory(prefix: str = "") -> Territory:
    """A small territory for tests and quick benchmarks: a hospital with an ED of 6 boxes and
    five wards, and a clinic with two, 12 GPs. Its winter surge covers the whole year, so that
    wards (the ED first) go over capacity. Every establishment, ward and bed id starts with
    `prefix`, like the patient-side ids of a run with `id_prefix=prefix`."""
    return territory_from_dict(
        {
            "name": "Territoire compact",
            "warmup_days": 7,
            "establishments": [
                {
                    "id": f"{prefix}ch",
                    "name": "Centre hospitalier compact",
                    "finess": "210000018",
                    "kind": "ch",
                    "ed_daily_arrivals": 50,
                    "wards": _wards(
                        [
                            ("urgences", 6),
                            ("rea", 6),
                            ("cardio", 24),
                            ("med_int", 30),
                            ("geriatrie", 24),
                            ("chir_ortho", 24),
                        ]
                    ),
                },
                {
                    "id": f"{prefix}clinique",
                    "name": "Clinique compacte",
                    "finess": "210000026",
                    "kind": "clinique",
                    "wards": _wards([("chir_ortho", 16), ("med", 16)]),
                },
            ],
            "community": {"gps": 12, "home_nursing": 2},
            "surge": {"enabled": True, "start": "01-01", "end": "12-31"},
        }
    )


def default_territory() -> Territory:
    """The Dijon-like default territory."""
    return territory_from_dict({})


def load_territory(path: Path | None) -> Territory:
    """Read a territory file (`.yaml`/`.yml` or `.toml`); None gives the default."""
    if path is None:
        return default_territory()
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SimulationError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SimulationError(f"{path} must hold a mapping at the top level")
    return territory_from_dict(data)


def territory_to_dict(territory: Territory) -> dict[str, Any]:
    """Plain data that `territory_from_dict` reads back into the same Territory."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {
        "name": territory.name,
        "timezone": territory.timezone,
        "country": territory.country,
        "warmup_days": territory.warmup_days,
        "services": [
            {f.name: plain(getattr(svc, f.name)) for f in fields(svc)}
            for svc in territory.services.values()
        ],
        "establishments": [
            {
                "id": est.id,
                "name": est.name,
                "finess": est.finess,
                "kind": est.kind,
                "city": est.city,
                "ed_daily_arrivals": est.ed_daily_arrivals,
                "wards": [
                    {"id": w.id, "name": w.name, "service": w.service, "beds": w.beds}
                    for w in est.wards
                ],
            }
            for est in territory.establishments
        ],
        **{
            name: {f.name: plain(getattr(section, f.name)) for f in fields(section)}
            for name, section in (
                ("community", territory.community),
                ("ed", territory.ed),
                ("surge", territory.surge),
                ("flows", territory.flows),
                ("imperfections", territory.imperfections),
            )
        },
    }


def territory_yaml(territory: Territory) -> str:
    """The territory as a YAML file (every default written out), a starting point to edit."""
    return yaml.safe_dump(
        territory_to_dict(territory), allow_unicode=True, sort_keys=False, width=100
    )
