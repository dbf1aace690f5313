"""Which anonymization scripts run for a request: the site script, then the project's.

Scripts are parsed when they are set (a script that does not parse is refused there, with the
line and column of the fault) and parsed again, from a cache, when a job runs them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .dicomedit import Script, ScriptSyntaxError, parse_script, record_deidentification
from .errors import BadRequest
from .protocols import AnonymizationSettings, ScriptSetting

#: XNAT's default site-wide script (CONTRACT section 2); on unless the site turns it off.
DEFAULT_SITE_SCRIPT = """version "6.1"
project != "Unassigned" ? (0008,1030) := project
(0010,0010) := subject
(0010,0020) := session
"""

SITE_SCRIPT_ID = "site"
PROJECT_SCRIPT_ID = "project"


@dataclass(frozen=True)
class ScriptStep:
    """One script applied to a full read, then recorded in (0012,0064)."""

    script_id: str
    script: Script

    @property
    def needs_pixel_data(self) -> bool:
        return self.script.needs_pixel_data

    def apply(self, ds: Any, variables: Mapping[str, str]) -> Any:
        changes = self.script.apply(ds, variables)
        record_deidentification(ds, self.script_id)
        return changes


@functools.lru_cache(maxsize=64)
def _parse_cached(text: str) -> Script:
    return parse_script(text)


def compile_script(text: str) -> Script:
    """Parse ``text``; a 400 naming the line and column of the fault when it does not parse."""
    try:
        return _parse_cached(text)
    except ScriptSyntaxError as exc:
        raise BadRequest(
            f"the script does not parse: {exc}",
            errors={"script": [str(exc)], "line": [str(exc.line)], "column": [str(exc.column)]},
        ) from None


class DefaultAnonymizationSettings:
    """Settings kept in memory, for hosts that supply none: the default site script, on."""

    def __init__(self) -> None:
        self._site = ScriptSetting(None, True)
        self._projects: dict[str, ScriptSetting] = {}

    def site_script(self) -> ScriptSetting:
        return self._site

    def set_site_script(self, text: str) -> None:
        self._site = ScriptSetting(text, self._site.enabled)

    def set_site_enabled(self, enabled: bool) -> None:
        self._site = ScriptSetting(self._site.text, enabled)

    def project_script(self, project_id: str) -> ScriptSetting:
        return self._projects.get(project_id, ScriptSetting(None, False))

    def set_project_script(self, project_id: str, text: str) -> None:
        old = self.project_script(project_id)
        self._projects[project_id] = ScriptSetting(text, old.enabled or old.text is None)

    def set_project_enabled(self, project_id: str, enabled: bool) -> None:
        old = self.project_script(project_id)
        self._projects[project_id] = ScriptSetting(old.text, enabled)


def site_script_text(settings: AnonymizationSettings) -> str:
    """The site script in force (the default when the site never set one)."""
    text = settings.site_script().text
    return DEFAULT_SITE_SCRIPT if text is None else text


def steps_for_project(settings: AnonymizationSettings, project_id: str) -> list[ScriptStep]:
    """The enabled scripts for ``project_id``, site first; empty scripts are skipped."""
    return steps_from_texts(script_texts(settings, project_id))


def script_texts(settings: AnonymizationSettings, project_id: str) -> list[tuple[str, str]]:
    """``(script_id, text)`` of each enabled, non-empty script for ``project_id``, site first.

    An import reads them once and hands the texts to every worker of its chunks, so a script
    changed mid-import never gives one request two anonymizations.
    """
    texts: list[tuple[str, str]] = []
    site = settings.site_script()
    if site.enabled:
        text = site_script_text(settings)
        if text.strip():
            texts.append((SITE_SCRIPT_ID, text))
    project = settings.project_script(project_id)
    if project.enabled and project.text and project.text.strip():
        texts.append((PROJECT_SCRIPT_ID, project.text))
    return texts


def steps_from_texts(texts: Sequence[Sequence[str]]) -> list[ScriptStep]:
    return [ScriptStep(script_id, compile_script(text)) for script_id, text in texts]
