"""Validation profiles: YAML files under workflows/validate/ naming a selection, the window and the
checks (in order, with their thresholds) a training window of that task must pass."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ProfileError(ValueError):
    exit_code = 2


@dataclass
class Profile:
    name: str
    where: str | None
    checks: list[tuple[str, dict]]           # (check name, its parameters), in order
    columns: list[str] = field(default_factory=list)   # clip columns the checks read
    window_s: float = 2.0
    fps: float = 25.0
    description: str = ""
    path: str | None = None


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile: known keys, known checks, known parameters (one line on error)."""
    from curation.validate.checks import CHECKS
    p = Path(path)
    if not p.exists():
        raise ProfileError(f"profile not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    unknown = set(data) - {"name", "description", "where", "columns", "window_s", "fps", "checks"}
    if unknown:
        raise ProfileError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    checks = []
    for item in data.get("checks") or []:
        if not isinstance(item, dict) or len(item) != 1:
            raise ProfileError(f"{path}: each check is one 'name: {{params}}' mapping, got {item!r}")
        (name, params), = item.items()
        if name not in CHECKS:
            raise ProfileError(f"{path}: unknown check {name!r}; checks: {', '.join(CHECKS)}")
        params = dict(params or {})
        bad = set(params) - set(CHECKS[name].defaults)
        if bad:
            raise ProfileError(f"{path}: check {name}: unknown parameter(s) {', '.join(sorted(bad))}; "
                               f"known: {', '.join(CHECKS[name].defaults)}")
        checks.append((name, {**CHECKS[name].defaults, **params}))
    if data.get("where"):
        from curation.sql import validate_where
        validate_where(data["where"])
    return Profile(name=data.get("name") or p.stem, where=data.get("where"), checks=checks,
                   columns=list(data.get("columns") or []), window_s=float(data.get("window_s", 2.0)),
                   fps=float(data.get("fps", 25.0)), description=data.get("description", ""),
                   path=str(p))
