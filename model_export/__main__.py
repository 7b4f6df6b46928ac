"""``python -m model_export``: the same commands as the ``model-export`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
