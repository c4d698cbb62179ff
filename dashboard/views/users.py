"""Utilisateurs: the accounts, their roles, and making or disabling one (admin only)."""

from __future__ import annotations

import streamlit as st

from dashboard import accounts
from dashboard.accounts import Role
from dashboard.common import Col, _, engine, require, role_label, table
from dashboard.common import hospital_names as known_hospitals

me = require(Role.ADMIN)
st.title(_("Utilisateurs"))
made_now = st.session_state.pop("users_flash", None)
if made_now:
    st.success(_("Compte {name} créé.", name=made_now))
users = accounts.list_users(engine())
table(
    users.assign(
        role_name=users["role"].map(role_label),
        kind=users["has_password"].map(lambda p: _("mot de passe") if p else _("OIDC")),
        scope=users["hospitals"].map(lambda h: ", ".join(h) if h else _("tous")),
    ),
    [
        Col("username", "Identifiant"),
        Col("role_name", "Rôle"),
        Col("active", "Actif", "bool"),
        Col("kind", "Connexion"),
        Col("scope", "Établissements"),
        Col("created_at", "Créé le", "time"),
        Col("last_login_at", "Dernière connexion", "time"),
    ],
)

st.subheader(_("Créer un compte"))
hospital_names = known_hospitals()
with st.form("create_user", clear_on_submit=True):
    name = st.text_input(_("Identifiant"), key="new_user_name")
    role = st.selectbox(_("Rôle"), list(Role), format_func=role_label, key="new_user_role")
    password = st.text_input(
        _("Mot de passe (vide : connexion par l'établissement, OIDC)"),
        type="password",
        key="new_user_password",
    )
    scope = st.multiselect(
        _("Établissements suivis (vide : tous)"),
        list(hospital_names),
        format_func=lambda h: hospital_names.get(h, h),
        key="new_user_hospitals",
    )
    if st.form_submit_button(_("Créer")):
        try:
            made = accounts.create_user(
                engine(), name, role or Role.COORDINATOR, password or None, scope
            )
        except accounts.AccountError as exc:
            st.error(_("Compte non créé : {why}", why=_(exc.template, **exc.values)))
        else:
            st.session_state["users_flash"] = made.username
            st.rerun()

st.subheader(_("Désactiver ou réactiver un compte"))
others = [u for u in users["username"] if u != me.username]
if others:
    who = st.selectbox(_("Compte"), others, key="toggle_user")
    active = bool(users.loc[users["username"] == who, "active"].iloc[0])
    if st.button(_("Désactiver") if active else _("Réactiver"), key="toggle_user_button"):
        accounts.set_active(engine(), who, not active)
        st.rerun()
