"""etc/glance-policy.yaml, evaluated by oslo.policy with glance 33's own registered rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from glance import policies
from oslo_config import cfg
from oslo_policy import policy

POLICY_FILE = Path(__file__).resolve().parents[3] / "etc" / "glance-policy.yaml"
OWNER = "aaaa0000aaaa0000aaaa0000aaaa0000"
LOCATION_WRITES = ("set_image_location", "add_image_location", "delete_image_location")


def glance_enforcer(policy_file: Path) -> policy.Enforcer:
    """An enforcer with glance's rule defaults, overridden by ``policy_file``, as glance-api builds it."""
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    enforcer = policy.Enforcer(conf, policy_file=str(policy_file))
    enforcer.register_defaults(policies.list_rules())
    enforcer.load_rules()
    return enforcer


@pytest.fixture
def enforcer():
    return glance_enforcer(POLICY_FILE)


def allowed(enforcer, rule: str, project: str, *roles: str) -> bool:
    target = {"project_id": OWNER, "owner": OWNER}
    creds = {"project_id": project, "roles": list(roles), "service_roles": []}
    return enforcer.enforce(rule, target, creds)


def test_every_rule_of_the_file_is_a_glance_rule():
    names = {rule.name for rule in policies.list_rules()}
    assert set(yaml.safe_load(POLICY_FILE.read_text())) == set(LOCATION_WRITES) <= names


@pytest.mark.parametrize("rule", LOCATION_WRITES)
def test_a_member_of_the_owning_project_may_not_write_locations(enforcer, rule):
    assert not allowed(enforcer, rule, OWNER, "member", "reader")


@pytest.mark.parametrize("rule", LOCATION_WRITES)
def test_an_admin_may_write_locations(enforcer, rule):
    assert allowed(enforcer, rule, "another-project", "admin")


def test_the_service_role_may_add_but_not_remove_locations(enforcer):
    assert allowed(enforcer, "set_image_location", "service-project", "service")
    assert allowed(enforcer, "add_image_location", "service-project", "service")
    assert not allowed(enforcer, "delete_image_location", "service-project", "service")


def test_glance_defaults_would_let_the_member_write(tmp_path):
    """What the file is for: without it, glance 33 lets a project member set a location."""
    empty = tmp_path / "policy.yaml"
    empty.write_text("{}\n")
    defaults = glance_enforcer(empty)
    assert allowed(defaults, "set_image_location", OWNER, "member", "reader")
    assert allowed(defaults, "add_image_location", OWNER, "member", "reader")
