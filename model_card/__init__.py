"""The model card: the one contract between the export stage and the server.

Both ``model_export`` and ``app`` import this package; it imports neither, and nothing heavier
than pydantic. :func:`load_card` is the only way either stage reads a card.
"""

from model_card.card import (
    CARD_FILENAME,
    CARD_METADATA_KEY,
    SCHEMA_VERSION,
    AccuracyGate,
    CardError,
    ExecutionProvider,
    Explanation,
    GateFigures,
    Interpolation,
    ModelCard,
    Precision,
    Preprocessing,
    TensorSpec,
    Variant,
    card_path_for,
    load_card,
    sha256_file,
    write_card,
)

__all__ = [
    "CARD_FILENAME",
    "CARD_METADATA_KEY",
    "SCHEMA_VERSION",
    "AccuracyGate",
    "CardError",
    "ExecutionProvider",
    "Explanation",
    "GateFigures",
    "Interpolation",
    "ModelCard",
    "Precision",
    "Preprocessing",
    "TensorSpec",
    "Variant",
    "card_path_for",
    "load_card",
    "sha256_file",
    "write_card",
]
