"""Variants: YAML files in ``variants/``, resolved to a model config at a scale.

A variant file holds::

    extend: table1-04-mamba-16-attn-heads   # optional: start from another variant
    family: hymba                            # mamba | mamba2 | llama | samba | hymba
    description: one line
    model: {...}                             # AblateConfig fields shared by every scale
    scales: {tiny: {...}, proxy: {...}, paper: {...}}   # per-scale AblateConfig fields
    paper: {...}                             # the paper's figures for this configuration (not inherited)

``model`` and each scale merge field by field down the ``extend`` chain. A scale may define
constants (keys starting with ``$``) that ``model`` values refer to as ``"$name"``: a variant asks
for "the sliding window" and each scale says how wide it is.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablate.config import AblateConfig, ConfigError

SCALES = ("tiny", "proxy", "paper")
TOP_LEVEL_KEYS = {"extend", "family", "description", "model", "scales", "paper"}
MODEL_FIELDS = set(AblateConfig.__annotations__)


class VariantError(ConfigError):
    """A variant that cannot be resolved; the message is one line naming the file and field."""


def variants_dir() -> Path:
    """``$ABLATE_VARIANTS`` or the repository's ``variants/``."""
    env = os.environ.get("ABLATE_VARIANTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "variants"


def variant_names(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or variants_dir()).glob("*.yaml"))


@dataclass
class Variant:
    name: str
    file: Path
    family: str
    description: str
    scale: str
    config: AblateConfig
    paper: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)  # the resolved AblateConfig fields
    sources: dict = field(default_factory=dict)  # field -> file that set it


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _locate(name: str, directory: Path) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = directory / f"{name}.yaml"
    if path.exists():
        return path
    known = variant_names(directory)
    # a unique prefix ending at a name boundary is enough ("table1-13" for table1-13-meta-tokens)
    by_prefix = [k for k in known if k.startswith(f"{name}-")]
    if len(by_prefix) == 1:
        return directory / f"{by_prefix[0]}.yaml"
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; `ablate variants` lists the {len(known)} known"
    raise VariantError("variant", f"unknown variant {name!r} (no {_rel(path)}){hint}")


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VariantError("yaml", f"not valid YAML: {str(e).splitlines()[0]}", _rel(path)) from None
    if not isinstance(data, dict):
        raise VariantError("yaml", "a variant file must be a mapping", _rel(path))
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise VariantError(str(key), f"unknown top-level field; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}", _rel(path))
    for section, fields_ in [("model", data.get("model") or {})] + [
        (f"scales.{s}", v or {}) for s, v in (data.get("scales") or {}).items()
    ]:
        if section.startswith("scales.") and section[7:] not in SCALES:
            raise VariantError(section, f"unknown scale; one of {', '.join(SCALES)}", _rel(path))
        if not isinstance(fields_, dict):
            raise VariantError(section, "must be a mapping of config fields", _rel(path))
        for key in fields_:
            if key not in MODEL_FIELDS and not (section.startswith("scales.") and str(key).startswith("$")):
                close = difflib.get_close_matches(str(key), MODEL_FIELDS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise VariantError(f"{section}.{key}", f"unknown config field{hint}", _rel(path))
    return data


def _chain(name: str, directory: Path) -> list[tuple[Path, dict]]:
    """The extend chain, root first."""
    chain: list[tuple[Path, dict]] = []
    seen: list[str] = []
    path = _locate(name, directory)
    while True:
        key = str(path.resolve())
        if key in seen:
            names = " -> ".join(Path(s).stem for s in seen[seen.index(key):] + [key])
            raise VariantError("extend", f"extend cycle: {names}", _rel(path))
        seen.append(key)
        data = _read(path)
        chain.append((path, data))
        parent = data.get("extend")
        if not parent:
            return list(reversed(chain))
        try:
            path = _locate(str(parent), directory)
        except VariantError as e:
            raise VariantError("extend", e.message, _rel(chain[-1][0])) from None


def resolve(name: str, scale: str = "tiny", directory: Path | None = None, overrides: dict | None = None) -> Variant:
    """Resolve a variant (a name in ``variants/`` or a path to a YAML file) at a scale."""
    if scale not in SCALES:
        raise VariantError("scale", f"unknown scale {scale!r}; one of {', '.join(SCALES)}")
    chain = _chain(name, directory or variants_dir())
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    family, description = "", ""
    for path, data in chain:
        for key, value in (data.get("model") or {}).items():
            merged[key], sources[key] = value, _rel(path)
        for key, value in ((data.get("scales") or {}).get(scale) or {}).items():
            merged[key], sources[key] = value, _rel(path)
        family = data.get("family", family)
        description = data.get("description", "")
    leaf_path, leaf = chain[-1]
    for key, value in (overrides or {}).items():
        if key not in MODEL_FIELDS:
            raise VariantError(key, "unknown config field", "override")
        merged[key], sources[key] = value, "override"
    constants = {k: v for k, v in merged.items() if k.startswith("$")}
    fields_ = {}
    for key, value in merged.items():
        if key.startswith("$"):
            continue
        if isinstance(value, str) and value.startswith("$"):
            if value not in constants:
                raise VariantError(key, f"refers to {value}, which scale {scale!r} does not define", sources[key])
            value = constants[value]
        fields_[key] = value
    try:
        config = AblateConfig(**fields_)
    except ConfigError as e:
        raise VariantError(e.field, e.message, sources.get(e.field, _rel(leaf_path))) from None
    except (TypeError, ValueError) as e:
        raise VariantError("model", str(e).splitlines()[0], _rel(leaf_path)) from None
    return Variant(
        name=leaf_path.stem,
        file=leaf_path,
        family=family,
        description=description,
        scale=scale,
        config=config,
        paper=dict(leaf.get("paper") or {}),
        fields=fields_,
        sources=sources,
    )


def build_model(variant: Variant | str, scale: str = "tiny", **kwargs):
    """A freshly initialised ``AblateForCausalLM`` for a variant."""
    from ablate.model.lm import AblateForCausalLM

    if isinstance(variant, str):
        variant = resolve(variant, scale)
    return AblateForCausalLM(variant.config, **kwargs)
