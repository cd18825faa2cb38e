"""Which version each agent is answered during a rollout, decided from the served state alone.

The served state (apps.configs.services.state_of) carries, while a rollout splits the fleet, the
previous version's answer, the canary labels and one cutoff hash. An agent gets the new version
when it carries every canary label, or when its hash of (agent id, version) sorts at or before
the cutoff; otherwise the previous one. No query: the watch answers thousands of agents from it.
The same rule in SQL (target_version_expression) lets the database filter and count agents by
their own target, for the agents list and the dashboard.
"""

import functools
import hashlib

from django.db.models import Case, CharField, F, Func, Q, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact, LessThanOrEqual

from protocol.config import ConfigState

ANSWER_FIELDS = ("version", "pooling_interval", "config_url", "uuid")


def agent_key(agent_id, version: int) -> str:
    """The agent's place in the order of a version's waves."""
    return _key(str(agent_id), version)


@functools.lru_cache(maxsize=65536)
def _key(agent_id: str, version: int) -> str:
    # Kept: a wave's start answers every held watch of the fleet from this.
    return hashlib.sha256(f"{agent_id}:{version}".encode()).hexdigest()


def is_canary(labels: dict, canary_labels: dict) -> bool:
    return bool(canary_labels) and all(labels.get(k) == v for k, v in canary_labels.items())


def targets_new(split: dict, version: int, agent_id, labels: dict) -> bool:
    """Whether a split state gives `version` to this agent rather than the previous one."""
    if is_canary(labels or {}, split["canary_labels"]):
        return True
    cutoff = split["cutoff"]
    return bool(cutoff) and agent_key(agent_id, version) <= cutoff


def target_of(state: dict, agent_id, labels: dict) -> ConfigState:
    """What the controller answers this agent: the served state's version and content, or,
    during a rollout whose waves have not reached the agent, the previous version's."""
    split = state.get("rollout")
    if split is not None and not targets_new(split, state["version"], agent_id, labels):
        return split["previous"]
    return ConfigState(**{field: state.get(field) for field in ANSWER_FIELDS})


class AgentKey(Func):
    """agent_key(id, version) computed by the database for each agent row: the hex SHA-256 of
    "<agent id>:<version>", the id spelled as str(UUID) spells it, compared bytewise."""

    output_field = CharField()

    def __init__(self, version: int) -> None:
        super().__init__(F("id"), Value(f":{version}"))

    def as_postgresql(self, compiler, connection, **extra):
        column, column_params = compiler.compile(self.source_expressions[0])
        suffix, suffix_params = compiler.compile(self.source_expressions[1])
        # sha256() is built in since PostgreSQL 11; "C" orders hex digits as Python does.
        return (
            f"(encode(sha256(convert_to({column}::text || {suffix}, 'UTF8')), 'hex') "
            'COLLATE "C")',
            [*column_params, *suffix_params],
        )

    def as_sqlite(self, compiler, connection, **extra):
        # SQLite keeps a UUID as 32 hex digits: the hyphens are put back. SHA256() is the
        # function Django registers on every SQLite connection.
        column, column_params = compiler.compile(self.source_expressions[0])
        suffix, suffix_params = compiler.compile(self.source_expressions[1])
        pieces = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        spelled = " || '-' || ".join(f"substr({column}, {a}, {n})" for a, n in pieces)
        return (
            f"SHA256(lower({spelled}) || {suffix})",
            [*column_params * len(pieces), *suffix_params],
        )


def target_version_expression(state: dict):
    """The version the served state answers each agent, as an expression over the agents
    table: equal to target_of(state, agent.id, agent.labels)["version"] for every row."""
    split = state.get("rollout")
    if split is None:
        return Value(state["version"])
    conditions = []
    if split["canary_labels"]:
        conditions.append(
            Q(
                *(
                    Exact(KeyTextTransform(key, "labels"), value)
                    for key, value in split["canary_labels"].items()
                )
            )
        )
    if split["cutoff"]:
        conditions.append(Q(LessThanOrEqual(AgentKey(state["version"]), split["cutoff"])))
    previous = Value(split["previous"]["version"])
    if not conditions:
        return previous
    targeted = conditions[0]
    for condition in conditions[1:]:
        targeted |= condition
    # A row whose condition is NULL (a label it does not carry) takes the default, as in
    # is_canary.
    return Case(When(targeted, then=Value(state["version"])), default=previous)
