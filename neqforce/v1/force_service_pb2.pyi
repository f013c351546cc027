from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FP32: _ClassVar[DataType]
    DATA_TYPE_FP64: _ClassVar[DataType]

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_AUTO: _ClassVar[Backend]
    BACKEND_ONNX: _ClassVar[Backend]
    BACKEND_NEGF: _ClassVar[Backend]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FP32: DataType
DATA_TYPE_FP64: DataType
BACKEND_AUTO: Backend
BACKEND_ONNX: Backend
BACKEND_NEGF: Backend

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "raw_contents")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    RAW_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    raw_contents: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., raw_contents: _Optional[bytes] = ...) -> None: ...

class ComputeForcesRequest(_message.Message):
    __slots__ = ("q", "parameters", "backend", "want_density", "model", "request_id", "want_force_std")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    Q_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    WANT_DENSITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WANT_FORCE_STD_FIELD_NUMBER: _ClassVar[int]
    q: Tensor
    parameters: _containers.ScalarMap[str, float]
    backend: Backend
    want_density: bool
    model: str
    request_id: str
    want_force_std: bool
    def __init__(self, q: _Optional[_Union[Tensor, _Mapping]] = ..., parameters: _Optional[_Mapping[str, float]] = ..., backend: _Optional[_Union[Backend, str]] = ..., want_density: _Optional[bool] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., want_force_std: _Optional[bool] = ...) -> None: ...

class ComputeForcesResponse(_message.Message):
    __slots__ = ("force", "density", "backend", "model", "reason", "parameters", "compute_seconds", "request_id", "force_std", "force_std_max", "flagged")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_STD_FIELD_NUMBER: _ClassVar[int]
    FORCE_STD_MAX_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    force: Tensor
    density: Tensor
    backend: Backend
    model: str
    reason: str
    parameters: _containers.ScalarMap[str, float]
    compute_seconds: float
    request_id: str
    force_std: Tensor
    force_std_max: float
    flagged: bool
    def __init__(self, force: _Optional[_Union[Tensor, _Mapping]] = ..., density: _Optional[_Union[Tensor, _Mapping]] = ..., backend: _Optional[_Union[Backend, str]] = ..., model: _Optional[str] = ..., reason: _Optional[str] = ..., parameters: _Optional[_Mapping[str, float]] = ..., compute_seconds: _Optional[float] = ..., request_id: _Optional[str] = ..., force_std: _Optional[_Union[Tensor, _Mapping]] = ..., force_std_max: _Optional[float] = ..., flagged: _Optional[bool] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("backend", "available", "detail", "execution_providers")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    available: bool
    detail: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backend: _Optional[_Union[Backend, str]] = ..., available: _Optional[bool] = ..., detail: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "path", "sha256", "parameters", "descriptor_name", "metrics_json", "dataset_sha256", "model_version", "execution_providers", "domain", "force_std_threshold", "metallic_columns_max", "cdw_remnant")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    FORCE_STD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METALLIC_COLUMNS_MAX_FIELD_NUMBER: _ClassVar[int]
    CDW_REMNANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    sha256: str
    parameters: _containers.ScalarMap[str, float]
    descriptor_name: str
    metrics_json: str
    dataset_sha256: str
    model_version: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    domain: _containers.RepeatedCompositeFieldContainer[ParameterRange]
    force_std_threshold: float
    metallic_columns_max: int
    cdw_remnant: CdwRemnantRule
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., parameters: _Optional[_Mapping[str, float]] = ..., descriptor_name: _Optional[str] = ..., metrics_json: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., model_version: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ..., domain: _Optional[_Iterable[_Union[ParameterRange, _Mapping]]] = ..., force_std_threshold: _Optional[float] = ..., metallic_columns_max: _Optional[int] = ..., cdw_remnant: _Optional[_Union[CdwRemnantRule, _Mapping]] = ...) -> None: ...

class CdwRemnantRule(_message.Message):
    __slots__ = ("metallic_columns_over", "non_metallic_columns_min")
    METALLIC_COLUMNS_OVER_FIELD_NUMBER: _ClassVar[int]
    NON_METALLIC_COLUMNS_MIN_FIELD_NUMBER: _ClassVar[int]
    metallic_columns_over: int
    non_metallic_columns_min: int
    def __init__(self, metallic_columns_over: _Optional[int] = ..., non_metallic_columns_min: _Optional[int] = ...) -> None: ...

class ParameterRange(_message.Message):
    __slots__ = ("name", "min", "max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: float
    max: float
    def __init__(self, name: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_sites", "negf_max_sites", "max_concurrency", "max_queue", "negf_max_work", "stream_idle_timeout_s", "max_abs_q", "max_message_bytes", "negf_concurrency", "negf_max_queue")
    MAX_SITES_FIELD_NUMBER: _ClassVar[int]
    NEGF_MAX_SITES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    NEGF_MAX_WORK_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_Q_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NEGF_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    NEGF_MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_sites: int
    negf_max_sites: int
    max_concurrency: int
    max_queue: int
    negf_max_work: float
    stream_idle_timeout_s: float
    max_abs_q: float
    max_message_bytes: int
    negf_concurrency: int
    negf_max_queue: int
    def __init__(self, max_sites: _Optional[int] = ..., negf_max_sites: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., max_queue: _Optional[int] = ..., negf_max_work: _Optional[float] = ..., stream_idle_timeout_s: _Optional[float] = ..., max_abs_q: _Optional[float] = ..., max_message_bytes: _Optional[int] = ..., negf_concurrency: _Optional[int] = ..., negf_max_queue: _Optional[int] = ...) -> None: ...

class RoutingPolicy(_message.Message):
    __slots__ = ("rtol",)
    RTOL_FIELD_NUMBER: _ClassVar[int]
    rtol: float
    def __init__(self, rtol: _Optional[float] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("name", "version", "api", "backends", "models", "limits", "routing", "default_parameters", "auth_required")
    class DefaultParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    api: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    routing: RoutingPolicy
    default_parameters: _containers.ScalarMap[str, float]
    auth_required: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., api: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., routing: _Optional[_Union[RoutingPolicy, _Mapping]] = ..., default_parameters: _Optional[_Mapping[str, float]] = ..., auth_required: _Optional[bool] = ...) -> None: ...
