"""Deployment: export a run to ONNX (fp32, int8), run the exported file, serve either over HTTP.

``onnx_model`` runs an exported file with onnxruntime and NumPy alone, so a user (or a
server) can check and use it without torch; ``export`` and ``serve`` build on it.
"""
