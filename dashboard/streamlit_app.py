"""Parcours dashboard: one Streamlit app, its pages in `dashboard/views/`.

Nothing is shown before sign-in: a local account (`parcours users create`) or, when
`.streamlit/secrets.toml` has an `[auth]` section, the hospital's OIDC provider (`st.login`).
Each role sees its own pages (`dashboard/roles.py`); opening another one says it is refused.
Run with `parcours dashboard` (it sets DATABASE_URL and the rest through the environment).
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from dashboard import accounts, i18n, roles, sessions
from dashboard.common import _, current_user, engine, role_label, settings

VIEWS = Path(__file__).resolve().parent / "views"

# An emoji: Streamlit draws it locally, where a Material icon would be fetched from the internet.
st.set_page_config(page_title="Parcours", page_icon=":material/local_hospital:", layout="wide")


def oidc_configured() -> bool:
    """Whether `.streamlit/secrets.toml` configures an OIDC provider for `st.login`."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all: local accounts only
        return False


def oidc_signed_in() -> bool:
    """Whether the OIDC provider has signed this browser in."""
    return oidc_configured() and bool(st.user.get("is_logged_in"))


def language_switch() -> None:
    """French by default; the other catalogues on a switch."""
    names = {"fr": "Français", "en": "English"}
    st.segmented_control(
        "Langue / Language",
        i18n.languages(),
        format_func=lambda code: names.get(code, code),
        key="lang",
        default=i18n.DEFAULT,
        label_visibility="collapsed",
    )


def sign_in() -> None:
    """The sign-in page: the only thing anyone sees before signing in."""
    language_switch()
    st.title(_("Connexion à Parcours"))
    st.caption(
        _(
            "Parcours ville–hôpital : lits, alertes et parcours des patients du territoire. "
            "L'accès est réservé aux personnes habilitées et chaque consultation d'un dossier "
            "est tracée."
        )
    )
    if oidc_configured():
        if st.button(_("Se connecter avec le compte de l'établissement"), type="primary"):
            st.login()
        st.divider()
    with st.form("sign_in"):
        name = st.text_input(_("Identifiant"), key="sign_in_name")
        password = st.text_input(_("Mot de passe"), type="password", key="sign_in_password")
        if st.form_submit_button(_("Se connecter")):
            user = accounts.authenticate(engine(), name, password)
            if user is None:
                st.error(_("Identifiant ou mot de passe incorrect, ou compte désactivé."))
            else:
                st.session_state["user"] = user
                keep_signed_in(user)
                st.rerun()


def session_secret() -> bytes:
    """The key that signs session cookies (see `dashboard/sessions.py`)."""
    return sessions.install_secret(settings().data_dir)


def keep_signed_in(user: accounts.User) -> None:
    """Prepare the session cookie of a local account: the next page run hands its ticket to the
    browser, so that a reload keeps the user signed in."""
    found = accounts.session_user(engine(), user.username)
    if found is None:
        return
    now = time.time()
    claims = sessions.Claims(user.username, found[1], now, now + sessions.SESSION_HOURS * 3600)
    token = sessions.sign(session_secret(), claims)
    st.session_state["session_ticket"] = sessions.issue_ticket(token)


def resumed_session() -> accounts.User | None:
    """The user of a valid session cookie sent with this page load (none after a sign-out in
    this tab, whose browser may still send the old cookie until it reloads)."""
    if st.session_state.get("signed_out"):
        return None
    claims = sessions.verify(session_secret(), st.context.cookies.get(sessions.COOKIE), time.time())
    if claims is None:
        return None
    found = accounts.session_user(engine(), claims.username)
    if found is None or found[1] != claims.stamp:
        return None
    last = accounts.last_sign_out(engine(), claims.username)
    if last is not None and last.timestamp() >= claims.issued:
        return None
    st.session_state["user"] = found[0]
    return found[0]


def oidc_sign_in() -> accounts.User | None:
    """The user the OIDC provider signed in, with their role from the account store."""
    if not oidc_signed_in():
        return None
    name = str(st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub"))
    user = accounts.oidc_user(engine(), name)
    if user is None:
        st.error(
            _(
                "Votre identité ({name}) est reconnue, mais aucun rôle ne vous est attribué "
                "dans Parcours. Demandez à un administrateur de créer votre compte.",
                name=name,
            )
        )
        st.button(_("Se déconnecter"), on_click=st.logout)
        st.stop()
    st.session_state["user"] = user
    return user


def sign_out() -> None:
    """Forget the session's user, end their kept sessions and clear this browser's cookie (and
    end the OIDC session when there is one)."""
    user = current_user()
    if user is not None:
        accounts.record_sign_out(engine(), user)
    for key in ("user", "open_patient", "opened_patient", "session_ticket"):
        st.session_state.pop(key, None)
    st.session_state["signed_out"] = True
    st.session_state["clear_cookie"] = True
    if oidc_signed_in():
        st.logout()


user = current_user() or oidc_sign_in() or resumed_session()
if user is None:
    if st.session_state.pop("clear_cookie", False):
        sessions.post(sessions.SIGN_OUT_PATH, "", key="session_cookie_clear")
    # Every address leads to the sign-in form, and keeps its page for after signing in.
    st.navigation(
        [st.Page(sign_in, title="Parcours", url_path="connexion", default=True)]
        + [st.Page(sign_in, title="Parcours", url_path=spec.url_path) for spec in roles.PAGES],
        position="hidden",
    ).run()
    st.stop()

mine = roles.allowed(user.role)
pages = {
    spec.url_path: st.Page(
        VIEWS / spec.script,
        title=_(spec.title),
        icon=spec.icon,
        url_path=spec.url_path,
        default=spec is mine[0],
    )
    for spec in roles.PAGES
}
st.session_state["pages"] = pages
# Every page is routable, so that opening a forbidden one by its address says so; the menu
# lists only the role's pages.
current = st.navigation(list(pages.values()), position="hidden")
with st.sidebar:
    st.markdown("### :material/local_hospital: Parcours")
    section = None
    for spec in mine:
        if spec.section != section:
            section = spec.section
            st.caption(_(section))
        st.page_link(pages[spec.url_path], label=_(spec.title), icon=spec.icon)
    st.divider()
    st.markdown(f"**{user.username}** · {role_label(user.role)}")
    st.button(_("Se déconnecter"), on_click=sign_out, key="sign_out")
    language_switch()
    ticket = st.session_state.pop("session_ticket", None)
    if ticket:
        sessions.post(sessions.SESSION_PATH, ticket, key="session_cookie_set")

spec = roles.page(current.url_path) if current.url_path else mine[0]
if user.role not in spec.roles:
    st.title(_(spec.title))
    st.error(
        _(
            "Accès refusé : votre rôle ({role}) ne permet pas d'ouvrir « {page} ». "
            "Demandez à un administrateur si vous en avez besoin.",
            role=role_label(user.role),
            page=_(spec.title),
        )
    )
    st.stop()
if spec.url_path != "patient":
    # Coming back to a patient's pathway later is a new opening, traced again.
    st.session_state.pop("opened_patient", None)
current.run()
