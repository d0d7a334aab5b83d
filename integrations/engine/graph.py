"""An integration's scenario graph (elements with their requests, connections in order),
kept per process under the integration's ``config_version``, like request specs are
(integrations.step_cache: every save or delete of an Element or Connection bumps it).

The driver reads the version once per step (the same one-row SELECT the request reads),
so an operator's edit applies to the next step of every run, in every process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from integrations import step_cache
from integrations.models import Connection, Element

MAX_GRAPHS = 512


@dataclass
class Graph:
    elements: dict[int, Element]
    outgoing: dict[int, list[Connection]] = field(default_factory=dict)
    # No element leads to more than one next element and no two starts share a step
    # meaning and trigger: a run of it is at one place at a time, never two branches.
    is_linear: bool = False

    def acting(self, element: Element) -> Element:
        """The element whose settings apply: a mirror's master, otherwise itself."""
        if element.kind == Element.Kind.MIRROR and element.mirror_of_id in self.elements:
            return self.elements[element.mirror_of_id]
        return element


_graphs: dict[int, tuple[int, Graph]] = {}
_lock = threading.Lock()


def graph_get(integration_id: int, *, version: int | None) -> Graph:
    """The graph of an integration at ``version`` (None: built, not kept). A version
    bumped by this connection's still-open transaction is not kept either (a rollback
    could let another change commit the same number)."""
    if version is not None and step_cache._bumped_here(integration_id):
        version = None
    entry = _graphs.get(integration_id)
    if version is not None and entry is not None and entry[0] == version:
        return entry[1]
    graph = _build(integration_id)
    if version is not None:
        with _lock:
            _graphs.pop(integration_id, None)
            while len(_graphs) >= MAX_GRAPHS:
                _graphs.pop(next(iter(_graphs)))
            _graphs[integration_id] = (version, graph)
    return graph


def graph_version(integration_id: int) -> int | None:
    """The version this process last cached the integration's graph at (None: none
    cached). A hint only: whoever uses it checks it against the database."""
    entry = _graphs.get(integration_id)
    return entry[0] if entry is not None else None


def _build(integration_id: int) -> Graph:
    elements = {
        element.pk: element
        for element in Element.objects.filter(integration_id=integration_id).select_related(
            "request_step__integration"
        )
    }
    graph = Graph(elements=elements)
    for connection in Connection.objects.filter(integration_id=integration_id).order_by(
        "from_element", "position", "id"
    ):
        connection.to_element = elements[connection.to_element_id]
        connection.from_element = elements[connection.from_element_id]
        graph.outgoing.setdefault(connection.from_element_id, []).append(connection)
    for element in elements.values():
        if element.mirror_of_id in elements:
            element.mirror_of = elements[element.mirror_of_id]
    entries = [
        (e.meaning, str((e.config or {}).get("trigger") or "default"))
        for e in elements.values()
        if e.kind == Element.Kind.START
    ]
    graph.is_linear = len(entries) == len(set(entries)) and all(
        len(connections) <= 1 for connections in graph.outgoing.values()
    )
    return graph


def cache_clear() -> None:
    with _lock:
        _graphs.clear()
