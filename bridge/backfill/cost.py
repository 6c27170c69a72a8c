"""The requested cost of an Admin GraphQL query, worked out from its text before it is sent. Pure.

Shopify charges the *requested* cost up front and refuses any single query above 1 000 points
(`MAX_COST_EXCEEDED`), so the client must know what a query will be charged before sending it.
The published rules: a scalar or enum costs 0, an object 1, a connection 2 plus `first`/`last`
times the cost of one node (nested connections multiply), an interface or union the most
expensive of its fragments, and a mutation 10. `nodes`/`edges`/`node` inside a connection are
the node itself, not extra objects. A field is a connection here when it takes `first` or `last`;
lists that take neither (an order's `refunds`) cost as one object, as Shopify's own worked
examples count them, except `nodes(ids:)`, counted as one object per id. The result is an
upper bound: Shopify may charge less, never more.
"""

from __future__ import annotations

from typing import Any

from graphql import parse
from graphql.language import (
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
)

MAX_QUERY_COST = 1000
# Shopify's other static limits: nodes per connection page (`first`/`last`) and items per input
# array (`nodes(ids:)`); a query over either is refused whatever it costs.
MAX_PAGE_SIZE = 250
MAX_INPUT_ITEMS = 250
MUTATION_COST = 10
# A connection's own price; the rest is `first` times one node.
CONNECTION_BASE_COST = 2
# Connection wrappers that stand for the node rather than being objects of their own.
_NODE_WRAPPERS = frozenset({"nodes", "edges"})


def _page_size(field: FieldNode, variables: dict[str, Any]) -> int | None:
    for arg in field.arguments or ():
        if arg.name.value not in ("first", "last"):
            continue
        value = arg.value
        if isinstance(value, IntValueNode):
            return int(value.value)
        if isinstance(value, VariableNode):
            raw = variables.get(value.name.value)
            return int(raw) if isinstance(raw, int) else 0
    return None


def _selection_cost(sel: SelectionSetNode | None, variables: dict[str, Any]) -> int:
    """The cost of the fields in one selection set; fragments take the most expensive branch."""
    if sel is None:
        return 0
    plain = 0
    fragments: list[int] = []
    for node in sel.selections:
        if isinstance(node, FieldNode):
            plain += _field_cost(node, variables)
        elif isinstance(node, InlineFragmentNode):
            fragments.append(_selection_cost(node.selection_set, variables))
        elif isinstance(node, FragmentSpreadNode):
            raise ValueError("named fragments are not costed; inline them")
    return plain + max(fragments, default=0)


def _wrapped_node_cost(sel: SelectionSetNode | None, variables: dict[str, Any]) -> int:
    """Inside `nodes { ... }` or `edges { node { ... } }`: the fields of one node."""
    if sel is None:
        return 0
    total = 0
    for node in sel.selections:
        if isinstance(node, FieldNode) and node.name.value == "node":
            total += _selection_cost(node.selection_set, variables)
        elif isinstance(node, FieldNode):
            total += _field_cost(node, variables)
        elif isinstance(node, InlineFragmentNode):
            total += _selection_cost(node.selection_set, variables)
    return total


def _connection_cost(field: FieldNode, first: int, variables: dict[str, Any]) -> int:
    sel = field.selection_set
    assert sel is not None
    wrapped = [
        n for n in sel.selections if isinstance(n, FieldNode) and n.name.value in _NODE_WRAPPERS
    ]
    if not wrapped:
        # Fields straight under the connection are the node's (Shopify's own example).
        return CONNECTION_BASE_COST + first * (1 + _selection_cost(sel, variables))
    node = 1 + sum(_wrapped_node_cost(w.selection_set, variables) for w in wrapped)
    # `pageInfo` and the like are paid once per connection, not once per node.
    once = sum(
        _field_cost(n, variables)
        for n in sel.selections
        if isinstance(n, FieldNode) and n.name.value not in _NODE_WRAPPERS
    )
    return CONNECTION_BASE_COST + first * node + once


def _id_count(field: FieldNode, variables: dict[str, Any]) -> int | None:
    """How many objects `nodes(ids: [...])` asks for (None: the field takes no `ids`)."""
    for arg in field.arguments or ():
        if arg.name.value != "ids":
            continue
        value = arg.value
        if isinstance(value, ListValueNode):
            return len(value.values)
        if isinstance(value, VariableNode):
            raw = variables.get(value.name.value)
            return len(raw) if isinstance(raw, list) else 1
    return None


def _field_cost(field: FieldNode, variables: dict[str, Any]) -> int:
    if field.selection_set is None:
        return 0  # scalar or enum
    first = _page_size(field, variables)
    if first is not None:
        return _connection_cost(field, first, variables)
    ids = _id_count(field, variables)
    if ids is not None:
        # `nodes(ids:)` returns one object per id: each is an object with its fields (how
        # Shopify costs lists is not documented; counting every object is the upper bound).
        return max(1, ids) * (1 + _selection_cost(field.selection_set, variables))
    return 1 + _selection_cost(field.selection_set, variables)


def requested_cost(query: str, variables: dict[str, Any] | None = None) -> int:
    """Points Shopify will ask of the bucket for this query. Raises GraphQLError on bad syntax."""
    total = 0
    for definition in parse(query).definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        if definition.operation == OperationType.MUTATION:
            total += MUTATION_COST
            continue
        total += _selection_cost(definition.selection_set, variables or {})
    return total


def _fields_of(sel: SelectionSetNode | None) -> list[FieldNode]:
    out: list[FieldNode] = []
    for node in sel.selections if sel else ():
        if isinstance(node, FieldNode):
            out.append(node)
            out.extend(_fields_of(node.selection_set))
        elif isinstance(node, InlineFragmentNode):
            out.extend(_fields_of(node.selection_set))
    return out


def over_limits(query: str, variables: dict[str, Any] | None = None) -> str | None:
    """Why Shopify would refuse this query for its size (a `first`/`last` over MAX_PAGE_SIZE, an
    `ids` list over MAX_INPUT_ITEMS), or None. Names the field, never a value."""
    variables = variables or {}
    for definition in parse(query).definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        for field in _fields_of(definition.selection_set):
            size = _page_size(field, variables)
            if size is not None and size > MAX_PAGE_SIZE:
                return f"{field.name.value}: page of {size} over {MAX_PAGE_SIZE}"
            ids = _id_count(field, variables)
            if ids is not None and ids > MAX_INPUT_ITEMS:
                return f"{field.name.value}: {ids} ids over {MAX_INPUT_ITEMS}"
    return None
