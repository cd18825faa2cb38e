from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.roles import ANY_ROLE, OPERATOR
from apps.configs import actions
from apps.rollouts import services, status
from apps.rollouts.errors import NoRollout
from apps.rollouts.health import health_of
from apps.rollouts.serializers import RolloutActionSerializer, RolloutSerializer
from apps.scopes.views import ActsOnScope
from controller_site.request_info import client_ip

NONE_YET = OpenApiResponse(description="No rollout has been started yet.")


def rollout_answer(rollout) -> Response:
    progress = status.measure(rollout)
    rollout.agents_total = progress.total
    rollout.agents_targeted = progress.targeted
    rollout.agents_applied = progress.applied
    new, previous = health_of(rollout)
    rollout.health = {"version": new.as_dict(), "previous_version": previous.as_dict()}
    return Response(RolloutSerializer(rollout).data)


class RolloutView(ActsOnScope, APIView):
    role_rules = {"GET": ANY_ROLE}

    @extend_schema(
        tags=["rollouts"],
        summary="The current or last rollout",
        responses={
            200: RolloutSerializer,
            404: NONE_YET,
        },
    )
    def get(self, request):
        rollout = status.get_latest_rollout(self.scope_id)
        if rollout is None:
            raise NoRollout()
        return rollout_answer(rollout)


ACTION_ERRORS = {
    400: OpenApiResponse(description="Bad reason."),
    404: NONE_YET,
    409: OpenApiResponse(description="The rollout's state does not allow it."),
}


def _act(view: ActsOnScope, request, action) -> Response:
    body = RolloutActionSerializer(data=request.data if request.body else {})
    body.is_valid(raise_exception=True)
    rollout = action(
        scope_id=view.scope_id,
        actor=request.user,
        source_ip=client_ip(request),
        reason=body.validated_data["reason"],
    )
    return rollout_answer(rollout)


def _schema(summary: str, description: str):
    return extend_schema(
        tags=["rollouts"],
        summary=summary,
        description=description,
        request=RolloutActionSerializer,
        responses={200: RolloutSerializer, **ACTION_ERRORS},
    )


class RolloutPromoteView(ActsOnScope, APIView):
    role_rules = {"POST": OPERATOR}

    @_schema(
        "Start the next wave now",
        "Starts the next wave without waiting for the current one to apply and bake; on the "
        "last wave, completes the rollout. Rolling or paused rollouts only.",
    )
    def post(self, request):
        return _act(self, request, services.promote_rollout)


class RolloutPauseView(ActsOnScope, APIView):
    role_rules = {"POST": OPERATOR}

    @_schema("Pause the rollout", "Started waves keep the new version; no new wave starts.")
    def post(self, request):
        return _act(self, request, services.pause_rollout)


class RolloutResumeView(ActsOnScope, APIView):
    role_rules = {"POST": OPERATOR}

    @_schema(
        "Resume a paused rollout",
        "The current wave's bake time counts from now, and so do the hits the health gate "
        "judges. A halted rollout cannot be resumed: it already put every agent back on the "
        "previous content; publish again instead.",
    )
    def post(self, request):
        return _act(self, request, services.resume_rollout)


class RolloutAbortView(ActsOnScope, APIView):
    role_rules = {"POST": OPERATOR}

    @_schema(
        "Abort the rollout",
        "Every agent goes back to the previous version's content at once: a new version "
        "carrying that content is published, as a rollback does (workers refuse older version "
        "numbers). The history shows it as a rollback, the audit log as the rollout's abort. "
        "Like a rollback it needs no approval while CONFIG_APPROVALS_REQUIRED is on: its audit "
        "entry says it bypassed approval, and why that is allowed.",
    )
    def post(self, request):
        return _act(self, request, actions.abort_rollout)
