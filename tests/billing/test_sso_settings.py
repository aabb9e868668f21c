"""Single sign-on's configuration (onceonly_site/sso_settings.py): off by default, refused at start-up when unsafe or
when it would lock every operator out; and its routes while off or while the provider is down. The sign-in itself is
tested end to end against a real provider in tests/ui/test_browser_sso.py."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from billing import sso
from onceonly_site.sso_settings import PASSWORD_BACKEND, oidc_settings, parse_role_map
from tests.support.servers import free_port

SSO = {"issuer": "https://id.example.com/realms/acme/", "client_id": "onceonly", "client_secret": "s3cret"}


def test_off_without_an_issuer():
    values = oidc_settings(issuer="")
    assert values["ONCEONLY_OIDC_ENABLED"] is False
    assert values["AUTHENTICATION_BACKENDS"] == [PASSWORD_BACKEND]


def test_on_with_an_issuer():
    values = oidc_settings(**SSO, allowed_domains=[" Acme.com ", "@acme.io"])
    assert values["ONCEONLY_OIDC_ISSUER"] == "https://id.example.com/realms/acme"
    assert values["ONCEONLY_OIDC_ALLOWED_DOMAINS"] == ["acme.com", "acme.io"]
    assert values["AUTHENTICATION_BACKENDS"] == [PASSWORD_BACKEND, "billing.sso.OidcBackend"]
    assert values["OIDC_USE_PKCE"] is True and values["OIDC_CREATE_USER"] is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"issuer": "", "password_login": False}, "ONCEONLY_PASSWORD_LOGIN=0 needs single sign-on"),
        ({**SSO, "client_secret": ""}, "ONCEONLY_OIDC_CLIENT_SECRET"),
        ({**SSO, "issuer": "id.example.com"}, r"must be an http\(s\) URL"),
        ({**SSO, "create_users": True}, "need ONCEONLY_OIDC_ACCOUNT"),
        ({**SSO, "role_map": {"admins": "admin"}}, "need ONCEONLY_OIDC_ACCOUNT"),
        ({**SSO, "create_users": True, "account": "Acme"}, "needs ONCEONLY_OIDC_ALLOWED_DOMAINS"),
        ({**SSO, "scopes": "openid profile"}, "must include openid and email"),
    ],
)
def test_unsafe_or_locking_out_configurations_are_refused(options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        oidc_settings(**options)


def test_the_role_map():
    assert parse_role_map(["onceonly-admins:admin", "cn=ops,dc=acme:Owner"]) == {
        "onceonly-admins": "admin",
        "cn=ops,dc=acme": "owner",
    }
    for bad in ["admins", "admins:root", ":viewer"]:
        with pytest.raises(ImproperlyConfigured, match="ONCEONLY_OIDC_ROLE_MAP"):
            parse_role_map([bad])


def test_the_highest_mapped_role_wins():
    cfg = sso.SsoConfig(
        enabled=True,
        issuer="",
        allowed_domains=(),
        role_claim="groups",
        role_map={"a": "viewer", "b": "admin"},
        account="Acme",
        create_users=False,
        require_verified_email=True,
    )
    assert sso.mapped_role({"groups": ["x", "a", "b"]}, cfg) == "admin"
    assert sso.mapped_role({"groups": "a"}, cfg) == "viewer"
    assert sso.mapped_role({"groups": ["x"]}, cfg) is None
    assert sso.mapped_role({}, cfg) is None


def test_the_routes_are_404_while_sso_is_off(client, db):
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    assert b"Sign in with SSO" not in client.get("/login/").content


def test_an_unreachable_provider_is_a_clear_503(client, db, settings):
    for name, value in oidc_settings(**{**SSO, "issuer": f"http://127.0.0.1:{free_port()}"}).items():
        setattr(settings, name, value)
    sso.forget_metadata()
    assert b"Sign in with SSO" in client.get("/login/").content
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 503
    assert b"The sign-in provider cannot be reached" in response.content
