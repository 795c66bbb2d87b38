"""Django settings, read from the environment.

Embedded default (nothing set): SQLite in ``var/`` and a Celery filesystem transport that needs
no server. ``DATABASE_URL=postgres://...`` switches to PostgreSQL (psycopg 3) and
``REDIS_URL=redis://...`` to a Redis broker and result backend. ``DJANGO_ENV=production``
turns DEBUG off and requires ``DJANGO_SECRET_KEY``.
"""

from __future__ import annotations

import os
from pathlib import Path

from config.env import ImproperlyConfiguredEnv, database_from_url, env_bool, env_int, env_list

BASE_DIR = Path(__file__).resolve().parent.parent
# A checkout keeps templates/ and static/ beside the packages (and var/ for data); an installed
# wheel carries templates and static in config/assets/ and keeps its data in ./var.
CHECKOUT = (BASE_DIR / "manage.py").is_file()
ASSETS_DIR = BASE_DIR if CHECKOUT else Path(__file__).resolve().parent / "assets"
VAR_DIR = Path(os.environ.get("RLHF_VAR_DIR") or (BASE_DIR if CHECKOUT else Path.cwd()) / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

DJANGO_ENV = os.environ.get("DJANGO_ENV", "development")
if DJANGO_ENV not in {"development", "production"}:
    raise ImproperlyConfiguredEnv(f"DJANGO_ENV={DJANGO_ENV!r}: use development or production")
PRODUCTION = DJANGO_ENV == "production"

DEVELOPMENT_SECRET_KEY = "development-only-insecure-key-do-not-use-in-production"
# Keys anyone can read in this repository: the development default and deploy/env.example's.
PUBLIC_SECRET_KEYS = frozenset({DEVELOPMENT_SECRET_KEY, "change-me-to-50-random-characters"})
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if PRODUCTION and not SECRET_KEY:
    raise ImproperlyConfiguredEnv("DJANGO_SECRET_KEY must be set when DJANGO_ENV=production")
if PRODUCTION and SECRET_KEY in PUBLIC_SECRET_KEYS:
    raise ImproperlyConfiguredEnv(
        "DJANGO_SECRET_KEY is a key published in this repository: set a random one, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
SECRET_KEY = SECRET_KEY or DEVELOPMENT_SECRET_KEY

DEBUG = env_bool("DJANGO_DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# Reverse proxies whose X-Forwarded-For/-Proto are believed (config/proxy.py); nobody else's.
TRUSTED_PROXIES = env_list("DJANGO_TRUSTED_PROXIES", [])
# "auto": cookies are Secure on TLS requests (direct or through a trusted proxy), plain HTTP still
# works; "required": plain HTTP is redirected to HTTPS and cookies are always Secure.
HTTPS = os.environ.get("DJANGO_HTTPS", "auto")
if HTTPS not in {"auto", "required"}:
    raise ImproperlyConfiguredEnv(f"DJANGO_HTTPS={HTTPS!r}: use auto or required")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # API tokens (hashed, expiring, revocable) and the first-login password rule. DRF's
    # rest_framework.authtoken is gone: accounts' migration 0002 moved its keys, hashed.
    "accounts",
    "annotation",
    "training",
]

DASHBOARD_PANELS: dict[str, list[str]] = {
    # What the training app adds to the annotation dashboard's pages (config/dashboard.py).
    "campaign": ["training.dashboard.panels.campaign"],
    "campaign_import": ["training.dashboard.panels.campaign_import"],
    "review_task": ["training.dashboard.panels.review_task"],
}

MIDDLEWARE = [
    "config.proxy.ProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files from gunicorn itself, compressed and with far-future caching of hashed names.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.unavailable.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # An invited account goes nowhere but the password change until it has chosen its own.
    "accounts.middleware.PasswordChangeRequiredMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [ASSETS_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "config.proxy.transport",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(os.environ.get("DATABASE_URL"), sqlite_path=VAR_DIR / "db.sqlite3")
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "config.login_limits.RateLimitedModelBackend",
    # Object permissions from team and campaign roles (annotation/permissions.py).
    "annotation.permissions.RoleBackend",
]
# Failed logins for one username from one address before a lockout, failed logins from one
# address whatever the usernames before that address is locked out, and the window and the
# lockout's length (config/login_limits.py).
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("LOGIN_MAX_FAILURES_PER_ADDRESS", 20)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 15 * 60)
# How long an API token lives (accounts/services.py).
API_TOKEN_TTL_SECONDS = env_int("API_TOKEN_TTL_SECONDS", 30 * 24 * 60 * 60)
# Email (SMTP). Password reset by email exists only when EMAIL_HOST is set (accounts/views.py).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)
if EMAIL_USE_SSL and EMAIL_USE_TLS:
    raise ImproperlyConfiguredEnv("EMAIL_USE_SSL and EMAIL_USE_TLS: set one of them, not both")
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "webmaster@localhost")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [ASSETS_DIR / "static"]
# Collected at image build time, beside the code (never in the data volume, where an upgrade
# would keep serving the old files).
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production serves collected files under content-hashed names (cached for a year) with
    # gzip/brotli twins; development serves the sources as they are.
    "staticfiles": {
        "BACKEND": "config.static.Storage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Development and tests serve the sources through the same middleware, looked up per request.
WHITENOISE_USE_FINDERS = WHITENOISE_AUTOREFRESH = not PRODUCTION

# Uploads: imports stream through a temporary file; the import service enforces its own limits.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "annotation.api.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON bodies within limits of size and depth, with text the database stores (400 if not).
    "DEFAULT_PARSER_CLASSES": [
        "annotation.api.parsers.LimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "EXCEPTION_HANDLER": "annotation.api.exceptions.exception_handler",
}
# Debug pages (DEBUG is on in development) mask broker, cache and database URLs and any URL's
# password, besides Django's API|TOKEN|KEY|SECRET|PASS|SIGNATURE names.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.debug.SecretsExceptionReporterFilter"
SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF annotation API",
    "DESCRIPTION": "Ranking campaigns, task assignment, rankings and training jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "OAS_VERSION": "3.1.0",
    # The enums, then the error answers every operation can give (annotation/api/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "annotation.api.schema.add_error_responses",
        "annotation.api.schema.nullable_as_any_of",
    ],
    # Swagger UI from our own static files (drf-spectacular-sidecar), not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "CampaignStatusEnum": "annotation.models.Campaign.Status",
        "AssignmentStatusEnum": "annotation.models.Assignment.Status",
        "TrainingJobKindEnum": "training.models.TrainingJob.Kind",
        "TrainingJobStatusEnum": "training.models.TrainingJob.Status",
        "ModelVersionKindEnum": "training.models.ModelVersion.Kind",
    },
}

# --- Annotation -------------------------------------------------------------------------------
# How long a labeller holds a task before it returns to the pool.
ASSIGNMENT_LEASE_SECONDS = env_int("ASSIGNMENT_LEASE_SECONDS", 30 * 60)
# How often the Celery beat job sweeps expired leases.
LEASE_SWEEP_SECONDS = env_int("LEASE_SWEEP_SECONDS", 60)
# Import limits: a file larger than this is refused before parsing.
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 50 * 1024 * 1024)
IMPORT_MAX_TEXT_CHARS = env_int("IMPORT_MAX_TEXT_CHARS", 50_000)
# Uploads larger than this are imported by a worker (default queue), not in the web request.
IMPORT_BACKGROUND_BYTES = env_int("IMPORT_BACKGROUND_BYTES", 2 * 1024 * 1024)

# --- Cache (login limits; shared between web processes when Redis is there) ---------------------
if os.environ.get("REDIS_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
            "KEY_PREFIX": "rlhf",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery -----------------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_QUEUE_DIR = VAR_DIR / "celery"
# A training job's time limit (soft; the hard one is 5 minutes later).
TRAINING_JOB_TIME_LIMIT_SECONDS = env_int("TRAINING_JOB_TIME_LIMIT_SECONDS", 12 * 60 * 60)
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
        # A task a dead worker held comes back after this long (acks_late + visibility timeout).
        # Above the job time limit, so a job that runs long is not handed to a second worker
        # while the first still runs (the claim would drop that delivery anyway: its heartbeat
        # is fresh).
        "visibility_timeout": env_int(
            "CELERY_VISIBILITY_TIMEOUT", TRAINING_JOB_TIME_LIMIT_SECONDS + 60 * 60
        ),
        # A broker that does not answer fails a publish in seconds (the job waits in the
        # outbox), not after the client's retries.
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }
else:
    for sub in ("out", "processed", "results", "control"):
        (CELERY_QUEUE_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_QUEUE_DIR / "out"),
        "data_folder_out": str(CELERY_QUEUE_DIR / "out"),
        "processed_folder": str(CELERY_QUEUE_DIR / "processed"),
        "store_processed": False,
        # The exchange tables (kombu's default is ./control, wherever the process started).
        "control_folder": str(CELERY_QUEUE_DIR / "control"),
    }
    CELERY_RESULT_BACKEND = f"file://{CELERY_QUEUE_DIR / 'results'}"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE = {
    "expire-leases": {
        "task": "annotation.tasks.expire_leases",
        "schedule": float(LEASE_SWEEP_SECONDS),
        "options": {"queue": "default", "expires": float(LEASE_SWEEP_SECONDS)},
    },
    "fail-stale-training-jobs": {
        "task": "training.maintenance.fail_stale_jobs",
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 60.0},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Training ---------------------------------------------------------------------------------
MODEL_STORE_DIR = Path(os.environ.get("MODEL_STORE_DIR", VAR_DIR / "models"))
# An object store for published models (training/ml/model_store.py), e.g. s3://bucket/models
# (the s3fs package and AWS_* variables; AWS_ENDPOINT_URL for MinIO): a job's model is uploaded
# there and registered by URL; workers load it through a cache in MODEL_STORE_DIR/cache.
MODEL_STORE_URL = os.environ.get("MODEL_STORE_URL", "").rstrip("/")
# The model a reward model or the first policy starts from when the admin names none: the
# tiny local model built by `manage.py build_tiny_model` (any HF id or directory works).
DEFAULT_BASE_MODEL = os.environ.get("DEFAULT_BASE_MODEL", str(MODEL_STORE_DIR / "tiny-base"))
# Experiment trackers a training job may report to (its `trackers`): TensorBoard event files and
# the local MLflow file store under TRACKING_DIR in the model store, unless MLFLOW_TRACKING_URI
# names a server; Weights & Biases offline (files to `wandb sync`) unless WANDB_MODE=online.
TRACKING_DIR = Path(os.environ.get("TRACKING_DIR", MODEL_STORE_DIR / "runs"))
MLFLOW_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or None
WANDB_PROJECT = os.environ.get("WANDB_PROJECT", "rlhf-annotate")
WANDB_MODE = os.environ.get("WANDB_MODE", "offline")
# Publishing to the Hugging Face Hub (`manage.py publish_to_hub`): the token (or a file holding
# it) and, for a self-hosted or mirror Hub, its address.
HF_HUB_TOKEN = os.environ.get("HF_HUB_TOKEN") or (
    Path(os.environ["HF_HUB_TOKEN_FILE"]).read_text().strip()
    if os.environ.get("HF_HUB_TOKEN_FILE")
    else None
)
HF_HUB_ENDPOINT = os.environ.get("HF_HUB_ENDPOINT") or None
TRAINING_HEARTBEAT_SECONDS = env_int("TRAINING_HEARTBEAT_SECONDS", 30)
# A running job with no heartbeat for this long is marked failed (its worker died).
TRAINING_HEARTBEAT_TIMEOUT_SECONDS = env_int("TRAINING_HEARTBEAT_TIMEOUT_SECONDS", 300)
# A job whose worker died is run again when Celery redelivers it, this many times: from its
# last checkpoint when its config saves them (`checkpoint_every`), else from scratch.
TRAINING_MAX_ATTEMPTS = env_int("TRAINING_MAX_ATTEMPTS", 2)
# What a gpu worker has, for the preflight that refuses jobs that cannot fit: the GPUs a job
# with `gpus: 0` (all visible) gets, and the memory of each in GB (0: no check, e.g. a CPU
# worker). A job asking for more GPUs than this is refused too.
TRAINING_GPUS_PER_WORKER = env_int("TRAINING_GPUS_PER_WORKER", 1)
TRAINING_GPU_MEMORY_GB = float(os.environ.get("TRAINING_GPU_MEMORY_GB", "80"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# HTTPS: see config/proxy.py. Forwarded headers reach Django only from TRUSTED_PROXIES.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS: list[str] = []
if HTTPS == "required":
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes talk plain HTTP to the container
else:
    # Cookies are Secure exactly on TLS requests (config.proxy.ProxyMiddleware), so these
    # deploy checks, which look only at the global settings, do not apply.
    SILENCED_SYSTEM_CHECKS += ["security.W008", "security.W012", "security.W016"]
if PRODUCTION:
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 60 * 60 * 24 * 30)  # on TLS responses
    # includeSubDomains and preload reach beyond this site (preload asks browsers to hard-code
    # HTTPS for the whole domain, for months after it is withdrawn): a choice for the domain's
    # owner, so both are off unless set. check --deploy's advice to set them is silenced.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", default=False)
    SILENCED_SYSTEM_CHECKS += ["security.W005", "security.W021"]
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"
