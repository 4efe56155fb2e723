"""Replay a Dash page's first load through the Flask test client, the way dash-renderer does it.

What the browser does on first load, and what :func:`first_load` replays:

1. ``GET /`` (index HTML), ``GET /_dash-layout``, ``GET /_dash-dependencies``;
2. the *initial* server callbacks of the layout: every callback whose (non-wildcard) outputs
   and inputs are all in the layout and that is not ``prevent_initial_call``;
3. ``dcc.Location`` components set ``pathname`` / ``search`` / ``hash`` / ``href`` on mount,
   which triggers the callbacks listening to them (Dash pages' router fills
   ``_pages_content`` with the page's layout that way);
4. after each response: new components (a ``children`` output) bring their own initial
   callbacks, and every changed property triggers the callbacks that take it as an input.

Callbacks run in waves: one is ready when none of its inputs is an output of another pending
callback (dash-renderer's rule); a wave's requests would go out in parallel. Clientside
callbacks are skipped (they cost no server time and, on the pages benchmarked, feed no server
callback). ``ALL`` inputs/states are lists over the matching components, ``MATCH`` callbacks
run once per matching component. Patches are stored as received (not applied).

This is a benchmark helper, not a renderer: it is faithful for the request pattern (which
callbacks, with which values, in which order) of pages like Explore, and checks its work by
requiring every request to answer 200 or 204.

``bench.load`` also builds single callback bodies from a replayed page (:meth:`Replay.body`,
:meth:`Replay.followups`), so its Dash callbacks are shaped as dash-renderer shapes them.
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (stringified id, property)


def id_str(cid: Any) -> str:
    """dash-renderer's ``stringifyId``: dict ids as sorted-key compact JSON."""
    if isinstance(cid, dict):
        return json.dumps({k: cid[k] for k in sorted(cid)}, separators=(",", ":"))
    return str(cid)


def _parse_id(text: str) -> Any:
    return json.loads(text) if text.startswith("{") else text


def _split_outputs(output: str) -> list[tuple[Any, str]]:
    """``"..a.children...b.value.."`` or ``"a.children"`` → [(id, prop)], ``@hash`` dropped."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    out = []
    for part in parts:
        cid, prop = part.rsplit(".", 1)
        out.append((_parse_id(cid), prop.split("@", 1)[0]))
    return out


def _wild(cid: Any) -> str | None:
    if isinstance(cid, dict):
        for v in cid.values():
            if isinstance(v, list) and v:
                return str(v[0])
    return None


def _matches(pattern: Any, cid: Any, match_vals: dict | None = None) -> bool:
    if not isinstance(pattern, dict):
        return pattern == cid
    if not isinstance(cid, dict) or set(pattern) != set(cid):
        return False
    for k, v in pattern.items():
        if isinstance(v, list):
            if v and v[0] == "MATCH" and match_vals is not None and k in match_vals \
                    and match_vals[k] != cid[k]:
                return False
            continue
        if v != cid[k]:
            return False
    return True


@dataclass
class Request:
    """One ``/_dash-update-component`` request of the replay."""

    callback: str
    wave: int
    status: int
    seconds: float
    raw_bytes: int
    wire_bytes: int


@dataclass
class LoadResult:
    static: dict[str, int] = field(default_factory=dict)  # path → wire bytes
    static_seconds: float = 0.0
    requests: list[Request] = field(default_factory=list)

    @property
    def callback_wire_bytes(self) -> int:
        return sum(r.wire_bytes for r in self.requests)

    @property
    def callback_raw_bytes(self) -> int:
        return sum(r.raw_bytes for r in self.requests)

    @property
    def callback_seconds(self) -> float:
        return sum(r.seconds for r in self.requests)

    @property
    def critical_path_seconds(self) -> float:
        """Sum over waves of the slowest request of the wave (parallel requests)."""
        waves: dict[int, float] = {}
        for r in self.requests:
            waves[r.wave] = max(waves.get(r.wave, 0.0), r.seconds)
        return self.static_seconds + sum(waves.values())


class Replay:
    def __init__(self, client: Any, *, gzip_ok: bool = True, max_requests: int = 200) -> None:
        self.client = client
        self.headers = {"Accept-Encoding": "gzip, deflate"} if gzip_ok else {}
        self.max_requests = max_requests
        self.props: dict[Key, Any] = {}
        self.components: dict[str, tuple[Any, str]] = {}  # id_str → (id, type)
        self.deps: list[dict] = []

    # ---------------------------------------------------------------- layout
    def _get(self, path: str, result: LoadResult) -> bytes:
        t0 = time.perf_counter()
        r = self.client.get(path, headers=self.headers)
        result.static_seconds += time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"GET {path} answered {r.status_code}")
        result.static[path] = len(r.data)
        data = r.data
        if r.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    def _register(self, node: Any, found: list[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._register(item, found)
            return
        if not isinstance(node, dict):
            return
        if "props" in node and "type" in node:
            props = node.get("props") or {}
            cid = props.get("id")
            if cid is not None:
                key = id_str(cid)
                self.components[key] = (cid, node["type"])
                found.append(key)
                for prop, value in props.items():
                    if prop != "id":
                        self.props[(key, prop)] = value
            for value in props.values():
                if isinstance(value, (dict, list)):
                    self._register(value, found)

    # ---------------------------------------------------------------- callbacks
    def _concrete(self, pattern: Any, match_vals: dict | None = None) -> list[Any]:
        if not isinstance(pattern, dict):
            return [pattern] if id_str(pattern) in self.components else []
        return [cid for cid, _ in self.components.values() if _matches(pattern, cid, match_vals)]

    def _instances(self, dep: dict) -> list[dict | None]:
        """None for a plain callback, else one dict of MATCH values per matching component."""
        for item in dep["inputs"]:
            cid = _parse_id(item["id"])
            if _wild(cid) == "MATCH":
                out = []
                for c in self._concrete(cid):
                    out.append({k: c[k] for k, v in cid.items()
                                if isinstance(v, list) and v and v[0] == "MATCH"})
                return out
        return [None]

    def _present(self, dep: dict, match_vals: dict | None) -> bool:
        for cid, _ in _split_outputs(dep["output"]):
            if _wild(cid) is None and not self._concrete(cid):
                return False
            if _wild(cid) == "MATCH" and not self._concrete(cid, match_vals):
                return False
        for item in dep["inputs"] + dep["state"]:
            cid = _parse_id(item["id"])
            if _wild(cid) is None and not self._concrete(cid):
                return False
        return True

    def _item(self, cid: Any, prop: str, overrides: dict[Key, Any] | None = None) -> dict:
        key = (id_str(cid), prop)
        if overrides and key in overrides:
            value = overrides[key]
        else:
            value = cid if prop == "id" else self.props.get(key)
        return {"id": cid, "property": prop, "value": value}

    def _values(self, items: list[dict], match_vals: dict | None,
                overrides: dict[Key, Any] | None = None) -> list:
        out: list = []
        for item in items:
            cid = _parse_id(item["id"])
            wild = _wild(cid)
            if wild == "ALL":
                out.append([self._item(c, item["property"], overrides)
                            for c in self._concrete(cid)])
            elif wild == "MATCH":
                (c,) = self._concrete(cid, match_vals)[:1] or [None]
                out.append(self._item(c, item["property"], overrides))
            else:
                out.append(self._item(cid, item["property"], overrides))
        return out

    def _body(self, dep: dict, match_vals: dict | None, changed: list[str],
              overrides: dict[Key, Any] | None = None) -> dict:
        outs = []
        for cid, prop in _split_outputs(dep["output"]):
            wild = _wild(cid)
            if wild == "ALL":
                outs.append([{"id": c, "property": prop} for c in self._concrete(cid)])
            elif wild == "MATCH":
                outs.append({"id": self._concrete(cid, match_vals)[0], "property": prop})
            else:
                outs.append({"id": cid, "property": prop})
        multi = dep["output"].startswith("..")
        return {"output": dep["output"], "outputs": outs if multi else outs[0],
                "inputs": self._values(dep["inputs"], match_vals, overrides),
                "state": self._values(dep["state"], match_vals, overrides),
                "changedPropIds": changed}

    def _input_keys(self, dep: dict, match_vals: dict | None) -> set[Key]:
        keys = set()
        for item in dep["inputs"]:
            for c in self._concrete(_parse_id(item["id"]), match_vals):
                keys.add((id_str(c), item["property"]))
        return keys

    def _output_keys(self, dep: dict, match_vals: dict | None) -> set[Key]:
        keys = set()
        for cid, prop in _split_outputs(dep["output"]):
            for c in self._concrete(cid, match_vals):
                keys.add((id_str(c), prop))
        return keys

    def _initial(self, new: set[str]) -> list[tuple[int, dict | None, list[str]]]:
        out = []
        for i, dep in enumerate(self.deps):
            if dep.get("clientside_function") or dep.get("prevent_initial_call"):
                continue
            for mv in self._instances(dep):
                touched = {k for k, _ in self._output_keys(dep, mv) | self._input_keys(dep, mv)}
                if touched & new and self._present(dep, mv):
                    out.append((i, mv, []))
        return out

    def _triggered(self, changed: set[Key]) -> list[tuple[int, dict | None, list[str]]]:
        out = []
        for i, dep in enumerate(self.deps):
            if dep.get("clientside_function"):
                continue
            for mv in self._instances(dep):
                hit = self._input_keys(dep, mv) & changed
                if hit and self._present(dep, mv):
                    out.append((i, mv, [f"{k}.{p}" for k, p in sorted(hit)]))
        return out

    def _apply(self, response: dict, changed: set[Key], found: list[str]) -> None:
        """Store a callback response's props; note them in ``changed``, new ids in ``found``."""
        for cid, props in response.items():
            key = id_str(_parse_id(cid)) if cid.startswith("{") else cid
            for prop, value in props.items():
                self.props[(key, prop)] = value
                changed.add((key, prop))
                if isinstance(value, (dict, list)):
                    self._register(value, found)

    # ---------------------------------------------------------------- one callback (bench.load)
    def dep(self, output_part: str) -> dict:
        """The server callback whose output string contains ``output_part`` (e.g. an id)."""
        for dep in self.deps:
            if output_part in dep["output"] and not dep.get("clientside_function"):
                return dep
        raise KeyError(f"no server callback outputs {output_part!r}")

    def body(self, dep: dict, values: dict[Key, Any] | None = None,
             changed: list[str] | None = None, match_vals: dict | None = None) -> dict:
        """The body dash-renderer POSTs for ``dep`` after a user action: the page's current
        props (from :meth:`first_load`), ``values`` overriding some, ``changed`` the
        ``changedPropIds``. Reads the replay's state without changing it (threads may share it)."""
        return self._body(dep, match_vals, list(changed or []), values)

    def followups(self, response: dict) -> list[dict]:
        """Bodies of the server callbacks a callback's ``response`` triggers next: those taking
        a changed prop as input, and the initial callbacks of the components it creates (one
        level; works on a copy, so threads may share the replay)."""
        view = copy.copy(self)
        view.components, view.props = dict(self.components), dict(self.props)
        changed: set[Key] = set()
        found: list[str] = []
        view._apply(response, changed, found)
        out: dict[tuple[int, str], dict] = {}
        for i, mv, changed_ids in view._triggered(changed) + view._initial(set(found)):
            out.setdefault((i, json.dumps(mv, sort_keys=True)),
                           view._body(self.deps[i], mv, changed_ids))
        return list(out.values())

    def first_load(self, path: str = "/", search: str = "") -> LoadResult:
        result = LoadResult()
        self._get(path + search, result)
        layout = json.loads(self._get("/_dash-layout", result))
        self.deps = json.loads(self._get("/_dash-dependencies", result))
        found: list[str] = []
        self._register(layout, found)
        pending: dict[tuple[int, str], tuple[int, dict | None, list[str]]] = {}

        def add(items: list) -> None:
            for i, mv, changed in items:
                key = (i, json.dumps(mv, sort_keys=True))
                if key in pending:
                    pending[key][2].extend(c for c in changed if c not in pending[key][2])
                else:
                    pending[key] = (i, mv, list(changed))

        add(self._initial(set(found)))
        # dcc.Location reports the URL on mount.
        changed: set[Key] = set()
        for key, (_, ctype) in list(self.components.items()):
            if ctype == "Location":
                for prop, value in (("pathname", path), ("search", search), ("hash", ""),
                                    ("href", f"http://localhost{path}{search}")):
                    if self.props.get((key, prop)) != value:
                        self.props[(key, prop)] = value
                        changed.add((key, prop))
        add(self._triggered(changed))

        wave = 0
        while pending:
            if len(result.requests) > self.max_requests:
                raise RuntimeError("replay did not settle: too many callbacks")
            outputs_pending = {k: self._output_keys(self.deps[i], mv)
                               for k, (i, mv, _) in pending.items()}
            ready = [k for k, (i, mv, _) in pending.items()
                     if not any(self._input_keys(self.deps[i], mv) & outs
                                for k2, outs in outputs_pending.items() if k2 != k)]
            ready = ready or list(pending)
            batch = [pending.pop(k) for k in ready]
            new_found: list[str] = []
            changed = set()
            for i, mv, changed_ids in batch:
                dep = self.deps[i]
                body = self._body(dep, mv, changed_ids)
                t0 = time.perf_counter()
                r = self.client.post("/_dash-update-component", json=body, headers=self.headers)
                seconds = time.perf_counter() - t0
                if r.status_code not in (200, 204):
                    raise RuntimeError(f"callback {dep['output'][:80]} answered {r.status_code}: "
                                       f"{r.data[:300]!r}")
                data = r.data
                wire = len(data)
                if r.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                result.requests.append(Request(dep["output"], wave, r.status_code, seconds,
                                               len(data), wire))
                if r.status_code == 204 or not data:
                    continue
                self._apply(json.loads(data).get("response", {}), changed, new_found)
            wave += 1
            add(self._initial(set(new_found)))
            add(self._triggered(changed))
        return result
