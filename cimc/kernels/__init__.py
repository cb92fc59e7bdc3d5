"""Pure-numpy reference kernels for ONNX ops: the oracle every compiler pass is checked against."""
