"""Griffe extension used by the docs build: give `equinox.Module` classes their
dataclass signature.

Equinox modules are dataclasses (created through a metaclass, not the `@dataclass`
decorator), so static analysis sees no `__init__` for modules that do not write one
(`gf.GradientFlow`, `gf.SaveAt`, ...). This recreates it from the annotated fields, in
order, with the defaults given directly or through `eqx.field(default=...)`, so the API
reference shows e.g. `GradientFlow(solver=diffrax.Tsit5(), rtol=1e-07, ...)`.

Loaded from `mkdocs.yml` (`plugins.mkdocstrings.handlers.python.options.extensions`);
excluded from the built site.
"""

from __future__ import annotations

from typing import Any

import griffe

_MODULE_PATHS = {"equinox.Module", "equinox._module.Module", "equinox._module._module.Module"}
_FIELD_PATHS = {"equinox.field", "equinox._module.field", "dataclasses.field"}
_SKIP_ANNOTATIONS = {"equinox.AbstractVar", "equinox.AbstractClassVar", "typing.ClassVar"}


def _path(expr: Any) -> str:
    return expr.canonical_path if isinstance(expr, griffe.Expr) else str(expr)


def _resolve(cls: griffe.Class, base: Any) -> griffe.Class | None:
    try:
        target = cls.modules_collection[_path(base)]
    except Exception:  # not loaded (third-party) or unresolvable
        return None
    target = target.final_target if isinstance(target, griffe.Alias) else target
    return target if isinstance(target, griffe.Class) else None


def _lineage(cls: griffe.Class, seen: set[str] | None = None) -> list[griffe.Class] | None:
    """The classes from the `equinox.Module` root down to `cls`, or None if `cls`
    is not an equinox module."""
    seen = set() if seen is None else seen
    if cls.path in seen:
        return None
    seen.add(cls.path)
    for base in cls.bases:
        if _path(base) in _MODULE_PATHS:
            return [cls]
        parent = _resolve(cls, base)
        if parent is not None and (chain := _lineage(parent, seen)) is not None:
            return [*chain, cls]
    return None


def _field_default(attr: griffe.Attribute) -> tuple[bool, Any]:
    """`(init, default)` of a field; default None means required."""
    value = attr.value
    if isinstance(value, griffe.ExprCall) and _path(value.function) in _FIELD_PATHS:
        args = {a.name: a.value for a in value.arguments if isinstance(a, griffe.ExprKeyword)}
        if str(args.get("init", "True")) == "False":
            return False, None
        if "default_factory" in args:
            return True, griffe.ExprCall(function=args["default_factory"], arguments=[])
        return True, args.get("default")
    return True, value


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    params = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute:
            continue
        if member.annotation is None or "property" in member.labels:
            continue
        if "class-attribute" in member.labels and "instance-attribute" not in member.labels:
            continue
        if isinstance(member.annotation, griffe.Expr):
            ann = member.annotation
            head = ann.left if isinstance(ann, griffe.ExprSubscript) else ann
            if _path(head) in _SKIP_ANNOTATIONS:
                continue
        init, default = _field_default(member)
        if init:
            params.append(
                griffe.Parameter(
                    member.name,
                    annotation=member.annotation,
                    kind=griffe.ParameterKind.positional_or_keyword,
                    default=default,
                )
            )
    return params


def _apply(obj: griffe.Object, done: set[str]) -> None:
    if obj.path in done:
        return
    done.add(obj.path)
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        if member.is_class or member.is_module:
            _apply(member, done)
    if not isinstance(obj, griffe.Class) or obj.name.startswith("Abstract"):
        return
    chain = _lineage(obj)
    if chain is None or any("__init__" in c.members for c in chain):
        return
    by_name: dict[str, griffe.Parameter] = {}
    for c in chain:
        for p in _fields(c):
            by_name[p.name] = p
    self_param = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
    obj.set_member(
        "__init__",
        griffe.Function(
            "__init__",
            lineno=0,
            endlineno=0,
            parent=obj,
            parameters=griffe.Parameters(self_param, *by_name.values()),
            returns="None",
        ),
    )


class EquinoxModules(griffe.Extension):
    """Recreate the dataclass `__init__` of `equinox.Module` subclasses."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _apply(pkg, set())
