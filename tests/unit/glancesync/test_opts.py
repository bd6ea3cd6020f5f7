"""glancesync.opts and the generated sample config: help everywhere, no global state, sample fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from oslo_config import cfg
from oslo_log import log

from glancesync import opts

ROOT = Path(__file__).resolve().parents[3]
GENERATOR_CONF = ROOT / "etc" / "oslo-config-generator" / "glance-sync.conf"
SAMPLE = ROOT / "etc" / "glance-sync.conf.sample"
REGENERATE = ".venv/bin/oslo-config-generator --config-file etc/oslo-config-generator/glance-sync.conf"


def _all_opts() -> list[tuple[str, cfg.Opt]]:
    return [(group, opt) for group, group_opts in opts.list_opts() for opt in group_opts]


@pytest.mark.parametrize(("group", "opt"), _all_opts(), ids=lambda v: v if isinstance(v, str) else v.dest)
def test_every_option_has_help(group: str, opt: cfg.Opt) -> None:
    assert opt.help and opt.help.strip(), f"[{group}] {opt.name} has no help text"


def test_our_options_have_sentences_of_help() -> None:
    ours = opts.default_opts + [opt for group_opts in opts.GROUPS.values() for opt in group_opts]
    short = [opt.name for opt in ours if len(opt.help) < 20]
    assert not short, f"help too short to be useful: {short}"


def test_register_opts_on_two_confs() -> None:
    first, second = cfg.ConfigOpts(), cfg.ConfigOpts()
    opts.register_opts(first)
    opts.register_opts(second)
    first([], default_config_files=[])
    second([], default_config_files=[])
    first.set_override("sync_server_port", 1234)
    assert first.sync_server_port == 1234
    assert second.sync_server_port == 9595
    assert second.curve.enabled is False
    assert second.coordinator.agent_port == 9596


def test_register_opts_twice_on_one_conf_is_harmless() -> None:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    opts.register_opts(conf)
    conf([], default_config_files=[])
    assert conf.agent.workers == 2


def test_filter_opts_beside_glance_options() -> None:
    conf = cfg.ConfigOpts()
    opts.register_filter_opts(conf)
    opts.register_filter_opts(conf)
    conf([], default_config_files=[])
    assert conf.sync_enabled is False and conf.sync_server_port == 9595


def test_host_dependent_default_has_a_fixed_sample() -> None:
    agent_id = next(opt for group, opt in _all_opts() if group == "agent" and opt.dest == "agent_id")
    assert agent_id.sample_default == "<hostname>"


def test_list_opts_copies() -> None:
    # The generator may mutate what it gets; our registered opts must not change.
    listed = dict(opts.list_opts())
    assert listed["DEFAULT"][0] is not opts.default_opts[0]


def test_sample_is_fresh(tmp_path: Path) -> None:
    fresh = tmp_path / "glance-sync.conf.sample"
    result = subprocess.run(
        [sys.executable, "-m", "oslo_config.generator", "--config-file", str(GENERATOR_CONF),
         "--output-file", str(fresh)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert SAMPLE.read_text() == fresh.read_text(), (
        f"{SAMPLE.relative_to(ROOT)} is stale: regenerate it from the top of the tree with\n    {REGENERATE}"
    )


def test_sample_values_load(tmp_path: Path) -> None:
    """The sample with every option uncommented parses, and every value is valid."""
    # "<None>" is how the generator shows "no default"; such lines stay commented.
    text = "".join(
        line[1:] if line.startswith("#") and not line.startswith("# ") and "=" in line and "<None>" not in line
        else line
        for line in SAMPLE.read_text().splitlines(keepends=True)
    )
    conf_file = tmp_path / "all.conf"
    conf_file.write_text(text)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    log.register_options(conf)
    conf(["--config-file", str(conf_file)], default_config_files=[])
    for group, group_opts in [("DEFAULT", opts.default_opts), *opts.GROUPS.items()]:
        section = conf if group == "DEFAULT" else conf[group]
        for opt in group_opts:
            section[opt.dest]  # raises for a value that does not parse
    assert conf.sync_server_port == 9595
    assert conf.agent.agent_id == "<hostname>"
