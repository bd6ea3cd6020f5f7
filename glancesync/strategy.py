"""Which regions an image is meant for: the ``sync_strategy`` names and the ``USER`` targeting rules.

Pure: no I/O, no config object.  The coordinator's planner and its start-up checks
use it; the status tool shows the strategy in force.

Strategies (``[DEFAULT] sync_strategy``, any case; the original's spellings kept)::

    None        nothing is synced
    ALL         every region of glance_store.yaml
    USER        the regions the image's owner names in the image property
                ``glance_sync_regions``, plus those a rule of ``sync_user_rules``
                gives the owner's project
    ON_DEMAND   nothing moves until an operator asks (glance-sync-manage sync);
                ``nova``, the original's undocumented copy-on-first-use, is this

Region names are matched exactly as glance_store.yaml spells them: a name that is
unknown, or known only in another case, is a *targeting problem* the coordinator
logs and status shows with its reason, never a silent success.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

NONE, ALL, USER, ON_DEMAND = "None", "ALL", "USER", "ON_DEMAND"
STRATEGIES = (NONE, ALL, USER, ON_DEMAND)
# Spellings of the original project that name one of ours.
ALIASES = {"nova": ON_DEMAND}
# Every accepted spelling, for oslo.config's choices (compared without case).
CHOICES = (*STRATEGIES, *ALIASES)
# Separates the regions of one rule in sync_user_rules (the DictOpt uses ',' and ':').
RULE_REGION_SEPARATOR = ";"


def canonical(value: str) -> str:
    """The strategy ``value`` names, in its canonical spelling; ValueError for anything else."""
    folded = str(value).strip().lower()
    for name in STRATEGIES:
        if folded == name.lower():
            return name
    if folded in ALIASES:
        return ALIASES[folded]
    raise ValueError(f"sync_strategy {value!r} is not one of {', '.join(CHOICES)} (any case)")


def split_names(raw: object) -> list[str]:
    """The region names of a comma-separated ``glance_sync_regions`` value (spaces and empty items dropped)."""
    seen: dict[str, None] = {}  # first-seen order; a dict, not a list: 500 names are not 125,000 compares
    for name in str(raw or "").split(","):
        name = name.strip()
        if name:
            seen.setdefault(name)
    return list(seen)


def problem(name: str, known: Iterable[str]) -> str | None:
    """Why ``name`` is not a region, or None when it is one (names match exactly)."""
    regions = list(known)
    if name in regions:
        return None
    same = [r for r in regions if r.lower() == name.lower()]
    if same:
        return f"region {name!r} is not known; did you mean {same[0]!r}? (region names are case-sensitive)"
    return f"region {name!r} is not known (glance_store.yaml has {', '.join(regions) or 'none'})"


def parse_rules(rules: Mapping[str, str] | None, known: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``sync_user_rules`` (project id -> 'RegionA;RegionB') checked against the known regions.

    ValueError with one line naming the first bad rule: an empty project or region
    list, or a region glance_store.yaml does not know (mis-cased names included).
    """
    regions = list(known)
    parsed: dict[str, tuple[str, ...]] = {}
    for project, value in (rules or {}).items():
        project = str(project).strip()
        names = [n.strip() for n in str(value or "").split(RULE_REGION_SEPARATOR) if n.strip()]
        if not project or not names:
            raise ValueError(f"sync_user_rules: rule {project or '?'}:{value or ''} needs a project id and at "
                             f"least one region (PROJECT:RegionA{RULE_REGION_SEPARATOR}RegionB)")
        for name in names:
            why = problem(name, regions)
            if why is not None:
                raise ValueError(f"sync_user_rules: rule for project {project}: {why}")
        parsed[project] = tuple(dict.fromkeys(names))
    return parsed


def describe(strategy: str, rules: Mapping[str, Iterable[str]] | None = None) -> str:
    """One line naming the strategy in force, for logs and status."""
    if strategy == USER:
        count = len(rules or {})
        return f"{USER} (image property glance_sync_regions; {count} project rule(s))"
    return {NONE: "None (nothing is synced)", ALL: "ALL (every region)",
            ON_DEMAND: "ON_DEMAND (only what glance-sync-manage sync asks for)"}.get(strategy, strategy)
