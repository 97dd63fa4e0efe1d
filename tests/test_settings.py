"""Settings: defaults, and the start-up refusals that keep an operator from a silent misconfiguration."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import LEASE_MARGIN_MS, Settings, load_settings


def test_defaults_split_credentials_from_chat_state() -> None:
    settings = load_settings({})
    assert settings.session_idle_ttl_s == 93600  # 26 h: above a flex-push-timeout of 86400 s
    assert settings.chat_state_ttl_s == 691200  # 8 days
    assert settings.lease_ttl_ms >= 2 * settings.refresh_timeout_ms + LEASE_MARGIN_MS


def test_credentials_may_not_outlive_the_chat_state() -> None:
    with pytest.raises(ConfigError, match=r"SESSION_IDLE_TTL_S .* must not exceed CHAT_STATE_TTL_S"):
        load_settings({"SESSION_IDLE_TTL_S": "100", "CHAT_STATE_TTL_S": "99"})
    assert load_settings({"SESSION_IDLE_TTL_S": "100", "CHAT_STATE_TTL_S": "100"}).chat_state_ttl_s == 100


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"REFRESH_TIMEOUT_MS": "400", "LEASE_TTL_MS": "999"}, True),
        ({"REFRESH_TIMEOUT_MS": "400", "LEASE_TTL_MS": "1000"}, False),
        ({"REFRESH_TIMEOUT_MS": "2000"}, True),  # the default lease is too short for it
        ({"REFRESH_TIMEOUT_MS": "2000", "LEASE_TTL_MS": "4200"}, False),
    ],
)
def test_a_lease_must_cover_twice_the_refresh_deadline_plus_a_margin(
    env: dict[str, str], refused: bool
) -> None:
    if refused:
        with pytest.raises(ConfigError, match=r"LEASE_TTL_MS .* at least twice REFRESH_TIMEOUT_MS"):
            load_settings(env)
    else:
        load_settings(env)


@pytest.mark.parametrize("var", ["ENDED_TTL_S", "DEDUPE_TTL_S"])
def test_retired_variables_are_refused_with_a_pointer(var: str) -> None:
    with pytest.raises(ConfigError, match=f"{var} is no longer used"):
        load_settings({var: "600"})


def test_webhook_retry_schedule_accepts_fractional_seconds() -> None:
    assert load_settings({}).webhook_retry_schedule_s[:3] == (0.1, 0.25, 0.5)  # a fast first tier
    assert load_settings({"WEBHOOK_RETRY_SCHEDULE_S": "0.25, 1,2.5"}).webhook_retry_schedule_s == (
        0.25,
        1,
        2.5,
    )
    for bad in ("0", "-1", "soon", "nan", "inf", "1,,2"):
        with pytest.raises(ConfigError, match="WEBHOOK_RETRY_SCHEDULE_S"):
            load_settings({"WEBHOOK_RETRY_SCHEDULE_S": bad})


@pytest.mark.parametrize("field", [f for f, kind in Settings.__annotations__.items() if kind == "int"])
def test_every_integer_setting_is_read_from_its_upper_cased_variable(field: str) -> None:
    default = getattr(Settings(), field)
    # Double it (every default is positive): a value no cross-field rule refuses...
    env = {field.upper(): str(default * 2)}
    if field == "session_idle_ttl_s":
        env["CHAT_STATE_TTL_S"] = str(default * 2)
    if field == "refresh_timeout_ms":
        env["LEASE_TTL_MS"] = str(default * 5)
    if field == "commit_chunk_events":
        env[field.upper()] = str(default)  # already close to the ceiling
    settings = load_settings(env)
    assert getattr(settings, field) == int(env[field.upper()])
    with pytest.raises(ConfigError, match=field.upper()):
        load_settings({field.upper(): "zero"})


@pytest.mark.parametrize(
    "env, message",
    [
        ({"COMMIT_CHUNK_EVENTS": "5000"}, "COMMIT_CHUNK_EVENTS .* must not exceed 1000"),
        ({"DRAIN_BUDGET_MS": "60000"}, "DRAIN_BUDGET_MS .* must be below DRAIN_JOB_TIMEOUT_S"),
        ({"WEBHOOK_KEYS_TTL_S": "3600"}, "WEBHOOK_KEYS_TTL_S .* must outlive the whole"),
    ],
)
def test_cross_field_rules_name_both_variables(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock"])
def test_redis_url_accepts_the_schemes_redis_py_connects_with(url: str) -> None:
    assert load_settings({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["garbage", "localhost:6379", "http://localhost:6379"])
def test_redis_url_with_another_scheme_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match=r"REDIS_URL must start with redis://, rediss://, unix://"):
        load_settings({"REDIS_URL": url})


def test_a_refused_redis_url_does_not_echo_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"REDIS_URL": "http://user:s3cret@redis:6379"})
    assert "s3cret" not in refused.value.detail and "'http'" in refused.value.detail


def test_sentinel_and_acknowledgement_defaults_are_the_contracts() -> None:
    settings = load_settings({})
    assert settings.redis_sentinels == () and settings.redis_sentinel_master == "mymaster"
    assert settings.redis_sentinel_password is None
    assert settings.ingress_ack == "stored" and settings.replica_ack_timeout_ms == 50


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("sentinel-1:26379", (("sentinel-1", 26379),)),
        (
            " 10.0.0.1:26379 , 10.0.0.2:26380,[::1]:26381 ",
            (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381)),
        ),
    ],
)
def test_redis_sentinels_are_comma_separated_host_port_pairs(
    raw: str, parsed: tuple[tuple[str, int], ...]
) -> None:
    settings = load_settings(
        {"REDIS_SENTINELS": raw, "REDIS_SENTINEL_MASTER": "relay", "REDIS_SENTINEL_PASSWORD": "s3"}
    )
    assert settings.redis_sentinels == parsed
    assert (settings.redis_sentinel_master, settings.redis_sentinel_password) == ("relay", "s3")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("sentinel-1", r"entries are host:port .*26379.*'sentinel-1'"),
        (":26379", r"entries are host:port"),
        ("[::1]", r"entries are host:port"),
        ("::1:26379", r"entries are host:port"),  # IPv6 needs brackets
        ("sentinel-1:", r"'sentinel-1:' has no valid port"),
        ("sentinel-1:port", r"has no valid port"),
        ("sentinel-1:70000", r"has no valid port \(1-65535\)"),
        ("a:1,,b:2", r"entry 2 is empty"),
        ("a:1,a:1", r"names 'a:1' twice"),
    ],
)
def test_a_malformed_sentinel_list_is_refused_saying_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"REDIS_SENTINELS.*{message}"):
        load_settings({"REDIS_SENTINELS": raw})


def test_sentinels_need_a_tcp_redis_url_for_the_password_and_db() -> None:
    with pytest.raises(ConfigError, match=r"REDIS_URL is a unix:// socket but REDIS_SENTINELS is set"):
        load_settings({"REDIS_SENTINELS": "s:26379", "REDIS_URL": "unix:///tmp/redis.sock"})
    settings = load_settings({"REDIS_SENTINELS": "s:26379", "REDIS_URL": "rediss://:pw@ignored/2"})
    assert settings.redis_url == "rediss://:pw@ignored/2"


@pytest.mark.parametrize("value", ["stored", "replicated", "replicated+fsynced", " Replicated "])
def test_ingress_ack_levels(value: str) -> None:
    assert load_settings({"INGRESS_ACK": value}).ingress_ack == value.strip().lower()


@pytest.mark.parametrize("value", ["fsynced", "all", "1"])
def test_an_unknown_ingress_ack_level_is_refused_listing_the_levels(value: str) -> None:
    with pytest.raises(
        ConfigError, match=r"INGRESS_ACK must be one of stored, replicated, replicated\+fsynced"
    ):
        load_settings({"INGRESS_ACK": value})


def test_the_replica_wait_stays_inside_the_ingress_deadline() -> None:
    assert load_settings({"REPLICA_ACK_TIMEOUT_MS": "150"}).replica_ack_timeout_ms == 150
    with pytest.raises(ConfigError, match=r"REPLICA_ACK_TIMEOUT_MS \(151\) must not exceed 150"):
        load_settings({"REPLICA_ACK_TIMEOUT_MS": "151"})
    with pytest.raises(ConfigError, match="REPLICA_ACK_TIMEOUT_MS must be positive"):
        load_settings({"REPLICA_ACK_TIMEOUT_MS": "0"})  # WAIT 1 0 would block forever


def test_secrets_take_comma_separated_lists_for_rotation() -> None:
    settings = load_settings(
        {
            "PUSH_TOKEN": "new-push, old-push",
            "API_TOKEN": "api-1",
            "DEVICE_TOKEN_SECRET": "new-device-secret-0123,old-device-secret-0123",
        }
    )
    assert settings.push_token == ("new-push", "old-push")
    assert settings.api_token == ("api-1",)
    assert settings.device_token_secret == ("new-device-secret-0123", "old-device-secret-0123")
    unset = load_settings({})
    assert (unset.push_token, unset.api_token, unset.device_token_secret) == (None, None, None)


@pytest.mark.parametrize("var", ["PUSH_TOKEN", "API_TOKEN", "DEVICE_TOKEN_SECRET"])
def test_an_empty_entry_in_a_secret_list_is_refused_without_showing_the_secrets(var: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}: entry 2 of the list is empty") as refused:
        load_settings({var: "a-secret-long-enough-0123,,"})
    assert "a-secret" not in str(refused.value)


def test_every_device_token_secret_must_be_long_enough() -> None:
    with pytest.raises(ConfigError, match=r"at least 16 characters \(entry 2 has 5\)") as refused:
        load_settings({"DEVICE_TOKEN_SECRET": "a-long-enough-secret,short"})
    assert "short" not in str(refused.value)  # the refused secret itself is never shown


def test_allow_open_push_is_a_boolean_off_by_default() -> None:
    assert load_settings({}).allow_open_push is False
    assert load_settings({"ALLOW_OPEN_PUSH": "TRUE"}).allow_open_push is True
    with pytest.raises(ConfigError, match="ALLOW_OPEN_PUSH must be true or false"):
        load_settings({"ALLOW_OPEN_PUSH": "yes"})


def test_cors_origins_are_origins() -> None:
    assert load_settings({}).cors_origins == ()
    origins = load_settings({"CORS_ORIGINS": "https://app.example.com, http://localhost:3000"}).cors_origins
    assert origins == ("https://app.example.com", "http://localhost:3000")
    assert load_settings({"CORS_ORIGINS": "*"}).cors_origins == ("*",)
    for bad in ("https://app.example.com/", "app.example.com", "https://a.example/path"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS entries are origins"):
            load_settings({"CORS_ORIGINS": bad})
