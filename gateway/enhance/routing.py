"""Routing rules: which enhancer (and task) a series gets. First matching route wins.

Why separate: the rules are data from the config; the worker asks one question and the CLI's
`config check` validates the same rules against the enhancer registry.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset

from dicom_utils.enhancement import Task
from enhancers.registry import default_enhancer, info, modality_group, names
from gateway.errors import ConfigError
from gateway.settings import Route


def route_for(routes: Sequence[Route], modality: str, series_description: str) -> Route | None:
    """The first route that matches a series, or None (then the modality default applies)."""
    for route in routes:
        if route.modality and route.modality != modality.upper():
            continue
        if route.series_description and not re.search(route.series_description, series_description or ""):
            continue
        return route
    return None


#: Series Descriptions that vendors give localizers without saying so in Image Type (GE "3-Plane Loc", Philips
#: "Survey"/"SURVIEW", Siemens "localizer"/"Topogram", Canon "Scanogram", "Scout", "Pilot"). Searched
#: case-insensitively; a letter right before or after the word does not count ("Scouting" is no scout).
LOCALIZER_DESCRIPTION = re.compile(
    r"(?<![a-z])(scout|locali[sz]er|topogram|scanogram|surview|survey|pilot|3[ -]?pl(ane)?[ _-]?loc)(?![a-z])",
    re.IGNORECASE,
)


def is_localizer(image_type: object, series_description: str) -> bool:
    """A localizer (scout, topogram, survey): Image Type holds LOCALIZER, or the description names one."""
    values = [image_type] if isinstance(image_type, str) else list(image_type) if isinstance(image_type, Iterable) else []
    if any(str(v).strip().upper() == "LOCALIZER" for v in values):
        return True
    return LOCALIZER_DESCRIPTION.search(series_description or "") is not None


def not_by_default(routes: Sequence[Route], modality: str, header: Dataset) -> str | None:
    """Why a series is passed over although its pixels could be enhanced (None: route it as usual).

    Why: a localizer is a low-dose planning image no one reads for diagnosis, and enhancing it only adds a
    series to every study; a mammogram is read for microcalcifications a few pixels wide, and the radiograph
    models (CR/DX) were never trained or judged on one (no mammogram exists in the offline data). Both are
    stored and skipped with this reason unless a route opts in: the first route matching the series names
    `modality = "MG"` for a mammogram, or says `localizers = true` for a localizer.
    """
    description = str(header.get("SeriesDescription", "") or "")
    route = route_for(routes, modality, description)
    if is_localizer(header.get("ImageType"), description) and not (route is not None and route.localizers):
        return ("localizer (Image Type LOCALIZER or a scout/survey Series Description): not enhanced by default;"
                " a route with localizers = true opts in")
    if modality.strip().upper() == "MG" and (route is None or route.modality != "MG"):
        return ('mammography: not enhanced by default (no model here was trained on mammograms); a route with'
                ' modality = "MG" opts in')
    return None


def choose(
    routes: Sequence[Route], modality: str, series_description: str, *, quality: bool = False
) -> tuple[str, Task]:
    """(enhancer name, task) for a series: the first matching route's, else the modality's default denoiser
    (its quality variant with `quality`, see `wants_quality`)."""
    route = route_for(routes, modality, series_description)
    if route is not None:
        return route.enhancer, route.task
    return default_enhancer(modality, Task.DENOISE, quality=quality), Task.DENOISE


def wants_quality(default_variant: str, device: str) -> bool:
    """Whether unrouted series get the quality variant of their default (`[enhance] default_variant`).

    Why "auto" asks the device: the quality variants run the network 8 times; on a GPU that is still far
    faster than the store-and-send around it, on a CPU it would slow every series eightfold for a few tenths
    of a dB. `device` is the pipeline's resolved device ("cpu", "cuda", "cuda:1").
    """
    return default_variant == "quality" or (default_variant == "auto" and device.startswith("cuda"))


def modality_mismatch(enhancer: str, modality: str) -> str | None:
    """Why `enhancer` cannot enhance a series of `modality` (a message naming the fix), or None when it can.

    Why here: `reprocess` refuses the request with this message before queueing, and the worker ends a job
    that still asks for it at once (a permanent error) instead of retrying what can never work. The rule is
    the pipeline's: an enhancer serves the modality groups it declares; a series of a modality without a
    group (OT, US, ...) gets any classical filter, as the routing defaults give it, never a trained model.
    """
    details = info(enhancer)
    group = modality_group(modality)
    if group in details.modalities or (group is None and details.kind != "model"):
        return None
    return (
        f"enhancer {enhancer!r} is made for {', '.join(details.modalities)}, not for modality"
        f" {modality or '(none)'}; pick one made for it (e.g. {default_enhancer(modality, details.task)!r},"
        " `enhance-gateway models` lists them) or leave the enhancer out to follow the routing rules"
    )


def load_plugins(modules: Sequence[str]) -> None:
    """Import `[enhance] plugins`: modules that register a site's own enhancers (idempotent, by import)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"enhance.plugins: cannot import {name!r} ({exc}); put the module on PYTHONPATH or remove it"
            ) from exc


def validate(routes: Sequence[Route]) -> None:
    """Every route names a registered enhancer whose task matches the route's task."""
    known = names()
    for i, route in enumerate(routes):
        if route.enhancer not in known:
            raise ConfigError(
                f"routes[{i}].enhancer = {route.enhancer!r} is not a registered enhancer; known: {', '.join(known)}"
            )
        details = info(route.enhancer)
        group = modality_group(route.modality) if route.modality else None
        if route.modality and group not in details.modalities:
            raise ConfigError(
                f"routes[{i}]: enhancer {route.enhancer!r} is made for {', '.join(details.modalities)}, not"
                f" {route.modality}; pick one for that modality (`enhance-gateway models`)"
            )
        task = details.task
        if task != route.task:
            raise ConfigError(
                f"routes[{i}]: enhancer {route.enhancer!r} does task {task!r} but the route says {str(route.task)!r}"
            )


def mr_strength_risk(enhancer: str, modality: str | None, strength: float) -> str | None:
    """Why running `enhancer` on `modality` (None: every modality it serves) at `strength` harms MR, or None.

    Why: the MR models also remove the Rician bias with the noise level they are given, so a level raised
    above the series' own pulls tissue down: on a real head MR at its native noise (mr-head-emri, ncdn-mr)
    strength 1.5 left 3.1 % of the anatomy below half its value (bias -0.37 noise sigma), 2.0 left 8.9 %
    (docs/lopo.md). The QA gate holds such series (voids FAIL at 1 %), so nothing harmful is delivered, but an
    admin should learn it from `config check` or `reprocess`, not from a held queue.
    """
    details = info(enhancer)
    mr = modality_group(modality) == "MR" if modality else "MR" in details.modalities
    if strength <= 1.0 or details.kind != "model" or not mr:
        return None
    return (
        f"{enhancer!r} on MR at strength {strength:g}: above 1 the MR models push tissue below half its value on"
        " real images (3.1 % of the anatomy at 1.5, 8.9 % at 2.0, measured), and the QA gate will hold those"
        " series; use 1 or less"
    )


def strength_risks(routes: Sequence[Route]) -> list[str]:
    """One sentence per route that runs an MR model above strength 1 (`mr_strength_risk`). Call after `validate`."""
    return [
        f"routes[{i}] runs {risk}"
        for i, route in enumerate(routes)
        if (risk := mr_strength_risk(route.enhancer, route.modality, route.strength)) is not None
    ]


def hallucination_risks(routes: Sequence[Route]) -> list[str]:
    """One sentence per route that names an adversarially trained enhancer (its card's `hallucination_risk`).

    Why a warning and not a refusal: a site may choose such a model knowingly (the derived series says so in
    its Derivation Description and private block), but an admin reading the start-up log must see it too.
    Call after `validate`: every route names a registered enhancer.
    """
    return [
        f"routes[{i}] uses {route.enhancer!r}, trained with an adversarial loss: it may show plausible structure "
        "that is not in the patient's data (hallucination risk); its derived series say so"
        for i, route in enumerate(routes)
        if info(route.enhancer).hallucination_risk
    ]

