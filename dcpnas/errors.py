"""The project's exceptions. Library code raises these; only dcpnas.cli prints and exits."""


class DcpnasError(Exception):
    """Base class: a user-actionable error with a one-line message."""


class GenotypeError(DcpnasError):
    """A genotype (JSON, DARTS string or object) is malformed or does not fit the search space."""


class DataError(DcpnasError):
    """A dataset is missing or malformed."""


class ConfigError(DcpnasError):
    """A config file or option is invalid."""


class ArtifactError(DcpnasError):
    """An artifact (JSON, checkpoint, build folder) is missing, malformed or of another schema."""


class TargetError(DcpnasError):
    """An unknown target, or a target file that does not validate."""


class LutError(DcpnasError):
    """A latency table is malformed, or lacks an entry that is asked for."""


class CompileError(DcpnasError):
    """A model cannot be exported, imported or built."""


class ParityError(CompileError):
    """PyTorch, ONNX Runtime and TVM disagree beyond tolerance."""


class DeviceError(DcpnasError):
    """A device (GPU, RPC tracker, board) cannot be reached or used."""
