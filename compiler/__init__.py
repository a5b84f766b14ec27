"""ONNX export in the `dcpnas` schema, ONNX -> TVM Relax import, binary kernels, build, artifacts, parity.

Entry points: export.export_onnx, onnx_import.import_onnx, build.build_model / build_module_library,
pipeline.compile_genotype, artifact.Artifact. Nothing heavy is imported with the package.
"""


def build_module_library(module, input_shape, target, out_dir):
    """torch module -> ONNX -> TVM library (see dcpnas.compiler.build.build_module_library)."""
    from dcpnas.compiler.build import build_module_library as _b

    return _b(module, input_shape, target, out_dir)
