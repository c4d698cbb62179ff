"""État des flux: what each integrator sent, what was refused and why, and whether the stream
workers keep up with it."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.accounts import Role
from dashboard.common import REFRESH, Col, _, _n, engine, lang, now, number, require, table

require(Role.INTEGRATOR, Role.ADMIN)
st.title(_("État des flux"))
hours = st.slider(_("Rejets des … dernières heures"), 1, 168, 24, key="feed_hours")


def streams(at: datetime) -> None:
    """Whether the stream workers keep up: the bed board is only as fresh as they are."""
    st.subheader(_("Traitement des flux (stream workers)"))
    progress = queries.stream_progress(engine(), at, lang=lang())
    if progress.empty:
        st.info(
            _("Aucun traitement n'a encore donné de nouvelles. Lancez `parcours streams worker`.")
        )
        return
    silent, behind = queries.stream_freshness(progress)
    if silent:
        st.warning(
            _n(
                "{n} partition sans rapport de son traitement : le tableau des lits et les "
                "alertes s'arrêtent là. Vérifiez que `parcours streams worker` tourne et joint "
                "Kafka et la base (son journal dit pourquoi il s'est arrêté).",
                "{n} partitions sans rapport de leur traitement : le tableau des lits et les "
                "alertes s'arrêtent là. Vérifiez que `parcours streams worker` tourne et joint "
                "Kafka et la base (son journal dit pourquoi il s'est arrêté).",
                silent,
            )
        )
    elif behind:
        st.info(
            _n(
                "Rattrapage en cours : {count} message reçu n'est pas encore "
                "sur le tableau des lits.",
                "Rattrapage en cours : {count} messages reçus ne sont pas encore "
                "sur le tableau des lits.",
                behind,
                count=number(behind),
            )
        )
    else:
        st.success(_("À jour : chaque message accepté est sur le tableau des lits."))
    table(
        progress,
        [
            Col("topic", "Topic"),
            Col("partition", "Partition", "int"),
            Col("status", "État"),
            Col("lag", "Retard (messages)", "int"),
            Col("worker", "Traitement"),
            Col("reported_at", "Dernier rapport", "time"),
        ],
    )


def unresolved(pending: pd.DataFrame) -> None:
    """References to hospitals, places or practitioners accepted before their target."""
    st.subheader(_("Références en attente ({n})", n=len(pending)))
    if pending.empty:
        st.success(_("Chaque référence acceptée pointe vers une ressource reçue."))
        return
    st.warning(
        _(
            "Ces références ont été acceptées avant la ressource qu'elles désignent. Les "
            "passages et séjours qui les portent sont comptés ; leur lieu reste « pas encore "
            "connu » jusqu'à l'arrivée de la ressource. Envoyez les Bundles des établissements "
            "et des praticiens pour les résoudre."
        )
    )
    table(
        pending,
        [
            Col("source", "Émetteur"),
            Col("element", "Élément"),
            Col("resource_type", "Type"),
            Col("value", "Identifiant"),
            Col("occurrences", "Occurrences", "int"),
            Col("last_seen_at", "Dernière fois", "time"),
        ],
    )


@st.fragment(run_every=REFRESH)
def health(hours: int) -> None:
    """Counters per integrator and the latest rejections; refreshes itself."""
    st.subheader(_("Émetteurs"))
    feeds = queries.feeds(engine())
    if feeds.empty:
        st.info(_("Aucun émetteur. Créez-en un avec `parcours ingest token create NOM`."))
    else:
        table(
            feeds,
            [
                Col("name", "Émetteur"),
                Col("active", "Actif", "bool"),
                Col("last_seen_at", "Dernier envoi", "time"),
                Col("accepted_total", "Acceptés", "int"),
                Col("duplicate_total", "Doublons", "int"),
                Col("rejected_total", "Rejetés", "int"),
            ],
        )
    hl7 = queries.hl7_messages(engine())
    if not hl7.empty:
        st.subheader(_("Messages HL7 v2 (MLLP)"))
        table(
            hl7,
            [
                Col("integrator", "Émetteur"),
                Col("sending_facility", "Établissement émetteur"),
                Col("trigger", "Événement"),
                Col("messages", "Messages", "int"),
                Col("AA", "Acceptés (AA)", "int"),
                Col("AE", "Erreurs (AE)", "int"),
                Col("AR", "Refusés (AR)", "int"),
                Col("reasons", "Motifs des refus"),
                Col("last_at", "Dernier message", "time"),
            ],
        )
    at = now()
    streams(at)
    unresolved(queries.unresolved_references(engine()))
    waiting = queries.places_not_received(engine())
    if not waiting.empty:
        st.subheader(_("Lieux pas encore connus ({n})", n=len(waiting)))
        st.caption(
            _(
                "Des séjours et passages aux urgences nomment ces lieux, qu'aucun flux n'a "
                "encore envoyés : ils sont comptés dans leur établissement et placés à "
                "l'arrivée du lieu."
            )
        )
        table(
            waiting,
            [
                Col("hospital_id", "Établissement"),
                Col("location_id", "Lieu"),
                Col("waiting", "Séjours et passages", "int"),
            ],
        )
    rejected = queries.recent_rejections(engine(), since=at - timedelta(hours=hours))
    st.subheader(_("Rejets ({n})", n=len(rejected)))
    if rejected.empty:
        st.success(_("Aucun rejet sur cette période."))
        return
    by_reason = rejected.groupby(["source", "reason"]).size().rename("count").reset_index()
    table(
        by_reason,
        [Col("source", "Émetteur"), Col("reason", "Motif"), Col("count", "Nombre", "int")],
    )
    table(
        rejected,
        [
            Col("received_at", "Reçu le", "time"),
            Col("source", "Émetteur"),
            Col("http_status", "Code HTTP", "int"),
            Col("reason", "Motif"),
            Col("resource_type", "Ressource"),
            Col("resource_id", "Identifiant"),
            Col("expression", "Élément en faute"),
            Col("diagnostics", "Diagnostic"),
        ],
    )


health(hours)
