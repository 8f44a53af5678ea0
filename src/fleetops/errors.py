"""The error tree.

Every error a client can see is a subclass of :class:`ApiError` and carries the Tencent Cloud error code it is
rendered with (``code``). The class docstring is the default English message; an instance may carry a more
specific message that names the parameter and says what is expected. The wire rendering lives in one place
(``fleetops.api.envelope``). Anything that is not an ``ApiError`` becomes ``InternalError`` there.

Codes are copied from the vendor verbatim, misspellings included (``PengingOrProcessingTasksExceedLimit``,
``UserNotAuthenticaed``): clients match on them.
"""

from __future__ import annotations

from typing import ClassVar


class FleetopsError(Exception):
    """Base class of every error raised on purpose by fleetops."""


class ApiError(FleetopsError):
    """An error rendered to an API client as ``{"Error": {"Code", "Message"}}``."""

    code: ClassVar[str] = "InternalError"
    # zh-CN wording for the default message; specific messages are rendered as given.
    message_zh: ClassVar[str | None] = None

    def __init__(self, message: str | None = None, *, message_zh: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self._message_zh = message_zh
        super().__init__(self.message)

    def localized(self, language: str) -> str:
        """The message in ``language`` (``en-US`` or ``zh-CN``)."""
        if language == "zh-CN":
            if self._message_zh:
                return self._message_zh
            if self.message_zh and self.message == (self.__doc__ or "").strip():
                return self.message_zh
        return self.message


# --- common errors (cloud-api.md section 8) -------------------------------------------------------------


class InternalError(ApiError):
    """An internal error occurred. Please retry later; if it persists, report the RequestId."""

    code = "InternalError"
    message_zh = "内部错误，请稍后重试；如持续出现，请提供 RequestId。"


class DBOperationError(InternalError):
    """A database operation failed. Please retry later."""

    code = "InternalError.DBOperationError"


class AuthFailure(ApiError):
    """Authentication failed."""

    code = "AuthFailure"


class InvalidAuthorization(AuthFailure):
    """The Authorization header does not follow the TC3-HMAC-SHA256 format."""

    code = "AuthFailure.InvalidAuthorization"


class InvalidSecretId(AuthFailure):
    """The SecretId is not a valid key id."""

    code = "AuthFailure.InvalidSecretId"


class SecretIdNotFound(AuthFailure):
    """The SecretId does not exist or has been disabled."""

    code = "AuthFailure.SecretIdNotFound"
    message_zh = "密钥不存在或已被禁用。"


class SignatureExpire(AuthFailure):
    """The request timestamp differs from the server time by more than 300 seconds."""

    code = "AuthFailure.SignatureExpire"
    message_zh = "签名过期，请求时间戳与服务器时间相差超过 300 秒。"


class SignatureFailure(AuthFailure):
    """The provided credentials could not be validated. Please check your signature is correct."""

    code = "AuthFailure.SignatureFailure"
    message_zh = "签名校验失败，请检查签名是否正确。"


class TokenFailure(AuthFailure):
    """The temporary-credential token is invalid."""

    code = "AuthFailure.TokenFailure"


class UnauthorizedOperation(ApiError):
    """The operation is not authorized."""

    code = "UnauthorizedOperation"


class FailedOperation(ApiError):
    """The operation failed."""

    code = "FailedOperation"


class InvalidAction(ApiError):
    """The action does not exist."""

    code = "InvalidAction"


class InvalidParameter(ApiError):
    """A parameter has the wrong format or type."""

    code = "InvalidParameter"


class InvalidParameterValue(ApiError):
    """A parameter value is out of range or illegal."""

    code = "InvalidParameterValue"


class InvalidRequest(ApiError):
    """The request body could not be read."""

    code = "InvalidRequest"


class LimitExceeded(ApiError):
    """A quota was exceeded."""

    code = "LimitExceeded"


class MissingParameter(ApiError):
    """A required parameter is missing."""

    code = "MissingParameter"


class NoSuchVersion(ApiError):
    """The API version does not exist. This service implements iotcloud version 2018-06-14."""

    code = "NoSuchVersion"


class RequestLimitExceeded(ApiError):
    """Too many requests: the rate limit for this action and SecretId was exceeded. Please retry later."""

    code = "RequestLimitExceeded"
    message_zh = "请求频率超过限制，请稍后重试。"


class RequestSizeLimitExceeded(ApiError):
    """The request is too large."""

    code = "RequestSizeLimitExceeded"


class ResourceNotFound(ApiError):
    """The resource does not exist."""

    code = "ResourceNotFound"


class ServiceUnavailable(ApiError):
    """The service is temporarily unavailable. Please retry later."""

    code = "ServiceUnavailable"


class UnknownParameter(ApiError):
    """A parameter is not defined for this action."""

    code = "UnknownParameter"


class UnsupportedOperation(ApiError):
    """The operation is not supported."""

    code = "UnsupportedOperation"


class UnsupportedProtocol(ApiError):
    """Only the HTTP methods GET and POST are supported."""

    code = "UnsupportedProtocol"


# --- iotcloud business errors (iotcloud-actions.md section 7) --------------------------------------------


class AsyncTaskAlreadyStarted(FailedOperation):
    """The task has already started, finished or been cancelled; only a waiting task can be cancelled."""

    code = "FailedOperation.AsyncTaskAlreadyStarted"


class TaskAlreadyEnded(FailedOperation):
    """The task has ended already (completed, failed or cancelled): there is nothing to stop."""

    # StopTask's error (a fleetops extension, docs/extensions.md#stop): the vendor's plain FailedOperation,
    # which every iotcloud action may return, so no client meets an unknown code.
    code = "FailedOperation"


class UpdateVersionNotMatch(FailedOperation):
    """The ShadowVersion does not match the shadow's current version."""

    code = "FailedOperation.UpdateVersionNotMatch"


class InvalidTopicName(FailedOperation):
    """The topic is not a topic of this device."""

    code = "FailedOperation.InvalidTopicName"


class InvalidMsgLen(FailedOperation):
    """The message length is illegal."""

    code = "FailedOperation.InvalidMsgLen"


class DeviceAlreadyDisabled(FailedOperation):
    """The device is disabled."""

    code = "FailedOperation.DeviceAlreadyDisabled"


class DeviceOffline(FailedOperation):
    """The device is offline."""

    code = "FailedOperation.DeviceOffline"


class DeviceNoSubscription(FailedOperation):
    """The device has not subscribed to the topic."""

    code = "FailedOperation.DeviceNoSubscription"


class ProductAlreadyExist(InvalidParameterValue):
    """A product with this name already exists."""

    code = "InvalidParameterValue.ProductAlreadyExist"


class ProductTypeNotSupport(InvalidParameterValue):
    """The product type is not supported."""

    code = "InvalidParameterValue.ProductTypeNotSupport"


class DeviceAlreadyExist(InvalidParameterValue):
    """A device with this name already exists in the product."""

    code = "InvalidParameterValue.DeviceAlreadyExist"


class DefinedPskNotBase64(InvalidParameterValue):
    """DefinedPsk is not valid Base64."""

    code = "InvalidParameterValue.DefinedPskNotBase64"


class InvalidJSON(InvalidParameterValue):
    """The JSON document is not valid."""

    code = "InvalidParameterValue.InvalidJSON"


class JSONHasInvalidNode(InvalidParameterValue):
    """The State contains an illegal node."""

    code = "InvalidParameterValue.JSONHasInvalidNode"


class JSONSizeExceedLimit(InvalidParameterValue):
    """The State is too large (at most 8192 bytes)."""

    code = "InvalidParameterValue.JSONSizeExceedLimit"


class JSONLevelExceedLimit(InvalidParameterValue):
    """The State is nested too deeply (at most 6 levels)."""

    code = "InvalidParameterValue.JSONLevelExceedLimit"


class ParamIncomplete(InvalidParameterValue):
    """Required information is missing."""

    code = "InvalidParameterValue.ParamIncomplete"


class PrefixInvalid(InvalidParameterValue):
    """Prefix must be $shadow or $template."""

    code = "InvalidParameterValue.PrefixInvalid"


class PayloadOverLimit(InvalidParameterValue):
    """The payload is too large."""

    code = "InvalidParameterValue.PayloadOverLimit"


class OfflineMessageExceedLimit(LimitExceeded):
    """The device's offline message queue is full (150 QoS 1 messages)."""

    code = "LimitExceeded.OfflineMessageExceedLimit"


class PengingOrProcessingTasksExceedLimit(LimitExceeded):
    """Too many tasks are waiting or processing for this account."""

    # "Penging" is the vendor's own spelling of the code; clients match on it, so it is kept.
    code = "LimitExceeded.PengingOrProcessingTasksExceedLimit"


class ProductExceedLimit(LimitExceeded):
    """The account has reached its product limit."""

    code = "LimitExceeded.ProductExceedLimit"


class DeviceExceedLimit(LimitExceeded):
    """The product has reached its device limit."""

    code = "LimitExceeded.DeviceExceedLimit"


class ProductNotExist(ResourceNotFound):
    """The product does not exist."""

    code = "ResourceNotFound.ProductNotExist"


class DeviceNotExist(ResourceNotFound):
    """The device does not exist."""

    code = "ResourceNotFound.DeviceNotExist"


class ProductOrDeviceNotExist(ResourceNotFound):
    """The product or device does not exist."""

    code = "ResourceNotFound.ProductOrDeviceNotExist"


class TaskNotExist(ResourceNotFound):
    """The task does not exist."""

    code = "ResourceNotFound.TaskNotExist"


class DevicesExistUnderProduct(UnauthorizedOperation):
    """The product still has devices; delete them first."""

    code = "UnauthorizedOperation.DevicesExistUnderProduct"


class DeviceIsNotEnabled(UnauthorizedOperation):
    """The device is not enabled."""

    code = "UnauthorizedOperation.DeviceIsNotEnabled"


# --- not API errors ------------------------------------------------------------------------------------


class ConfigurationError(FleetopsError):
    """The configuration is invalid."""


class InvalidTaskTransition(FleetopsError):
    """The task cannot make this status change (for example completing a task that was cancelled)."""


class BrokerUnavailable(FleetopsError):
    """The MQTT broker cannot be reached right now."""
