"""Which version each agent is answered during a rollout, decided from the served state alone.

The served state (apps.configs.services.state_of) carries, while a rollout splits the fleet, the
previous version's answer, the canary labels and one cutoff hash. An agent gets the new version
when it carries every canary label, or when its hash of (agent id, version) sorts at or before
the cutoff; otherwise the previous one. No query: the watch answers thousands of agents from it.
"""

import functools
import hashlib

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
