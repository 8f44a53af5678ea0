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
    # zh-CN wording of the default message (the docstring). Every class has one, and every specific message is
    # raised with its own ``message_zh``: the official SDK asks for zh-CN by default, and one response must not
    # mix languages (tests/unit/test_error_language.py walks every class and every raise site).
    message_zh: ClassVar[str | None] = None

    def __init__(self, message: str | None = None, *, message_zh: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self._message_zh = message_zh
        super().__init__(self.message)

    def localized(self, language: str) -> str:
        """The message in ``language`` (``en-US`` or ``zh-CN``).

        A specific message without Chinese wording falls back to the class's Chinese default rather than
        English: less precise, but in the language the client asked for.
        """
        if language == "zh-CN":
            return self._message_zh or self.message_zh or self.message
        return self.message


# --- common errors (docs/protocol.md#error-codes) -------------------------------------------------------------


class InternalError(ApiError):
    """An internal error occurred. Please retry later; if it persists, report the RequestId."""

    code = "InternalError"
    message_zh = "内部错误，请稍后重试；如持续出现，请提供 RequestId。"


class DBOperationError(InternalError):
    """A database operation failed. Please retry later."""

    code = "InternalError.DBOperationError"
    message_zh = "数据库操作失败，请稍后重试。"


class AuthFailure(ApiError):
    """Authentication failed."""

    code = "AuthFailure"
    message_zh = "鉴权失败。"


class InvalidAuthorization(AuthFailure):
    """The Authorization header does not follow the TC3-HMAC-SHA256 format."""

    code = "AuthFailure.InvalidAuthorization"
    message_zh = "Authorization 头部不符合 TC3-HMAC-SHA256 格式。"


class InvalidSecretId(AuthFailure):
    """The SecretId is not a valid key id."""

    code = "AuthFailure.InvalidSecretId"
    message_zh = "SecretId 不是有效的密钥 ID。"


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
    message_zh = "临时凭证 Token 无效。"


class UnauthorizedOperation(ApiError):
    """The operation is not authorized."""

    code = "UnauthorizedOperation"
    message_zh = "未授权的操作。"


class FailedOperation(ApiError):
    """The operation failed."""

    code = "FailedOperation"
    message_zh = "操作失败。"


class InvalidAction(ApiError):
    """The action does not exist."""

    code = "InvalidAction"
    message_zh = "接口不存在。"


class InvalidParameter(ApiError):
    """A parameter has the wrong format or type."""

    code = "InvalidParameter"
    message_zh = "参数格式或类型错误。"


class InvalidParameterValue(ApiError):
    """A parameter value is out of range or illegal."""

    code = "InvalidParameterValue"
    message_zh = "参数取值超出范围或不合法。"


class InvalidRequest(ApiError):
    """The request body could not be read."""

    code = "InvalidRequest"
    message_zh = "无法读取请求体。"


class LimitExceeded(ApiError):
    """A quota was exceeded."""

    code = "LimitExceeded"
    message_zh = "超过配额限制。"


class MissingParameter(ApiError):
    """A required parameter is missing."""

    code = "MissingParameter"
    message_zh = "缺少必需参数。"


class NoSuchVersion(ApiError):
    """The API version does not exist. This service implements iotcloud version 2018-06-14."""

    code = "NoSuchVersion"
    message_zh = "接口版本不存在。本服务实现的是 iotcloud 2018-06-14 版本。"


class RequestLimitExceeded(ApiError):
    """Too many requests: the rate limit for this action and SecretId was exceeded. Please retry later."""

    code = "RequestLimitExceeded"
    message_zh = "请求频率超过限制，请稍后重试。"


class RequestSizeLimitExceeded(ApiError):
    """The request is too large."""

    code = "RequestSizeLimitExceeded"
    message_zh = "请求包过大。"


class ResourceNotFound(ApiError):
    """The resource does not exist."""

    code = "ResourceNotFound"
    message_zh = "资源不存在。"


class ServiceUnavailable(ApiError):
    """The service is temporarily unavailable. Please retry later."""

    code = "ServiceUnavailable"
    message_zh = "服务暂时不可用，请稍后重试。"


class UnknownParameter(ApiError):
    """A parameter is not defined for this action."""

    code = "UnknownParameter"
    message_zh = "该接口未定义此参数。"


class UnsupportedOperation(ApiError):
    """The operation is not supported."""

    code = "UnsupportedOperation"
    message_zh = "不支持该操作。"


class UnsupportedProtocol(ApiError):
    """Only the HTTP methods GET and POST are supported."""

    code = "UnsupportedProtocol"
    message_zh = "仅支持 GET 和 POST 请求方法。"


# --- iotcloud business errors (docs/protocol.md#error-codes) --------------------------------------------


class AsyncTaskAlreadyStarted(FailedOperation):
    """The task has already started, finished or been cancelled; only a waiting task can be cancelled."""

    code = "FailedOperation.AsyncTaskAlreadyStarted"
    message_zh = "任务已开始、已结束或已取消；只有等待中的任务可以取消。"


class TaskAlreadyEnded(FailedOperation):
    """The task has ended already (completed, failed or cancelled): there is nothing to stop."""

    # StopTask's error (a fleetops extension, docs/extensions.md#stop): the vendor's plain FailedOperation,
    # which every iotcloud action may return, so no client meets an unknown code.
    code = "FailedOperation"
    message_zh = "任务已经结束（已完成、失败或已取消）：无可停止。"


class UpdateVersionNotMatch(FailedOperation):
    """The ShadowVersion does not match the shadow's current version."""

    code = "FailedOperation.UpdateVersionNotMatch"
    message_zh = "ShadowVersion 与影子当前版本不一致。"


class InvalidTopicName(FailedOperation):
    """The topic is not a topic of this device."""

    code = "FailedOperation.InvalidTopicName"
    message_zh = "该 Topic 不属于此设备。"


class InvalidMsgLen(FailedOperation):
    """The message length is illegal."""

    code = "FailedOperation.InvalidMsgLen"
    message_zh = "消息长度不合法。"


class DeviceAlreadyDisabled(FailedOperation):
    """The device is disabled."""

    code = "FailedOperation.DeviceAlreadyDisabled"
    message_zh = "设备已被禁用。"


class DeviceOffline(FailedOperation):
    """The device is offline."""

    code = "FailedOperation.DeviceOffline"
    message_zh = "设备不在线。"


class DeviceNoSubscription(FailedOperation):
    """The device has not subscribed to the topic."""

    code = "FailedOperation.DeviceNoSubscription"
    message_zh = "设备未订阅该 Topic。"


class ProductAlreadyExist(InvalidParameterValue):
    """A product with this name already exists."""

    code = "InvalidParameterValue.ProductAlreadyExist"
    message_zh = "同名产品已存在。"


class ProductTypeNotSupport(InvalidParameterValue):
    """The product type is not supported."""

    code = "InvalidParameterValue.ProductTypeNotSupport"
    message_zh = "不支持该产品类型。"


class DeviceAlreadyExist(InvalidParameterValue):
    """A device with this name already exists in the product."""

    code = "InvalidParameterValue.DeviceAlreadyExist"
    message_zh = "该产品下已存在同名设备。"


class DefinedPskNotBase64(InvalidParameterValue):
    """DefinedPsk is not valid Base64."""

    code = "InvalidParameterValue.DefinedPskNotBase64"
    message_zh = "DefinedPsk 不是合法的 Base64。"


class InvalidJSON(InvalidParameterValue):
    """The JSON document is not valid."""

    code = "InvalidParameterValue.InvalidJSON"
    message_zh = "JSON 文档不合法。"


class JSONHasInvalidNode(InvalidParameterValue):
    """The State contains an illegal node."""

    code = "InvalidParameterValue.JSONHasInvalidNode"
    message_zh = "State 中包含非法节点。"


class JSONSizeExceedLimit(InvalidParameterValue):
    """The State is too large (at most 8192 bytes)."""

    code = "InvalidParameterValue.JSONSizeExceedLimit"
    message_zh = "State 过大（最多 8192 字节）。"


class JSONLevelExceedLimit(InvalidParameterValue):
    """The State is nested too deeply (at most 6 levels)."""

    code = "InvalidParameterValue.JSONLevelExceedLimit"
    message_zh = "State 嵌套层级过深（最多 6 层）。"


class ParamIncomplete(InvalidParameterValue):
    """Required information is missing."""

    code = "InvalidParameterValue.ParamIncomplete"
    message_zh = "缺少必要信息。"


class PrefixInvalid(InvalidParameterValue):
    """Prefix must be $shadow or $template."""

    code = "InvalidParameterValue.PrefixInvalid"
    message_zh = "Prefix 必须为 $shadow 或 $template。"


class PayloadOverLimit(InvalidParameterValue):
    """The payload is too large."""

    code = "InvalidParameterValue.PayloadOverLimit"
    message_zh = "消息内容过大。"


class OfflineMessageExceedLimit(LimitExceeded):
    """The device's offline message queue is full (150 QoS 1 messages)."""

    code = "LimitExceeded.OfflineMessageExceedLimit"
    message_zh = "设备的离线消息队列已满（150 条 QoS 1 消息）。"


class PengingOrProcessingTasksExceedLimit(LimitExceeded):
    """Too many tasks are waiting or processing for this account."""

    # "Penging" is the vendor's own spelling of the code; clients match on it, so it is kept.
    code = "LimitExceeded.PengingOrProcessingTasksExceedLimit"
    message_zh = "该账号下等待中或执行中的任务过多。"


class ProductExceedLimit(LimitExceeded):
    """The account has reached its product limit."""

    code = "LimitExceeded.ProductExceedLimit"
    message_zh = "账号的产品数量已达上限。"


class DeviceExceedLimit(LimitExceeded):
    """The product has reached its device limit."""

    code = "LimitExceeded.DeviceExceedLimit"
    message_zh = "产品的设备数量已达上限。"


class ProductNotExist(ResourceNotFound):
    """The product does not exist."""

    code = "ResourceNotFound.ProductNotExist"
    message_zh = "产品不存在。"


class DeviceNotExist(ResourceNotFound):
    """The device does not exist."""

    code = "ResourceNotFound.DeviceNotExist"
    message_zh = "设备不存在。"


class ProductOrDeviceNotExist(ResourceNotFound):
    """The product or device does not exist."""

    code = "ResourceNotFound.ProductOrDeviceNotExist"
    message_zh = "产品或设备不存在。"


class TaskNotExist(ResourceNotFound):
    """The task does not exist."""

    code = "ResourceNotFound.TaskNotExist"
    message_zh = "任务不存在。"


class DevicesExistUnderProduct(UnauthorizedOperation):
    """The product still has devices; delete them first."""

    code = "UnauthorizedOperation.DevicesExistUnderProduct"
    message_zh = "产品下仍有设备，请先删除设备。"


class DeviceIsNotEnabled(UnauthorizedOperation):
    """The device is not enabled."""

    code = "UnauthorizedOperation.DeviceIsNotEnabled"
    message_zh = "设备未启用。"


# --- not API errors ------------------------------------------------------------------------------------


class ConfigurationError(FleetopsError):
    """The configuration is invalid."""


class InvalidTaskTransition(FleetopsError):
    """The task cannot make this status change (for example completing a task that was cancelled)."""


class BrokerUnavailable(FleetopsError):
    """The MQTT broker cannot be reached right now."""
