"""A real flow run under `gate.require_approval`: the candidate stops at awaiting_approval with production
untouched, the person who triggered it may not approve it, and another approver's `medgate models
approve` promotes it."""

import getpass
import json

import pytest

from tests.integration.conftest import set_params
from tests.integration.test_console_browser import medgate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_a_flow_run_stops_at_awaiting_approval(first_run_copy, clean_env):
    from flows.pipeline import training_flow
    from flows.settings import get_settings

    ws = first_run_copy
    set_params(ws, {"gate": {"default": {"require_approval": True}}})
    summary = training_flow(workspace=str(ws))
    assert summary["status"] == "completed" and summary["gate"]["promote"], summary.get("gate")
    assert summary["awaiting_approval"] == summary["model_version"] == 2
    assert summary["production"]["version"] == 1 and summary["bento_tag"]
    stages = {m["version"]: m["stage"] for m in json.loads(medgate(ws, "models", "list", "--json").stdout)}
    assert stages == {1: "production", 2: "awaiting_approval"}

    me = getpass.getuser()
    for name in (me, "ada"):
        added = medgate(ws, "users", "add", name, "--role", "approver", "--password-stdin", stdin="a-long-password\n")
        assert added.returncode == 0, added.stdout + added.stderr
    mine = medgate(ws, "models", "approve", "ct-lesion:2", "--reason", "my own run", "--actor", me)
    assert mine.returncode == 1 and "triggered" in mine.stdout
    # An operator's manual promotion cannot skip the sign-off either.
    skipped = medgate(ws, "models", "promote", "ct-lesion:2", "--reason", "hurry", "--override")
    assert skipped.returncode == 1 and "sign-off" in skipped.stdout
    approved = medgate(ws, "models", "approve", "ct-lesion:2", "--reason", "reviewed", "--actor", "ada")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    stages = {m["version"]: m["stage"] for m in json.loads(medgate(ws, "models", "list", "--json").stdout)}
    assert stages == {1: "archived", 2: "production"}
    trail = json.loads(medgate(ws, "audit", "--json").stdout)
    assert [(r["actor"], r["action"], r["version"]) for r in trail if r["model"]][-3:] == [
        ("medgate-flow", "approval-request", 2), ("ada", "archive", 1), ("ada", "promote", 2)]
    get_settings.cache_clear()
