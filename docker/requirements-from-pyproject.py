#!/usr/bin/env python3
"""Print a project's requirements (its dependencies plus the named extras), one a line.

The images install the dependencies from pyproject.toml in their own cached layer, before
the application code is copied, so that editing app/ does not reinstall them. The export
stage gets the project's dependencies too: model_export writes the model card with
model_card (pydantic).

    requirements-from-pyproject pyproject.toml cpu > requirements.txt
"""

import sys
import tomllib


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: {argv[0]} PYPROJECT [EXTRA ...]", file=sys.stderr)
        return 2
    with open(argv[1], "rb") as file:
        project = tomllib.load(file)["project"]
    extras = project.get("optional-dependencies", {})
    names = argv[2:]
    unknown = [name for name in names if name not in extras]
    if unknown:
        print(f"unknown extra(s) {unknown}; {argv[1]} defines {sorted(extras)}", file=sys.stderr)
        return 2
    requirements = list(project["dependencies"])
    for name in names:
        requirements += extras[name]
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
