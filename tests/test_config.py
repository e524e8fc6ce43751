"""measure.toml: parsed strictly, secrets refused, flags override the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from migration_blackout.harness.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config,
    parse_config,
    password_from_env,
)

REPO = Path(__file__).resolve().parent.parent


def test_the_example_config_parses() -> None:
    config = load_config(REPO / "measure.example.toml")
    assert [h.name for h in config.hosts] == ["WS16TP4DM1VML1b", "WS16TP4DM2VML1b"]
    assert config.hosts[0].url == "http://ws16tp4dm1vml1b.lab.example:5985/wsman"
    assert config.hosts[0].auth == "negotiate"
    assert config.hosts[0].migration_name == "WS16TP4DM1VML1b"
    assert config.guest_addresses == ("192.0.2.10",)
    assert config.probes.icmp_interval_s == pytest.approx(0.010)
    assert config.probes.host_poll_interval_s == pytest.approx(0.100)
    assert not config.uses_lab


def test_no_file_means_defaults_and_the_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config == RunConfig()
    assert config.uses_lab
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"hosts": [{"name": "a", "address": "h", "password": "x"}]}, "passwords do not belong"),
        ({"hosts": [{"name": "a", "address": "h", "auth": "magic"}]}, "auth must be one of"),
        ({"hosts": [{"name": "a", "address": "h", "port": 70000}]}, "port must be 1-65535"),
        ({"hosts": [{"name": "a", "address": "h", "transport": "ftp"}]}, "transport must be"),
        ({"hosts": [{"address": "h"}]}, "name is required"),
        ({"hosts": [{"name": "a", "address": "h", "auth": "basic"}]}, "unencrypted"),
        ({"hosts": [{"name": "a", "address": "h", "computer_name": " "}]}, "must not be empty"),
        ({"probes": {"host_state": {"timeout_ms": 500}}}, "at least 2000"),
        ({"hosts": [{"name": "a", "address": "h"}, {"name": "A", "address": "g"}]}, "share a name"),
        ({"guest": {"addresses": ["not-an-ip"]}}, "is not an IP address"),
        ({"probes": {"icmp": {"interval_ms": -1}}}, "must be positive"),
        ({"colour": "blue"}, "unknown setting"),
        # A misspelt key is refused in one line naming its table, never dropped.
        ({"probes": {"icmpp": {}}}, r"^measure.toml: \[probes\]: unknown setting\(s\) icmpp$"),
        (
            {"probes": {"icmp": {"interval": 5}}},
            r"^measure.toml: \[probes.icmp\]: unknown setting\(s\) interval$",
        ),
        (
            {"migration": {"timeout": 5}},
            r"^measure.toml: \[migration\]: unknown setting\(s\) timeout$",
        ),
    ],
)
def test_bad_configs_name_the_problem(document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(document, origin="measure.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "measure.toml"
    path.write_text("vm = \n")
    with pytest.raises(ConfigError, match=r"measure.toml: not valid TOML"):
        load_config(path)


def test_flags_override_the_file() -> None:
    config = load_config(REPO / "measure.example.toml")
    changed = apply_overrides(
        config, vm="OtherVM", icmp_interval_s=0.001, source="WS16TP4DM2VML1b", timeout_s=None
    )
    assert changed.vm == "OtherVM"
    assert changed.probes.icmp_interval_s == 0.001
    assert changed.source == "WS16TP4DM2VML1b"
    assert changed.migration.timeout_s == config.migration.timeout_s


def test_every_override_lands_in_its_section() -> None:
    config = load_config(REPO / "measure.example.toml")
    changed = apply_overrides(
        config,
        guest_addresses=["198.18.0.9"],
        auth="negotiate",
        max_blackout_ms=900.0,
        downtime_limit_ms=40,
        include_storage=True,
    )
    assert changed.guest_addresses == ("198.18.0.9",)
    assert changed.auth == "negotiate"
    assert {host.auth for host in changed.hosts} == {"negotiate"}
    assert changed.thresholds.max_blackout_ms == 900.0
    assert changed.qemu.downtime_limit_ms == 40
    assert changed.migration.include_storage is True


def test_an_unknown_override_is_refused() -> None:
    """A flag that the overrides do not know is an error, never silently dropped."""
    config = load_config(REPO / "measure.example.toml")
    with pytest.raises(TypeError, match="interval_ms"):
        apply_overrides(config, interval_ms=5)


def test_passwords_come_from_the_named_environment_variable() -> None:
    config = parse_config(
        {"hosts": [{"name": "a", "address": "h", "password_env": "LAB_PW"}]}, origin="x"
    )
    assert password_from_env(config.hosts[0], {"LAB_PW": "pw"}) == "pw"
    assert password_from_env(config.hosts[0], {}) is None
    assert "pw" not in repr(config.describe())


def test_the_keyring_is_asked_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional keyring package: looked up by host and user; absent or broken
    keyrings give None, never an error."""
    import sys
    import types

    from migration_blackout.harness.config import KEYRING_SERVICE, password_from_keyring

    host = parse_config(
        {"hosts": [{"name": "HOST1", "address": "h", "username": "LAB\\u"}]}, origin="x"
    ).hosts[0]
    monkeypatch.setitem(sys.modules, "keyring", None)
    assert password_from_keyring(host) is None  # not installed
    asked = []

    def get_password(service: str, user: str) -> str:
        asked.append((service, user))
        return "from-keyring"

    monkeypatch.setitem(sys.modules, "keyring", types.SimpleNamespace(get_password=get_password))
    assert password_from_keyring(host) == "from-keyring"
    assert asked == [(KEYRING_SERVICE, "HOST1:LAB\\u")]

    def broken(service: str, user: str) -> str:
        raise RuntimeError("no recommended backend was available")

    monkeypatch.setitem(sys.modules, "keyring", types.SimpleNamespace(get_password=broken))
    assert password_from_keyring(host) is None


def test_a_host_s_defaults_are_what_a_stock_host_accepts() -> None:
    """Enable-PSRemoting: HTTP on 5985, Kerberos and Negotiate (encrypted)."""
    config = parse_config({"hosts": [{"name": "HV1", "address": "hv1.example"}]})
    (host,) = config.hosts
    assert (host.https, host.port, host.auth) == (False, 5985, "negotiate")
    assert host.url == "http://hv1.example:5985/wsman"
    assert host.migration_name == "HV1"
    https = parse_config(
        {"hosts": [{"name": "HV1", "address": "hv1", "transport": "https", "auth": "basic"}]}
    )
    assert https.hosts[0].port == 5986
    named = parse_config(
        {"hosts": [{"name": "HV1", "address": "192.0.2.5", "computer_name": "hv1.ad.example"}]}
    )
    assert named.hosts[0].migration_name == "hv1.ad.example"
    assert named.hosts[0].describe()["computer_name"] == "hv1.ad.example"
    assert config.probes.host_call_timeout_s == 20.0


def test_witness_probe_settings_parse_and_bad_ones_are_refused() -> None:
    config = parse_config(
        {
            "probes": {
                "tcp_connect": {"ports": [3389, 22], "interval_ms": 20, "timeout_ms": 300},
                "witnesses": {"enabled": True, "port": 47700, "interval_ms": 5},
            }
        }
    )
    probes = config.probes
    assert probes.tcp_connect_ports == (3389, 22)
    assert (probes.tcp_connect_interval_s, probes.tcp_connect_timeout_s) == (0.02, 0.3)
    assert (probes.witnesses, probes.witness_port, probes.witness_interval_s) == (
        True,
        47700,
        0.005,
    )
    assert apply_overrides(config, tcp_connect_ports=[80]).probes.tcp_connect_ports == (80,)
    for bad, message in (
        ({"tcp_connect": {"ports": [0]}}, "ports must be numbers 1-65535"),
        ({"tcp_connect": {"ports": ["3389"]}}, "ports must be numbers 1-65535"),
        ({"witnesses": {"enabled": "yes"}}, "enabled must be bool"),
        ({"witnesses": {"colour": 1}}, "unknown setting"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"probes": bad})
