"""`services.origin`: which Host, Origin and Sec-Fetch-Site headers a loopback server answers."""

import pytest

from services.origin import allowed_hosts, read_allowed_hosts, refusal

ALLOWED = allowed_hosts("127.0.0.1", ["scanner-room.local"])


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "127.0.0.1:3000"},
        {"Host": "localhost"},
        {"Host": "[::1]:3000"},
        {"Host": "Scanner-Room.local:3000", "Origin": "http://scanner-room.local:3000"},
        {"Host": "127.0.0.1:3000", "Origin": "http://localhost:8080", "Sec-Fetch-Site": "same-site"},
        {"Host": "localhost:3000", "Sec-Fetch-Site": "none"},
    ],
)
def test_this_servers_names_are_answered(headers):
    assert refusal(headers, ALLOWED) is None


@pytest.mark.parametrize(
    "headers, word",
    [
        ({}, "Host"),
        ({"Host": "attacker.example:3000"}, "Host"),
        ({"Host": "attacker.example@127.0.0.1"}, "Host"),
        ({"Host": "127.0.0.1.attacker.example"}, "Host"),
        ({"Host": "127.0.0.1:3000", "Origin": "https://attacker.example"}, "origin"),
        ({"Host": "127.0.0.1:3000", "Origin": "null"}, "origin"),
        ({"Host": "127.0.0.1:3000", "Origin": "file://"}, "origin"),
        ({"Host": "127.0.0.1:3000", "Sec-Fetch-Site": "cross-site"}, "cross-site"),
    ],
)
def test_rebound_names_and_other_sites_are_refused(headers, word):
    why = refusal(headers, ALLOWED)
    assert why is not None and word in why


def test_allowed_hosts_from_the_environment():
    assert read_allowed_hosts(None) is None and read_allowed_hosts("") is None
    assert read_allowed_hosts("a.example,B.example") == allowed_hosts("127.0.0.1", ["a.example", "b.example"])
    assert {"127.0.0.1", "localhost", "::1", "0.0.0.0"} <= allowed_hosts("0.0.0.0")
