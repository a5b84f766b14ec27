"""dcpnas: hardware-aware DCP-NAS for 1-bit CNNs, compiled through TVM XNOR-popcount kernels."""

from dcpnas.errors import DcpnasError

__version__ = "0.1.0"
__all__ = ["DcpnasError", "__version__"]
