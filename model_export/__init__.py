"""The export stage: train, fine-tune, evaluate and export image classifiers to ONNX with a model card."""
