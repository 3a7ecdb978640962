"""The one list of methods: each detector class registers itself with its config and fit data.

Modelled on timm's ``register_model`` / ``list_models``: a method module decorates its
:class:`~clipad_lib.methods.base.Detector` with :func:`register_method`; importing
``clipad_lib.methods`` imports every method module, so :func:`list_methods` is complete. The
contract test (``tests/test_method_contract.py``) runs over this list, so a method added later is
checked without new test code, and reported numbers may only name registered methods (or the
papers' explicit reported-only list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# What ``fit`` may be given:
#   "nothing"    — zero-shot without training: predict works right after construction;
#   "references" — FitData(reference_images=[K, 3, S, S], class_name, seed): k normal shots;
#   "auxiliary"  — FitData(auxiliary=[annotated datasets of other categories]): zero-shot training.
FIT_KINDS = ("nothing", "references", "auxiliary")


@dataclass(frozen=True)
class MethodEntry:
    """A registered method.

    name: the detector's ``name``: the method id that run records and reported numbers use.
    display_name: how the papers' tables print it ("CLIP-FSAC++", "APRIL-GAN").
    config: its config dataclass, whose defaults are the paper's settings.
    detector: the :class:`Detector` subclass, built as ``detector(config, backbone=None)``.
    fits_on: the kinds of data ``fit`` accepts (:data:`FIT_KINDS`).
    paper: where the method comes from (title, venue, arXiv id).
    smoke_changes: config changes that run it on the tiny random-init CLIP in seconds (the
        contract test and quick checks); never the paper's settings.
    """

    name: str
    config: type
    detector: type
    fits_on: tuple[str, ...]
    paper: str
    smoke_changes: dict = field(default_factory=dict)
    display_name: str = ""

    def smoke_config(self, **changes) -> Any:
        """The paper config with :attr:`smoke_changes` and then ``changes`` applied."""
        return self.config().replace(**{**self.smoke_changes, **changes})


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, *, config: type, fits_on: tuple[str, ...], paper: str, display_name: str,
                    smoke_changes: dict | None = None) -> Callable[[type], type]:
    """Class decorator that adds a detector to the registry under ``name``."""
    unknown = set(fits_on) - set(FIT_KINDS)
    if not fits_on or unknown:
        raise ValueError(f"fits_on must name one or more of {FIT_KINDS}, got {fits_on}")

    def decorate(detector: type) -> type:
        if getattr(detector, "name", None) != name:
            raise ValueError(f"{detector.__name__}.name is {getattr(detector, 'name', None)!r}, registered as {name!r}")
        if name in _REGISTRY and _REGISTRY[name].detector is not detector:
            raise ValueError(f"method {name!r} is registered twice ({_REGISTRY[name].detector.__name__}, "
                             f"{detector.__name__})")
        _REGISTRY[name] = MethodEntry(name, config, detector, tuple(fits_on), paper, dict(smoke_changes or {}),
                                      display_name)
        return detector

    return decorate


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_REGISTRY)


def method_entry(name: str) -> MethodEntry:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(list_methods())}")
    return _REGISTRY[name]


def create_detector(name: str, config: Any = None, *, shared_backbone=None, **changes):
    """Build a registered method: ``config`` (default: the paper's) with ``changes`` applied
    (``create_detector("adaclip", backbone="ViT-B-16", epochs=2)``).

    ``shared_backbone`` shares an already built encoder between detectors (it must match the
    config's ``backbone``, which is a config field like any other).
    """
    entry = method_entry(name)
    config = config if config is not None else entry.config()
    if not isinstance(config, entry.config):
        raise TypeError(f"{name} takes a {entry.config.__name__}, got {type(config).__name__}")
    if changes:
        config = config.replace(**changes)
    return entry.detector(config, backbone=shared_backbone)
