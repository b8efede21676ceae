"""onnx's own full checker (with shape inference) on exported models; prints what it checked."""
import sys

import onnx

for path in sys.argv[1:]:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta.get("medpatch.format_version") == "1", meta
    print(f"onnx.checker full_check passed: {path} (opset {model.opset_import[0].version}, {len(model.graph.node)} nodes)")
