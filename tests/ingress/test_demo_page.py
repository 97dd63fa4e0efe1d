"""GET /demo: served only with DEMO=true, with the contract's element ids and a strict CSP (the
browser test, tests/test_demo_browser.py, shows the page working under it)."""

from __future__ import annotations

import base64
import hashlib
import re

from tests.conftest import ClientFactory

IDS = ("nickname", "start", "message", "send", "transcript", "leave")


def test_demo_page_only_with_demo(make_client: ClientFactory) -> None:
    for env in ({}, {"DEMO": "false"}):
        assert make_client(**env).get("/demo").status_code == 404
    response = make_client(DEMO="true").get("/demo")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for element in IDS:
        assert f'id="{element}"' in response.text
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_demo_page_policy_allows_its_own_script_and_style_only(make_client: ClientFactory) -> None:
    response = make_client(DEMO="true").get("/demo")
    parts = response.headers["content-security-policy"].split(";")
    policy = dict(part.strip().split(" ", 1) for part in parts)
    for tag in ("script", "style"):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, re.S)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert policy[f"{tag}-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "innerHTML" not in response.text  # chat text is only ever set as text
