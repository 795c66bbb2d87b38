"""Static files in production: WhiteNoise's compressed, content-hashed storage.

``collectstatic`` (run once when the image is built) writes every file under a name with its
content hash plus a gzip twin; gunicorn serves them through WhiteNoise with a year of
caching, so a deployment needs no separate file server and an upgrade can never serve stale
scripts. WhiteNoise was chosen over an nginx container because the tests then exercise the very
path users run (the app serves its own files under gunicorn), and compose has one service fewer
to keep in step with the code.
"""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class Storage(CompressedManifestStaticFilesStorage):
    # The dashboard's ES modules import each other (`import { request } from "./common.js"`):
    # rewrite those imports to the hashed names too, so a page never mixes two versions.
    support_js_module_import_aggregation = True
