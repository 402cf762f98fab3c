"""An OpenFeature provider, so services can use the standard API (``pip install openfeature-sdk``).

from openfeature import api
api.set_provider(ReconcilerProvider(FlagClient(SQLiteSource(".reconciler/state.db"))))
api.get_client().get_boolean_value("vc_bedrock_live", False, EvaluationContext("user-7"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import (
    FlagNotFoundError,
    GeneralError,
    ProviderNotReadyError,
    TargetingKeyMissingError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.flag_evaluation import Reason as OpenFeatureReason
from openfeature.provider import AbstractProvider, Metadata

from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Decision, ErrorCode, Reason
from reconciler.runtime.evaluate import UNIT_ATTRIBUTE

T = TypeVar("T")

REASONS = {
    Reason.TARGETING_MATCH: OpenFeatureReason.TARGETING_MATCH,
    Reason.TARGETING_NO_MATCH: OpenFeatureReason.DEFAULT,
    Reason.ROLLOUT_IN: OpenFeatureReason.SPLIT,
    Reason.ROLLOUT_OUT: OpenFeatureReason.SPLIT,
    Reason.COST_THROTTLED: OpenFeatureReason.SPLIT,
    Reason.EXPERIMENT_ASSIGNED: OpenFeatureReason.SPLIT,
    Reason.EXPERIMENT_EXCLUDED: OpenFeatureReason.DEFAULT,
    Reason.EXPERIMENT_CONCLUDED: OpenFeatureReason.STATIC,
    Reason.DEFAULT: OpenFeatureReason.STATIC,
    Reason.DISABLED: OpenFeatureReason.DISABLED,
    Reason.EMERGENCY_SHUTDOWN: OpenFeatureReason.DISABLED,
    Reason.COST_EMERGENCY: OpenFeatureReason.DISABLED,
    Reason.ERROR: OpenFeatureReason.ERROR,
}


class ReconcilerProvider(AbstractProvider):
    """Resolves OpenFeature evaluations with a ``FlagClient``'s snapshot."""

    def __init__(self, client: FlagClient) -> None:
        self.client = client

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Wait (a few seconds at most) for the client's first load, so that
        ``set_provider_and_wait`` returns with flags to evaluate."""
        self.client.wait_until_ready()

    def get_metadata(self) -> Metadata:
        return Metadata(name="ai-flag-reconciler")

    def shutdown(self) -> None:
        self.client.close()

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        decision = self._decide(flag_key, evaluation_context, "boolean")
        return self._details(decision, decision.enabled)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._typed(flag_key, default_value, evaluation_context, "string")

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._typed(flag_key, default_value, evaluation_context, "number")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._typed(flag_key, default_value, evaluation_context, "number")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        decision = self._decide(flag_key, evaluation_context, None)
        if not decision.enabled:
            return self._details(decision, default_value)
        value = decision.variant_config if decision.variant else decision.value
        if not isinstance(value, Mapping | list):
            raise TypeMismatchError(f"{flag_key} is not a json flag")
        return self._details(decision, value)

    def _typed(
        self, key: str, default: T, context: EvaluationContext | None, flag_type: str
    ) -> FlagResolutionDetails[T]:
        decision = self._decide(key, context, flag_type)
        if not decision.enabled:
            return self._details(decision, default)
        value = decision.value
        if flag_type == "number" and isinstance(default, int) and isinstance(value, float):
            value = int(value) if value.is_integer() else value
        if isinstance(value, bool) or not isinstance(value, type(default)):
            raise TypeMismatchError(
                f"{key} holds {type(value).__name__}, not {type(default).__name__}"
            )
        return self._details(decision, value)

    def _decide(
        self, key: str, context: EvaluationContext | None, flag_type: str | None
    ) -> Decision:
        attributes: dict[str, Any] = dict(context.attributes) if context else {}
        if context is not None and context.targeting_key:
            attributes[UNIT_ATTRIBUTE] = context.targeting_key
        snapshot = self.client.snapshot
        if snapshot is None:
            raise ProviderNotReadyError("no flag snapshot yet")
        flag = snapshot.flags.get(key)
        if flag is None:
            raise FlagNotFoundError(f"no flag {key}")
        if flag_type is not None and flag.flag_type != flag_type:
            raise TypeMismatchError(f"{key} is a {flag.flag_type} flag")
        decision = self.client.decide(key, attributes)
        if decision.error_code is ErrorCode.TARGETING_KEY_MISSING:
            raise TargetingKeyMissingError("this flag rolls out by user: set a targeting key")
        if decision.error_code is not None:
            raise GeneralError(decision.detail or decision.error_code.value)
        return decision

    @staticmethod
    def _details(decision: Decision, value: T) -> FlagResolutionDetails[T]:
        metadata: dict[str, str | bool] = {"reason": decision.reason.value}
        for key in ("matched_rule", "experiment", "snapshot_version"):
            found = getattr(decision, key)
            if found:
                metadata[key] = found
        return FlagResolutionDetails(
            value=value,
            reason=REASONS[decision.reason],
            variant=decision.variant or ("on" if decision.enabled else "off"),
            flag_metadata=metadata,
        )
