"""The test, benchmark and operations harness: not part of the product; never imported by
app/, model_card/ or model_export/.

What tests/, bench/ and the reliability/ commands share lives here, once: the real-server
process runner (``server``), the shipped nginx configuration rendered for local replicas
(``nginx``), tiny ONNX models built in milliseconds (``tiny_model``), the HTTP load
generator with its one percentile definition (``loadgen``) and the ``/metrics`` reader
(``metrics``).
"""
