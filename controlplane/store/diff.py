"""What changed between two policies, per object and per field, as JSON-ready dictionaries.

The audit log stores this for every commit and the admin API shows it for any two revisions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from controlplane.policy import Policy, documents_of

_MISSING = object()


def _objects(policy: Policy) -> dict[tuple[str, str], BaseModel]:
    return {(d.kind, d.name): d.spec for d in documents_of(policy)}


def _spec(spec: BaseModel) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def field_changes(old: Any, new: Any, path: str = "spec") -> list[dict[str, Any]]:
    """Leaf-level changes: dictionaries by key, lists by position; an added or removed entry
    is one change whose other side is null."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(old.keys() | new.keys()):
            out += field_changes(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            out += field_changes(old[i] if i < len(old) else _MISSING, new[i] if i < len(new) else _MISSING,
                                 f"{path}.{i}")
        return out
    if old == new:
        return []
    return [{"path": path, "from": None if old is _MISSING else old, "to": None if new is _MISSING else new}]


def policy_diff(old: Policy, new: Policy) -> list[dict[str, Any]]:
    """`[{kind, name, change: added|removed|changed, ...}]`: an added object carries its `spec`,
    a removed one its last `spec`, a changed one its `fields` ([{path, from, to}])."""
    before, after = _objects(old), _objects(new)
    out: list[dict[str, Any]] = []
    for kind, name in sorted(before.keys() | after.keys()):
        a, b = before.get((kind, name)), after.get((kind, name))
        if a is b:
            continue  # one object in both: a write shares what it leaves alone, so 1,000 routes cost nothing
        if a is None:
            out.append({"kind": kind, "name": name, "change": "added", "spec": _spec(b)})  # type: ignore[arg-type]
        elif b is None:
            out.append({"kind": kind, "name": name, "change": "removed", "spec": _spec(a)})
        elif (da := _spec(a)) != (db := _spec(b)):
            out.append({"kind": kind, "name": name, "change": "changed", "fields": field_changes(da, db)})
    return out
