"""The harness's Kerberos settings and what each Kerberos failure tells the user.

The failures are the real library's errors for the real codes (MIT krb5's error
table, as the KDC and GSSAPI report them); the full path, a real KDC and the
CLI, is in ``test_run_kerberos.py``.
"""

from __future__ import annotations

import os
import tomllib

import krb5
import pytest

from migration_blackout.harness import kerberos
from migration_blackout.harness.config import ConfigError, HostConfig, apply_overrides, parse_config

HOSTS = """
[[hosts]]
name = "HV1"
address = "hv1.lab.example"
username = 'LAB\\measure'

[[hosts]]
name = "HV2"
address = "192.0.2.20"
auth = "ntlm"
service_principal = "HTTP/hv2.lab.example"
"""


def test_top_level_auth_is_every_hosts_default() -> None:
    config = parse_config(
        {
            "auth": "kerberos",
            "kerberos": {"krb5_config": "/etc/krb5-lab.conf"},
            **tomllib.loads(HOSTS),
        }
    )
    assert [h.auth for h in config.hosts] == ["kerberos", "ntlm"]
    assert config.auth == "kerberos" and config.krb5_config == "/etc/krb5-lab.conf"
    assert config.hosts[1].service_principal == "HTTP/hv2.lab.example"
    assert config.describe()["hosts"][1]["service_principal"] == "HTTP/hv2.lab.example"
    overridden = apply_overrides(config, auth="negotiate")
    assert [h.auth for h in overridden.hosts] == ["negotiate", "negotiate"]
    assert overridden.auth == "negotiate"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"auth": "digest"}, "auth must be one of"),
        ({"kerberos": {"ccache": "x"}}, "unknown setting(s) ccache"),
        ({"kerberos": {"krb5_config": 3}}, "krb5_config must be a path"),
        (
            {"hosts": [{"name": "A", "address": "a", "service_principal": "WSMAN/a"}]},
            "WinRM's HTTP/<host>",
        ),
        (
            {"hosts": [{"name": "A", "address": "a", "service_principal": "a.example"}]},
            "must look like HTTP/host.example.com",
        ),
    ],
)
def test_bad_kerberos_settings_are_refused(document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(document)


def test_the_spn_is_winrms_http_service_on_the_hosts_name() -> None:
    by_name = HostConfig("HV1", "hv1.lab.example", 5985, auth="kerberos")
    assert kerberos.service_principal(by_name) == "HTTP/hv1.lab.example"
    assert kerberos.wsman_options(by_name) == {"negotiate_service": "HTTP"}
    named = HostConfig(
        "HV1", "127.0.0.1", 5985, auth="kerberos", service_principal="HTTP/HV1.lab.test@LAB.TEST"
    )
    assert kerberos.service_principal(named) == "HTTP/hv1.lab.test"
    assert kerberos.wsman_options(named) == {
        "negotiate_service": "HTTP",
        "negotiate_hostname_override": "hv1.lab.test",
    }
    assert kerberos.wsman_options(HostConfig("HV1", "a", 5985, auth="basic")) == {}
    assert kerberos.client_principal("LAB\\measure") == "measure"
    assert kerberos.client_principal("measure@LAB.EXAMPLE") == "measure@LAB.EXAMPLE"
    assert kerberos.client_principal(None) is None


def krb5_error(offset: int) -> krb5.Krb5Error:
    """The library's own error for krb5_err.et code ``offset``."""
    return krb5.Krb5Error(krb5.init_context(), -1765328384 + offset)


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (195, "no Kerberos ticket in FILE:/tmp/cc: run `kinit measure@LAB.EXAMPLE` first"),
        (32, "has expired: run `kinit measure@LAB.EXAMPLE` again"),
        (37, "synchronise this machine's clock with the domain controllers"),
        (148, "synchronise this machine's clock"),
        (7, "no service principal HTTP/192.0.2.20 because the host is reached by IP address"),
        (156, "cannot reach a KDC"),
        (24, "refused the password of measure@LAB.EXAMPLE: check MB_PW"),
        (6, "does not know measure@LAB.EXAMPLE: give username as user@REALM"),
        (224, "no default realm"),
    ],
)
def test_each_failure_says_what_to_do(offset: int, expected: str) -> None:
    host = HostConfig("HV2", "192.0.2.20", 5985, auth="kerberos", password_env="MB_PW")
    text = kerberos.explain(
        host, krb5_error(offset), principal="measure@LAB.EXAMPLE", ccache="FILE:/tmp/cc"
    )
    assert expected in text
    assert kerberos.is_kerberos_failure(krb5_error(offset))


def test_a_name_not_in_the_realm_is_not_blamed_on_the_address() -> None:
    host = HostConfig("HV1", "hv1.lab.example", 5985, auth="kerberos")
    text = kerberos.explain(host, krb5_error(7))
    assert "no service principal HTTP/hv1.lab.example" in text and "IP address" not in text


def test_krb5_config_is_set_for_the_block_and_restored() -> None:
    before = os.environ.get("KRB5_CONFIG")
    with kerberos.use_krb5_config("/tmp/lab-krb5.conf"):
        assert os.environ["KRB5_CONFIG"] == "/tmp/lab-krb5.conf"
    assert os.environ.get("KRB5_CONFIG") == before
    with kerberos.use_krb5_config(None):
        assert os.environ.get("KRB5_CONFIG") == before
