"""French words for the codes the pipeline stores (alert types, pathway stages, levels).

Each value is a catalogue message: pages pass it through `_()`.
"""

from __future__ import annotations

ALERT_TYPES: dict[str, str] = {
    "ed_boarding": "Attente prolongée aux urgences",
    "referral_no_contact": "Adressage sans contact hospitalier",
    "no_follow_up": "Pas de suivi en ville après la sortie",
    "readmission": "Réhospitalisation précoce",
    "long_stay": "Séjour plus long que le 90e centile",
    "ward_over_capacity": "Unité au-delà de sa capacité",
}

ALERT_STATUS: dict[str, str] = {"open": "ouverte", "resolved": "résolue"}

STAGES: dict[str, str] = {
    "community": "en ville",
    "referred": "adressé à l'hôpital",
    "in_ed": "aux urgences",
    "admitted": "hospitalisé",
    "discharged": "sorti, en attente de suivi",
    "followed_up": "suivi en ville après la sortie",
    "home_care": "soins à domicile",
    "deceased": "décédé",
}

LEVELS: dict[str, str] = {"hospital": "Établissement", "service": "Service", "ward": "Unité"}

ACTIONS: dict[str, str] = {
    "sign_in": "connexion",
    "sign_in_refused": "connexion refusée",
    "sign_out": "déconnexion",
    "view_patient": "ouverture d'un parcours",
    "acknowledge": "acquittement d'une alerte",
}
