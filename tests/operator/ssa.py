"""Server-side apply and field ownership for the emulator, after structured-merge-diff (what the API server runs).

Enough of it to tell a schema that lets GitOps tools share an object from one that makes them conflict:

* a field set is a set of paths; a path step is ``f:<field>`` in a map, ``k:<keys as JSON>`` for an item of a
  ``x-kubernetes-list-type: map`` list, ``v:<value as JSON>`` for an item of a ``set``; ``.`` marks an item
  itself. Any other list (``atomic``, the default of a CRD) and anything schemaless is one leaf, whole;
* an apply merges the applied object into the live one (map lists by key, sets by value, the rest replaced),
  removes what its manager applied last time and no one owns any more, and conflicts (409) where it sets a leaf
  to another value than the live one while another manager owns that leaf, unless ``force=true``;
* an update (create, patch, put) with a ``fieldManager`` takes the leaves it changed from everyone else.

``metadata.managedFields`` holds the result as ``FieldsV1``. Only ``spec`` and ``metadata.labels/annotations``
are tracked, for custom resources; status writes are not (a real server files them under ``subresource: status``).
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str, ...]
Schema = Mapping[str, Any]
TRACKED = (("spec",), ("metadata", "labels"), ("metadata", "annotations"))


class Conflict(Exception):
    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        parts = [f'conflict with "{manager}": .{_dotted(path)}' for manager, path in conflicts]
        super().__init__(f"Apply failed with {len(conflicts)} conflict(s): " + "; ".join(parts))


def _dotted(path: Path) -> str:
    steps = []
    for step in path:
        if step.startswith("f:"):
            steps.append(step[2:])
        elif step != ".":
            steps[-1:] = [f"{steps[-1] if steps else ''}[{step[2:]}]"]
    return ".".join(steps)


def _child(schema: Schema | None, name: str) -> Schema | None:
    if not schema:
        return None
    properties = schema.get("properties") or {}
    if name in properties:
        return properties[name]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _item_key(schema: Schema, item: Any) -> str:
    keys = schema.get("x-kubernetes-list-map-keys") or []
    return "k:" + json.dumps({k: item.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))


def _walk(schema: Schema | None, value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    """Every leaf of ``value`` (and every keyed item's ``.``) with its value, as the schema structures it."""
    if isinstance(value, Mapping) and schema is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
        if schema.get("x-kubernetes-map-type") == "atomic":
            yield path, value
            return
        for name, child in value.items():
            yield from _walk(_child(schema, name) or {}, child, (*path, f"f:{name}"))
    elif isinstance(value, list) and schema is not None and schema.get("x-kubernetes-list-type") in ("map", "set"):
        items = schema.get("items") or {}
        for item in value:
            if schema["x-kubernetes-list-type"] == "set":
                yield (*path, "v:" + json.dumps(item, sort_keys=True, separators=(",", ":"))), item
                continue
            step = (*path, _item_key(schema, item))
            yield (*step, "."), None
            yield from _walk(items, item, step)
    else:
        yield path, value


def field_set(schema: Schema | None, obj: Mapping[str, Any]) -> dict[Path, Any]:
    leaves: dict[Path, Any] = {}
    for where in TRACKED:
        value: Any = obj
        for name in where:
            value = value.get(name) if isinstance(value, Mapping) else None
        if value is not None:
            node = _child(schema, where[0]) if where[0] == "spec" else {"additionalProperties": {"type": "string"}}
            leaves.update(_walk(node or {}, value, tuple(f"f:{n}" for n in where)))
    return leaves


def _merge(schema: Schema | None, live: Any, applied: Any) -> Any:
    if (
        isinstance(live, Mapping)
        and isinstance(applied, Mapping)
        and not (schema or {}).get("x-kubernetes-preserve-unknown-fields")
    ):
        merged = dict(live)
        for name, value in applied.items():
            merged[name] = _merge(_child(schema, name), live.get(name), value)
        return merged
    kind = (schema or {}).get("x-kubernetes-list-type")
    if isinstance(live, list) and isinstance(applied, list) and kind == "map":
        items = (schema or {}).get("items") or {}
        merged_items = {_item_key(schema, i): i for i in live}  # type: ignore[arg-type]
        for item in applied:
            key = _item_key(schema, item)  # type: ignore[arg-type]
            merged_items[key] = _merge(items, merged_items.get(key), item)
        return list(merged_items.values())
    if isinstance(live, list) and isinstance(applied, list) and kind == "set":
        return live + [v for v in applied if v not in live]
    return copy.deepcopy(applied)


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Delete the field or list item at ``path`` (a ``.`` path removes its item)."""
    parent: Any = obj
    steps = path[:-1] if path[-1] == "." else path
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        if step.startswith("f:") and isinstance(parent, dict):
            if last:
                parent.pop(step[2:], None)
                return
            parent = parent.get(step[2:])
        elif isinstance(parent, list):
            found = [i for i, item in enumerate(parent) if _matches(step, item)]
            if not found:
                return
            if last:
                del parent[found[0]]
                return
            parent = parent[found[0]]
        else:
            return


def _matches(step: str, item: Any) -> bool:
    if step.startswith("v:"):
        return bool(json.loads(step[2:]) == item)
    keys = json.loads(step[2:])
    return isinstance(item, Mapping) and all(item.get(k) == v for k, v in keys.items())


def _owned(entries: list[dict[str, Any]]) -> dict[tuple[str, str], set[Path]]:
    return {(e["manager"], e["operation"]): set(_paths(e.get("fieldsV1") or {})) for e in entries}


def _paths(fields: Mapping[str, Any], prefix: Path = ()) -> Iterator[Path]:
    for step, sub in fields.items():
        if step == ".":
            yield (*prefix, ".")
        elif sub:
            yield from _paths(sub, (*prefix, step))
        else:
            yield (*prefix, step)


def _fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for step in path:
            node = node.setdefault(step, {})
    return root


def _entries(owned: dict[tuple[str, str], set[Path]], api_version: str, stamp: dict[tuple[str, str], str]) -> list[Any]:
    return [
        {"manager": manager, "operation": operation, "apiVersion": api_version, "time": stamp[(manager, operation)],
         "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(paths)}
        for (manager, operation), paths in owned.items() if paths
    ]  # fmt: skip


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply(schema: Schema | None, live: dict[str, Any] | None, applied: dict[str, Any], manager: str,
          force: bool) -> dict[str, Any]:  # fmt: skip
    """The object after ``manager`` applies ``applied`` to ``live`` (None: it does not exist yet)."""
    live = live or {"apiVersion": applied.get("apiVersion"), "kind": applied.get("kind"), "metadata": {}}
    meta = live.get("metadata") or {}
    entries = list(meta.get("managedFields") or [])
    owned = _owned(entries)
    stamp = {(e["manager"], e["operation"]): e.get("time") or _now() for e in entries}
    me = (manager, "Apply")
    wanted = field_set(schema, applied)
    current = field_set(schema, live)
    conflicts = [
        (other[0], path)
        for path, value in wanted.items()
        if path[-1] != "." and path in current and current[path] != value
        for other, paths in owned.items()
        if other != me and path in paths
    ]
    if conflicts and not force:
        raise Conflict(conflicts)
    for other, paths in owned.items():
        if other != me:
            paths -= {path for _, path in conflicts}
    result = copy.deepcopy(live)
    for part in ("spec", "metadata"):
        if part in applied:
            node = _child(schema, "spec") if part == "spec" else {}
            tracked = {k: v for k, v in applied[part].items() if part == "spec" or k in ("labels", "annotations")}
            result[part] = _merge(node, result.get(part), tracked)
    others = set().union(*(paths for key, paths in owned.items() if key != me))
    for path in owned.get(me, set()) - set(wanted) - others:
        _remove(result, path)
    if owned.get(me) != set(wanted):
        stamp[me] = _now()
    owned[me] = set(wanted)
    result.setdefault("metadata", {})["managedFields"] = _entries(owned, str(applied.get("apiVersion")), stamp)
    return result


def record_update(schema: Schema | None, old: Mapping[str, Any] | None, new: dict[str, Any], manager: str) -> None:
    """An update by ``manager``: it owns the leaves it changed, taken from every other manager."""
    meta = new.setdefault("metadata", {})
    entries = list(((old or {}).get("metadata") or {}).get("managedFields") or [])
    owned = _owned(entries)
    stamp = {(e["manager"], e["operation"]): e.get("time") or _now() for e in entries}
    before = field_set(schema, old or {})
    after = field_set(schema, new)
    changed = {path for path, value in after.items() if path not in before or before[path] != value}
    gone = set(before) - set(after)
    for paths in owned.values():
        paths -= changed | gone
    me = (manager, "Update")
    owned[me] = owned.get(me, set()) | changed
    if changed:
        stamp[me] = _now()
    meta["managedFields"] = _entries(owned, str(new.get("apiVersion")), stamp)
