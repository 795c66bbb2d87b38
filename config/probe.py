"""``python -m config.probe``: exit 0 when this container's web server is ready to serve.

docker-compose.yml's health check for the web service (the slim image has no curl). It asks
``http://127.0.0.1:$PORT/healthz`` (config/health.py: database, migrations, static files).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
