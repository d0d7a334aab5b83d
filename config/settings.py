"""Leadrelay settings, read from the environment (see .env.example for every variable).

With no environment at all this is the embedded default: SQLite in ./var, the
file-system Celery broker in ./var/broker, demo-friendly hosts. Production sets
DATABASE_URL, CELERY_BROKER_URL, CACHE_URL, SECRET_KEY, ALLOWED_HOSTS and DEBUG=false.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("LEADRELAY_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
env_file = BASE_DIR / ".env"
if env_file.exists():
    environ.Env.read_env(env_file)

# --- core -------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="insecure-dev-key-change-me-in-production-0123456789")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The public base URL partners and buyers use (status URLs, webhook URLs).
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_countries",
    "django_structlog",
    "structures",
    "integrations",
    "pingtree",
    "webhooks",
    "tracking",
] + env.list("EXTRA_INSTALLED_APPS", default=[])

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_structlog.middlewares.RequestMiddleware",
]

ROOT_URLCONF = env.str("ROOT_URLCONF", default="config.urls")
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
SQLITE_URL = f"sqlite:///{VAR_DIR / 'leadrelay.sqlite3'}"
# An empty variable (as in a copied .env.example) means "use the default".
DATABASES = {"default": env.db_url_config(env.str("DATABASE_URL", default="") or SQLITE_URL)}
# Persistent connections: a new PostgreSQL connection per request costs ~5x throughput.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=300)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Server-side binding + a prepare threshold let psycopg prepare the statements a
    # process runs over and over (intake, callbacks), so PostgreSQL plans them once.
    # Behind PgBouncer in transaction mode set DB_PREPARED_STATEMENTS=false.
    if env.bool("DB_PREPARED_STATEMENTS", default=True):
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            server_side_binding=True, prepare_threshold=5
        )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL alone still fails read-then-write transactions under concurrency with
    # "database is locked"; IMMEDIATE transactions take the write lock up front.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache (rate limits, fast counters) ---------------------------------------------------
# Shared between processes: Redis in production; a file cache in the embedded default.
CACHES = {
    "default": env.cache_url_config(
        env.str("CACHE_URL", default="") or f"filecache://{VAR_DIR / 'cache'}"
    )
}

# --- auth / i18n --------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- security -----------------------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None
)
X_FRAME_OPTIONS = "DENY"
# Request bodies above this are refused with 413 before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=256 * 1024)

# --- REST API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_PARSER_CLASSES": ["structures.api.parsers.CappedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "structures.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
API_KEY_CUSTOM_HEADER = "HTTP_AUTHORIZATION"
SPECTACULAR_SETTINGS = {
    "TITLE": "Leadrelay partner API",
    "DESCRIPTION": (
        "Post leads with your API key (`Authorization: Api-Key <key>`), read their "
        "status and outcome."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Celery -------------------------------------------------------------------------------
# Default broker needs no server: a crash-safe file-system transport (config/broker.py).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "leadrelay-fs://"
CELERY_BROKER_FOLDER = Path(env.str("CELERY_BROKER_FOLDER", default="") or VAR_DIR / "broker")
if CELERY_BROKER_URL.startswith("leadrelay-fs"):
    CELERY_BROKER_FOLDER.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_FOLDER),
        "data_folder_out": str(CELERY_BROKER_FOLDER),
        "polling_interval": 0.1,
        # Routing tables; without it kombu uses ./control relative to the working directory.
        "control_folder": str(CELERY_BROKER_FOLDER / "control"),
    }
# Redis: how long an unacknowledged task waits before it is delivered again (fault tests).
if CELERY_BROKER_URL.startswith("redis") and env.str("CELERY_VISIBILITY_TIMEOUT", default=""):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.float("CELERY_VISIBILITY_TIMEOUT")}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "*.sweep": {"queue": "default"},
    "structures.*": {"queue": "realtime"},
    "integrations.*": {"queue": "realtime"},
    "pingtree.*": {"queue": "realtime"},
    "webhooks.*": {"queue": "realtime"},
    "tracking.*": {"queue": "deliveries"},
}
CELERY_TASK_IGNORE_RESULT = True
# A task is acknowledged after it ran, so a worker that dies mid-task gives it back.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Seconds between sweeper passes (waits, timeouts, lost work re-driven from the database).
SWEEPER_INTERVAL_SECONDS = env.float("SWEEPER_INTERVAL_SECONDS", default=5.0)
# Declared in code; DatabaseScheduler installs it into the database when beat starts.
CELERY_BEAT_SCHEDULE = {
    "sweep": {
        "task": "structures.sweep",
        "schedule": SWEEPER_INTERVAL_SECONDS,
        "options": {"expires": max(SWEEPER_INTERVAL_SECONDS * 2, 10)},
    },
    "engine-sweep": {
        "task": "integrations.sweep",
        "schedule": SWEEPER_INTERVAL_SECONDS,
        "options": {"expires": max(SWEEPER_INTERVAL_SECONDS * 2, 10)},
    },
    "pingtree-sweep": {
        "task": "pingtree.sweep",
        "schedule": SWEEPER_INTERVAL_SECONDS,
        "options": {"expires": max(SWEEPER_INTERVAL_SECONDS * 2, 10)},
    },
}

# --- Leadrelay ----------------------------------------------------------------------------
# How long an Idempotency-Key is remembered.
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
# Default per-key rate limit (requests per minute) for new partner API keys.
DEFAULT_API_KEY_RATE_LIMIT = env.int("DEFAULT_API_KEY_RATE_LIMIT", default=1200)

# Networks outbound requests may reach although private (SSRF guard allowlist). Empty in
# production; the demo, tests and benchmarks allow loopback.
OUTBOUND_ALLOWED_NETWORKS = env.list("OUTBOUND_ALLOWED_NETWORKS", default=[])

# Fernet keys for integration secrets at rest, comma separated, newest first. Generate one
# with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
# Empty in the embedded demo: a key file is created in the var folder.
INTEGRATION_SECRET_KEYS = env.list("INTEGRATION_SECRET_KEYS", default=[])

# --- logging ------------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="console")  # console | json
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
from config.logging import configure_logging  # noqa: E402

LOGGING = configure_logging(log_format=LOG_FORMAT, level=LOG_LEVEL)
DJANGO_STRUCTLOG_CELERY_ENABLED = True

UNFOLD = {
    "SITE_TITLE": "Leadrelay",
    "SITE_HEADER": "Leadrelay",
    "SITE_SYMBOL": "hub",
    "SHOW_HISTORY": True,
    "SHOW_VIEW_ON_SITE": False,
    "DASHBOARD_CALLBACK": "structures.admin.dashboard.dashboard_callback",
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": True,
    },
}

# Webhooks: callbacks that arrived before their lead was waiting are matched by this sweep.
CELERY_BEAT_SCHEDULE["webhooks-sweep"] = {
    "task": "webhooks.sweep",
    "schedule": SWEEPER_INTERVAL_SECONDS,
    "options": {"expires": max(SWEEPER_INTERVAL_SECONDS * 2, 10)},
}
