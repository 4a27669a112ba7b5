"""The lightning requirement admits no withdrawn or vulnerable release (issue 22).

``lightning>=2.6`` admitted the withdrawn malicious releases 2.6.2 and 2.6.3, and every version before
2.6.6, whose ``load_from_checkpoint`` imports whatever module a checkpoint's ``_instantiator``
hyper-parameter names (fixed in 2.6.6). The floor is now ``lightning>=2.6.6``; these tests read
``setup.cfg`` and fail on a lower floor.
"""

from __future__ import annotations

import configparser
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"
SAFE_FLOOR = Version("2.6.6")
UNSAFE = ["2.5.9", "2.6.0", "2.6.1", "2.6.2", "2.6.3", "2.6.4", "2.6.5", "2.6.6rc1"]


def lightning_requirement(text: str) -> Requirement:
    """The ``lightning`` line of ``install_requires`` in a setup.cfg's text."""
    config = configparser.ConfigParser()
    config.read_string(text)
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    found = [Requirement(line) for line in lines if Requirement(line).name.lower() == "lightning"]
    if len(found) != 1:
        raise ValueError(f"setup.cfg must require lightning exactly once in install_requires, found {len(found)}.")
    return found[0]


def check_floor(requirement: Requirement) -> None:
    """Refuse a requirement that admits a version below :data:`SAFE_FLOOR` (the withdrawn 2.6.2/2.6.3 included)."""
    admitted = [v for v in UNSAFE if requirement.specifier.contains(v, prereleases=True)]
    if admitted:
        raise ValueError(
            f"The requirement {requirement} admits lightning {', '.join(admitted)}: withdrawn malicious releases "
            f"(2.6.2, 2.6.3) or ones whose load_from_checkpoint imports a checkpoint's _instantiator. Raise the "
            f"floor in setup.cfg to lightning>={SAFE_FLOOR}."
        )


@pytest.mark.fault(area="security", outcome="handled")
@pytest.mark.parametrize("unsafe", UNSAFE)
def test_the_requirement_admits_no_unsafe_lightning(unsafe):
    requirement = lightning_requirement(SETUP_CFG.read_text())
    assert not requirement.specifier.contains(unsafe, prereleases=True)


@pytest.mark.fault(area="security", outcome="handled")
@pytest.mark.parametrize("safe", ["2.6.6", "2.6.7", "2.7.0"])
def test_the_requirement_admits_the_fixed_releases(safe):
    requirement = lightning_requirement(SETUP_CFG.read_text())
    check_floor(requirement)
    assert requirement.specifier.contains(safe)


@pytest.mark.fault(area="security", outcome="handled")
def test_the_installed_lightning_meets_the_floor():
    assert lightning_requirement(SETUP_CFG.read_text()).specifier.contains(version("lightning"), prereleases=True)


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize(
    "line", ["lightning>=2.6", "lightning>=2.5", "lightning>=2.6.0,!=2.6.2,!=2.6.3", "lightning", "lightning<=2.6.5"]
)
def test_a_lower_floor_in_setup_cfg_is_refused(line):
    text = SETUP_CFG.read_text()
    current = str(lightning_requirement(text))
    lowered = text.replace(f"    {current}\n", f"    {line}\n")
    assert lowered != text
    with pytest.raises(ValueError, match=r"admits lightning .*Raise the floor in setup\.cfg to lightning>=2\.6\.6"):
        check_floor(lightning_requirement(lowered))
