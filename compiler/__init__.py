"""ONNX export in the `dcpnas` schema, ONNX -> TVM Relax import, binary kernels, build, artifacts, parity."""
