"""Container HEALTHCHECK: exit 0 when the server's /readyz answers 200, 1 otherwise.

The images have no curl; Python is there anyway. The port follows IMGSERVE_PORT.
"""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('IMGSERVE_PORT', '8000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "2"))):
        sys.exit(0)
except (urllib.error.URLError, OSError) as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
