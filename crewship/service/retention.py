"""Which release builds and dependency environments to keep (pure) and pruning them.

A build is the directory ``releases/APP/vN/`` that a push made; config, rollback and
restart releases point at an earlier one. Kept: the newest ``KEEP`` builds that went
live, every build one of the last ``KEEP`` releases uses, and the live one's. A
directory newer than every release is a build in flight and is never touched.

Environments (``envs/<key>/``) are shared by every app, so one is removed only when no
remaining build of ANY app uses it, and only when the server owns its envs directory
(``CREWSHIP_ENVS_DIR`` may be shared with other servers, whose builds this one cannot
see) and no other deploy is running. When in doubt, environments are left alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crewship.store.releases import UNUSABLE, Release

KEEP = 5
BUILD_DIR_RE = re.compile(r"^v([1-9][0-9]*)$")


def builds_to_keep(releases: Sequence[Release], live: int | None, keep: int = KEEP) -> set[str]:
    """Names (``vN``) of the build directories the app must keep."""
    newest_first = sorted(releases, key=lambda r: -r.version)
    kept: set[str] = set()
    for release in newest_first[:keep]:
        if release.artifact:
            kept.add(Path(release.artifact).name)
    ranked: list[str] = []
    for release in newest_first:
        name = Path(release.artifact).name if release.artifact else None
        if name and release.status not in UNUSABLE and name not in ranked:
            ranked.append(name)
    kept.update(ranked[:keep])
    current = next((r for r in releases if r.version == live), None)
    if current is not None and current.artifact:
        kept.add(Path(current.artifact).name)
    return kept


def builds_to_prune(releases: Sequence[Release], live: int | None, on_disk: Sequence[str],
                    keep: int = KEEP) -> list[str]:
    """Build directory names in ``on_disk`` that may go, oldest first."""
    kept = builds_to_keep(releases, live, keep)
    newest = max((r.version for r in releases), default=0)
    doomed = []
    for name in on_disk:
        found = BUILD_DIR_RE.fullmatch(name)
        if found and name not in kept and int(found.group(1)) < newest:
            doomed.append(name)
    return sorted(doomed, key=lambda n: int(n[1:]))


def env_keys_in_use(releases_root: Path) -> set[str] | None:
    """The env key of every build of every app; None if any build cannot be read."""
    keys: set[str] = set()
    if not releases_root.is_dir():
        return keys
    for meta in releases_root.glob("*/v*/release.json"):
        try:
            key = json.loads(meta.read_text())["env_key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(key, str) or not key:
            return None
        keys.add(key)
    for build in releases_root.glob("*/v*"):
        if build.is_dir() and not (build / "release.json").is_file():
            return None  # a build we cannot account for: leave every env alone
    return keys


@dataclass(frozen=True)
class Pruned:
    builds: list[str]
    envs: list[str]
    envs_skipped: str | None = None   # why environments were left alone
