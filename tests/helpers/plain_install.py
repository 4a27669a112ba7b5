"""Run Python as on the README's plain ``pip install .``: the optional extras (matplotlib, timm, wandb) absent.

The extras stay installed here, so a subprocess gets a view of this environment without them: a folder of
links to every entry of the ``site-packages`` that holds them except their packages and ``.dist-info``
(``torchmetrics`` and Lightning ask the installed distributions, not only ``import``), put in its place on
``sys.path`` by a ``sitecustomize`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

EXTRAS = ("matplotlib", "mpl_toolkits", "timm", "wandb")


def plain_install_env(directory: Path, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """An environment for ``subprocess.run`` in which ``extras`` are neither importable nor installed."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = re.compile(rf"^({'|'.join(extras)})([-_.].*)?$", re.IGNORECASE)
    sites = {
        Path(spec.submodule_search_locations[0]).parent
        for spec in map(importlib.util.find_spec, extras)
        if spec is not None and spec.submodule_search_locations
    }
    swaps = []
    for number, site in enumerate(sorted(sites)):
        overlay = directory / f"site-packages-{number}"
        overlay.mkdir(exist_ok=True)
        for entry in site.iterdir():
            if not hidden.match(entry.name) and not (overlay / entry.name).exists():
                (overlay / entry.name).symlink_to(entry)
        swaps.append((str(site), str(overlay)))
    (directory / "sitecustomize.py").write_text(
        "import site, sys\n"
        f"for real, overlay in {swaps!r}:\n"
        "    sys.path[:] = [p for p in sys.path if p != real]\n"
        "    site.addsitedir(overlay)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "MPL"))}
    env["PYTHONPATH"] = str(directory)
    return env
