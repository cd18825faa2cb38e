"""A fleet of registered agents for the rollout tests, and the version each one is served."""

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent
from tests.support.clients import bearer


def make_fleet(canaries: int = 2, others: int = 4) -> list[tuple[Agent, str]]:
    """(agent, token) pairs, registered as the agents do: the first `canaries` labelled
    ring=canary, the rest ring=main."""
    fleet = []
    for index in range(canaries + others):
        token, _ = issue_registration_token(allow_agent_labels=True)
        labels = {"ring": "canary"} if index < canaries else {"ring": "main"}
        fleet.append(register_agent(token=token, name=f"agent-{index}", labels=labels))
    return fleet


def served(token: str) -> int:
    """The version GET /config/version answers the agent holding `token`: its target."""
    response = bearer(token).get("/config/version")
    assert response.status_code == 200
    return response.json()["version"]
